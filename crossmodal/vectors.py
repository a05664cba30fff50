"""Unit vectors of torch normal maps, shared by the training losses (paper §3.3, eq. 1)
and the angular-error metric (docs/design.md §6), so both agree on which vectors have a
direction."""

from __future__ import annotations

import torch

from .normals import EPS

__all__ = ["EPS", "unit_vectors"]


def unit_vectors(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 3, H, W)`` vectors -> (unit vectors ``(B, 3, H, W)``, valid ``(B, 1, H, W)``).

    ``valid`` marks the vectors with a direction: finite and longer than :data:`EPS`.
    Overflow-safe and differentiable: vectors are first divided by their largest component
    when it exceeds 1 (a detached scale: a direction does not depend on length, so the
    gradient is still exact), which keeps the squares finite for any finite input; lengths
    below :data:`EPS` are clamped, so a zero vector gives a zero "unit" vector and finite
    gradients. A non-finite vector stays non-finite (a caller that must not see it masks
    it with ``valid``; a loss lets it through so that divergence is not hidden).
    """
    scale = v.detach().abs().amax(dim=1, keepdim=True).clamp_min(1.0)
    v = v / scale
    norm = v.square().sum(dim=1, keepdim=True).clamp_min(EPS * EPS).sqrt()
    valid = torch.isfinite(v).all(dim=1, keepdim=True) & (norm * scale > EPS)
    return v / norm, valid
