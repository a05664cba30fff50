"""Regenerate the README's figures (writes docs/images/):

    python docs/figures.py                       # the convention sphere
    python docs/figures.py --quickstart LABEL=RUN_DIR ...   # validation curves of runs
    python docs/figures.py --photos RUN_DIR      # a demo run's predictions of the bundled photos

The README's quickstart curve is ``--quickstart "make demo (2,600 steps)=runs/quickstart"
"no_skips=runs/quickstart_no_skips" "no_normal_encoder=runs/quickstart_no_normal_encoder"
"plain_unet=runs/quickstart_plain_unet"`` (the runs of ``benchmarks/quickstart_accuracy.py``).
"""

import argparse
from pathlib import Path

import cv2
import numpy as np

from crossmodal import io, viz
from crossmodal.demo import photo_panel, validation_curve
from crossmodal.normals import encode_rgb
from crossmodal.shapes import orthographic_sphere

OUT = Path(__file__).parent / "images"


def convention_sphere(size: int = 192) -> np.ndarray:
    """A sphere encoded as ``(n + 1) / 2`` in our convention, with its axes drawn, next to
    the same sphere written by OpenCV-convention and Datagen tools."""
    sphere = orthographic_sphere(size)
    ours = viz.normals_to_rgb(sphere.normals)
    c, r = size // 2, int(0.4 * size)
    for (dx, dy), label in (((1, 0), "+x"), ((0, -1), "+y")):
        tip = (c + int(dx * r * 0.8), c + int(dy * r * 0.8))
        cv2.arrowedLine(ours, (c, c), tip, (0, 0, 0), 2, cv2.LINE_AA, tipLength=0.15)
        cv2.putText(ours, label, (tip[0] + 4 * dx - 8 * (dy != 0), tip[1] - 6 + 14 * (dx != 0)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.circle(ours, (c, c), 5, (0, 0, 0), 2, cv2.LINE_AA)
    cv2.putText(ours, "+z", (c + 7, c + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                cv2.LINE_AA)
    white = ~sphere.mask
    tiles = [ours]
    for name in ("opencv", "sfsnet"):
        rgb = viz.to_uint8(encode_rgb(sphere.normals, name))
        rgb[white] = 255
        tiles.append(rgb)
    return viz.panel(tiles, ["ours (opengl): rgb = (n+1)/2", "opencv convention",
                             "sfsnet convention"])


def quickstart_curve(runs: dict[str, Path], target: float = 15.0) -> np.ndarray:
    """Validation mean against step for each labelled run directory, with the issue's
    target as a flat line."""
    series = {label: validation_curve(run) for label, run in runs.items()}
    last = max((steps[-1] for steps, _ in series.values() if steps), default=1)
    series[f"{target:g} deg target"] = ([0, last], [target, target])
    return viz.plot_curves(series, title="quickstart: validation mean angular error",
                           ylabel="degrees", size=(720, 420))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quickstart", nargs="+", metavar="LABEL=RUN_DIR")
    parser.add_argument("--photos", type=Path, metavar="RUN_DIR")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.photos:
        io.write_image(OUT / "quickstart_photos.jpg", photo_panel(args.photos / "photos"))
    elif args.quickstart:
        runs = dict(item.split("=", 1) for item in args.quickstart)
        io.write_image(OUT / "quickstart_curve.png",
                       quickstart_curve({k: Path(v) for k, v in runs.items()}))
    else:
        io.write_image(OUT / "convention_sphere.png", convention_sphere())
