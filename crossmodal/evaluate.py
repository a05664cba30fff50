"""Evaluation: a model's angular error on a dataset split, and ablation tables of results.

:func:`evaluate` runs the image->normal pass over every paired row of a split and
accumulates :class:`~crossmodal.metrics.AngularErrorMeter` (DESIGN.md §6);
:func:`evaluate_checkpoint` does the same for a checkpoint file and adds what the result
came from. :func:`metrics_json` writes a result as the ``crossmodal eval`` JSON::

    {"n_images": int, "n_pixels": int, "mean": float, "std": float, "median": float,
     "pixel_mean": float, "below": {"20": pct, "25": pct, "30": pct},
     "dataset": str, "split": str, "checkpoint": str,          # the §6 keys, then extras:
     "experiment": str | null,   # the checkpoint config's "name"
     "variant": str,             # the model variant (model.variant)
     "n_excluded_pred": int,     # evaluated pixels whose prediction was NaN/inf/zero
     "n_empty_images": int}      # images without a valid pixel (not in n_images)

A metric with nothing to average (no valid pixel at all) is ``null``, not ``NaN``, so the
file is standard JSON that every parser reads.

:func:`load_result` and :func:`report_table` turn such files into a markdown table laid
out like the paper's ablation table (Table 7 / Fig. 7): one row per model.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import viz
from .checkpoint import build_model, load_checkpoint
from .data import FaceNormalsDataset
from .engine.distributed import resolve_device
from .errors import CrossmodalError
from .metrics import AngularErrorMeter, angular_error

__all__ = ["EVAL_FILE", "JSON_KEYS", "ERROR_VMAX", "evaluate", "evaluate_checkpoint",
           "load_result", "metrics_json", "report_table"]

log = logging.getLogger(__name__)

#: The keys DESIGN.md §6 fixes for the ``crossmodal eval`` JSON, in its order.
JSON_KEYS = ("n_images", "n_pixels", "mean", "std", "median", "pixel_mean", "below",
             "dataset", "split", "checkpoint")
THRESHOLD_KEYS = ("20", "25", "30")
#: Name of the eval JSON inside a run directory (what ``crossmodal report RUN`` reads).
EVAL_FILE = "eval.json"
#: Error maps in panels saturate at this many degrees.
ERROR_VMAX = 45.0
#: The encoder downsamples five times.
SIZE_MULTIPLE = 32

PathLike = str | os.PathLike


def _paired_split(dataset_root: PathLike, split: str) -> FaceNormalsDataset:
    """The paired rows of ``split``; refuses empty splits and sizes the model cannot take."""
    dataset = FaceNormalsDataset(dataset_root, split, kinds=("paired",))
    if len(dataset) == 0:
        raise CrossmodalError(f"no paired samples in split {split!r} of {dataset_root}; "
                              f"evaluate another --split or check samples.csv")
    size = dataset.info.image_size
    if size % SIZE_MULTIPLE:
        raise CrossmodalError(
            f"{dataset_root}: image_size {size} is not a multiple of {SIZE_MULTIPLE}, which "
            f"the model needs (its encoder downsamples 5 times); re-crop the dataset to e.g. "
            f"{max(SIZE_MULTIPLE, round(size / SIZE_MULTIPLE) * SIZE_MULTIPLE)}")
    return dataset


def _panel_rows(batch: dict, pred: torch.Tensor, count: int) -> list[list[np.ndarray]]:
    """Tiles ``[input, prediction, ground truth, error map]`` (each ``(H, W, 3)`` uint8)
    for the first ``count`` samples of a batch; ``pred`` is ``(B, 3, H, W)``."""
    err, valid = angular_error(pred[:count], batch["normals"][:count], batch["mask"][:count])
    rows = []
    for i in range(min(count, pred.shape[0])):
        mask = batch["mask"][i].numpy()
        gt = batch["normals"][i].permute(1, 2, 0).numpy()
        rows.append([
            viz.to_uint8(batch["image"][i].permute(1, 2, 0).numpy()),
            # Drawn over the facial mask only, like the ground truth; NaN (a broken
            # model) as black rather than an undefined cast.
            viz.normals_to_rgb(np.nan_to_num(pred[i].permute(1, 2, 0).numpy()), valid=mask),
            viz.normals_to_rgb(gt, valid=mask & np.any(gt != 0, axis=-1)),
            viz.error_to_rgb(err[i].numpy(), valid[i].numpy(), vmax=ERROR_VMAX),
        ])
    return rows


def evaluate(
    model: nn.Module,
    dataset_root: PathLike,
    *,
    split: str = "test",
    batch_size: int = 8,
    device: str | torch.device = "auto",
    num_workers: int = 0,
    progress: bool = True,
    panel_count: int = 0,
) -> tuple[dict, np.ndarray | None]:
    """Angular error of ``model``'s image->normal predictions on the paired rows of a split.

    Runs ``model(images, "image_to_normal")["normals"]`` (``(B, 3, H, W)`` in, ``(B, 3, H,
    W)`` out) in eval mode, without gradients and with autocast off (half precision is
    too coarse for small angles), in the dataset's order, and compares it with the ground
    truth over each sample's facial mask.

    Args:
        model: a :class:`~crossmodal.models.CrossModalNet` or anything with its
            ``forward(x, route)``; moved to ``device`` in place, its train/eval mode is
            restored afterwards.
        dataset_root: a dataset folder (DESIGN.md §3) with ``image_size`` a multiple of 32.
        split: ``"train"``, ``"val"`` or ``"test"``.
        batch_size: images per forward pass.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda[:N]"``.
        num_workers: DataLoader processes reading the files.
        progress: show a progress bar over batches (stderr).
        panel_count: if positive, also draw a panel of the first ``panel_count`` samples.

    Returns:
        ``(summary, panel)``: the :meth:`AngularErrorMeter.summary` dict (the §6 metrics
        plus ``n_excluded_pred`` and ``n_empty_images``), and ``None`` or an RGB uint8
        ``(H', W', 3)`` image with one row per sample: input | prediction | ground truth |
        error map (0 black to :data:`ERROR_VMAX` degrees and above yellow).

    Raises:
        CrossmodalError: an unreadable dataset, an empty split, an image size the model
            cannot take, a device that does not exist, ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise CrossmodalError(f"batch size must be at least 1, got {batch_size}")
    dev = resolve_device(device, option="--device")
    return _evaluate(model, _paired_split(dataset_root, split), batch_size=batch_size,
                     device=dev, num_workers=num_workers, progress=progress,
                     panel_count=panel_count)


def _evaluate(
    model: nn.Module,
    dataset: FaceNormalsDataset,
    *,
    batch_size: int,
    device: torch.device,
    num_workers: int,
    progress: bool,
    panel_count: int,
) -> tuple[dict, np.ndarray | None]:
    """:func:`evaluate` on an opened dataset and a resolved device."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    meter = AngularErrorMeter(device=device)
    tiles: list[list[np.ndarray]] = []
    was_training = model.training
    model.to(device).eval()
    try:
        with torch.inference_mode(), torch.autocast(device.type, enabled=False):
            for batch in tqdm(loader, desc=f"eval {dataset.split}", unit="batch",
                              disable=not progress):
                images = batch["image"].to(device, non_blocking=True)
                if device.type == "cpu":
                    # oneDNN convolutions run 1.1-1.9x faster in NHWC (DESIGN.md §9).
                    images = images.contiguous(memory_format=torch.channels_last)
                pred = model(images, "image_to_normal")["normals"].float()
                meter.update(pred, batch["normals"].to(device, non_blocking=True),
                             batch["mask"].to(device, non_blocking=True))
                if len(tiles) < panel_count:
                    tiles += _panel_rows(batch, pred.cpu(), panel_count - len(tiles))
    finally:
        model.train(was_training)
    summary = meter.summary()
    if summary["n_excluded_pred"] or summary["n_empty_images"]:
        log.warning("%s/%s: %d evaluated pixels had an unusable (NaN, inf or zero) "
                    "prediction and were left out; %d images had no valid pixel",
                    dataset.root, dataset.split, summary["n_excluded_pred"],
                    summary["n_empty_images"])
    panel = None
    if tiles:
        labels = [label for sample in dataset.samples[:len(tiles)]
                  for label in (sample.id, "prediction", "ground truth",
                                f"error 0-{ERROR_VMAX:g} deg")]
        panel = viz.panel([tile for row in tiles for tile in row], labels, ncols=4)
    return summary, panel


def evaluate_checkpoint(
    checkpoint_path: PathLike,
    dataset_root: PathLike,
    *,
    split: str = "test",
    batch_size: int = 8,
    device: str | torch.device = "auto",
    num_workers: int = 0,
    progress: bool = True,
    panel_count: int = 0,
) -> tuple[dict, np.ndarray | None]:
    """:func:`evaluate` the model rebuilt from a checkpoint (DESIGN.md §8).

    Arguments are :func:`evaluate`'s. The returned summary is the eval JSON content (see
    the module docstring): the metrics, then the §6 keys ``dataset`` (the
    ``dataset.json`` name, or the folder name if empty), ``split`` and ``checkpoint``
    (the path as given), then the extras ``experiment`` (the checkpoint config's
    ``name``, None without one), ``variant``, ``n_excluded_pred`` and
    ``n_empty_images``. The panel is :func:`evaluate`'s.

    Raises:
        CrossmodalError: as :func:`evaluate`, and a missing or unusable checkpoint.
    """
    if batch_size < 1:
        raise CrossmodalError(f"batch size must be at least 1, got {batch_size}")
    dev = resolve_device(device, option="--device")
    # Checked before the checkpoint is read: a wrong folder fails fast.
    dataset = _paired_split(dataset_root, split)
    checkpoint = load_checkpoint(checkpoint_path)
    model = build_model(checkpoint)
    if dev.type == "cpu":
        # The model is ours to change: NHWC weights too, so no conv reorders them per call.
        model = model.to(memory_format=torch.channels_last)
    summary, panel = _evaluate(model, dataset, batch_size=batch_size, device=dev,
                               num_workers=num_workers, progress=progress,
                               panel_count=panel_count)
    metrics = {k: summary[k] for k in JSON_KEYS if k in summary}
    metrics.update(
        dataset=dataset.info.name or Path(dataset_root).resolve().name,
        split=split,
        checkpoint=str(checkpoint_path),
        experiment=checkpoint["config"].get("name"),
        variant=model.config.variant,
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
    path = Path(path)
    if path.is_dir():
        fallback, file = path.name, path / EVAL_FILE
        if not file.is_file():
            raise CrossmodalError(
                f"run {path} has no {EVAL_FILE}; run crossmodal eval --checkpoint "
                f"{path / 'best.pt'} --data DIR --out {file}")
    else:
        fallback, file = path.stem, path
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
