"""``crossmodal prepare celebahq``: CelebA-HQ photos -> image-only protocol crops.

The paper trains its image-to-image pass on 5000 CelebA-HQ images (§4.2), which have no
normals. This recipe finds the images under ``--raw`` (JPEG or PNG, any sub-folders, hidden
files left out), draws ``--count`` of them, detects the 68 landmarks of each one's largest
face, crops it by the protocol of docs/design.md §4 (square of 1.2 x the landmarks' longer
side, resized to ``--size``) and writes image-only rows in split ``train`` whose mask is the
landmarks' convex hull.

The draw: the images are listed sorted by their path under ``--raw``, then visited in a
random order drawn from ``--seed`` (a permutation of that list), and the first ``--count``
that give a face are kept. Sorting first makes the draw independent of the order the file
system lists files in, so it is reproducible from the raw folder and the seed alone; the
random order keeps it from depending on how the files are named (the first 5000 by name
would be whatever order the distributor numbered them in). An image that cannot be read or
shows no face does not count: the draw goes on until ``--count`` crops are kept or the
images run out, and each one passed over is listed, with its reason, in
``prepare_report.json``. Results come back in the draw's order whatever ``--workers`` is,
so the folder is the same for any worker count.

Ids are the image's path under ``--raw`` without its suffix, ``/`` turned into ``_`` and
other characters a file name cannot hold into ``-`` (``CelebA-HQ-img/12.jpg`` ->
``CelebA-HQ-img_12``), so every row names its source; two paths that would give one id
both get a short hash of their path appended. Each row is its own subject: the download
holds no identity list, and every row is in one split anyway.

Landmarks run in the worker processes, on the CPU for either backend (forked processes
cannot share a CUDA context): dlib takes ~0.4 s for a 1024 x 1024 image on one core here,
so the paper's 5000 take about half an hour divided by the workers.

A re-run completes a partial folder (rows already written are not cropped again) and does
nothing on a finished one: items its ``prepare_report.json`` lists as skipped are not tried
again (delete that file to retry them, e.g. after replacing a broken download).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
from collections import Counter
from contextlib import closing
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from .. import __version__, io
from ..crop import crop_from_landmarks, landmark_mask
from ..data.format import DatasetInfo, DatasetWriter
from ..errors import CrossmodalError, InputError
from ..fileutil import read_text
from ..landmarks import LandmarkDetector, make_detector
from ..parallel import WorkerDied, ordered_map, pool_size
from .common import (REPORT_FILE, Skipped, add_common_arguments, check_paths, claim_folder,
                     finish)

__all__ = ["PAPER_COUNTS", "SUFFIXES", "draw_order", "find_images", "register", "run",
           "sample_ids"]

log = logging.getLogger(__name__)

RECIPE = "celebahq"
#: What the paper used (§4.2): 5000 CelebA-HQ images for the image-to-image pass.
PAPER_COUNTS = {"image": 5000}
#: The files taken as images (any letter case).
SUFFIXES = (".jpg", ".jpeg", ".png")

# Characters an id (a file name, docs/design.md §3) cannot hold.
_NOT_IN_ID = re.compile(r"[^A-Za-z0-9._-]+")

#: The run's landmark detector, made in the main process before the worker processes fork,
#: so that they inherit it: the dlib model is ~100 MB, more to send than a job's work.
_detector: LandmarkDetector | None = None

#: A worker's answer for one image: the crop, uint8 ``(S, S, 3)``, and its facial mask,
#: bool ``(S, S)``; or why the image was passed over.
Result = tuple[np.ndarray, np.ndarray] | str


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        RECIPE, help="CelebA-HQ photos -> image-only protocol crops (paper: 5000)",
        description="Draw --count images from the CelebA-HQ images under RAW (JPEG or PNG, "
        "any sub-folders) in a random order fixed by --seed, crop each one's largest face by "
        "the landmark protocol (docs/design.md §4) and write them as image-only training rows "
        "(mask: the landmarks' hull). Images without a face or that cannot be read are "
        "listed in prepare_report.json and the draw goes on. Resumable.")
    add_common_arguments(p)
    p.add_argument("--count", type=int, default=PAPER_COUNTS["image"],
                   help="images to keep (default 5000, the paper's §4.2)")
    p.set_defaults(func=run)


def find_images(raw: Path) -> list[PurePosixPath]:
    """The images under ``raw`` (suffix in :data:`SUFFIXES`, any depth; hidden files and
    folders left out, e.g. macOS's ``._0.jpg``), as paths relative to ``raw``, sorted."""
    found = []
    for folder, dirs, files in os.walk(raw):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        base = PurePosixPath(Path(folder).relative_to(raw).as_posix())
        found += [base / name for name in files
                  if not name.startswith(".") and Path(name).suffix.lower() in SUFFIXES]
    return sorted(found, key=str)


def draw_order(n: int, seed: int) -> list[int]:
    """The order in which the ``n`` sorted images are visited: a permutation drawn from
    ``seed`` (module docstring)."""
    return np.random.default_rng(seed).permutation(n).tolist()


def sample_ids(paths: list[PurePosixPath]) -> list[str]:
    """One unique id per relative path (module docstring), in the same order."""
    names = [_NOT_IN_ID.sub("-", "_".join(p.with_suffix("").parts)).lstrip("._-") or "image"
             for p in paths]
    uses = Counter(names)
    return [f"{n}-{hashlib.sha1(str(p).encode()).hexdigest()[:8]}" if uses[n] > 1 else n
            for n, p in zip(names, paths)]


def run(args: argparse.Namespace) -> int:
    check_paths(args)
    if args.count < 1:
        raise CrossmodalError(f"--count must be at least 1, got {args.count}")
    raw: Path = args.raw
    found = find_images(raw)
    if not found:
        raise CrossmodalError(f"--raw {raw} holds no image ({', '.join(SUFFIXES)}, in any "
                              f"sub-folder); give the folder of the CelebA-HQ images "
                              f"(datasets/README.md)")
    claim_folder(args.out, RECIPE, {"count": args.count, "seed": args.seed, "size": args.size,
                                    "landmarks": args.landmarks})
    info = DatasetInfo(
        name=RECIPE, image_size=args.size,
        source="CelebA-HQ (Karras et al., Progressive Growing of GANs, ICLR 2018; from CelebA, "
        "Liu et al., ICCV 2015): protocol crops of the images drawn by crossmodal prepare "
        "celebahq (prepare.json)",
        license="CelebA's agreement: non-commercial research purposes only; see the "
        "distributor's terms",
        created_by=f"crossmodal {__version__} prepare {RECIPE}")
    order = draw_order(len(found), args.seed)
    ids = sample_ids(found)
    with DatasetWriter(args.out, info) as writer:
        done = writer.existing_ids()
        # A first run (or one starting afresh) tries everything; a re-run trusts the
        # reasons its earlier runs recorded.
        earlier = _earlier_skips(args.out) if done else {}
        todo = [i for i in order if ids[i] not in done and str(found[i]) not in earlier]
        needed = max(0, args.count - len(done))
        if done:
            log.info("%s: %d of %d crops present, %d to add", args.out, len(done), args.count,
                     needed)
        failed = _crop_faces(writer, raw, found, ids, todo, needed, args)
        present = writer.existing_ids()
        kept = [p for p, i in enumerate(order) if ids[i] in present]
        # What a single uninterrupted run would have passed over: the draw up to its last
        # kept image, or all of it when the images ran out.
        end = kept[-1] + 1 if len(kept) >= args.count else len(order)
        reasons = {**earlier, **failed}
        skipped = [Skipped(str(found[i]), reasons[str(found[i])]) for i in order[:end]
                   if str(found[i]) in reasons and ids[i] not in present]
        total = len(writer.samples)
    if total < args.count:
        log.warning("%s: only %d of the %d images under %s gave a face crop (--count %d)",
                    args.out, total, len(found), raw, args.count)
    finish(args.out, RECIPE, {"image": total}, PAPER_COUNTS, skipped)
    if not total:
        raise CrossmodalError(f"no face was found in any of the {len(found)} images under "
                              f"--raw {raw} (reasons in {args.out / REPORT_FILE})")
    return 0


def _earlier_skips(out: Path) -> dict[str, str]:
    """Relative path -> reason of the items the folder's report lists as skipped ({} when
    it has none, or one that cannot be read: those items are then tried again)."""
    try:
        report = json.loads(read_text(out / REPORT_FILE, "prepare report"))
        return {s["item"]: s["reason"] for s in report["skipped"]}
    except (InputError, json.JSONDecodeError, KeyError, TypeError):
        return {}


def _crop_faces(writer: DatasetWriter, raw: Path, found: list[PurePosixPath], ids: list[str],
                todo: list[int], needed: int, args: argparse.Namespace) -> dict[str, str]:
    """Crop the images ``todo`` (indices into ``found``, in draw order) until ``needed``
    rows are added to ``writer``; returns relative path -> reason of those passed over."""
    global _detector
    failed: dict[str, str] = {}
    if not (todo and needed):
        return failed
    _detector = make_detector(args.landmarks, faces="largest")
    workers = pool_size(args.workers, min(len(todo), needed), "image")
    jobs = ((raw / found[i], args.size) for i in todo)
    bar = tqdm(total=needed, desc=RECIPE, unit="face", disable=args.quiet)
    added = 0
    try:
        with closing(ordered_map(_crop_face, jobs, workers)) as results:
            for i, result in zip(todo, results):
                if isinstance(result, str):
                    failed[str(found[i])] = result
                    continue
                image, mask = result
                writer.add(ids[i], ids[i], "train", image=image, mask=mask)
                added += 1
                bar.update()
                if added == needed:
                    break
    except WorkerDied:
        raise CrossmodalError(
            f"a worker process died without an error (killed, or out of memory); the crops "
            f"written to {args.out} so far are kept: re-run the same command to complete it "
            f"(with fewer --workers if memory ran out)") from None
    finally:
        _detector = None
        bar.close()
    return failed


def _crop_face(job: tuple[Path, int]) -> Result:
    """The protocol crop of the largest face of one image, or why there is none."""
    path, size = job
    try:
        photo, _ = io.read_photo(path)
        faces = _detector(photo)
        if not faces:
            return (f"no face found ({_detector.name} landmarks, faces of at least "
                    f"{_detector.min_face:g} px)")
        landmarks = faces[0].landmarks
        crop = crop_from_landmarks(landmarks, size)
    except InputError as err:  # unreadable, not an image, degenerate landmarks
        return str(err)
    mask = landmark_mask(crop.transform_points(landmarks), (size, size))
    return io.quantize(crop.warp_image(photo, "area")), mask
