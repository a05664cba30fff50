"""``crossmodal prepare celebahq``: a folder of face photos -> image-only protocol crops.

The raw folder is made here from the two bundled public-domain photos (two sizes each, and
jittered mirror images in a sub-folder, so eight distinct faces) plus a picture without a
face. The command runs with ``crossmodal.prepare.RECIPE_MODULES`` narrowed to this recipe
(:func:`prepare`), which tests ``crossmodal prepare`` with one recipe, whatever the others
need to import. The robustness tests (tests/robustness/test_prepare.py) share the helpers.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import crossmodal.commands.prepare
from crossmodal import io
from crossmodal.cli import main
from crossmodal.crop import Crop, landmark_mask
from crossmodal.data.format import read_dataset
from crossmodal.landmarks import make_detector
from crossmodal.photos import BUNDLED_PHOTOS
from crossmodal.prepare import celebahq
from crossmodal.prepare.common import REPORT_FILE

SIZE = 64
NO_FACE = "no_face.png"


def make_raw(folder: Path) -> Path:
    """``folder`` holding 8 face pictures (each bundled photo 300 and 360 px wide as JPEG,
    and mirrored with a brightness change as PNG in ``mirrored/``) and :data:`NO_FACE`."""
    (folder / "mirrored").mkdir(parents=True)
    for name, path in BUNDLED_PHOTOS.items():
        bgr = cv2.imread(str(path))
        for width in (300, 360):
            small = cv2.resize(bgr, (width, round(width * bgr.shape[0] / bgr.shape[1])),
                               interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(folder / f"{name}_{width}.jpg"), small)
            jittered = np.clip(small[:, ::-1] * 0.85 + 20, 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / "mirrored" / f"{name}_{width}.png"), jittered)
    ramp = np.linspace(0, 255, 320, dtype=np.float32)
    cv2.imwrite(str(folder / NO_FACE), np.dstack([np.add.outer(ramp, ramp) / 2] * 3))
    return folder


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return make_raw(tmp_path_factory.mktemp("celebahq") / "raw")


@functools.cache
def _real_detector(backend: str, faces: str):
    return make_detector(backend, faces=faces)


class CountingDetector:
    """The recipe's detector, counting the times it is made and called (calls in this
    process: ``--workers 1``); the real one is loaded once for all the tests (the dlib
    model takes ~1 s)."""

    def __init__(self) -> None:
        self.made = self.calls = 0
        self.inner = None

    def make(self, backend: str, *, faces: str) -> CountingDetector:
        self.made += 1
        self.inner = _real_detector(backend, faces)
        return self

    def __call__(self, image: np.ndarray) -> list:
        self.calls += 1
        return self.inner(image)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


@pytest.fixture
def detector(monkeypatch) -> CountingDetector:
    counting = CountingDetector()
    monkeypatch.setattr(celebahq, "make_detector", counting.make)
    return counting


def prepare(monkeypatch, raw: Path, out: Path, *options: str) -> int:
    """``crossmodal -q prepare celebahq --raw RAW --out OUT --size 64 --workers 1 OPTIONS``
    (later options win), with the ``prepare`` command offering this recipe only."""
    monkeypatch.setattr(crossmodal.commands.prepare, "RECIPE_MODULES",
                        ("crossmodal.prepare.celebahq",))
    return main(["-q", "prepare", "celebahq", "--raw", str(raw), "--out", str(out),
                 "--size", str(SIZE), "--workers", "1", *options])


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path -> its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def expected_ids(raw: Path, seed: int, count: int) -> list[str]:
    """The ids the draw keeps: the first ``count`` face pictures in the seed's order."""
    found = celebahq.find_images(raw)
    ids = celebahq.sample_ids(found)
    order = celebahq.draw_order(len(found), seed)
    return [ids[i] for i in order if found[i].name != NO_FACE][:count]


def test_a_folder_of_photos_becomes_image_only_protocol_crops(raw, tmp_path, monkeypatch,
                                                              detector):
    out = tmp_path / "celebahq"
    assert prepare(monkeypatch, raw, out, "--count", "8") == 0

    info, samples = read_dataset(out)
    assert (info.name, info.image_size, info.crop) == ("celebahq", SIZE, "landmarks-1.2")
    assert sorted(s.id for s in samples) == sorted(expected_ids(raw, 0, 8))
    assert {(s.kind, s.split) for s in samples} == {("image", "train")}
    assert all(s.mask is not None and s.subject == s.id for s in samples)
    report = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
    assert (report["counts"], report["paper"]) == ({"image": 8}, {"image": 5000})
    # 8 of the 9 pictures are faces: the draw meets the faceless one before its last face
    # or never.
    found = celebahq.find_images(raw)
    order = [found[i].name for i in celebahq.draw_order(len(found), 0)]
    passed_over = [NO_FACE] if order.index(NO_FACE) < len(order) - 1 else []
    assert [s["item"] for s in report["skipped"]] == passed_over
    assert all(s["reason"].startswith("no face found (dlib") for s in report["skipped"])

    # The protocol, restated: the box of the landmarks, a square of 1.2 x its longer side
    # on its centre, resized to --size; the mask is the landmarks' hull in the crop.
    sources = dict(zip(celebahq.sample_ids(found), found))
    for sample in samples:
        photo, _ = io.read_photo(raw / sources[sample.id])
        landmarks = _real_detector("dlib", "largest")(photo)[0].landmarks
        lo, hi = landmarks.min(axis=0), landmarks.max(axis=0)
        side = 1.2 * (hi - lo).max()
        centre = (lo + hi) / 2
        crop = Crop.from_box(centre[0] - side / 2, centre[1] - side / 2, side, SIZE)
        assert np.array_equal(io.quantize(io.read_image(sample.image)),
                              io.quantize(crop.warp_image(photo, "area"))), sample.id
        hull = landmark_mask(crop.transform_points(landmarks), (SIZE, SIZE))
        assert np.array_equal(io.read_mask(sample.mask), hull), sample.id


def test_the_draw_is_seeded_and_the_same_with_one_or_two_workers(raw, tmp_path, monkeypatch,
                                                                 detector):
    monkeypatch.setattr("crossmodal.parallel.available_cores", lambda: 2)
    folders = {}
    for seed, workers in (("0", "1"), ("0", "2"), ("3", "1")):
        out = tmp_path / f"seed{seed}_workers{workers}"
        assert prepare(monkeypatch, raw, out, "--count", "3", "--seed", seed,
                       "--workers", workers) == 0
        folders[seed, workers] = folder_bytes(out)
        assert sorted(s.id for s in read_dataset(out)[1]) == sorted(
            expected_ids(raw, int(seed), 3))
    assert folders["0", "1"] == folders["0", "2"]
    assert expected_ids(raw, 0, 3) != expected_ids(raw, 3, 3)  # the seed matters


def test_deleted_rows_are_made_again_identically(raw, tmp_path, monkeypatch, detector):
    out = tmp_path / "celebahq"
    assert prepare(monkeypatch, raw, out, "--count", "4") == 0
    before = folder_bytes(out)
    lines = (out / "samples.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    for line in lines[1:3]:
        ident = line.split(",")[0]
        (out / "images" / f"{ident}.png").unlink()
        (out / "masks" / f"{ident}.png").unlink()
    (out / "samples.csv").write_text("".join(lines[:1] + lines[3:]), encoding="utf-8")
    detector.calls = 0
    assert prepare(monkeypatch, raw, out, "--count", "4") == 0
    assert folder_bytes(out) == before
    assert 2 <= detector.calls <= 3  # the two missing crops, and the faceless picture
