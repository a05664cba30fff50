"""Files safely: a reader never sees half a written file, a killed run leaves none, and a
bad torch file is one clear error instead of a pickle traceback."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import CrossmodalError

__all__ = ["atomic_write", "load_torch_file"]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Create ``path``'s folder, let ``write`` fill a temporary sibling, then rename it.

    The temporary name keeps the suffix (writers pick the format from it) and is created by
    ``write`` itself rather than ``mkstemp``, so the final file gets the usual umask
    permissions instead of mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_torch_file(path: str | os.PathLike, *, what: str, fix: str) -> Any:
    """``torch.load`` of ``path`` on the CPU with ``weights_only=True`` (never runs code from
    the file).

    Args:
        path: the file to read.
        what: what the file is, for messages ("checkpoint", "ImageNet weights").
        fix: how to get a good file, ending every message.

    Raises:
        CrossmodalError: one line naming the file, when it is missing or unreadable
            (truncated, not a torch file, or holding objects ``weights_only`` refuses).
    """
    # Imported here so that the torch-free modules writing through this one (io, geometry,
    # data.format) do not load torch.
    import torch

    path = Path(path)
    if not path.is_file():
        raise CrossmodalError(f"{what} {path} not found; {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and EOF errors alike: the file is not usable
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CrossmodalError(f"cannot read {what} {path} (truncated, or not a torch file?): "
                              f"{reason}; {fix}") from None
