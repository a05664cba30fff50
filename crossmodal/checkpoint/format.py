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

:func:`load_checkpoint`, which every consumer (eval, inference, ``--resume``,
``train.init_from``) reads through, checks the type of every required entry, the model
config as strictly as an experiment file's, and that the weights are finite, so a damaged,
foreign or diverged file is one line naming the file and the entry.
"""

from __future__ import annotations

import functools
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ConfigError, config_from_dict
from ..errors import CrossmodalError
from ..fileutil import atomic_write, load_torch_file
from ..models import ModelConfig, build_network
from ..provenance import git_state

__all__ = ["FORMAT_VERSION", "REQUIRED_KEYS", "build_model", "check_finite_weights",
           "load_checkpoint", "output_convention", "save_checkpoint", "unwrap_model"]

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
            a torch file), not a crossmodal checkpoint, from a newer format, damaged (a
            required entry of the wrong type, naming it; a model config that an experiment
            file could not hold) or holding NaN/inf weights.
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
    if not _is_int(version) or version < 1:
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
    problem = _layout_problem(checkpoint)
    if problem:
        raise CrossmodalError(f"{path} is a damaged checkpoint: {problem}; {_HOW_TO_GET_ONE}")
    _model_config(config["model"], source=f"{path} config")
    check_finite_weights(checkpoint["model"], path,
                         fix="use a checkpoint saved before the training diverged, or retrain")
    return checkpoint


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _layout_problem(checkpoint: dict) -> str | None:
    """What is wrong with the types of a checkpoint's required entries (those readers use
    without looking), or None; ``config`` is known to be a dict with a dict ``model``."""
    model = checkpoint["model"]
    if not isinstance(model, dict):
        return f"'model' is a {type(model).__name__}, not a mapping of names to tensors"
    for name, value in model.items():
        if not isinstance(name, str):
            return f"'model' has a tensor name {name!r} that is not a string"
        if not isinstance(value, torch.Tensor):
            return f"'model' entry {name!r} is a {type(value).__name__}, not a tensor"
    config = checkpoint["config"]
    data = config.get("data", {})
    if not isinstance(data, dict):
        return f"config['data'] is a {type(data).__name__}, not a mapping"
    size = data.get("image_size", 1)
    if not _is_int(size) or size < 1:
        return f"config['data']['image_size'] is {size!r}, not a positive integer"
    if not isinstance(config.get("name", ""), str):
        return f"config['name'] is {config['name']!r}, not a string"
    optimizer = checkpoint["optimizer"]
    # The layout of torch.optim.Optimizer.state_dict(), which --resume loads.
    if optimizer is not None and not (
            isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
            and isinstance(optimizer.get("param_groups"), list)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                    for g in optimizer["param_groups"])):
        return ("'optimizer' is neither None nor an optimizer state (a mapping with 'state' "
                "and a list of 'param_groups')")
    step = checkpoint["step"]
    if not _is_int(step) or step < 0:
        return f"'step' is {step!r}, not a non-negative integer"
    if not isinstance(checkpoint["metrics"], dict):
        return f"'metrics' is a {type(checkpoint['metrics']).__name__}, not a mapping"
    commit = checkpoint["git_commit"]
    if commit is not None and not isinstance(commit, str):
        return f"'git_commit' is {commit!r}, not a string or None"
    return None


def _model_config(stored: dict, source: str) -> ModelConfig:
    """``config["model"]`` as a :class:`ModelConfig`, type-checked key by key as in an
    experiment file. ``imagenet_weights`` is dropped: the checkpoint holds trained weights,
    and the ImageNet file it was initialised from need not exist here."""
    try:
        return config_from_dict({"model": {**stored, "imagenet_weights": None}},
                                source=source).model
    except ConfigError as err:
        raise CrossmodalError(f"{err}; {_HOW_TO_GET_ONE}") from None


def _first(names: list[str], n: int = 5) -> str:
    """The first ``n`` of ``names``, and how many there are in all if more."""
    shown = ", ".join(names[:n])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > n else shown


def check_finite_weights(state: dict, source: str | os.PathLike, *, fix: str) -> None:
    """Refuse a state dict with a NaN or inf in any floating-point tensor (entries that
    are not tensors are skipped), naming ``source``, the tensors and ``fix``."""
    broken = [name for name, t in state.items()
              if isinstance(t, torch.Tensor) and t.is_floating_point()
              and not bool(torch.isfinite(t).all())]
    if broken:
        raise CrossmodalError(f"{source} holds non-finite (NaN or inf) weights in "
                              f"{_first(broken)}; {fix}")


def build_model(checkpoint: dict) -> nn.Module:
    """Rebuild the network from ``checkpoint["config"]["model"]`` alone (without its
    ``imagenet_weights``, see :func:`_model_config`) by
    :func:`~crossmodal.models.build_network` (a CrossModalNet, or the Pix2Pix generator for
    variant ``pix2pix``) and load its weights strictly; returned on the CPU in eval mode."""
    config = _model_config(checkpoint["config"]["model"], source="checkpoint config")
    model = build_network(config)
    try:
        model.load_state_dict(checkpoint["model"], strict=True)
    except RuntimeError as err:
        raise CrossmodalError(f"checkpoint weights do not match its model config "
                              f"({config.variant!r}): {' '.join(str(err).split())[:300]}") from None
    return model.eval()


def output_convention(checkpoint: Mapping[str, Any]) -> str:
    """The normal-map convention a checkpoint's network outputs (docs/design.md §2, §8):
    ``config["source"]["output_convention"]`` when recorded (``official`` for the authors'
    imported weights), else ``opengl``, ours, for a model crossmodal trained."""
    source = checkpoint["config"].get("source")
    convention = source.get("output_convention") if isinstance(source, Mapping) else None
    return convention if isinstance(convention, str) and convention else "opengl"
