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

import json
import logging
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import __version__, io, viz
from ..data.format import DatasetInfo, DatasetWriter, claim_folder
from ..errors import CrossmodalError
from ..fileutil import check_output
from ..parallel import WorkerDied, check_workers, ordered_map, pool_size
from .sampler import (LEVERS_OFF, PlannedSample, SynthConfig, SynthSample, plan_dataset,
                      render_sample)

__all__ = ["CONFIG_OPTIONS", "contact_sheet", "generate"]

log = logging.getLogger(__name__)

OPTIONS_FILE = "synth.json"
PREVIEW_FILE = "preview.png"


Job = tuple[PlannedSample, int, SynthConfig]


def _render(job: Job) -> SynthSample:
    planned, seed, config = job
    try:
        return render_sample(planned, seed, config)
    except Exception as err:
        err.add_note(f"while rendering sample {planned.id} (seed {seed})")
        raise


def _options(count: int, seed: int, config: SynthConfig) -> dict:
    return {"count": count, "seed": seed, "config": json.loads(json.dumps(asdict(config)))}


#: The SynthConfig fields that ``crossmodal synth`` sets with an option of their own; the
#: others are set with ``--set KEY=VALUE``.
CONFIG_OPTIONS = {"size": "--size", "samples_per_subject": "--per-subject",
                  "kind_weights": "--kinds", "val_fraction": "--val", "test_fraction": "--test"}
#: The command-line option behind each generation setting, for messages.
_OPTION_NAMES = {"count": "--count", "seed": "--seed",
                 **{f"config.{f.name}": CONFIG_OPTIONS.get(f.name, f"--set {f.name}")
                    for f in fields(SynthConfig)}}


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
    check_workers(workers)
    check_output(out, inputs={}, what="--out", kind="folder")
    claim_folder(out, _options(count, seed, config), record_file=OPTIONS_FILE,
                 producer="synth", names=_OPTION_NAMES,
                 introduced={"config": LEVERS_OFF})
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
        try:
            for sample in ordered_map(_render, jobs, pool_size(workers, len(jobs), "sample")):
                _write(writer, sample)
                bar.update()
        except WorkerDied:
            raise CrossmodalError(
                f"a rendering worker process died without an error (killed, or out of "
                f"memory); the samples written to {out} so far are kept: re-run the same "
                f"command to complete it (with fewer --workers if memory ran out)") from None
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
