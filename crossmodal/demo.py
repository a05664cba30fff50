"""The main job (``make demo``): synthetic data -> training -> held-out evaluation -> summary.

On a fresh clone, with nothing but the package:

1. renders the quickstart dataset with ``crossmodal synth`` (cached: a complete folder is
   reused, a partial one completed);
2. trains ``experiments/quickstart.yaml`` with ``crossmodal train`` (a finished run is
   reused, an interrupted one resumed);
3. evaluates ``best.pt`` on the held-out synthetic identities (the test split) with
   ``crossmodal eval``, with a panel of predictions and error maps;
4. predicts the two bundled public-domain photos with ``crossmodal predict`` (real faces:
   the model has only seen synthetic ones) and lays out photo | normals | relit;
5. writes ``runs/quickstart/summary.md``: the metrics table (``crossmodal report``), the
   validation curve, the pictures and the time each stage took.

Every stage is the documented command line, run in this process, so the demo is also a
walk through what a user types.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from . import geometry, io, viz
from .cli import main as cli
from .config import load_config
from .crop import Crop
from .errors import CrossmodalError
from .photos import BUNDLED_PHOTOS

log = logging.getLogger("crossmodal.demo")

EXPERIMENT = Path("experiments/quickstart.yaml")
#: Faces rendered for the quickstart dataset (at the experiment's ``data.image_size``).
COUNT = 4000
#: Real head scans in the repository (datasets/scans/*/SOURCE.md), rendered into the
#: real-scan evaluation set; never trained on.
REAL_SCANS = Path(__file__).resolve().parents[1] / "datasets" / "scans"
#: Renders per real scan (poses within +-45 deg, random lights, seed 0).
REAL_RENDERS = 40


def _run(argv: list[str]) -> None:
    log.info("$ crossmodal %s", " ".join(argv))
    code = cli(argv)
    if code != 0:
        raise CrossmodalError(f"`crossmodal {' '.join(argv)}` failed with status {code}")


def validation_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    """``(steps, validation means)`` from a run directory's ``metrics.jsonl`` (empty
    lists when there is none yet)."""
    steps, means = [], []
    metrics = run_dir / "metrics.jsonl"
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        record = json.loads(line)
        if record.get("event") == "val":
            steps.append(record["step"])
            means.append(record["val/mean"])
    return steps, means


def run(experiment: Path = EXPERIMENT, overrides: tuple[str, ...] = (), *,
        count: int = COUNT, workers: int = 2, real_renders: int = REAL_RENDERS) -> Path:
    """Run the main job; returns the run directory. The synthetic dataset (``count``
    faces at the experiment's image size) goes to the experiment's validation folder,
    which quickstart.yaml also trains on."""
    config = load_config(experiment, overrides)
    data = Path(config.data.root) / config.data.val[0]
    run_dir = Path(config.run_dir)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    _run(["synth", "--out", str(data), "--count", str(count), "--size",
          str(config.data.image_size), "--seed", "0", "--workers", str(workers)])
    timings["synthetic data"] = time.perf_counter() - start

    start = time.perf_counter()
    resume = ["--resume"] if (run_dir / "last.pt").is_file() else []
    _run(["train", str(experiment), *overrides, *resume])
    timings["training"] = time.perf_counter() - start

    start = time.perf_counter()
    _run(["eval", "--checkpoint", str(run_dir / "best.pt"), "--data", str(data),
          "--split", "test", "--out", str(run_dir / "eval.json"),
          "--panel", str(run_dir / "panel.png"), "--panel-count", "6"])
    # Real geometry and texture, never trained on: how much crossing the gap costs.
    real = Path(config.data.root) / "real_scans"
    _run(["prepare", "scans", "--raw", str(REAL_SCANS), "--out", str(real), "--renders",
          str(real_renders), "--size", str(config.data.image_size), "--split", "test",
          "--seed", "0", "--workers", str(workers)])
    _run(["eval", "--checkpoint", str(run_dir / "best.pt"), "--data", str(real),
          "--split", "test", "--out", str(run_dir / "eval_real.json"),
          "--panel", str(run_dir / "panel_real.png"), "--panel-count", "6"])
    _run(["report", str(run_dir), str(run_dir / "eval_real.json"),
          "--out", str(run_dir / "report.md"), "--title",
          "Held-out synthetic identities (test split) and renders of a real scan"])
    timings["evaluation"] = time.perf_counter() - start

    start = time.perf_counter()
    photos = run_dir / "photos"
    _run(["predict", "--checkpoint", str(run_dir / "best.pt"),
          *map(str, BUNDLED_PHOTOS.values()), "--out", str(photos), "--relight",
          "--paste-back", "--faces", "largest"])
    io.write_image(run_dir / "photos.png", photo_panel(photos))
    timings["photos"] = time.perf_counter() - start

    steps, means = validation_curve(run_dir)
    io.write_image(run_dir / "curve.png", viz.plot_curves(
        {"validation mean": (steps, means)}, title=f"{config.name}: validation angular error",
        ylabel="degrees"))
    _write_summary(run_dir, config.name, timings)
    return run_dir


def photo_panel(folder: Path) -> np.ndarray:
    """photo | normals | relit from the left | relit from above, a row per photo, from the
    largest face of each that ``crossmodal predict`` wrote to ``folder``."""
    tiles, labels = [], []
    for record in sorted(folder.glob("*_face0_crop.json")):
        crop_info = json.loads(record.read_text())
        crop = Crop.from_box(*crop_info["crop"]["box_x0_y0_side"], crop_info["crop"]["size"])
        image = crop.warp_image(io.read_photo(crop_info["photo"])[0])
        normals, valid = io.read_normals(str(record).replace("_crop.json", "_normal.exr"))
        # relight_views' lights 1 and 2 come from above and from the left.
        above, left = geometry.relight_views(normals, valid, n=4, albedo=image)[1:3]
        tiles += [image, viz.normals_to_rgb(normals, valid), left, above]
        labels += [Path(crop_info["photo"]).stem, "normals", "light from the left",
                   "light from above"]
    return viz.panel(tiles, labels, ncols=4)


def _write_summary(run_dir: Path, name: str, timings: dict[str, float]) -> None:
    result = json.loads((run_dir / "eval.json").read_text())
    real = json.loads((run_dir / "eval_real.json").read_text())
    lines = [
        f"# {name}: summary", "",
        "Trained on synthetic faces (`crossmodal synth`), evaluated on held-out identities.",
        "", (run_dir / "report.md").read_text().strip(), "",
        "![predictions: input | prediction | ground truth | error (0-45 deg)](panel.png)", "",
        "Renders of a real face scan (datasets/scans), never trained on:", "",
        "![real scan: input | prediction | ground truth | error (0-45 deg)](panel_real.png)",
        "",
        "![validation curve](curve.png)", "",
        "Real photos (public domain), predicted by the same model; it was trained on "
        "synthetic faces only:", "",
        "![photo | normals | relit from the left and from above](photos.png)", "",
        "| stage (this invocation; finished stages are reused) | minutes |", "|---|---|",
        *(f"| {stage} | {seconds / 60:.1f} |" for stage, seconds in timings.items()), "",
        f"Held-out mean angular error: **{result['mean']:.2f}°** "
        f"(median {result['median']:.2f}°, {result['below']['30']:.1f}% of pixels under 30°); "
        f"on the real scan's renders: **{real['mean']:.2f}°** (median {real['median']:.2f}°).",
    ]
    (run_dir / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crossmodal.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", type=Path, default=EXPERIMENT)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides for the training, e.g. train.max_steps=50")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run_dir = run(args.experiment, tuple(args.overrides))
    except CrossmodalError as exc:
        log.error("%s", exc)
        return 2
    log.info("summary: %s", run_dir / "summary.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
