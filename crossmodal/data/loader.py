"""A ``DataLoader`` whose worker processes never outlive a failure.

PyTorch re-raises an exception from a loader worker in the main process, but (1) its
message is the worker's whole traceback, and (2) that traceback keeps the loader's iterator
alive: the workers are then left to interpreter exit, which stops them with SIGTERM --
ignored by training's workers (:func:`crossmodal.engine.data.train_loader` leaves
SIGINT/SIGTERM to the main process), so the process waited for them for ever. The same
happens when a worker is killed (the out-of-memory killer): PyTorch detects it and raises.
:class:`SafeDataLoader` shuts its workers down as soon as iteration ends for any reason,
and re-raises a user's mistake found by a worker (a
:class:`~crossmodal.errors.CrossmodalError`, e.g. a corrupt image: its message names the
sample and the file) with the worker's own one-line message, and a worker's death as a
one-line :class:`~crossmodal.errors.CrossmodalError`. (What no iterator reaches,
training stops at exit: :func:`crossmodal.engine.data._kill_workers_at_exit`.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from ..errors import CrossmodalError, loader_worker_death

__all__ = ["SafeDataLoader", "worker_message"]


def worker_message(err: CrossmodalError) -> str:
    """The message of the exception a loader worker raised, from the one PyTorch re-raises
    in its place: ``"Caught InputError in DataLoader worker process 0.\\nOriginal Traceback
    (most recent call last): ... crossmodal.errors.InputError: MESSAGE"``; for an exception
    raised in this process, its message."""
    kind = type(err)
    return str(err).rpartition(f"{kind.__module__}.{kind.__qualname__}: ")[2].strip()


class SafeDataLoader(DataLoader):
    """``torch.utils.data.DataLoader`` (same arguments) whose iteration shuts its worker
    processes down when it ends for any reason (exhausted, an exception in a worker, in
    PyTorch's worker monitoring or in the loop consuming it, or abandoned), and raises a
    :class:`~crossmodal.errors.CrossmodalError` from a worker as the worker's one-line
    message (the worker's traceback is its ``__cause__``), and the death of a worker
    (killed, out of memory) as a :class:`~crossmodal.errors.CrossmodalError` saying so."""

    def __iter__(self) -> Iterator[Any]:
        batches = super().__iter__()
        try:
            yield from batches
        except CrossmodalError as err:
            message = worker_message(err)
            if message == str(err):
                raise  # raised in this process: as it is
            raise type(err)(message) from err
        except RuntimeError as err:
            death = loader_worker_death(err)
            if death is None:
                raise
            raise death from err
        finally:
            # Only multi-process iterators have workers. Not left to garbage collection:
            # the exception on its way out references the iterator (module docstring).
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
