"""Evaluation: a model's angular error on a dataset split, and ablation tables of results.

:func:`score` runs the one inference path (:class:`~crossmodal.inference.NormalPredictor`)
over batches of paired samples and accumulates :class:`~crossmodal.metrics.AngularErrorMeter`
against the ground truth at the dataset's own resolution (docs/design.md §6); the trainer's
validation and :func:`evaluate` both use it, so they measure the same thing.
:func:`evaluate` does it for a split of a dataset folder; :func:`evaluate_checkpoint` for a
checkpoint file, adding what the result came from. :func:`metrics_json` writes a result as
the ``crossmodal eval`` JSON::

    {"n_images": int, "n_pixels": int, "mean": float, "std": float, "median": float,
     "pixel_mean": float, "below": {"20": pct, "25": pct, "30": pct},
     "dataset": str, "split": str, "checkpoint": str,          # the §6 keys, then extras:
     "experiment": str | null,   # the checkpoint config's "name"
     "variant": str,             # the model variant (model.variant)
     "image_size": int,          # the dataset's resolution, where it was scored
     "model_image_size": int | null,  # where the network ran (null: at image_size)
     "n_excluded_pred": int,     # evaluated pixels whose prediction was NaN/inf/zero
     "n_empty_images": int}      # images without a valid pixel (not in n_images)

An evaluation in which no pixel could be scored (every mask empty, or every prediction
NaN, inf or zero) is an error saying which, not a result. :func:`metrics_json` still writes
any NaN it meets as ``null``, so the file is standard JSON that every parser reads.

:func:`load_result` and :func:`report_table` turn such files into a markdown table laid
out like the paper's ablation table (Table 7 / Fig. 7): one row per model.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate
from tqdm import tqdm

from . import viz
from .checkpoint import load_checkpoint
from .data import FaceNormalsDataset
from .data.loader import SafeDataLoader
from .errors import CrossmodalError
from .inference import NormalPredictor
from .metrics import AngularErrorMeter, angular_error

__all__ = ["EVAL_FILE", "JSON_KEYS", "ERROR_VMAX", "draw_panel", "evaluate",
           "THRESHOLD_KEYS", "evaluate_checkpoint", "load_result", "load_results",
           "metrics_json", "paired_split", "report_table", "result_file", "score"]

log = logging.getLogger(__name__)

#: The keys docs/design.md §6 fixes for the ``crossmodal eval`` JSON, in its order.
JSON_KEYS = ("n_images", "n_pixels", "mean", "std", "median", "pixel_mean", "below",
             "dataset", "split", "checkpoint")
THRESHOLD_KEYS = ("20", "25", "30")
#: Name of the eval JSON inside a run directory (what ``crossmodal report RUN`` reads).
EVAL_FILE = "eval.json"
#: Error maps in panels saturate at this many degrees.
ERROR_VMAX = 45.0

PathLike = str | os.PathLike


def paired_split(dataset_root: PathLike, split: str) -> FaceNormalsDataset:
    """The paired rows of ``split`` of a dataset folder; an empty split is an error."""
    dataset = FaceNormalsDataset(dataset_root, split, kinds=("paired",))
    if len(dataset) == 0:
        raise CrossmodalError(f"no paired samples in split {split!r} of {dataset_root}; "
                              f"evaluate another --split or check samples.csv")
    return dataset


def score(predictor: NormalPredictor, batches: Iterable[dict[str, Any]],
          meter: AngularErrorMeter) -> AngularErrorMeter:
    """Add the angular errors of ``predictor`` on ``batches`` to ``meter``.

    Each batch is a collated dict with ``"image"`` ``(B, 3, H, W)``, ``"normals"`` ``(B, 3,
    H, W)`` and ``"mask"`` ``(B, H, W)``; predictions come back at the batch's own ``H x W``
    and are compared with its ground truth as it is (never resized). Returns ``meter``.
    """
    for batch in batches:
        pred = predictor(batch["image"])
        meter.update(pred, batch["normals"].to(pred.device, non_blocking=True),
                     batch["mask"].to(pred.device, non_blocking=True))
    return meter


def draw_panel(predictor: NormalPredictor, dataset: Dataset, count: int) -> np.ndarray | None:
    """A picture of the first ``count`` samples of ``dataset`` (paired items with ``"id"``,
    ``"image"``, ``"normals"``, ``"mask"``), one row each: input | prediction | ground
    truth | error map (0 black to :data:`ERROR_VMAX` degrees and above yellow), labelled
    with the sample id and its mean error. RGB uint8 ``(H', W', 3)``; None when empty."""
    count = min(count, len(dataset))
    if count < 1:
        return None
    batch = default_collate([dataset[i] for i in range(count)])
    pred = predictor(batch["image"]).cpu()
    errors, valid = angular_error(pred, batch["normals"], batch["mask"])
    tiles, labels = [], []
    for i in range(count):
        mask = batch["mask"][i].numpy()
        gt = batch["normals"][i].permute(1, 2, 0).numpy()
        valid_i = valid[i].numpy()
        mean = float(errors[i][valid[i]].mean()) if valid_i.any() else float("nan")
        tiles += [
            viz.to_uint8(batch["image"][i].permute(1, 2, 0).numpy()),
            # Drawn over the facial mask only, like the ground truth; NaN (a broken
            # model) as black rather than an undefined cast.
            viz.normals_to_rgb(np.nan_to_num(pred[i].permute(1, 2, 0).numpy()), valid=mask),
            viz.normals_to_rgb(gt, valid=mask & np.any(gt != 0, axis=-1)),
            viz.error_to_rgb(errors[i].numpy(), valid_i, vmax=ERROR_VMAX),
        ]
        labels += [str(batch["id"][i]), "prediction", "ground truth", f"error {mean:.1f} deg"]
    return viz.panel(tiles, labels, ncols=4)


def evaluate(
    predictor: NormalPredictor,
    dataset_root: PathLike,
    *,
    split: str = "test",
    num_workers: int = 0,
    progress: bool = True,
    panel_count: int = 0,
) -> tuple[dict, np.ndarray | None]:
    """Angular error of ``predictor`` on the paired rows of a split of a dataset folder.

    The crops are read in the dataset's order at the dataset's resolution; the predictor
    runs the network at its own resolution and returns normals at the crops' size, which
    are compared with the ground truth over each sample's facial mask.

    Args:
        predictor: the inference path, e.g. ``NormalPredictor(model, image_size=256)`` or
            :meth:`NormalPredictor.from_checkpoint`; its ``batch_size`` sets the batches.
        dataset_root: a dataset folder (docs/design.md §3).
        split: ``"train"``, ``"val"`` or ``"test"``.
        num_workers: DataLoader processes reading the files.
        progress: show a progress bar over batches (stderr).
        panel_count: if positive, also draw :func:`draw_panel` of the first samples.

    Returns:
        ``(summary, panel)``: the :meth:`AngularErrorMeter.summary` dict (the §6 metrics
        plus ``n_excluded_pred`` and ``n_empty_images``) with ``image_size``, the
        dataset's resolution, added; and the panel or None.

    Raises:
        CrossmodalError: an unreadable dataset, an empty split, a size the model cannot
            take, ``num_workers`` < 0, or no pixel scored (every mask empty or every
            prediction NaN, inf or zero), saying which.
    """
    return _evaluate(predictor, paired_split(dataset_root, split), num_workers=num_workers,
                     progress=progress, panel_count=panel_count)


def _evaluate(predictor: NormalPredictor, dataset: FaceNormalsDataset, *, num_workers: int,
              progress: bool, panel_count: int,
              model_name: str = "the model") -> tuple[dict, np.ndarray | None]:
    """:func:`evaluate` on an opened split; ``model_name`` names the model in errors."""
    if num_workers < 0:
        raise CrossmodalError(f"the number of workers must be at least 0, got {num_workers}")
    split = dataset.split
    device = predictor.device
    if predictor.image_size not in (None, dataset.info.image_size):
        log.info("%s: the network runs at %d px, the resolution it was trained at; the %d px "
                 "crops are resized for it and its predictions resized back and scored at "
                 "%d px", dataset.root, predictor.image_size, dataset.info.image_size,
                 dataset.info.image_size)
    loader = SafeDataLoader(dataset, batch_size=predictor.batch_size, shuffle=False,
                            num_workers=num_workers, pin_memory=device.type == "cuda")
    batches = tqdm(loader, desc=f"eval {split}", unit="batch", disable=not progress)
    summary = score(predictor, batches, AngularErrorMeter(device=device)).summary()
    summary["image_size"] = dataset.info.image_size
    excluded, empty = summary["n_excluded_pred"], summary["n_empty_images"]
    # Metrics over no pixel at all are no result: an error saying why, not null metrics.
    if summary["n_pixels"] == 0 and excluded:
        raise CrossmodalError(
            f"{model_name} on {dataset.root}/{split}: no pixel could be scored: all "
            f"{excluded} face pixels of the {empty} images had a NaN, inf or zero prediction; "
            f"the model is broken (diverged?): evaluate a checkpoint from before")
    if summary["n_pixels"] == 0:
        raise CrossmodalError(
            f"{dataset.root}/{split}: no pixel could be scored: all {empty} images have an "
            f"empty mask or no valid ground-truth normal inside it; check the masks and "
            f"normals that {dataset.root}/samples.csv lists")
    if excluded or empty:
        log.warning("%s/%s: %d evaluated pixels had an unusable (NaN, inf or zero) "
                    "prediction and were left out; %d images had no valid pixel",
                    dataset.root, split, excluded, empty)
    panel = draw_panel(predictor, dataset, panel_count) if panel_count > 0 else None
    return summary, panel


def evaluate_checkpoint(
    checkpoint_path: PathLike,
    dataset_root: PathLike,
    *,
    split: str = "test",
    batch_size: int = 8,
    device: str | torch.device = "auto",
    image_size: int | None = None,
    num_workers: int = 0,
    progress: bool = True,
    panel_count: int = 0,
) -> tuple[dict, np.ndarray | None]:
    """:func:`evaluate` the model rebuilt from a checkpoint (docs/design.md §8).

    The network runs at the resolution the checkpoint was trained at (its
    ``data.image_size``) unless ``image_size`` overrides it; the other arguments are
    :func:`evaluate`'s and :class:`~crossmodal.inference.NormalPredictor`'s. The returned
    summary is the eval JSON content (see the module docstring): the metrics, then the §6
    keys ``dataset`` (the ``dataset.json`` name, or the folder name if empty), ``split`` and
    ``checkpoint`` (the path as given), then the extras.

    Raises:
        CrossmodalError: as :func:`evaluate`, and a missing or unusable checkpoint, a
            device that does not exist, ``batch_size`` < 1.
    """
    # Checked before the checkpoint is read: a wrong folder fails fast.
    dataset = paired_split(dataset_root, split)
    checkpoint = load_checkpoint(checkpoint_path)
    predictor = NormalPredictor.from_checkpoint(checkpoint, device=device,
                                                image_size=image_size, batch_size=batch_size)
    summary, panel = _evaluate(predictor, dataset, num_workers=num_workers, progress=progress,
                               panel_count=panel_count, model_name=str(checkpoint_path))
    metrics = {k: summary[k] for k in JSON_KEYS if k in summary}
    metrics.update(
        dataset=dataset.info.name or Path(dataset_root).resolve().name,
        split=split,
        checkpoint=str(checkpoint_path),
        experiment=checkpoint["config"].get("name"),
        variant=predictor.model.config.variant,
        image_size=summary["image_size"],
        model_image_size=predictor.image_size,
        n_excluded_pred=summary["n_excluded_pred"],
        n_empty_images=summary["n_empty_images"],
    )
    return metrics, panel


def _finite_or_none(value: Any) -> Any:
    """``value`` with every NaN/inf float replaced by None, recursively."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def metrics_json(metrics: dict) -> str:
    """The eval JSON text (indented, trailing newline); NaN/inf become ``null``."""
    return json.dumps(_finite_or_none(metrics), indent=2, allow_nan=False) + "\n"


def result_file(path: PathLike) -> Path:
    """The eval JSON that a ``crossmodal report`` argument names: the file itself, or
    ``RUN/eval.json`` for a run directory ``RUN``."""
    path = Path(path)
    return path / EVAL_FILE if path.is_dir() else path


def load_results(paths: Sequence[PathLike]) -> list[tuple[str, dict]]:
    """:func:`load_result` of each path, in order. Results sharing a label keep their rows
    apart: by what they were scored on, ``"LABEL on DATASET/SPLIT"``, when that differs
    (one model on two test sets), else by their path, ``"LABEL [PATH]"``."""
    rows = [load_result(path) for path in paths]
    by_label: dict[str, list[dict]] = {}
    for label, result in rows:
        by_label.setdefault(label, []).append(result)

    def scored_on(result: dict) -> str:
        return f"{result['dataset']}/{result['split']}"

    labels = []
    for (label, result), path in zip(rows, paths, strict=True):
        group = by_label[label]
        if len(group) == 1:
            labels.append(label)
        elif len(set(map(scored_on, group))) == len(group):
            labels.append(f"{label} on {scored_on(result)}")
        else:
            labels.append(f"{label} [{path}]")
    return [(new, result) for new, (_, result) in zip(labels, rows, strict=True)]


def load_result(path: PathLike) -> tuple[str, dict]:
    """Read an eval JSON, or ``RUN/eval.json`` for a run directory ``RUN``.

    Returns:
        ``(label, result)``: the row label -- "EXPERIMENT (VARIANT)" when the file records
        them, else the run directory's name or the file's stem in place of the experiment
        -- and the parsed JSON.

    Raises:
        CrossmodalError: naming the file and the fix, when it is missing, not JSON or
            lacks §6 keys.
    """
    path, file = Path(path), result_file(path)
    if file != path:
        fallback = path.name
        if not file.is_file():
            raise CrossmodalError(
                f"run {path} has no {EVAL_FILE}; run crossmodal eval --checkpoint "
                f"{path / 'best.pt'} --data DIR --out {file}")
    else:
        fallback = path.stem
        if not file.is_file():
            raise CrossmodalError(f"{path} not found; pass eval JSON files written by "
                                  f"crossmodal eval --out, or run directories holding "
                                  f"{EVAL_FILE}")
    try:
        result = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CrossmodalError(f"{file} is not JSON ({err}); re-run crossmodal eval to "
                              f"rewrite it") from None
    missing = ([k for k in JSON_KEYS if k not in result] if isinstance(result, dict)
               else list(JSON_KEYS))
    if not missing and not isinstance(result["below"], dict):
        missing = ["below"]
    elif not missing:
        missing = [f"below.{t}" for t in THRESHOLD_KEYS if t not in result["below"]]
    if missing:
        raise CrossmodalError(f"{file} is not a crossmodal eval result (missing "
                              f"{', '.join(missing)}); re-run crossmodal eval to rewrite it")
    label = result.get("experiment") or fallback
    if result.get("variant"):
        label = f"{label} ({result['variant']})"
    return label, result


def _number(value: Any) -> float | None:
    """A finite number, or None for null/NaN/anything else (shown as n/a)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def report_table(rows: Sequence[tuple[str, dict]], title: str | None = None) -> str:
    """A markdown ablation table, one row per ``(label, eval result)``, like Table 7.

    Columns: Mean ± std (over images), Median, Pixel mean (over pooled pixels, degrees),
    < 20°, < 25°, < 30° (% of pooled pixels) and the number of images; two decimals. With
    several rows, the best value of each column is bold (the lowest errors, the highest
    percentages; ties all bold). A caption follows: the common dataset and split, or, if
    rows differ in them, a note listing each row's.
    """
    if not rows:
        raise ValueError("report_table needs at least one row")
    # (column name, value getter, format, best is highest)
    columns = [
        ("Mean ± std", lambda r: r["mean"], "{:.2f}", False),
        ("Median", lambda r: r["median"], "{:.2f}", False),
        ("Pixel mean", lambda r: r["pixel_mean"], "{:.2f}", False),
        *((f"< {t}°", lambda r, t=t: r["below"][t], "{:.2f}%", True) for t in THRESHOLD_KEYS),
    ]
    labels = [label.replace("|", "\\|") for label, _ in rows]
    cells: list[list[str]] = [[] for _ in rows]
    for name, get, fmt, highest in columns:
        # Compare the values as printed, so rows that look equal are bold together.
        values = [_number(get(r)) for _, r in rows]
        shown = [None if v is None else round(v, 2) for v in values]
        finite = [v for v in shown if v is not None]
        best = (max if highest else min)(finite) if len(rows) > 1 and finite else None
        for i, (value, (_, result)) in enumerate(zip(values, rows, strict=True)):
            text = "n/a" if value is None else fmt.format(value)
            if name == "Mean ± std" and value is not None:
                std = _number(result["std"])
                text += f" ± {std:.2f}" if std is not None else " ± n/a"
            cells[i].append(f"**{text}**" if best is not None and shown[i] == best else text)
    header = ["Model", *(c[0] for c in columns), "Images"]
    lines = [f"## {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |",
              "|:--" + "|--:" * (len(header) - 1) + "|"]
    for label, row_cells, (_, result) in zip(labels, cells, rows, strict=True):
        lines.append("| " + " | ".join([label, *row_cells, str(result["n_images"])]) + " |")
    lines.append("")
    data = {(str(r["dataset"]), str(r["split"])) for _, r in rows}
    what = ("Angular error in degrees: mean ± std over images of the per-image mean error; "
            "median, pixel mean and % below each threshold over all face pixels")
    if len(data) == 1:
        dataset, split = data.pop()
        lines.append(f"{what}; dataset {dataset}, split {split}."
                     + (" Best per column in bold." if len(rows) > 1 else ""))
    else:
        lines += [f"{what}. Best per column in bold.", "",
                  "Note: the rows were evaluated on different data, so they are not directly "
                  "comparable:", ""]
        lines += [f"- {label}: dataset {r['dataset']}, split {r['split']}"
                  for label, (_, r) in zip(labels, rows, strict=True)]
    return "\n".join(lines) + "\n"
