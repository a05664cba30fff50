"""Validation during training: the same measurement ``crossmodal eval`` reports.

The live network predicts through the one inference path
(:class:`~crossmodal.inference.NormalPredictor`: eval mode, float32, at the training
resolution, predictions resized back) and is scored against the validation ground truth at
the dataset's own resolution (:func:`crossmodal.evaluate.score`), so the mean that selects
``best.pt`` is what ``crossmodal eval`` gives for it on the same split.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..config import ExperimentConfig
from ..evaluate import draw_panel, score
from ..inference import NormalPredictor
from ..metrics import AngularErrorMeter
from .data import val_loaders

__all__ = ["PANEL_SAMPLES", "Validator"]

#: Validation samples shown in the TensorBoard panel (rows of input | prediction | ...).
PANEL_SAMPLES = 4


class Validator:
    """Angular error of ``net``'s image->normal pass on this rank's validation shard.

    Args:
        net: the bare network (a DDP forward would need every rank in step).
        config: the experiment; ``data.val`` / ``data.val_split`` name the samples,
            ``data.image_size`` the resolution the network runs at, ``train.val_batches``
            caps them.
        rank, world_size: this process's place in the group.
        device: where ``net`` is.
    """

    def __init__(self, net: nn.Module, config: ExperimentConfig, *, rank: int, world_size: int,
                 device: torch.device) -> None:
        self.loaders = val_loaders(config.data, val_batches=config.train.val_batches,
                                   rank=rank, world_size=world_size,
                                   pin_memory=device.type == "cuda")
        self.predictor = NormalPredictor(net, image_size=config.data.image_size, device=device,
                                         batch_size=config.data.batch_size)

    def __bool__(self) -> bool:
        return bool(self.loaders)

    def run(self) -> dict[str, float]:
        """The metrics over every rank's shard (a collective): ``{"val/mean", "val/std",
        "val/median", "val/pixel_mean", "val/n_images", "val/n_pixels", "val/below_20",
        "val/below_25", "val/below_30"}``; ``{}`` without validation data."""
        if not self.loaders:
            return {}
        meter = AngularErrorMeter(device=self.predictor.device)
        for loader in self.loaders:
            score(self.predictor, loader, meter)
        summary = meter.all_reduce().summary()
        metrics = {f"val/{k}": float(summary[k])
                   for k in ("mean", "std", "median", "pixel_mean", "n_images", "n_pixels")}
        metrics.update({f"val/below_{t}": float(v) for t, v in summary["below"].items()})
        return metrics

    def panel(self) -> np.ndarray | None:
        """:func:`~crossmodal.evaluate.draw_panel` of the first validation samples of this
        rank's shard (rank 0's starts the validation set); None without validation data."""
        if not self.loaders:
            return None
        return draw_panel(self.predictor, self.loaders[0].dataset, PANEL_SAMPLES)
