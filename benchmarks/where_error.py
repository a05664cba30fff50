"""Where a checkpoint's error on real faces is (issue 14): the angular error by distance
to the facial mask's border, on the synthetic test split, on the real-scan set, and on
the same scan renders with the scan's texture replaced by one flat colour.

    python benchmarks/where_error.py --checkpoint runs/quickstart/best.pt \
        [--synthetic data/synth_quickstart] [--scans datasets/scans]

The real-scan set is rendered as ``make demo`` renders it (``crossmodal prepare scans``,
40 renders a scan, seed 0, at the checkpoint's image size) into a temporary folder, and
again from a copy of the scans whose every ``map_Kd`` texture is one colour (the median
of the texture's lit pixels): same poses, lights, crops and masks, no skin texture and
no shading baked into it. If the flat copy scores as the textured one does, the gap to
synthetic faces is not in the skin's appearance but in the geometry.

Bands are city-block distances to the nearest pixel outside the mask: 1 is the mask's
outermost ring. Each band's figure pools the band's pixels over all images of the set.
Beside the error, each set's **ground-truth roughness** per band: the angle between the
ground-truth normal and the ground truth smoothed by a Gaussian of 1 px (over the rendered
surface), the part of the truth that varies at the scale of a pixel and that no smooth
prediction follows. Prints the table and writes it as JSON (and markdown beside it) to
``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from crossmodal import io
from crossmodal.checkpoint import load_checkpoint
from crossmodal.cli import main as cli
from crossmodal.errors import CrossmodalError
from crossmodal.fileutil import check_output
from crossmodal.evaluate import paired_split
from crossmodal.inference import NormalPredictor, trained_image_size
from crossmodal.metrics import angular_error

log = logging.getLogger("where_error")

SCANS = Path(__file__).resolve().parents[1] / "datasets" / "scans"
#: Renders per real scan (as make demo).
REAL_RENDERS = 40
#: (label, first distance, last distance) of each band, in pixels from the border.
BANDS = (("1 px (border)", 1, 1), ("2 px", 2, 2), ("3-4 px", 3, 4), ("5-8 px", 5, 8),
         ("9+ px (interior)", 9, None))


def border_distance(mask: np.ndarray) -> np.ndarray:
    """City-block distance ``(H, W)`` int of each mask pixel to the nearest pixel outside
    it (1 on the outermost ring; 0 outside). The image edge counts as outside."""
    padded = np.pad(mask.astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L1, 3)[1:-1, 1:-1]
    return np.rint(distance).astype(np.int64)


def roughness(normals: np.ndarray) -> np.ndarray:
    """Degrees ``(H, W)`` between ``(3, H, W)`` unit normals (zero off the surface) and
    their Gaussian smoothing (sigma 1 px) over the surface pixels."""
    surface = (np.abs(normals).sum(0) > 0).astype(np.float32)
    weight = cv2.GaussianBlur(surface, (0, 0), 1.0)
    smooth = np.stack([cv2.GaussianBlur(c * surface, (0, 0), 1.0) for c in normals])
    smooth /= np.maximum(np.linalg.norm(smooth, axis=0), 1e-12)
    cos = (normals * smooth).sum(0) * (weight > 0)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def band_errors(predictor: NormalPredictor, dataset: Dataset) -> dict:
    """Pooled mean error, ground-truth roughness and pixel share per band of
    :data:`BANDS`, and the set's mean over images (``crossmodal eval``'s "mean")."""
    sums = np.zeros(len(BANDS))
    rough = np.zeros(len(BANDS))
    counts = np.zeros(len(BANDS))
    image_means = []
    for i in range(len(dataset)):
        sample = dataset[i]
        with torch.inference_mode():
            pred = predictor(sample["image"][None])
        err, valid = angular_error(pred, sample["normals"][None], sample["mask"][None])
        err, valid = err[0].numpy(), valid[0].numpy()
        distance = border_distance(sample["mask"].numpy())
        truth_roughness = roughness(sample["normals"].numpy())
        for b, (_, low, high) in enumerate(BANDS):
            sel = valid & (distance >= low) & (distance <= (high or distance.max()))
            sums[b] += err[sel].sum()
            rough[b] += truth_roughness[sel].sum()
            counts[b] += sel.sum()
        image_means.append(err[valid].mean())
    return {"images": len(dataset), "mean": float(np.mean(image_means)),
            "bands": {label: {"mean": float(sums[b] / max(counts[b], 1)),
                              "roughness": float(rough[b] / max(counts[b], 1)),
                              "share": float(counts[b] / counts.sum())}
                      for b, (label, _, _) in enumerate(BANDS)}}


def flat_texture_copy(scans: Path, out: Path) -> Path:
    """A copy of ``scans`` whose every ``map_Kd`` texture is one colour: the median of the
    texture's pixels brighter than near-black (the atlas's unused padding)."""
    shutil.copytree(scans, out)
    for mtl in out.rglob("*.mtl"):
        for line in mtl.read_text().splitlines():
            if line.strip().startswith("map_Kd"):
                texture = mtl.parent / line.split(maxsplit=1)[1].strip()
                image = io.read_image(texture)
                lit = image.reshape(-1, 3)[image.reshape(-1, 3).sum(1) > 0.25]
                flat = np.broadcast_to(np.median(lit, 0), image.shape).copy()
                texture.unlink()
                io.write_image(texture, flat)
    return out


def _prepare(scans: Path, out: Path, size: int) -> Path:
    argv = ["-q", "prepare", "scans", "--raw", str(scans), "--out", str(out), "--renders",
            str(REAL_RENDERS), "--size", str(size), "--split", "test", "--seed", "0"]
    if cli(argv) != 0:
        raise SystemExit(f"`crossmodal {' '.join(argv)}` failed")
    return out


def table(results: dict) -> str:
    """Markdown: a row per band; each set's error, then the ground truth's roughness of
    the two sets with their own normals (the flat-texture set shares the real one's)."""
    sets = results["sets"]
    errors = list(sets)
    rough = [s for s in sets if s != "real scan, flat texture"]
    lines = ["| band | pixels (real) | " + " | ".join(f"error: {s}" for s in errors) + " | "
             + " | ".join(f"GT roughness: {s}" for s in rough) + " |",
             "|:--|--:|" + "--:|" * (len(errors) + len(rough))]
    for label, *_ in BANDS:
        cells = ([f"{100 * sets['real scan']['bands'][label]['share']:.1f}%"]
                 + [f"{sets[s]['bands'][label]['mean']:.2f}" for s in errors]
                 + [f"{sets[s]['bands'][label]['roughness']:.2f}" for s in rough])
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| all (mean over images) | 100% | " + " | ".join(
        f"**{sets[s]['mean']:.2f}**" for s in errors) + " |" + " |" * len(rough))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--synthetic", type=Path, default=Path("data/synth_quickstart"),
                        help="a synth dataset folder whose test split is scored")
    parser.add_argument("--scans", type=Path, default=SCANS, help="the real scans")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "where_error.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    inputs = {"the checkpoint": args.checkpoint, "the synthetic dataset": args.synthetic,
              "the scans": args.scans}
    check_output(args.out, inputs=inputs, what="--out")
    check_output(args.out.with_suffix(".md"), inputs={**inputs, "--out": args.out},
                 what="--out's markdown")
    synthetic = paired_split(args.synthetic, "test")  # fails before anything is rendered
    checkpoint = load_checkpoint(args.checkpoint)
    predictor = NormalPredictor.from_checkpoint(checkpoint)
    size = trained_image_size(checkpoint)
    if size is None:
        raise SystemExit(f"{args.checkpoint} records no training image size; it is not a "
                         f"crossmodal training checkpoint")
    results = {"checkpoint": str(args.checkpoint), "image_size": size, "sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        real = _prepare(args.scans, Path(tmp) / "real_scans", size)
        flat_scans = flat_texture_copy(args.scans, Path(tmp) / "flat_scans")
        flat = _prepare(flat_scans, Path(tmp) / "real_scans_flat", size)
        for name, dataset in (("synthetic", synthetic), ("real scan", paired_split(real, "test")),
                              ("real scan, flat texture", paired_split(flat, "test"))):
            log.info("scoring %s", name)
            results["sets"][name] = band_errors(predictor, dataset)
    text = table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    try:
        main()
    except CrossmodalError as err:
        raise SystemExit(f"where_error.py: {err}") from None
