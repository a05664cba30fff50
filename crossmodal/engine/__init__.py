"""Training: the mixed-batch schedule, the data it draws, the trainer and DDP helpers.

- :mod:`crossmodal.engine.schedule`: which passes each data type runs (paper §3.3) and
  which samples every step and rank sees, from the seed and the step alone;
- :mod:`crossmodal.engine.data`: training and validation loaders from the ``data`` config;
- :mod:`crossmodal.engine.trainer`: :class:`~crossmodal.engine.trainer.Trainer`, set-up and
  the step loop (logging, validation, checkpoints, resume);
- :mod:`crossmodal.engine.distributed`: joining torchrun's process group.
"""
