"""Work spread over processes, in order, without hangs: what ``crossmodal synth`` and the
``crossmodal prepare`` recipes share.

:func:`ordered_map` runs a function over jobs in a process pool and yields the results in
job order, a few jobs ahead, so the caller writes them as they come (deterministic output
whatever the worker count). A worker's exception ends the run at once; a worker that dies
without one (killed, out of memory) raises :class:`WorkerDied` instead of leaving the pool
waiting for its jobs for ever. :func:`pool_size` turns a ``--workers`` option into a
process count: the cores available by default, capped there and at the jobs, with a note.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from threadpoolctl import threadpool_limits

from .errors import CrossmodalError

__all__ = ["JOBS_AHEAD", "WorkerDied", "available_cores", "check_workers", "ordered_map",
           "pool_size"]

log = logging.getLogger(__name__)

#: Jobs handed to the pool ahead of the one returned next, per worker: enough to keep every
#: worker busy, few enough that the results waiting to be returned in order stay small.
JOBS_AHEAD = 2

Job = TypeVar("Job")
Result = TypeVar("Result")


class WorkerDied(CrossmodalError):
    """A worker process ended without an exception (killed, or out of memory)."""


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_workers(workers: int | None) -> None:
    """Refuse a ``--workers`` below 1 (None: the default), before any work."""
    if workers is not None and workers < 1:
        raise CrossmodalError(f"--workers must be at least 1, got {workers}")


def pool_size(workers: int | None, jobs: int, what: str = "job") -> int:
    """Processes for ``jobs`` jobs: ``workers`` (default: the cores available; checked
    by :func:`check_workers`) capped at those cores and at ``jobs``, with a logged note
    when capped; at least 1."""
    check_workers(workers)
    cores = available_cores()
    useful = max(1, min(cores, jobs))
    if workers is None:
        return useful
    if workers > useful and jobs:
        log.info("--workers %d capped to %d (%d %s%s left, %d cores available)", workers,
                 useful, jobs, what, "" if jobs == 1 else "s", cores)
    return min(workers, useful)


def _worker_setup() -> None:
    """Each job's matrix products are small: BLAS threads only spin, and with several
    workers they fight over the cores (measured on synth: 2 workers were no faster than 1).
    Ctrl-C is the main process's to handle (it stops the pool); in a worker it would only
    print a traceback."""
    threadpool_limits(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def ordered_map(fn: Callable[[Job], Result], jobs: Iterable[Job],
                workers: int) -> Iterator[Result]:
    """``fn(job)`` for each of ``jobs``, in their order; with ``workers`` > 1 computed by
    that many forked processes, at most :data:`JOBS_AHEAD` x ``workers`` jobs ahead of the
    one returned (``fn`` and the jobs must pickle; forked workers inherit what the parent
    loaded). With 1 worker, in this process, BLAS limited to one thread the same way.

    Raises:
        WorkerDied: a worker process ended without an exception.
        Exception: whatever ``fn`` raised, at once (the pool's other jobs are cancelled).
    """
    jobs = iter(jobs)
    if workers <= 1:
        with threadpool_limits(1):
            yield from map(fn, jobs)
        return
    # Unlike multiprocessing.Pool, the executor notices a worker that died: its jobs fail.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                             initializer=_worker_setup) as pool:
        try:
            pending = deque(pool.submit(fn, job)
                            for job in itertools.islice(jobs, JOBS_AHEAD * workers))
            while pending:
                result = pending.popleft().result()
                pending.extend(pool.submit(fn, job) for job in itertools.islice(jobs, 1))
                yield result
        except BrokenProcessPool:
            raise WorkerDied("a worker process died without an error (killed, or out of "
                             "memory)") from None
        finally:
            # On an error or Ctrl-C, wait only for the jobs already running.
            pool.shutdown(cancel_futures=True)
