"""How a result was produced: the git commit of the repository holding this package,
recorded in run directories (``git.txt``) and checkpoints (``git_commit``), and what
changed between two recorded settings (a resumed run, a re-run of ``synth``)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from collections.abc import Mapping
from typing import Any, NamedTuple

__all__ = ["GitState", "git_state", "settings_changes"]

_TIMEOUT_S = 30


class GitState(NamedTuple):
    """The package's repository: ``commit`` is HEAD (None without git or outside a
    repository); ``dirty`` whether the work tree has changes (None when not asked or not
    known)."""

    commit: str | None
    dirty: bool | None

    def __str__(self) -> str:
        """``COMMIT``, ``COMMIT dirty``, ``COMMIT (work tree state unknown)`` or ``unknown``."""
        if self.commit is None:
            return "unknown"
        if self.dirty is None:
            return f"{self.commit} (work tree state unknown)"
        return f"{self.commit} dirty" if self.dirty else self.commit


def git_state(*, work_tree: bool = True) -> GitState:
    """HEAD of the repository holding this package and, with ``work_tree``, whether the work
    tree has changes. Never fails because of git: anything going wrong reads as unknown.

    Not cached: the work tree may change during a session; a caller recording the code it
    imported at start caches the commit itself.
    """
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=_TIMEOUT_S)

    try:
        head = git("rev-parse", "HEAD")
        commit = head.stdout.strip()
        if head.returncode or not commit:
            return GitState(None, None)
        if not work_tree:
            return GitState(commit, None)
        status = git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return GitState(None, None)
    return GitState(commit, None if status.returncode else bool(status.stdout.strip()))


def settings_changes(old: Mapping[str, Any], new: Mapping[str, Any],
                     names: Mapping[str, str] | None = None) -> list[str]:
    """``["train.max_steps 1400 (now 2600)", ...]``: the leaves of the nested settings
    ``old`` that ``new`` changes, adds (``unset (now V)``) or drops (``V (now unset)``), in
    ``new``'s order then ``old``'s; ``names`` renames dotted keys, e.g. to the command-line
    option behind them."""
    old, new, names = _leaves(old), _leaves(new), names or {}
    keys = list(new) + [k for k in old if k not in new]
    return [f"{names.get(k, k)} {old.get(k, 'unset')} (now {new.get(k, 'unset')})"
            for k in keys if old.get(k, _UNSET) != new.get(k, _UNSET)]


_UNSET = object()


def _leaves(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    leaves = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            leaves.update(_leaves(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves
