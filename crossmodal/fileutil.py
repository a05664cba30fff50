"""Writing files safely: a reader never sees half a file, a killed run leaves none."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write"]


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
