"""Resizing face crops and their maps: images, normal maps (renormalised) and masks.

One set of rules for every place a crop changes size: the training loader bringing samples
to the training resolution, and the inference path (:mod:`crossmodal.inference`) bringing
crops to the network's resolution and its predictions back (docs/design.md §6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["resize_images", "resize_masks", "resize_normals"]

#: Interpolated normals shorter than this have no direction: only invalid (zero) vectors
#: contributed, so the pixel stays invalid.
_MIN_NORM = 1e-3


def resize_images(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, C, H, W)`` images in [0, 1] at ``size = (h, w)``; returned as is when already
    that size. Area averaging when shrinking (no aliasing), bilinear when enlarging;
    clamped to [0, 1]."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    if shrink:
        y = F.interpolate(x.float(), size=size, mode="area")
    else:
        y = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)
    return y.clamp(0.0, 1.0)


def resize_normals(n: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, 3, H, W)`` normal maps at ``size = (h, w)``: bilinear, then renormalised to unit
    length; pixels where only zero (invalid) vectors contributed stay zero. Returned as is
    when already that size."""
    if tuple(n.shape[-2:]) == tuple(size):
        return n
    y = F.interpolate(n.float(), size=size, mode="bilinear", align_corners=False)
    norm = torch.linalg.vector_norm(y, dim=1, keepdim=True)
    return torch.where(norm > _MIN_NORM, y / norm.clamp_min(_MIN_NORM), 0.0)


def resize_masks(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, H, W)`` boolean masks at ``size = (h, w)``, nearest neighbour."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
