"""Which device a run uses: the ``device`` settings (``train.device``, ``--device``) as
:class:`torch.device`. Shared by training and evaluation, so neither imports the other."""

from __future__ import annotations

import torch

from .errors import CrossmodalError

__all__ = ["resolve_device", "uses_cuda"]


def resolve_device(name: str | torch.device, local_rank: int = 0,
                   option: str = "device") -> torch.device:
    """A device name as a device: 'auto' is CUDA when available, else the CPU; 'cuda'
    without an index is GPU ``local_rank`` (one per process under torchrun). ``option``
    names the setting in error messages (``train.device``, ``--device``)."""
    if str(name) == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise CrossmodalError(f"unknown device {str(name)!r} for {option}; use auto, cpu, cuda "
                              f"or cuda:N")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if not torch.cuda.is_available() or device.index >= torch.cuda.device_count():
            raise CrossmodalError(f"{option} {str(name)!r}: no such CUDA device here "
                                  f"({torch.cuda.device_count()} available); use cpu or auto")
    return device


def uses_cuda(device: str) -> bool:
    """Whether ``train.device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) means a GPU here."""
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
