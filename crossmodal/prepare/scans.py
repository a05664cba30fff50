"""``crossmodal prepare scans|florence|ict3drfe|bjut3d``: renders of 3D head scans.

Every scan file under ``--raw`` (recursive; :data:`~crossmodal.prepare.meshes.SCAN_SUFFIXES`),
sorted, is rendered ``--renders`` times, the way :mod:`crossmodal.synth` renders its faces:

1. The scan is turned into the canonical frame (``--up``, ``--facing``: +y up, facing +z by
   default), centred on its bounding-box centre and scaled so that its largest extent is
   :data:`HEAD_EXTENT_CM` (scans come in mm, cm or m; only the perspective depends on
   the size, as the crop frames the face).
2. A rotation about a random axis by an angle uniform in ``[-max, max]``
   (``--max-rotation``), a camera distance in :data:`DISTANCE_CM` and random directional
   lights drawn as synth draws them, from :data:`LIGHTING`: synth's lighting when the
   real-scan set was made, pinned here so that the evaluation sets do not move when
   synth's defaults do.
3. A full-frame render (:data:`DETECT_SIZE` px, the head filling :data:`HEAD_FILL` of
   it, lit by a neutral frontal light so that the detector sees the geometry) on which the
   ``--landmarks`` backend finds the largest face; a scan with a sidecar
   ``<stem>.landmarks.txt`` has its 68 3D points projected instead. No face: the render is
   listed as skipped, not kept.
4. The protocol crop (docs/design.md §4) of those points, folded into the intrinsics, and a
   second render straight into the ``--size`` crop: the image (texture or vertex colours,
   random lights, a procedural background), the normals of the mesh's smooth vertex
   normals, the facial mask = landmark hull ∩ rendered surface.

Every random choice of render ``r`` of a scan comes from a generator seeded by
``(--seed, a hash of the scan's path under --raw, r)``: the output is the same whatever
``--workers``, and a scan keeps its renders when others are added to the folder.

Each render's rotation (scan frame -> camera frame, so camera normals = R @ scan normals),
centre, scale, distance, lights, cameras, crop and landmarks are recorded in
``renders.json`` (by id; skipped renders with their reason). Re-running completes a
partial folder and does not render what ``renders.json`` records as skipped.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import __version__
from ..crop import crop_from_landmarks, landmark_mask
from ..data.format import DatasetInfo, DatasetWriter
from ..errors import CrossmodalError, InputError
from ..fileutil import atomic_write, read_text
from ..geometry import Light
from ..parallel import WorkerDied, ordered_map, pool_size
from ..synth.sampler import SynthConfig
from .common import Skipped, add_common_arguments, check_paths, claim_folder, finish
from .meshes import SCAN_SUFFIXES, Scan, landmarks_path, read_landmarks, read_scan

__all__ = ["PRESETS", "RENDERS_FILE", "register", "run"]

log = logging.getLogger(__name__)

#: Per-render records: rotation, lights, cameras, crop, landmarks (module docstring).
RENDERS_FILE = "renders.json"
#: A scan's largest bounding-box extent after scaling: a head's, in cm.
HEAD_EXTENT_CM = 25.0
#: Camera distance to the scan's centre, cm (synth's range).
DISTANCE_CM = (45.0, 150.0)
#: The lights of every render (intensity, ambient, second light and shadow chances):
#: synth's default lighting of issue 12, pinned (module docstring).
LIGHTING = SynthConfig(intensity=(0.0, 2.0), ambient=(0.08, 0.35),
                       two_light_probability=0.5, shadow_probability=0.5)
#: Side of the full-frame render landmarks are detected on, and the fraction of it the
#: scan's extent spans (a face of ~150-300 px: dlib's sweet spot).
DETECT_SIZE = 512
HEAD_FILL = 0.6
#: The protocol's crop scale (docs/design.md §4).
CROP_SCALE = 1.2
#: Rows written between saves of samples.csv (renders.json is saved just before).
FLUSH_EVERY = 20

_AXES = {f"{sign}{name}": (i, 1.0 if sign == "+" else -1.0)
         for i, name in enumerate("xyz") for sign in "+-"}


@dataclass(frozen=True)
class Preset:
    """A dataset's defaults: what the paper made of it and how it is licensed."""

    name: str
    title: str
    renders: int
    kind: str
    split: str
    subject_from: str
    paper: dict[str, int]


PRESETS = {
    "scans": Preset("scans", "any folder of head scans", 10, "paired", "train", "path", {}),
    # Paper §4.2: the 53 Florence scans, 10 renders each, an evaluation set.
    "florence": Preset("florence", "Florence (MICC) 3D faces", 10, "paired", "test", "path",
                       {"paired": 530}),
    # 345 models (23 subjects x 15 expressions) x 25 renders, relit with their albedo.
    "ict3drfe": Preset("ict3drfe", "ICT-3DRFE", 25, "paired", "train", "folder",
                       {"paired": 8625}),
    # 500 scans, 3,000 normal maps for the unpaired normal branch: 6 per scan.
    "bjut3d": Preset("bjut3d", "BJUT-3D", 6, "normal", "train", "path", {"normal": 3000}),
}


@dataclass(frozen=True)
class RenderJob:
    """Render ``index`` of the scan ``relative`` (a path under ``raw``)."""

    raw: Path
    relative: str
    index: int
    id: str
    options: dict


@dataclass
class Rendered:
    """A render's maps (``image`` None for normal-only), or why there are none."""

    job: RenderJob
    record: dict
    image: np.ndarray | None = None
    normals: np.ndarray | None = None
    mask: np.ndarray | None = None


def _axis(text: str) -> str:
    if text not in _AXES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(_AXES)}, got {text!r}")
    return text


def register(subparsers: argparse._SubParsersAction) -> None:
    for preset in PRESETS.values():
        paper = ", ".join(f"{n} {k}" for k, n in preset.paper.items()) or "-"
        p = subparsers.add_parser(
            preset.name, help=f"render {preset.title} into paired or normal-only crops",
            description=f"Render every scan under --raw (OBJ, PLY, GLB/glTF, VRML .wrl; "
            f"recursive) --renders times at random rotations and lights, cropped by the "
            f"landmark protocol, into the dataset format ({preset.title}; the paper: "
            f"{paper}). Deterministic for a seed whatever --workers is; resumable. A "
            f"sidecar <scan>.landmarks.txt (68 rows x y z) replaces landmark detection.")
        add_common_arguments(p)
        p.add_argument("--renders", type=int, default=preset.renders,
                       help=f"renders per scan (default {preset.renders})")
        p.add_argument("--kind", choices=("paired", "normal"), default=preset.kind,
                       help=f"paired (image and normals) or normal-only rows (default "
                       f"{preset.kind})")
        p.add_argument("--split", choices=("train", "test"), default=preset.split,
                       help=f"test: every row is test; train: --val-fraction of the "
                       f"subjects go to val (default {preset.split})")
        p.add_argument("--val-fraction", type=float, default=0.1,
                       help="fraction of subjects held out as val with --split train "
                       "(default 0.1)")
        p.add_argument("--subject-from", choices=("path", "folder"),
                       default=preset.subject_from,
                       help=f"a subject per scan file (path) or per first folder under "
                       f"--raw (default {preset.subject_from})")
        p.add_argument("--max-rotation", type=float, default=45.0,
                       help="largest rotation in degrees, about a random axis (default 45)")
        p.add_argument("--up", type=_axis, default="+y",
                       help="the scans' up axis (default +y)")
        p.add_argument("--facing", type=_axis, default="+z",
                       help="the axis the scans' faces look along (default +z)")
        p.set_defaults(func=functools.partial(run, recipe=preset.name))


def _options(args: argparse.Namespace, n_scans: int) -> dict:
    return {"renders": args.renders, "kind": args.kind, "split": args.split,
            "val_fraction": args.val_fraction, "subject_from": args.subject_from,
            "max_rotation": args.max_rotation, "up": args.up, "facing": args.facing,
            "size": args.size, "seed": args.seed, "landmarks": args.landmarks,
            "raw_scans": n_scans}


def _check(args: argparse.Namespace) -> None:
    check_paths(args)
    if args.renders < 1:
        raise CrossmodalError(f"--renders must be at least 1, got {args.renders}")
    if not 0 <= args.val_fraction < 1:
        raise CrossmodalError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if not 0 <= args.max_rotation <= 180:
        raise CrossmodalError(f"--max-rotation must be in [0, 180] degrees, got "
                              f"{args.max_rotation}")
    if _AXES[args.up][0] == _AXES[args.facing][0]:
        raise CrossmodalError(f"--up {args.up} and --facing {args.facing} must be different "
                              f"axes")


def find_scans(raw: Path) -> list[str]:
    """The scan files under ``raw``, as sorted POSIX paths relative to it."""
    return sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*")
                  if p.suffix.lower() in SCAN_SUFFIXES and p.is_file())


def _subject(relative: str, subject_from: str) -> str:
    parts = relative.split("/")
    if subject_from == "folder" and len(parts) > 1:
        return parts[0]
    return relative.rsplit(".", 1)[0]


def _safe_id(text: str) -> str:
    """``text`` as a sample id (letters, digits, ``.``, ``_``, ``-``)."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in text)
    return cleaned.lstrip(".") or "scan"


def _splits(subjects: list[str], split: str, val_fraction: float, seed: int) -> dict[str, str]:
    """Subject -> split: all ``test``, or ``train`` with a seeded ``val_fraction`` of
    subjects (at least one when there are two or more) in ``val``."""
    if split == "test":
        return dict.fromkeys(subjects, "test")
    unique = sorted(set(subjects))
    n_val = int(round(val_fraction * len(unique)))
    if val_fraction > 0 and len(unique) >= 2:
        n_val = min(max(n_val, 1), len(unique) - 1)
    order = np.random.default_rng([seed, 0x5B17]).permutation(len(unique))
    val = {unique[i] for i in order[:n_val]}
    return {s: "val" if s in val else "train" for s in unique}


def _path_key(relative: str) -> int:
    """A stable integer of a scan's relative path, for its generator's seed."""
    return int.from_bytes(hashlib.sha256(relative.encode()).digest()[:8], "little")


def run(args: argparse.Namespace, *, recipe: str = "scans") -> int:
    """Run the recipe ``recipe`` (a :data:`PRESETS` name) with parsed ``args``."""
    _check(args)
    raw, out = args.raw, args.out
    scans = find_scans(raw)
    if not scans:
        raise CrossmodalError(f"--raw {raw} holds no scan file ({', '.join(SCAN_SUFFIXES)}); "
                              f"give the folder of the raw download (datasets/README.md)")
    claim_folder(out, recipe, _options(args, len(scans)))
    preset = PRESETS[recipe]
    info = DatasetInfo(
        name=out.name, license="the raw scans' own licence; see datasets/README.md",
        source=f"{preset.title}: {args.renders} renders per scan by `crossmodal prepare "
        f"{recipe}` (seed {args.seed})",
        image_size=args.size, crop=f"landmarks-{CROP_SCALE:g}",
        created_by=f"crossmodal {__version__} prepare {recipe}")
    subjects = {rel: _subject(rel, args.subject_from) for rel in scans}
    splits = _splits(list(subjects.values()), args.split, args.val_fraction, args.seed)
    options = {k: getattr(args, k) for k in ("kind", "size", "seed", "max_rotation", "up",
                                             "facing", "landmarks")}
    records = _read_records(out)
    skipped: list[Skipped] = []
    with DatasetWriter(out, info, flush_every=sys.maxsize) as writer:
        done = writer.existing_ids()
        jobs = []
        for rel in scans:
            for r in range(args.renders):
                ident = f"{_safe_id(rel.rsplit('.', 1)[0])}_r{r:02d}"
                if ident in done:
                    continue
                if "skipped" in records.get(ident, {}):
                    skipped.append(Skipped(f"{rel} render {r}", records[ident]["skipped"]))
                    continue
                jobs.append(RenderJob(raw, rel, r, ident, options))
        if done:
            log.info("%s: %d renders present, %d to render", out, len(done), len(jobs))
        if any(not landmarks_path(raw / j.relative).is_file() for j in jobs):
            _detector(args.landmarks)  # a missing backend fails before any rendering
        try:
            _render_all(jobs, args, writer, records, subjects, splits, skipped, recipe)
        finally:
            _write_records(out, records, writer.existing_ids())
        counts = {args.kind: len(writer.existing_ids())}
    finish(out, recipe, counts, preset.paper, _dedupe(skipped))
    return 0


def _render_all(jobs: list[RenderJob], args: argparse.Namespace, writer: DatasetWriter,
                records: dict, subjects: dict[str, str], splits: dict[str, str],
                skipped: list[Skipped], recipe: str) -> None:
    bar = tqdm(total=len(jobs), desc=recipe, unit="render",
               disable=getattr(args, "quiet", False))
    added = 0
    try:
        workers = pool_size(args.workers, len(jobs), "render")
        for result in ordered_map(_render_job, jobs, workers):
            job = result.job
            records[job.id] = result.record
            bar.update()
            if result.normals is None:
                skipped.append(Skipped(job.relative if "scan_error" in result.record
                                       else f"{job.relative} render {job.index}",
                                       result.record["skipped"]))
                if "scan_error" in result.record:
                    del records[job.id]  # read again next time: the file may be fixed
                continue
            subject = subjects[job.relative]
            writer.add(job.id, subject, splits[subject], image=result.image,
                       normals=result.normals, mask=result.mask)
            added += 1
            if added % FLUSH_EVERY == 0:
                # renders.json first: every row of samples.csv has its record.
                _write_records(args.out, records, writer.existing_ids())
                writer.flush()
    except WorkerDied:
        raise CrossmodalError(
            f"a rendering worker process died without an error (killed, or out of memory); "
            f"the renders written to {args.out} so far are kept: re-run the same command to "
            f"complete it (with fewer --workers if memory ran out)") from None
    finally:
        bar.close()


def _dedupe(skipped: list[Skipped]) -> list[Skipped]:
    """One entry per unreadable scan (each of its renders reports it)."""
    return list(dict.fromkeys(skipped))


def _read_records(out: Path) -> dict:
    path = out / RENDERS_FILE
    if not path.is_file():
        return {}
    try:
        records = json.loads(read_text(path, "render records"))
    except json.JSONDecodeError:
        log.warning("%s is not valid JSON; it is written again", path)
        return {}
    return records if isinstance(records, dict) else {}


def _write_records(out: Path, records: dict, kept: frozenset[str]) -> None:
    """``renders.json``: the records of the rows and of the renders skipped, by id."""
    keep = {k: records[k] for k in sorted(records) if k in kept or "skipped" in records[k]}
    text = "{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in keep.items())
    atomic_write(out / RENDERS_FILE,
                 lambda tmp: tmp.write_text(text + "\n}\n", encoding="utf-8"))


# --------------------------------------------------------------------------- rendering


@functools.lru_cache(maxsize=1)
def _load(path: Path, appearance: bool) -> tuple[Scan | None, np.ndarray | None, str]:
    """A worker renders a scan's renders one after another: read it once. Returns
    ``(scan, landmarks or None, error)``."""
    try:
        scan = read_scan(path, appearance=appearance)
        sidecar = landmarks_path(path)
        points = read_landmarks(sidecar) if sidecar.is_file() else None
    except InputError as err:
        return None, None, str(err)
    return scan, points, ""


@functools.lru_cache(maxsize=None)
def _detector(backend: str):
    from ..landmarks import make_detector

    return make_detector(backend, faces="largest")


def _base_rotation(up: str, facing: str) -> np.ndarray:
    """The rotation taking the scan's ``up`` axis to +y and ``facing`` to +z."""
    rows = np.zeros((3, 3))
    for row, name in ((1, up), (2, facing)):
        axis, sign = _AXES[name]
        rows[row, axis] = sign
    rows[0] = np.cross(rows[1], rows[2])
    return rows


def _render_job(job: RenderJob) -> Rendered:
    from ..render import Camera, Intrinsics, render
    from ..synth.appearance import background
    from ..synth.sampler import _random_light, _random_rotation

    o = job.options
    paired = o["kind"] == "paired"
    scan, points3d, error = _load(job.raw / job.relative, paired)
    base = {"scan": job.relative, "render": job.index}
    if scan is None:
        return Rendered(job, {**base, "skipped": error, "scan_error": True})
    rng = np.random.default_rng([o["seed"], _path_key(job.relative), job.index])
    synth = LIGHTING
    low, high = scan.vertices.min(0), scan.vertices.max(0)
    centre = (low + high) / 2
    scale = HEAD_EXTENT_CM / max(float((high - low).max()), 1e-12)
    rotation = _random_rotation(rng, o["max_rotation"]) @ _base_rotation(o["up"], o["facing"])
    distance = float(rng.uniform(*DISTANCE_CM))
    lights = [_random_light(rng, synth)]
    if rng.random() < synth.two_light_probability:
        lights.append(_random_light(rng, synth))
    ambient = float(rng.uniform(*synth.ambient))
    shadows = bool(rng.random() < synth.shadow_probability)
    backdrop = background(o["size"], rng) if paired else None

    def to_camera(points: np.ndarray) -> np.ndarray:
        camera_space = (points - centre) * scale @ rotation.T
        camera_space[:, 2] -= distance
        return camera_space

    vertices = to_camera(scan.vertices)
    focal = HEAD_FILL * DETECT_SIZE * distance / HEAD_EXTENT_CM
    c = (DETECT_SIZE - 1) / 2
    full = Camera(DETECT_SIZE, DETECT_SIZE, Intrinsics(focal, focal, c, c))
    record = {**base, "rotation": rotation.tolist(), "centre": centre.tolist(),
              "scale": scale, "distance_cm": distance,
              "lights": [[*light.direction, light.intensity] for light in lights],
              "ambient": ambient, "shadows": shadows,
              "full_intrinsics": [focal, focal, c, c], "full_size": DETECT_SIZE}
    if points3d is not None:
        points = full.project(to_camera(points3d))[0]
        record["landmarks_source"] = "sidecar"
    else:
        # Neutral light for detection: the detector should see the face, whatever the
        # random light of the kept image.
        view = render(vertices, scan.triangles, full, lights=[Light((0.3, 0.3, 1.0))],
                      ambient=0.35, **scan.appearance())
        faces = _detector(o["landmarks"])(view.image)
        if not faces:
            return Rendered(job, {**base, "skipped": f"no face detected by "
                                  f"{o['landmarks']} in the full-frame render"})
        points = faces[0].landmarks
        record["landmarks_source"] = o["landmarks"]
    if not np.isfinite(points).all():
        return Rendered(job, {**base, "skipped": "a landmark lies behind the camera"})
    crop = crop_from_landmarks(points, size=o["size"], scale=CROP_SCALE)
    s, tx, ty = crop.matrix[0, 0], crop.matrix[0, 2], crop.matrix[1, 2]
    intrinsics = Intrinsics(s * focal, s * focal, s * c + tx, s * c + ty)
    camera = Camera(o["size"], o["size"], intrinsics)
    result = render(vertices, scan.triangles, camera,
                    lights=lights if paired else [], ambient=ambient, shadows=shadows,
                    background=backdrop, **(scan.appearance() if paired else {}))
    in_crop = crop.transform_points(points)
    mask = landmark_mask(in_crop, result.mask.shape) & result.mask
    record.update({"landmarks_full": np.asarray(points, float).tolist(),
                   "crop_box": list(crop.box), "intrinsics": [intrinsics.fx, intrinsics.fy,
                                                              intrinsics.cx, intrinsics.cy],
                   "landmarks": in_crop.tolist()})
    if not mask.any():
        return Rendered(job, {**base, "skipped": "the facial mask is empty"})
    return Rendered(job, record, image=result.image if paired else None,
                    normals=result.normals, mask=mask)
