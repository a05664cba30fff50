"""Accuracy of the geometric core, end to end, on an analytic face relief.

    python benchmarks/geometry_accuracy.py [--out DIR] [--size 256]

Starting from a face-like surface with exact depth and normals
(:func:`crossmodal.shapes.face_relief`), it runs every piece of the geometric core and
measures each against the analytic answer:

1. depth -> normals (a Blender tutorial's Sobel recipe, docs/design.md §10), scored with
   the metrics of docs/design.md §6;
2. normal-map files: EXR in our convention and in Datagen's, 16-bit PNG, read back;
3. normals -> depth (Poisson least squares) and a relief mesh;
4. relighting under four lights.

Prints a table and writes ``panel.png`` (the README's geometry figure), ``summary.json``,
``summary.md``, the normal maps, relit views and ``relief.obj`` to ``--out`` (default
``benchmarks/results/geometry``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from crossmodal import geometry, io, viz
from crossmodal.metrics import AngularErrorMeter, angular_error
from crossmodal.shapes import face_relief

log = logging.getLogger("geometry_accuracy")


def _to_torch(normals: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` -> ``(1, 3, H, W)``."""
    return torch.from_numpy(np.ascontiguousarray(normals)).permute(2, 0, 1)[None]


def _score(pred: np.ndarray, valid: np.ndarray, target: np.ndarray) -> dict:
    meter = AngularErrorMeter()
    meter.update(_to_torch(pred), _to_torch(target), torch.from_numpy(valid)[None])
    return meter.summary()


def run(out: Path, size: int = 256) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    face = face_relief(size)
    steps: dict[str, dict] = {}

    # 1. Depth -> normals, the Blender tutorial's recipe with a normalised 5x5 Sobel.
    from_depth, valid = geometry.depth_to_normals(face.depth, face.mask)
    steps["depth_to_normals"] = _score(from_depth, valid, face.normals)
    errors, err_valid = angular_error(_to_torch(from_depth), _to_torch(face.normals),
                                      torch.from_numpy(valid)[None])

    # 2. Files: ours (float EXR), Datagen's RGB-encoded EXR, 16-bit PNG; all read back.
    files = {
        "normals.exr": {},
        "normals_datagen.exr": {"convention": "datagen", "encoding": "rgb"},
        "normals.png": {},
    }
    for name, kwargs in files.items():
        io.write_normals(out / name, face.normals, mask=face.mask, **kwargs)
        back, back_valid = io.read_normals(out / name)
        steps[f"read_back {name}"] = _score(back, back_valid, face.normals)

    # 3. Normals -> depth -> mesh.
    depth = geometry.integrate_normals(face.normals, face.mask)
    truth = face.depth - face.depth[face.mask].mean()
    residual = depth[face.mask] - truth[face.mask]
    depth_range = float(np.ptp(face.depth[face.mask]))
    steps["integrate_normals"] = {
        "rms_relative": float(np.sqrt(np.mean(residual**2)) / depth_range),
        "max_relative": float(np.abs(residual).max() / depth_range),
    }

    # 4. Relighting; the first view colours the mesh.
    views = geometry.relight_views(face.normals, face.mask, n=4, elevation_deg=45.0,
                                   albedo=0.8, specular=0.15)
    for k, view in enumerate(views):
        io.write_image(out / f"relit_{k}.png", np.clip(view, 0.0, 1.0))
    mesh = geometry.depth_to_mesh(depth, face.mask, normals=face.normals,
                                  colors=np.clip(views[0], 0.0, 1.0))
    geometry.write_mesh(out / "relief.obj", mesh)

    # Near is bright; the white background stays apart from the nearest point (0.9).
    span = max(float(np.nanmax(depth) - np.nanmin(depth)), 1e-9)
    depth_vis = np.where(face.mask, 0.9 - 0.75 * (depth - np.nanmin(depth)) / span, 1.0)
    tiles = [viz.normals_to_rgb(face.normals), viz.normals_to_rgb(from_depth, valid),
             viz.error_to_rgb(errors[0].numpy(), err_valid[0].numpy(), vmax=5.0),
             depth_vis, np.clip(views[0], 0, 1), np.clip(views[2], 0, 1)]
    labels = ["analytic normals", "normals from depth", "error (0-5 deg)",
              "integrated depth", "relit", "relit"]
    io.write_image(out / "panel.png", viz.panel(tiles, labels, ncols=3))

    summary = {"size": size, "seconds": round(time.perf_counter() - t0, 3), "steps": steps}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(_markdown(summary))
    return summary


def _markdown(summary: dict) -> str:
    lines = ["| step | mean (deg) | median (deg) | < 20 deg (%) | note |",
             "|---|---|---|---|---|"]
    for step, m in summary["steps"].items():
        if "mean" in m:
            lines.append(f"| {step} | {m['mean']:.4f} | {m['median']:.4f} | "
                         f"{m['below']['20']:.2f} | {m['n_pixels']} pixels |")
        else:
            lines.append(f"| {step} | | | | RMS {100 * m['rms_relative']:.3f}% / max "
                         f"{100 * m['max_relative']:.3f}% of the depth range |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "geometry")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = run(args.out, args.size)
    log.info("geometry pipeline on a %dpx analytic face relief, %.1f s:\n%s", args.size,
             summary["seconds"], _markdown(summary))
    log.info("wrote %s (panel.png, summary.md, relief.obj, normal maps, relit views)",
             args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
