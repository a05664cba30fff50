"""Speed of :func:`crossmodal.render.render` on a face-sized mesh at 256 x 256.

The synthetic dataset renders ~1,000 faces of the packaged ICT-FaceKit Light model
(docs/design.md §9), 48,836 triangles each; this times one render of its neutral face, with
and without cast shadows, and the part of it spent in Embree alone (building the scene from a
new mesh and casting one ray per pixel), which no code of ours can speed up.

Every render gets a freshly rotated copy, as the dataset renders a new mesh each time.
Embree builds its BVH on all the cores this process may use: run under ``taskset -c 0``
for one-core figures.

Usage::

    python benchmarks/render_speed.py [--repeats 50] [--size 256] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import trimesh
from trimesh.ray.ray_pyembree import RayMeshIntersector

from crossmodal.geometry import Light
from crossmodal.render import Camera, render
from crossmodal.synth.face_model import FaceModel

ROOT = Path(__file__).resolve().parents[1]
LIGHTS = (Light((0.4, 0.5, 1.0), intensity=0.8), Light((-1.0, 0.2, 0.4), intensity=0.4))


def face_mesh() -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """``(vertices, triangles, landmarks, name)`` of the packaged neutral face, centred,
    about 25 units (cm) across."""
    model = FaceModel.load()
    vertices = model.neutral.astype(np.float64)
    return (vertices - vertices.mean(0), model.triangles, model.landmarks68,
            "ICT-FaceKit Light neutral")


def rotation(rng: np.random.Generator, max_deg: float = 30.0) -> np.ndarray:
    """A random rotation of up to ``max_deg`` about each axis (yaw, pitch, roll)."""
    a, b, c = np.radians(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def embree_only(vertices: np.ndarray, triangles: np.ndarray, camera: Camera) -> None:
    """Scene build and first-hit cast of every pixel ray: the floor under a render."""
    intersector = RayMeshIntersector(trimesh.Trimesh(vertices, triangles, process=False))
    intersector.intersects_first(*camera.rays())


def time_case(fn, meshes: list[np.ndarray]) -> dict[str, float]:
    """Milliseconds per call of ``fn(vertices)`` over ``meshes`` (after one warm-up)."""
    fn(meshes[0])
    times = []
    for vertices in meshes:
        start = time.perf_counter()
        fn(vertices)
        times.append(1e3 * (time.perf_counter() - start))
    times = np.asarray(times)
    return {"mean_ms": float(times.mean()), "median_ms": float(np.median(times)),
            "p90_ms": float(np.percentile(times, 90)), "min_ms": float(times.min())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/render_speed.json")
    args = parser.parse_args()

    vertices, triangles, landmarks, name = face_mesh()
    camera = Camera.perspective(args.size, 20.0)
    # The face fills the frame like a 1.2x landmark crop: ~18 units seen from 50 units
    # with a 20 degree field of view.
    rng = np.random.default_rng(0)
    meshes = [vertices @ rotation(rng).T + [0.0, 0.0, -50.0] for _ in range(args.repeats)]
    cases = {
        "embree only (scene + cast)": lambda v: embree_only(v, triangles, camera),
        "render": lambda v: render(v, triangles, camera, lights=LIGHTS, landmarks=landmarks),
        "render + shadows": lambda v: render(v, triangles, camera, lights=LIGHTS,
                                             landmarks=landmarks, shadows=True),
    }
    results = {label: time_case(fn, meshes) for label, fn in cases.items()}
    coverage = float(render(meshes[0], triangles, camera).mask.mean())

    print(f"{name}: {len(triangles)} triangles, {args.size}x{args.size}, {len(LIGHTS)} lights, "
          f"{args.repeats} renders, {len(os.sched_getaffinity(0))} cores, "
          f"face covers {100 * coverage:.0f}% of the image")
    print(f"{'case':28s} {'mean':>8s} {'median':>8s} {'p90':>8s} {'min':>8s}  (ms)")
    for label, r in results.items():
        print(f"{label:28s} {r['mean_ms']:8.1f} {r['median_ms']:8.1f} {r['p90_ms']:8.1f} "
              f"{r['min_ms']:8.1f}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"mesh": name, "triangles": int(len(triangles)), "size": args.size,
              "lights": len(LIGHTS), "repeats": args.repeats, "coverage": coverage,
              "cores": len(os.sched_getaffinity(0)), "load_average": os.getloadavg()[0],
              "machine": platform.processor() or platform.machine(),
              "python": platform.python_version(), "trimesh": trimesh.__version__,
              "results": results}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
