"""Training: the mixed-batch schedule, the data it draws, the trainer and what runs beside it.

- :mod:`crossmodal.engine.schedule`: which passes each data type runs (paper §3.3, from the
  experiment's ``schedule``) and which samples every step and rank sees, from the seed and
  the step alone;
- :mod:`crossmodal.engine.data`: training and validation loaders from the ``data`` config;
- :mod:`crossmodal.engine.trainer`: :class:`~crossmodal.engine.trainer.Trainer`, set-up as a
  sequence of build steps and the step loop;
- :mod:`crossmodal.engine.guard`: the finite-loss guard and its rollback;
- :mod:`crossmodal.engine.run_log`: ``metrics.jsonl`` and TensorBoard;
- :mod:`crossmodal.engine.validation`: validation through the one inference path;
- :mod:`crossmodal.engine.lr_schedule`: the learning rate of every step;
- :mod:`crossmodal.engine.distributed`: torchrun's process group and the collectives.

The resumable state of a run is saved and restored by :mod:`crossmodal.checkpoint.training`.
"""
