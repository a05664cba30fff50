"""Write a synthetic dataset in the on-disk format (docs/design.md §3), in parallel and resumably.

Workers render (:func:`crossmodal.synth.sampler.render_sample`); the main process writes,
in plan order, so the folder is byte-identical for a seed whatever the worker count. A
worker's exception ends the run at once, naming the sample; a worker that dies without one
(killed, out of memory) ends it with an error, instead of leaving the pool waiting for its
samples for ever.
Re-running on a partial folder renders only what is missing or damaged (files that do not
decode are rendered again, temporaries of interrupted writes are removed); the generation
options are recorded in ``synth.json`` and a re-run with other options, or into a folder
holding a dataset that synth did not write, is refused before rendering rather than mixing
two datasets in one folder (a folder without a finished sample starts afresh instead).
``workers`` defaults to the cores available and is capped there and at the samples left:
more processes would only wait.
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from .. import __version__, io, viz
from ..data.format import INFO_FILE, SAMPLES_FILE, DatasetInfo, DatasetWriter
from ..errors import CrossmodalError
from ..fileutil import atomic_write, check_output, read_text
from ..provenance import settings_changes
from .sampler import PlannedSample, SynthConfig, SynthSample, plan_dataset, render_sample

__all__ = ["contact_sheet", "generate"]

log = logging.getLogger(__name__)

OPTIONS_FILE = "synth.json"
PREVIEW_FILE = "preview.png"


#: Jobs handed to the rendering pool ahead of the one written next, per worker: enough to
#: keep every worker busy, few enough that the samples waiting to be written in plan order
#: stay a few megabytes.
JOBS_AHEAD = 2

Job = tuple[PlannedSample, int, SynthConfig]


def _render(job: Job) -> SynthSample:
    planned, seed, config = job
    try:
        return render_sample(planned, seed, config)
    except Exception as err:
        err.add_note(f"while rendering sample {planned.id} (seed {seed})")
        raise


def _worker_setup() -> None:
    """Rendering's matrix products are small: BLAS threads only spin, and with several
    workers they fight over the cores (measured: 2 workers were no faster than 1).
    Ctrl-C is the main process's to handle (it stops the pool); in a worker it would only
    print a traceback."""
    threadpool_limits(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _render_in_workers(jobs: Iterable[Job], workers: int) -> Iterator[SynthSample]:
    """The samples of ``jobs`` in their order, rendered by ``workers`` processes, at most
    :data:`JOBS_AHEAD` x ``workers`` jobs ahead of the one returned.

    Raises:
        concurrent.futures.process.BrokenProcessPool: a worker died without an exception.
    """
    jobs = iter(jobs)
    # fork: workers inherit the loaded face model instead of re-reading it. Unlike
    # multiprocessing.Pool, the executor notices a worker that died: its jobs fail.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                             initializer=_worker_setup) as pool:
        try:
            pending = deque(pool.submit(_render, job)
                            for job in itertools.islice(jobs, JOBS_AHEAD * workers))
            while pending:
                sample = pending.popleft().result()
                pending.extend(pool.submit(_render, job) for job in itertools.islice(jobs, 1))
                yield sample
        finally:
            # On an error or Ctrl-C, wait only for the jobs already running.
            pool.shutdown(cancel_futures=True)


def _options(count: int, seed: int, config: SynthConfig) -> dict:
    return {"count": count, "seed": seed, "config": json.loads(json.dumps(asdict(config)))}


#: The command-line option behind each generation setting, for messages.
_OPTION_NAMES = {"count": "--count", "seed": "--seed", "config.size": "--size",
                 "config.samples_per_subject": "--per-subject",
                 "config.kind_weights": "--kinds", "config.val_fraction": "--val",
                 "config.test_fraction": "--test"}


def _finished_rows(out: Path) -> int:
    path = out / SAMPLES_FILE
    if not path.is_file():
        return 0
    lines = [line for line in read_text(path, "sample list").splitlines() if line.strip()]
    return max(0, len(lines) - 1)  # less the header


def _check_folder(out: Path, options: dict) -> None:
    """Refuse, before anything is written, an ``out`` holding another dataset: one synth
    did not write (synth writes ``synth.json`` before ``dataset.json``), or one generated
    with other ``options`` that has finished samples. One without any (stopped before its
    first sample was saved) is started again with the new ``options``, so a run begun with
    a wrong option and stopped at once does not block the corrected one."""
    path = out / OPTIONS_FILE
    if not path.exists():
        if (out / INFO_FILE).exists():
            raise CrossmodalError(f"--out {out} holds a dataset not written by synth "
                                  f"({INFO_FILE} without {OPTIONS_FILE}); choose a new --out")
        return
    try:
        old = json.loads(read_text(path, "synth options"))
    except json.JSONDecodeError as err:
        raise CrossmodalError(f"{path} is not valid JSON ({err.msg}, line {err.lineno}); "
                              f"delete the folder {out} or choose a new --out") from None
    if old == options:
        return
    found = (", ".join(settings_changes(old, options, _OPTION_NAMES))
             if isinstance(old, dict) else "not synth options")
    if _finished_rows(out):
        raise CrossmodalError(
            f"{out} was generated with other options ({path}: {found}); re-run with the "
            f"same options to complete it, delete the folder, or choose a new --out")
    log.info("%s: no sample was finished with its earlier options (%s); starting afresh",
             out, found)
    for name in (OPTIONS_FILE, INFO_FILE, SAMPLES_FILE):
        (out / name).unlink(missing_ok=True)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _pool_size(workers: int | None, jobs: int) -> int:
    """Rendering processes for ``jobs`` samples: ``workers`` (default: the cores this
    process may run on) capped at those cores and at ``jobs``, with a note when capped."""
    cores = available_cores()
    useful = max(1, min(cores, jobs))
    if workers is None:
        return useful
    if workers > useful and jobs:
        log.info("--workers %d capped to %d (%d sample%s to render, %d cores available)",
                 workers, useful, jobs, "" if jobs == 1 else "s", cores)
    return min(workers, useful)


def generate(out: str | Path, count: int, *, seed: int = 0, config: SynthConfig | None = None,
             workers: int | None = None, preview: bool = False,
             progress: bool = True) -> Path:
    """Render ``count`` faces into the dataset folder ``out``; returns ``out``.

    Args:
        seed: everything random derives from it (and the sample index).
        workers: rendering processes (1 renders in this process); default: the cores
            available. Capped at those and at the samples left to render.
        preview: also write ``preview.png``, a contact sheet of the first dozen samples.
    """
    out = Path(out)
    config = config or SynthConfig()
    if count < 1:
        raise CrossmodalError(f"--count must be at least 1, got {count}")
    if seed < 0:  # numpy's SeedSequence takes any non-negative integer
        raise CrossmodalError(f"--seed must be a non-negative integer, got {seed}")
    if workers is not None and workers < 1:
        raise CrossmodalError(f"--workers must be at least 1, got {workers}")
    check_output(out, inputs={}, what="--out", kind="folder")
    options = _options(count, seed, config)
    _check_folder(out, options)
    if not (out / OPTIONS_FILE).exists():
        atomic_write(out / OPTIONS_FILE,
                     lambda tmp: tmp.write_text(json.dumps(options, indent=2) + "\n"))
    info = DatasetInfo(
        name=out.name, source="synthetic faces rendered from ICT-FaceKit Light",
        license="MIT (face model: ICT-FaceKit, USC ICT; see crossmodal/assets/ict_face_light)",
        image_size=config.size, crop=f"landmarks-{config.crop_scale:g}",
        created_by=f"crossmodal {__version__} synth --count {count} --seed {seed}")
    plans = plan_dataset(count, config)
    with DatasetWriter(out, info) as writer:
        done = writer.existing_ids()
        todo = [p for p in plans if p.id not in done]
        if done:
            log.info("%s: %d of %d samples present, rendering %d", out, len(done), count,
                     len(todo))
        jobs = [(p, seed, config) for p in todo]
        bar = tqdm(total=len(jobs), desc="synth", unit="face", disable=not progress)
        workers = _pool_size(workers, len(jobs))
        if workers > 1:
            try:
                for sample in _render_in_workers(jobs, workers):
                    _write(writer, sample)
                    bar.update()
            except BrokenProcessPool:
                raise CrossmodalError(
                    f"a rendering worker process died without an error (killed, or out of "
                    f"memory); the samples written to {out} so far are kept: re-run the same "
                    f"command to complete it (with fewer --workers if memory ran out)") from None
        else:
            with threadpool_limits(1):
                for job in jobs:
                    _write(writer, _render(job))
                    bar.update()
        bar.close()
    if preview:
        samples = [render_sample(p, seed, config) for p in plans[:12]]
        io.write_image(out / PREVIEW_FILE, contact_sheet(samples))
    return out


def _write(writer: DatasetWriter, sample: SynthSample) -> None:
    p = sample.planned
    writer.add(p.id, p.subject, p.split,
               image=sample.image if p.kind in ("paired", "image") else None,
               normals=sample.normals if p.kind in ("paired", "normal") else None,
               mask=sample.mask)


def contact_sheet(samples: list[SynthSample], per_row: int = 2) -> np.ndarray:
    """Image | normals | mask for each sample, ``per_row`` samples a row; labels give the
    id, split and data type."""
    tiles, labels = [], []
    for s in samples:
        p = s.planned
        tiles += [s.image, viz.normals_to_rgb(s.normals),
                  s.mask.astype(np.float32)]
        labels += [f"{p.id} {p.split}", f"normals ({p.kind})", "mask"]
    return viz.panel(tiles, labels, ncols=3 * per_row)
