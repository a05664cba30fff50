"""The one inference path: a model's image->normal pass on face crops (docs/design.md §6).

Validation during training, ``crossmodal eval``, ``crossmodal predict`` (torch or an ONNX
export) and the demo predict through :class:`NormalPredictor`, so the validation number
that selects ``best.pt`` is the number ``crossmodal eval`` reports. Its policy, decided
here once:

- **eval mode, no gradients** (``torch.inference_mode``); a model's train/eval mode is
  restored afterwards, so the trainer can validate its live network;
- **float32**: autocast is switched off whatever the caller's context. Inference is cheap
  next to training, and half precision's 8 (bf16) or 11 (fp16) mantissa bits move small
  angular errors, which are what the metrics resolve;
- **channels_last** inputs: oneDNN and cuDNN run this network's convolutions fastest in
  NHWC (docs/design.md §9);
- **only what is returned runs**: the image->normal pass without the image decoder, which
  the training pass also runs (about a third of its cost at 256 px);
- **the model's resolution**: the network runs at ``image_size``, the resolution it was
  trained at (a checkpoint's ``data.image_size``); crops of another size are resized to it
  (area when shrinking, bilinear when enlarging), and the predictions are resized back to
  the crop's size (bilinear, renormalised; pixels without a direction stay zero). The
  caller scores them against its ground truth at that size, never a resized one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .checkpoint import build_model, load_checkpoint
from .data.resize import resize_images, resize_normals
from .device import resolve_device
from .errors import InputError

__all__ = ["NormalPredictor", "trained_image_size"]

log = logging.getLogger(__name__)


def trained_image_size(checkpoint: Mapping[str, Any]) -> int | None:
    """The resolution a checkpoint's model was trained at (``config["data"]["image_size"]``),
    or None when its config does not say."""
    size = checkpoint["config"].get("data", {}).get("image_size")
    return int(size) if isinstance(size, int) and not isinstance(size, bool) else None


class NormalPredictor:
    """Face crops ``(B, 3, H, W)`` in [0, 1] -> normal maps ``(B, 3, H, W)`` at the crops'
    size, by the policy of the module docstring.

    Args:
        model: a :class:`~crossmodal.models.CrossModalNet` (or anything with its
            ``forward(x, route, outputs)``), already on ``device``; not modified, but for
            its train/eval mode, which is restored after each call.
        image_size: the side the network runs at; None runs it at each input's own size
            (which must then be a multiple of 32).
        device: where the model is; inputs are moved there.
        batch_size: the most crops per forward pass; larger inputs are split.
    """

    def __init__(self, model: nn.Module, *, image_size: int | None,
                 device: torch.device | str = "cpu", batch_size: int = 8) -> None:
        if batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {batch_size}")
        if image_size is not None and image_size < 1:
            raise InputError(f"image size must be positive, got {image_size}")
        self.model = model
        self.image_size = image_size
        self.device = torch.device(device)
        self.batch_size = batch_size

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike | Mapping[str, Any], *,
                        device: str | torch.device = "auto", image_size: int | None = None,
                        batch_size: int = 8) -> NormalPredictor:
        """The model of a checkpoint (a path or a loaded dict), rebuilt from its config
        alone (docs/design.md §8), in channels_last on ``device``.

        ``image_size`` overrides the checkpoint's training resolution; a checkpoint that
        does not record one (and no override) runs at each input's own size.
        """
        device = resolve_device(device, option="--device")
        if not isinstance(checkpoint, Mapping):
            checkpoint = load_checkpoint(checkpoint)
        model = build_model(checkpoint).to(device, memory_format=torch.channels_last)
        if image_size is None:
            image_size = trained_image_size(checkpoint)
        return cls(model, image_size=image_size, device=device, batch_size=batch_size)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Predict normals for ``images`` ``(B, 3, H, W)`` float in [0, 1] (any device).

        Returns:
            float32 ``(B, 3, H, W)`` unit vectors on :attr:`device` (zero where resizing
            back left a pixel without a direction; NaN only from a broken model).

        Raises:
            InputError: not a ``(B, 3, H, W)`` batch, or a non-square crop where the
                network's resolution differs (face crops are square, docs/design.md §4).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"expected face crops (B, 3, H, W), got shape "
                             f"{tuple(images.shape)}")
        size = tuple(images.shape[-2:])
        run_size = size if self.image_size is None else (self.image_size, self.image_size)
        if run_size != size and size[0] != size[1]:
            raise InputError(f"face crops are square (docs/design.md §4); got {size[1]}x"
                             f"{size[0]}, which the model (trained at {self.image_size} px) "
                             f"would see distorted")
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
                parts = [self._predict(chunk, run_size, size)
                         for chunk in images.split(self.batch_size)]
        finally:
            self.model.train(was_training)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _predict(self, images: torch.Tensor, run_size: tuple[int, int],
                 size: tuple[int, int]) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True)
        x = resize_images(x.float(), run_size).contiguous(memory_format=torch.channels_last)
        normals = self.model(x, "image_to_normal", outputs=("normals",))["normals"].float()
        return resize_normals(normals, size)
