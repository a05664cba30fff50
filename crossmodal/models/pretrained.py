"""Pretrained weights from local files (torchvision state dicts), checked before loading."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import CrossmodalError

__all__ = ["check_state_dict"]


def check_state_dict(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                     path: str | Path, architecture: str, fix: str = "") -> None:
    """Refuse a state dict whose names or shapes differ from the module's ``own``, naming
    the first few of each, so that a wrong file never half-loads.

    Raises:
        CrossmodalError: ``path is not a torchvision ARCHITECTURE state dict: missing [...],
            unexpected [...], wrong shapes [...]`` and ``fix``.
    """
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise CrossmodalError(
            f"{path} is not a torchvision {architecture} state dict: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, wrong shapes {wrong[:3]}{'; ' + fix if fix else ''}")
