"""``crossmodal prepare photoface``: the Photoface database -> image/normal pairs by
calibrated photometric stereo (paper §4.2; datasets/README.md).

Photoface (Zafeiriou et al., 2011) holds 3,187 capture sessions of 453 people, each four
photographs of a still face under four light sources. Raw layout, as far as we know (the
files cannot be checked here, so every name is an option)::

    RAW/SUBJECT/SESSION/im0.bmp .. im3.bmp    --images "im{0..3}.bmp"
    RAW/SUBJECT/SESSION/LightSource.m         --session-lights (the four lights' angles)

A session is any folder holding at least one of the ``--images`` files; its subject is the
folder ``--subject-depth`` levels above it (1: its parent). Per session:

1. photometric stereo (:func:`crossmodal.geometry.photometric_stereo`) on the four images
   and their lights -> normals and validity;
2. 68 landmarks (``--landmarks``) on the mean of the four images: lit from four sides at
   once, it is the closest to the evenly lit frontal faces the detectors were trained on,
   where each single image leaves half of the face in shadow; the camera and the face are
   still, so one crop serves all four images;
3. the protocol crop (docs/design.md §4) of the four images and of the normals (scale and
   translation only: the vectors are resampled, never rotated); mask = landmark hull and
   valid normals;
4. four rows ``SUBJECT_SESSION_i0`` .. ``_i3``, each image paired with the session's normals.

Lights: a session's ``--session-lights`` file if it has one, else the ``--lights`` file.
Either holds, as plain numbers (MATLAB brackets, ``=``, ``;`` and ``%`` comments are
ignored), one light per row, in image order: 3 numbers, a direction (x, y, z) in our camera
frame (docs/design.md §2), or 2 numbers, zenith and azimuth in degrees, read as the
direction ``(sin z cos a, sin z sin a, cos z)`` (zenith from the view axis +z, azimuth
counter-clockwise from image right towards image up). That angle convention is a guess at
Photoface's ``LightSource.m``, unverified: check a session's normals, or give
``--lights`` in directions and ``--session-lights none``.

Splits are subject-disjoint, the paper's sizes (100 test subjects; its 353 training people
are our train + val), fixed by ``datasets/splits/photoface_{test,val}.txt`` over the 453
subject folders sorted by name. With another number of subjects (a partial download) the
same fractions are drawn with ``--seed`` and a warning says so. The subject -> split
mapping used is written to ``OUT/splits.csv``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import glob
import io as text_io
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .. import __version__, io
from ..crop import crop_from_landmarks, landmark_mask
from ..data.format import DatasetInfo, DatasetWriter
from ..errors import CrossmodalError, InputError
from ..fileutil import atomic_write, open_for_reading, read_text
from ..geometry import photometric_stereo
from ..io import check_pixels
from ..landmarks import LandmarkDetector, make_detector
from ..parallel import WorkerDied, ordered_map, pool_size
from .common import Skipped, add_common_arguments, check_paths, claim_folder, finish

__all__ = ["PAPER", "SPLITS_DIR", "Session", "find_sessions", "image_names", "read_bmp",
           "read_lights", "register", "run", "split_subjects"]

log = logging.getLogger(__name__)

RECIPE = "photoface"
#: Paper §4.2 (Photoface: 353 training people, 9,478 pairs; 100 test subjects, 1,489
#: pairs); subjects and sessions from the database paper (Zafeiriou et al., 2011).
PAPER = {"subjects": 453, "sessions": 3187, "train+val subjects": 353,
         "train+val pairs": 9478, "test subjects": 100, "test pairs": 1489}
#: The versioned split files (their header explains them).
SPLITS_DIR = Path(__file__).resolve().parents[2] / "datasets" / "splits"
SPLITS_FILE = "splits.csv"
DEFAULT_IMAGES = "im{0..3}.bmp"
DEFAULT_SESSION_LIGHTS = "LightSource.m"

_BRACE_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_NOT_ID = re.compile(r"[^A-Za-z0-9._-]+")


# --------------------------------------------------------------------------- raw files


def image_names(pattern: str) -> list[str]:
    """The image file names of a session, in light order: ``"im{0..3}.bmp"`` (a range),
    ``"a.bmp,b.bmp,c.bmp"`` (a list), or a glob such as ``"*.bmp"`` (matched per session,
    sorted by name)."""
    match = _BRACE_RANGE.search(pattern)
    if match:
        lo, hi = int(match[1]), int(match[2])
        return [pattern[:match.start()] + str(i) + pattern[match.end():]
                for i in range(lo, hi + 1)]
    return [name.strip() for name in pattern.split(",") if name.strip()]


def _session_images(folder: Path, names: list[str]) -> list[Path]:
    if len(names) == 1 and glob.has_magic(names[0]):
        return sorted(folder.glob(names[0]))
    return [folder / name for name in names]


def read_bmp(path: Path) -> np.ndarray:
    """A BMP (or PNG/JPEG) image as float32 RGB ``(H, W, 3)`` in [0, 1]; the size its header
    declares is checked against the readers' pixel limit before decoding (docs/design.md
    §2), as :mod:`crossmodal.io` does for PNG and JPEG.

    Raises:
        InputError: missing, unreadable, truncated or corrupt, or above the limit.
    """
    with open_for_reading(path, "image") as file:
        data = file.read()
    if not data.startswith(b"BM"):
        return io.read_image(path)  # checked there
    # BITMAPFILEHEADER (14 bytes), then the DIB header: its size, then the width and height
    # (16-bit in the old 12-byte core header, 32-bit signed otherwise; negative height =
    # rows stored top-down).
    if len(data) >= 26 and int.from_bytes(data[14:18], "little") == 12:
        width, height = (int.from_bytes(data[i:i + 2], "little") for i in (18, 20))
    elif len(data) >= 26:
        width, height = (abs(int.from_bytes(data[i:i + 4], "little", signed=True))
                         for i in (18, 22))
    else:
        raise InputError(f"cannot read image {path}: truncated BMP header")
    check_pixels(path, "image", width, height, None)
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        bgr = None
    if bgr is None:
        raise InputError(f"cannot read image {path}: truncated or corrupt BMP")
    return np.ascontiguousarray(bgr[..., ::-1]).astype(np.float32) / np.float32(255)


def read_lights(path: Path, count: int | None = None) -> np.ndarray:
    """Light directions ``(K, 3)`` from a text file (module docstring): one light per row,
    3 numbers (a direction) or 2 (zenith, azimuth in degrees).

    Raises:
        InputError: not K rows of 2 or 3 numbers (K = ``count`` when given).
    """
    rows = []
    for line in read_text(path, "light file").splitlines():
        for row in line.split("%")[0].split("#")[0].split(";"):  # ';' ends a MATLAB row
            numbers = _NUMBER.findall(row)
            if numbers:
                rows.append([float(v) for v in numbers])
    widths = {len(r) for r in rows}
    if not rows or len(widths) != 1 or widths - {2, 3} or (count and len(rows) != count):
        raise InputError(f"light file {path}: expected {count or 'K'} rows of 3 numbers "
                         f"(x, y, z) or 2 (zenith, azimuth in degrees), one per image, got "
                         f"rows of {sorted(widths)} numbers ({len(rows)} rows)")
    values = np.array(rows)
    if values.shape[1] == 3:
        return values
    zenith, azimuth = np.radians(values[:, 0]), np.radians(values[:, 1])
    return np.stack([np.sin(zenith) * np.cos(azimuth), np.sin(zenith) * np.sin(azimuth),
                     np.cos(zenith)], axis=-1)


@dataclass(frozen=True)
class Session:
    """One capture session: its folder, its subject and its name in sample ids.

    Attributes:
        folder: the session folder.
        subject: the subject folder's path below RAW, as an id (``/`` -> ``-``).
        name: the session folder's path below the subject folder, as an id.
        item: the session folder below RAW, for the report.
    """

    folder: Path
    subject: str
    name: str
    item: str

    def ids(self, count: int) -> list[str]:
        """The sample ids of its ``count`` images: ``SUBJECT_SESSION_iK``."""
        return [f"{self.subject}_{self.name}_i{k}" for k in range(count)]


def _as_id(parts: tuple[str, ...]) -> str:
    return _NOT_ID.sub("-", "-".join(parts)).lstrip(".") or "x"


def find_sessions(raw: Path, pattern: str, subject_depth: int) -> list[Session]:
    """Every folder under ``raw`` holding one of the session's image files at least,
    sorted by path; its subject is the folder ``subject_depth`` levels above it.

    Raises:
        CrossmodalError: a session lies too shallow for ``subject_depth``.
    """
    names = image_names(pattern)
    hits = (raw.rglob(names[0]) if len(names) == 1 else
            (p for name in names for p in raw.rglob(name)))
    folders = sorted({p.parent for p in hits if p.is_file()})
    sessions = []
    for folder in folders:
        parts = folder.relative_to(raw).parts
        if len(parts) <= subject_depth:
            raise CrossmodalError(
                f"session folder {folder} has no subject folder {subject_depth} level(s) "
                f"above it inside --raw {raw}; expected RAW/SUBJECT/SESSION/{names[0]} "
                f"(or set --subject-depth)")
        cut = len(parts) - subject_depth
        sessions.append(Session(folder, _as_id(parts[:cut]), _as_id(parts[cut:]),
                                "/".join(parts)))
    return sessions


# --------------------------------------------------------------------------- splits


def _read_ranks(path: Path) -> list[int]:
    ranks = []
    for number, line in enumerate(read_text(path, "split file").splitlines(), 1):
        text = line.split("#")[0].strip()
        if text:
            if not text.isdigit():
                raise InputError(f"{path} line {number}: expected a subject rank, got "
                                 f"{text!r}")
            ranks.append(int(text))
    return ranks


def split_subjects(subjects: list[str], splits_dir: Path, seed: int) -> dict[str, str]:
    """Subject -> split. With the 453 subjects of the full database: by rank in sorted order
    from ``splits_dir/photoface_{test,val}.txt``; otherwise the same fractions (each split
    at least one subject when there are 3) drawn with ``seed``, with a warning.

    Raises:
        InputError: a split file is missing or malformed.
    """
    ordered = sorted(subjects)
    test_ranks = _read_ranks(splits_dir / "photoface_test.txt")
    val_ranks = _read_ranks(splits_dir / "photoface_val.txt")
    total = PAPER["subjects"]
    if len(ordered) == total:
        split = {rank: "test" for rank in test_ranks} | {rank: "val" for rank in val_ranks}
        return {s: split.get(rank, "train") for rank, s in enumerate(ordered, 1)}
    n = len(ordered)
    least = 1 if n >= 3 else 0
    n_test = max(least, round(n * len(test_ranks) / total))
    n_val = max(least, round(n * len(val_ranks) / total))
    log.warning("%d Photoface subjects found, not the database's %d: the versioned split "
                "(datasets/splits) does not apply; drawing %d test and %d val subjects with "
                "--seed %d instead (the same fractions)", n, total, n_test, n_val, seed)
    order = np.random.default_rng(seed).permutation(n)
    split = ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val)
    return {ordered[i]: split[j] for j, i in enumerate(order)}


def _write_splits(out: Path, splits: dict[str, str]) -> None:
    buffer = text_io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["subject", "rank", "split"])
    writer.writerows([s, rank, splits[s]] for rank, s in enumerate(sorted(splits), 1))
    atomic_write(out / SPLITS_FILE, lambda tmp: tmp.write_text(buffer.getvalue()))


# --------------------------------------------------------------------------- one session


@dataclass(frozen=True)
class Job:
    """What a worker needs for one session (pickled to it)."""

    session: Session
    images: str
    lights: Path | None
    session_lights: str | None
    size: int
    landmarks: str


@dataclass
class Done:
    """A processed session: per image its id, crop (uint8 ``(S, S, 3)``), and the shared
    normals ``(S, S, 3)`` and mask ``(S, S)``; or why it was skipped."""

    session: Session
    ids: list[str]
    images: list[np.ndarray]
    normals: np.ndarray | None = None
    mask: np.ndarray | None = None
    skipped: Skipped | None = None


@functools.cache
def _detector(backend: str) -> LandmarkDetector:
    """One detector per process (loading its model takes a second): built in the main
    process before the pool forks, so the workers inherit it."""
    return make_detector(backend, faces="largest")


def _lights_for(job: Job, count: int) -> np.ndarray:
    if job.session_lights:
        own = job.session.folder / job.session_lights
        if own.is_file():
            return read_lights(own, count)
    if job.lights is None:
        raise InputError(f"no light directions: no {job.session_lights} in the session and "
                         f"no --lights file")
    return read_lights(job.lights, count)


def process_session(job: Job) -> Done:
    """Photometric stereo, landmarks and crops of one session (module docstring)."""
    session = job.session
    paths = _session_images(session.folder, image_names(job.images))
    ids = session.ids(len(paths))
    try:
        missing = [p.name for p in paths if not p.is_file()]
        if missing or len(paths) < 3:
            raise InputError(f"missing image(s) {', '.join(missing) or job.images}")
        pictures = [read_bmp(p) for p in paths]
        if len({im.shape for im in pictures}) != 1:
            sizes = (f"{p.name} {im.shape[1]}x{im.shape[0]}" for p, im in zip(paths, pictures))
            raise InputError(f"the images differ in size: {', '.join(sizes)}")
        images = np.stack(pictures)
        normals, _, valid = photometric_stereo(images, _lights_for(job, len(paths)))
    except InputError as err:
        return Done(session, ids, [], skipped=Skipped(session.item, str(err)))
    faces = _detector(job.landmarks)(images.mean(axis=0))
    if not faces:
        return Done(session, ids, [], skipped=Skipped(session.item, "no face found"))
    crop = crop_from_landmarks(faces[0].landmarks, job.size)
    crop_normals, crop_valid = crop.warp_normals(normals, valid)
    hull = landmark_mask(crop.transform_points(faces[0].landmarks), (job.size, job.size))
    mask = hull & crop_valid
    crops = [io.quantize(crop.warp_image(image)) for image in images]
    return Done(session, ids, crops, crop_normals, mask)


# --------------------------------------------------------------------------- command


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        RECIPE, help="Photoface: image/normal pairs by photometric stereo",
        description="Photometric stereo on each Photoface session (four images under four "
        "known lights), the protocol crop from landmarks on the sessions' mean image, four "
        "image/normal pairs per session; subject-disjoint splits from datasets/splits. "
        "Raw layout: RAW/SUBJECT/SESSION/im0.bmp..im3.bmp (+ LightSource.m); see "
        "datasets/README.md.")
    add_common_arguments(p)
    p.add_argument("--images", default=DEFAULT_IMAGES, metavar="PATTERN",
                   help=f"a session's image files in light order: a range "
                   f"(default {DEFAULT_IMAGES!r}), a comma list, or a glob sorted by name")
    p.add_argument("--lights", type=Path, metavar="FILE",
                   help="light file for sessions without their own: one light per row, "
                   "x y z (our camera frame) or zenith azimuth (degrees)")
    p.add_argument("--session-lights", default=DEFAULT_SESSION_LIGHTS, metavar="NAME",
                   help=f"a session's own light file, preferred to --lights (default "
                   f"{DEFAULT_SESSION_LIGHTS!r}; 'none' to always use --lights)")
    p.add_argument("--subject-depth", type=int, default=1, metavar="N",
                   help="the subject is the folder N levels above a session (default 1)")
    p.add_argument("--splits", type=Path, default=SPLITS_DIR, metavar="DIR",
                   help="folder of photoface_test.txt and photoface_val.txt (default: the "
                   "repository's datasets/splits)")
    p.set_defaults(func=run)


def _check_options(args: argparse.Namespace) -> str | None:
    """Refuse bad options before any work; the session light file name (None: none)."""
    if len(image_names(args.images)) < 3 and not glob.has_magic(args.images):
        raise CrossmodalError(f"--images {args.images!r} names fewer than 3 images; "
                              f"photometric stereo needs at least 3 (e.g. {DEFAULT_IMAGES!r})")
    if args.subject_depth < 1:
        raise CrossmodalError(f"--subject-depth must be at least 1, got {args.subject_depth}")
    if args.lights is not None:
        read_lights(args.lights)
    for name in ("photoface_test.txt", "photoface_val.txt"):
        if not (args.splits / name).is_file():
            raise CrossmodalError(f"split file {args.splits / name} not found; pass --splits "
                                  f"DIR, the repository's datasets/splits folder")
    own = args.session_lights
    return None if own.lower() == "none" else own


def run(args: argparse.Namespace) -> int:
    """The ``crossmodal prepare photoface`` command: exit status 0 (failures raise); the
    report is ``OUT/prepare_report.json``."""
    check_paths(args)
    session_lights = _check_options(args)
    sessions = find_sessions(args.raw, args.images, args.subject_depth)
    if not sessions:
        raise CrossmodalError(f"no session found under --raw {args.raw}: no folder holds "
                              f"{image_names(args.images)[0]}; expected "
                              f"RAW/SUBJECT/SESSION/{image_names(args.images)[0]} "
                              f"(datasets/README.md) or set --images")
    if args.lights is None and not (session_lights and any(
            (s.folder / session_lights).is_file() for s in sessions)):
        raise CrossmodalError(f"no light directions: no session holds {session_lights} and "
                              f"--lights is not given; pass --lights FILE (one light per row)")
    options = {"images": args.images, "lights": None if args.lights is None else
               str(args.lights), "session_lights": session_lights,
               "subject_depth": args.subject_depth, "size": args.size,
               "landmarks": args.landmarks, "seed": args.seed}
    claim_folder(args.out, RECIPE, options)
    splits = split_subjects(sorted({s.subject for s in sessions}), args.splits, args.seed)
    _write_splits(args.out, splits)
    _detector(args.landmarks)  # a missing backend fails here, before any work

    info = DatasetInfo(
        name=args.out.name, source="Photoface (Zafeiriou et al., 2011) by photometric stereo",
        license="see the Photoface distributor's terms", image_size=args.size,
        created_by=f"crossmodal {__version__} prepare photoface")
    skipped: list[Skipped] = []
    with DatasetWriter(args.out, info) as writer:
        done = writer.existing_ids()
        names = image_names(args.images)
        todo = [s for s in sessions
                if not set(s.ids(len(_session_images(s.folder, names)))) <= done]
        log.info("%d sessions of %d subjects; %d to process", len(sessions), len(splits),
                 len(todo))
        jobs = [Job(s, args.images, args.lights, session_lights, args.size, args.landmarks)
                for s in todo]
        bar = tqdm(total=len(jobs), desc=RECIPE, unit="session")
        try:
            for result in ordered_map(process_session, jobs,
                                      pool_size(args.workers, len(jobs), "session")):
                if result.skipped:
                    skipped.append(result.skipped)
                for ident, image in zip(result.ids, result.images):
                    if ident not in done:
                        writer.add(ident, result.session.subject,
                                   splits[result.session.subject], image=image,
                                   normals=result.normals, mask=result.mask)
                bar.update()
        except WorkerDied:
            raise CrossmodalError(f"a worker process died without an error (killed, or out "
                                  f"of memory); the sessions written to {args.out} are kept: "
                                  f"re-run the same command to complete it") from None
        bar.close()
        rows = writer.samples
    finish(args.out, RECIPE, _counts(rows, sessions, splits), PAPER, skipped)
    return 0


def _counts(rows: list, sessions: list[Session], splits: dict[str, str]) -> dict[str, int]:
    pairs = {name: sum(r.split == name for r in rows) for name in ("train", "val", "test")}
    people = {name: sum(v == name for v in splits.values()) for name in ("train", "val", "test")}
    kept = {r.id.rsplit("_i", 1)[0] for r in rows}
    return {"subjects": len(splits), "sessions": len(kept), "sessions found": len(sessions),
            "train+val subjects": people["train"] + people["val"],
            "train subjects": people["train"], "val subjects": people["val"],
            "test subjects": people["test"], "train+val pairs": pairs["train"] + pairs["val"],
            "train pairs": pairs["train"], "val pairs": pairs["val"],
            "test pairs": pairs["test"]}
