"""The checkpoint format (docs/design.md §8): one plain dict, safe to load, enough to rebuild
the model.

A checkpoint is ``torch.save`` of::

    {"format_version": 1,
     "config": {...},          # the fully resolved config; "model" = ModelConfig.to_dict()
     "model": {name: tensor},  # state_dict of the unwrapped network
     "optimizer": {...} | None,
     "step": int,
     "metrics": {...},
     "git_commit": str | None}

Only tensors and builtins, so ``torch.load(path, weights_only=True)`` reads it and
loading never runs code from the file. Inference and evaluation rebuild the network from
``config["model"]`` alone (:func:`build_model`).
"""

from __future__ import annotations

import functools
import numbers
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CrossmodalError
from ..fileutil import atomic_write, load_torch_file
from ..models import CrossModalNet, ModelConfig
from ..provenance import git_state

__all__ = ["FORMAT_VERSION", "REQUIRED_KEYS", "build_model", "load_checkpoint",
           "save_checkpoint", "unwrap_model"]

#: Bumped when the layout changes incompatibly; readers refuse newer versions.
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "config", "model", "optimizer", "step", "metrics",
                 "git_commit")
_HOW_TO_GET_ONE = ("pass a checkpoint written by `crossmodal train` or `crossmodal "
                   "import-official`")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The network inside ``DistributedDataParallel``/``DataParallel`` (``.module``) and
    ``torch.compile`` (``._orig_mod``) wrappers, so saved names carry no wrapper prefix."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


@functools.cache
def _code_commit() -> str | None:
    """HEAD of the repository holding this package, or None (installed from a wheel, no
    git). Cached: the code that runs is the code imported at start, whatever HEAD does."""
    return git_state(work_tree=False).commit


def _plain(value: Any, where: str) -> Any:
    """``value`` as builtins (dict, list, str, int, float, bool, None) that
    ``weights_only`` loading accepts: numpy and one-element torch numbers become Python
    numbers, paths strings, tuples lists; anything else is a bug of the caller."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"{where} is a {type(value).__name__}; checkpoints hold plain "
                    f"containers and numbers only")


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    config: dict,
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
    metrics: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a checkpoint atomically (a reader never sees half a file).

    Args:
        path: file to write; its folder is created.
        model: the network, possibly wrapped by DDP or ``torch.compile``.
        config: the fully resolved config, with a ``"model"`` section equal to
            ``ModelConfig.to_dict()``; stored as plain containers.
        optimizer: its ``state_dict()`` is stored, to resume training.
        step: training step reached.
        metrics: latest validation metrics (plain numbers).
        extra: additional top-level entries, tensors and builtins only (e.g. RNG states
            and a GradScaler's state, to resume training exactly); their keys must not be
            :data:`REQUIRED_KEYS`.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    checkpoint = {
        "format_version": FORMAT_VERSION,
        "config": _plain(config, "config"),
        "model": unwrap_model(model).state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "step": int(step),
        "metrics": _plain(metrics or {}, "metrics"),
        "git_commit": _code_commit(),
    }
    clash = sorted(set(extra or {}) & set(checkpoint))
    if clash:
        raise ValueError(f"extra checkpoint entries {clash} would replace required keys")
    checkpoint.update(extra or {})
    return atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read (tensors on the CPU) and validate a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CrossmodalError: naming the file, when it is missing, unreadable (truncated, not
            a torch file), not a crossmodal checkpoint, or from a newer format.
    """
    path = Path(path)
    checkpoint = load_torch_file(path, what="checkpoint", fix=_HOW_TO_GET_ONE)
    missing = ([k for k in REQUIRED_KEYS if k not in checkpoint]
               if isinstance(checkpoint, dict) else list(REQUIRED_KEYS))
    if missing:
        # The likeliest such file is a bare state dict, e.g. the authors' model.pth.
        raise CrossmodalError(
            f"{path} is not a crossmodal checkpoint (missing {', '.join(missing)}); if it "
            f"is the authors' model.pth, convert it with `crossmodal import-official {path} "
            f"--out CKPT`, otherwise {_HOW_TO_GET_ONE}")
    version = checkpoint["format_version"]
    if not isinstance(version, int) or version < 1:
        raise CrossmodalError(f"{path} has an invalid format_version {version!r}; "
                              f"{_HOW_TO_GET_ONE}")
    if version > FORMAT_VERSION:
        raise CrossmodalError(f"{path} was written by a newer crossmodal (checkpoint format "
                              f"{version}; this one reads up to {FORMAT_VERSION}); upgrade "
                              f"crossmodal to load it")
    config = checkpoint["config"]
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CrossmodalError(f"{path} has no model config (config['model']), so the "
                              f"network cannot be rebuilt; {_HOW_TO_GET_ONE}")
    return checkpoint


def build_model(checkpoint: dict) -> CrossModalNet:
    """Rebuild the network from ``checkpoint["config"]["model"]`` alone and load its
    weights strictly; returned on the CPU in eval mode.

    ``imagenet_weights`` is dropped from the stored config: the checkpoint holds trained
    weights, and the ImageNet file it was initialised from need not exist here.
    """
    config = ModelConfig.from_dict({**checkpoint["config"]["model"], "imagenet_weights": None})
    model = CrossModalNet(config)
    try:
        model.load_state_dict(checkpoint["model"], strict=True)
    except RuntimeError as err:
        raise CrossmodalError(f"checkpoint weights do not match its model config "
                              f"({config.variant!r}): {' '.join(str(err).split())[:300]}") from None
    return model.eval()
