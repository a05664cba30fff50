"""Files safely: a reader never sees half a written file, a killed run leaves none, an output
never lands on an input, and a bad torch file is one clear error instead of a pickle
traceback."""

from __future__ import annotations

import os
import re
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from .errors import CrossmodalError, InputError

__all__ = [
    "atomic_write",
    "check_output",
    "load_torch_file",
    "open_for_reading",
    "read_text",
    "remove_temporaries",
    "require_file",
]

PathLike = str | os.PathLike


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Create ``path``'s folder, let ``write`` fill a temporary sibling, then rename it.

    The temporary name keeps the suffix (writers pick the format from it) and is created by
    ``write`` itself rather than ``mkstemp``, so the final file gets the usual umask
    permissions instead of mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Named so that remove_temporaries recognises it (_TEMPORARY) after a killed run.
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


#: The name :func:`atomic_write` gives its temporary file: ``.{stem}.{12 hex}.tmp{suffix}``.
_TEMPORARY = re.compile(r"\..*\.[0-9a-f]{12}\.tmp(\.[^.]*)?")


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that an :func:`atomic_write` killed before its rename
    left in ``folder`` (not in its sub-folders); returns them. Resumable commands call it
    on start, when no write of theirs is under way.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _TEMPORARY.fullmatch(p.name) and p.is_file()]
    for path in found:
        path.unlink(missing_ok=True)
    return found


def check_output(path: str | os.PathLike, *,
                 inputs: Mapping[str, PathLike | Iterable[PathLike] | None], what: str,
                 kind: str = "file") -> Path:
    """Refuse, before any work starts, an output that would destroy an input or that cannot
    be written; every command checks each of its outputs with it.

    Paths are compared after following symbolic links and ``..`` (and as the same file on
    disk when both exist, which catches hard links too), so no spelling of an input
    escapes. Nothing is created: folders are made when the output is written.

    Args:
        path: where the command will write: a file (``kind="file"``) or a folder it writes
            files into (``kind="folder"``); it need not exist.
        inputs: what the command reads, as description -> path (or several paths), e.g.
            ``{"the checkpoint": ckpt, "the dataset": data}``; None (an option not given)
            is skipped. An input folder counts with everything inside it: nothing is
            written into it. A command's other outputs go here too, so that two outputs
            never collide.
        what: how the user named the output, for messages: ``"--out"``, ``"output"``.
        kind: ``"file"`` or ``"folder"``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        CrossmodalError: one line naming ``path`` and the fix, when it is (a link to) one
            of the inputs or lies inside an input folder; is an existing folder where a
            file is meant, or an existing file where a folder is; or its nearest existing
            ancestor is a file or a folder this process cannot create files in.
    """
    if kind not in ("file", "folder"):
        raise ValueError(f"kind must be 'file' or 'folder', got {kind!r}")
    path = Path(path)
    target = path.resolve()
    for label, given in inputs.items():
        sources = [given] if isinstance(given, (str, os.PathLike)) else list(given or ())
        for source in sources:
            resolved = Path(source).resolve()
            if target == resolved or (path.exists() and resolved.exists()
                                      and os.path.samefile(path, resolved)):
                raise CrossmodalError(f"{what} {path} is {label} {source}; writing there "
                                      f"would destroy it: choose another {what}")
            if resolved.is_dir() and resolved in target.parents:
                raise CrossmodalError(f"{what} {path} is inside {label} {source}, an input "
                                      f"folder this command never writes into; write "
                                      f"outside it")
    if kind == "file" and path.is_dir():
        raise CrossmodalError(f"{what} {path} is an existing folder; name a file (in that "
                              f"folder or elsewhere)")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise CrossmodalError(f"{what} {path} is an existing file, not a folder; name a "
                              f"folder")
    # The nearest folder that exists is where the first file or sub-folder will be made.
    existing = path if kind == "folder" else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CrossmodalError(f"{what} {path}: {existing} is a file, not a folder; choose "
                              f"another {what}")
    try:
        # Creating a file, rather than asking os.access, also tells the truth for root and
        # on read-only mounts; the file is never linked into the folder where O_TMPFILE is
        # supported, and is removed at once elsewhere.
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise CrossmodalError(f"{what} {path}: cannot write in {existing} "
                              f"({err.strerror or err}); choose a writable location") from None
    return path


def require_file(path: str | os.PathLike, what: str, fix: str = "check the path") -> Path:
    """``path`` as a :class:`~pathlib.Path`, once it is known to name a regular file.

    Args:
        what: what the file is, for messages ("image", "dataset table").
        fix: what to do about a missing file, ending that message.

    Raises:
        InputError: one line naming ``what`` and ``path``: it does not exist (a broken
            symbolic link says where it points), is a folder, is a pipe, socket or device
            (never opened: reading one can block for ever), or cannot be reached (a folder
            on the way without search permission, a link loop).
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise InputError(f"{what} {path} is a broken symbolic link (to "
                             f"{os.readlink(path)}); {fix}") from None
        raise InputError(f"{what} {path} does not exist; {fix}") from None
    except OSError as err:
        raise InputError(f"cannot reach {what} {path}: {err.strerror or err}; check the path "
                         f"and its folders' permissions") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{what} {path} is a folder, not a file; {fix}")
    if not stat.S_ISREG(mode):
        raise InputError(f"{what} {path} is not a regular file (a pipe, socket or device); "
                         f"{fix}")
    return path


@contextmanager
def open_for_reading(path: str | os.PathLike, what: str,
                     fix: str = "check the path") -> Iterator[BinaryIO]:
    """``path`` opened for reading in binary, after :func:`require_file`. The package's
    readers open their inputs here, so that every refusal is one line naming the file.

    Raises:
        InputError: as :func:`require_file`, and when the file cannot be opened
            (permission denied, an I/O error).
    """
    path = require_file(path, what, fix)
    try:
        file = open(path, "rb")
    except PermissionError:
        raise InputError(f"cannot read {what} {path}: permission denied; make it readable for "
                         f"your user (chmod u+r if you own it)") from None
    except OSError as err:
        raise InputError(f"cannot read {what} {path}: {err.strerror or err}; {fix}") from None
    with file:
        yield file


def read_text(path: str | os.PathLike, what: str, fix: str = "check the path") -> str:
    """The UTF-8 text of ``path`` (CSV, JSON, YAML), read by :func:`open_for_reading`.

    A leading byte-order mark, which Excel and Notepad write, is dropped; newlines are kept
    as they are (``csv`` and the parsers take any).

    Raises:
        InputError: as :func:`open_for_reading`, and for text that is not UTF-8, naming the
            first bad byte and its line.
    """
    with open_for_reading(path, what, fix) as file:
        data = file.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        # err.object is the data the decoder saw (without a byte-order mark).
        line = err.object.count(b"\n", 0, err.start) + 1
        raise InputError(f"{what} {path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} "
                         f"on line {line}); save it as UTF-8") from None


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

    path = require_file(path, what, fix)  # missing, a broken link, a folder: said as such
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and EOF errors alike: the file is not usable
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CrossmodalError(f"cannot read {what} {path} (truncated, or not a torch file?): "
                              f"{reason}; {fix}") from None
