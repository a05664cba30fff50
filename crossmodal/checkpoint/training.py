"""The training state in a checkpoint: what ``last.pt`` carries so a run resumes exactly.

A checkpoint of the format (docs/design.md §8) plus, beside the model and the optimizer:
``"rng"`` (torch's CPU generator, and the CUDA one of the training device), ``"scaler"``
(the fp16 GradScaler), ``"world_size"`` (the processes that wrote it), with
``train.ema_decay`` set ``"ema"`` (the averaged weights' state dict,
:mod:`crossmodal.engine.ema`) and, when the run trains one (an ``adversarial`` loss term),
``"discriminator"``: ``{"model": state dict, "optimizer": its Adam's state dict}``. With
the data of step s a function of (seed, s) (:mod:`crossmodal.engine.schedule`),
restoring these gives exactly the run an uninterrupted one would have been. The
discriminator is training machinery: ``best.pt``, inference and evaluation need the model
alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CrossmodalError
from .format import save_checkpoint

__all__ = ["Trained", "TrainingState", "load_weights", "restore_training_state",
           "save_training_state"]

log = logging.getLogger(__name__)

#: ``{"step": int, "metrics": {"val": {...}, "best": {"val/mean", "step"} | None}}``.
TrainingState = dict[str, Any]


def load_weights(net: nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike,
                 variant: str) -> None:
    """Load ``state`` into ``net`` strictly; a mismatch names ``source`` and the variant."""
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CrossmodalError(
            f"the weights in {source} do not fit the {variant!r} model of this config: "
            f"{' '.join(str(err).split())[:300]}") from None


#: A network trained beside the model and its optimizer (the discriminator and its Adam).
Trained = tuple[nn.Module, torch.optim.Optimizer]


def save_training_state(path: str | os.PathLike, *, net: nn.Module, config: dict,
                        optimizer: torch.optim.Optimizer | None, scaler: torch.amp.GradScaler,
                        step: int, metrics: dict, device: torch.device,
                        world_size: int, discriminator: Trained | None = None,
                        ema: nn.Module | None = None) -> Path:
    """Write a resumable checkpoint (atomically) of the bare network ``net`` and, when
    given, of the averaged weights ``ema`` and of the bare ``discriminator`` network and
    its optimizer."""
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    extra = {"rng": rng, "scaler": scaler.state_dict(), "world_size": world_size}
    if ema is not None:
        extra["ema"] = ema.state_dict()
    if discriminator is not None:
        module, d_optimizer = discriminator
        extra["discriminator"] = {"model": module.state_dict(),
                                  "optimizer": d_optimizer.state_dict()}
    return save_checkpoint(path, model=net, config=config, optimizer=optimizer, step=step,
                           metrics=metrics, extra=extra)


def restore_training_state(checkpoint: dict, source: str | os.PathLike, *, net: nn.Module,
                           variant: str, optimizer: torch.optim.Optimizer,
                           optim_settings: dict[str, Any], scaler: torch.amp.GradScaler,
                           device: torch.device, world_size: int,
                           discriminator: Trained | None = None,
                           ema: nn.Module | None = None) -> TrainingState:
    """Put a :func:`save_training_state` checkpoint back: weights, optimizer, GradScaler,
    RNG state and, when given, the averaged weights and the discriminator and its
    optimizer; returns its step and metrics.

    ``optim_settings`` (``betas``, ``weight_decay``) replace the saved ones, so a diverged
    run can resume with other hyper-parameters (the learning rate is set every step).
    A checkpoint written by another number of processes resumes with a warning: the
    global batch, and so the data of each step, differ from the original run. So does one
    without a discriminator for a run that now trains one (an ``adversarial`` term turned
    on): that discriminator starts afresh, and one without averaged weights for a run that
    now averages them (``train.ema_decay`` turned on): the average starts from the
    resumed weights.
    """
    load_weights(net, checkpoint["model"], source, variant)
    if ema is not None:
        if checkpoint.get("ema") is None:
            log.warning("%s holds no averaged weights: train.ema_decay's average starts "
                        "from the resumed weights", source)
            ema.load_state_dict(net.state_dict())
        else:
            load_weights(ema, checkpoint["ema"], f"{source} (averaged weights)", variant)
    _restore_optimizer(optimizer, checkpoint["optimizer"], optim_settings)
    if discriminator is not None:
        module, d_optimizer = discriminator
        saved = checkpoint.get("discriminator")
        if saved is None:
            log.warning("%s holds no discriminator: the adversarial term's discriminator "
                        "starts afresh", source)
        else:
            load_weights(module, saved["model"], f"{source} (discriminator)", variant)
            _restore_optimizer(d_optimizer, saved["optimizer"], optim_settings)
    if scaler.is_enabled() and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    rng = checkpoint.get("rng", {})
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
    saved_world = checkpoint.get("world_size", world_size)
    if saved_world != world_size:
        log.warning("%s was written by %d processes, resuming with %d: the global batch, and "
                    "so the data of each step, differ from the original run", source,
                    saved_world, world_size)
    return {"step": int(checkpoint["step"]), "metrics": checkpoint["metrics"]}


def _restore_optimizer(optimizer: torch.optim.Optimizer, state: dict | None,
                       settings: dict[str, Any]) -> None:
    """Load ``state`` (when saved) into ``optimizer``, then impose ``settings``."""
    if state is not None:
        optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group.update(settings)
