"""``crossmodal prepare photoface`` (crossmodal.prepare.photoface) on a fabricated raw folder
in the documented layout: the bundled ICT face rendered under four known directional lights
(Lambertian, no ambient), written as BMP, for three subjects; plus a session missing an
image, one with a corrupt BMP and one without a face."""

import argparse
import csv
import functools
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from crossmodal.crop import crop_from_landmarks
from crossmodal.data.format import read_dataset
from crossmodal.errors import InputError
from crossmodal.geometry import Light, shade
from crossmodal.io import read_mask, read_normals
from crossmodal.landmarks import Face
from crossmodal.prepare import photoface
from crossmodal.render import Camera, render
from crossmodal.synth.face_model import FaceModel

SIZE = 64
#: Four lights at 40 degrees from the view axis, from the right, top, left and bottom.
LIGHTS = np.array([[0.643, 0.0, 0.766], [0.0, 0.643, 0.766], [-0.643, 0.0, 0.766],
                   [0.0, -0.643, 0.766]])
#: Subject folder -> (photo side in pixels, identity seed): the stub detector tells the
#: subjects apart by their photo size.
SUBJECTS = {"1001": (160, 1), "1002": (176, 2), "1003": (192, 3)}
GOOD = ["1001/2008-01-01_10-00-00", "1001/2008-01-02_10-00-00", "1002/2008-02-01_10-00-00",
        "1003/2008-03-01_10-00-00"]
MISSING = "1002/2008-02-02_10-00-00"   # no im3.bmp
CORRUPT = "1003/2008-03-02_10-00-00"   # im1.bmp cut short
FACELESS = "1003/2008-03-03_10-00-00"  # a uniform grey card


def angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    return np.degrees(np.arctan2(cross, (a * b).sum(-1)))


@functools.cache
def rendered_face(side: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(normals (H, W, 3), mask (H, W), landmarks (68, 2))`` of an ICT face of a random
    identity, frontal, seen by an orthographic camera."""
    model = FaceModel.load()
    identity = np.random.default_rng(seed).standard_normal(model.n_identity) * 0.7
    vertices = model.vertices(identity)
    vertices = vertices - model.landmarks(vertices).mean(0) - np.array([0, 0, 50], np.float32)
    result = render(vertices, model.triangles, Camera(side, side, ortho_scale=24 / side),
                    landmarks=model.landmarks68, ambient=0.0, specular=0.0)
    return result.normals, result.mask, result.landmarks.astype(np.float64)


def write_bmp(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))


def make_raw(raw: Path) -> Path:
    """The fabricated Photoface folder (module docstring); returns its ``--lights`` file."""
    lights_file = raw / "lights.txt"
    raw.mkdir(parents=True)
    np.savetxt(lights_file, LIGHTS)
    for k, session in enumerate(GOOD + [MISSING, CORRUPT]):
        side, seed = SUBJECTS[session.split("/")[0]]
        normals, mask, _ = rendered_face(side, seed)
        albedo = np.array([0.75, 0.55, 0.45]) * (0.8 + 0.1 * k)
        for i, light in enumerate(LIGHTS):
            if session == MISSING and i == 3:
                continue
            image = shade(normals, Light(tuple(light)), albedo=albedo, ambient=0.0, mask=mask)
            write_bmp(raw / session / f"im{i}.bmp", image)
    # The second session of 1001 carries its own lights, as zenith and azimuth in degrees.
    zenith = np.degrees(np.arccos(LIGHTS[:, 2]))
    azimuth = np.degrees(np.arctan2(LIGHTS[:, 1], LIGHTS[:, 0]))
    rows = "".join(f"{z:.4f} {a:.4f};\n" for z, a in zip(zenith, azimuth))
    (raw / GOOD[1] / "LightSource.m").write_text(f"% zenith azimuth\nL = [\n{rows}];\n")
    corrupt = raw / CORRUPT / "im1.bmp"
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    for i in range(4):
        write_bmp(raw / FACELESS / f"im{i}.bmp", np.full((192, 192, 3), 0.4))
    return lights_file


class StubDetector:
    """Gives the rendered landmarks of the subject whose photo size it sees; no face on a
    featureless picture. Counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image: np.ndarray) -> list[Face]:
        self.calls += 1
        if image.std() < 1e-3:
            return []
        seed = next(s for side, s in SUBJECTS.values() if side == image.shape[0])
        points = rendered_face(image.shape[0], seed)[2]
        return [Face(points, (*points.min(0), *points.max(0)), 1.0)]


@pytest.fixture
def stub(monkeypatch) -> StubDetector:
    detector = StubDetector()
    monkeypatch.setattr(photoface, "_detector", lambda backend: detector)
    return detector


def prepare(raw: Path, out: Path, *extra: str) -> dict:
    parser = argparse.ArgumentParser()
    photoface.register(parser.add_subparsers())
    args = parser.parse_args(["photoface", "--raw", str(raw), "--out", str(out), "--size",
                              str(SIZE), "--lights", str(raw / "lights.txt"), "--workers",
                              "1", *extra])
    assert args.func(args) == 0
    return json.loads((out / "prepare_report.json").read_text())


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path, dict]:
    """``(raw, out, report)`` of one run on the fabricated folder."""
    root = tmp_path_factory.mktemp("photoface")
    make_raw(root / "raw")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(photoface, "_detector", lambda backend: StubDetector())
        report = prepare(root / "raw", root / "out")
    return root / "raw", root / "out", report


def test_photometric_stereo_recovers_the_rendered_normals_in_the_crop(prepared):
    _, out, _ = prepared
    _, samples = read_dataset(out)
    for session in GOOD:
        subject, name = session.split("/")
        side, seed = SUBJECTS[subject]
        normals, mask, points = rendered_face(side, seed)
        truth, truth_valid = crop_from_landmarks(points, SIZE).warp_normals(normals, mask)
        row = next(s for s in samples if s.id == f"{subject}_{name}_i0")
        got_mask = read_mask(row.mask, (SIZE, SIZE))
        got, _ = read_normals(row.normal, mask=got_mask)
        scored = got_mask & truth_valid
        assert scored.sum() > 0.3 * SIZE**2
        errors = angles_deg(got[scored], truth[scored])
        assert errors.mean() < 2.0, (session, errors.mean(), np.percentile(errors, 95))


def test_the_recipe_writes_four_pairs_per_session_with_subject_disjoint_splits(prepared):
    _, out, report = prepared
    info, samples = read_dataset(out)  # also checks the splits are subject-disjoint
    assert info.image_size == SIZE and info.crop == "landmarks-1.2"
    assert len(samples) == 4 * len(GOOD) and all(s.kind == "paired" for s in samples)
    for session in GOOD:
        rows = [s for s in samples if s.id.startswith(session.replace("/", "_") + "_i")]
        assert [s.id[-2:] for s in rows] == ["i0", "i1", "i2", "i3"]
        first, _ = read_normals(rows[0].normal)
        for row in rows[1:]:
            assert np.array_equal(read_normals(row.normal)[0], first)
        assert rows[0].image.read_bytes() != rows[1].image.read_bytes()
    with open(out / "splits.csv", newline="") as file:
        splits = {r["subject"]: r["split"] for r in csv.DictReader(file)}
    assert sorted(splits) == sorted(SUBJECTS) and sorted(splits.values()) == [
        "test", "train", "val"]
    assert {s.subject: s.split for s in samples} == splits
    assert report["counts"]["sessions"] == len(GOOD)
    assert report["counts"]["train+val pairs"] + report["counts"]["test pairs"] == 16
    assert report["paper"]["train+val pairs"] == 9478 and report["paper"]["test subjects"] == 100


def test_bad_sessions_are_listed_with_their_reason_and_skipped(prepared):
    _, out, _ = prepared
    report = json.loads((out / "prepare_report.json").read_text())
    reasons = {s["item"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {MISSING, CORRUPT, FACELESS}
    assert "im3.bmp" in reasons[MISSING] and "missing" in reasons[MISSING]
    assert "im1.bmp" in reasons[CORRUPT] and "corrupt" in reasons[CORRUPT]
    assert reasons[FACELESS] == "no face found"


def test_a_rerun_on_a_finished_folder_does_no_work(prepared, tmp_path, stub, monkeypatch):
    raw, done, _ = prepared
    out = tmp_path / "out"
    shutil.copytree(done, out)
    calls, solve = [], photoface.photometric_stereo
    monkeypatch.setattr(photoface, "photometric_stereo",
                        lambda *a, **k: calls.append(1) or solve(*a, **k))
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.parent != out}
    prepare(raw, out)
    # Only the faceless session is tried again (a session skipped may have been fixed).
    assert len(calls) == 1 and stub.calls == 1
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.parent != out} == files


def test_deleted_rows_are_redone_identically(prepared, tmp_path, stub):
    raw, done, _ = prepared
    out = tmp_path / "out"
    shutil.copytree(done, out)
    table = out / "samples.csv"
    lines = table.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not line.startswith(("1001_2008-01-01", "1003_"))]
    assert len(lines) - len(kept) == 8
    table.write_text("".join(kept))
    for path in out.glob("*/1003_*"):
        path.unlink()
    prepare(raw, out)
    assert table.read_text() == (done / "samples.csv").read_text()
    for path in sorted(done.glob("*/*")):
        assert (out / path.relative_to(done)).read_bytes() == path.read_bytes(), path


def test_the_versioned_split_files_are_the_documented_draw():
    folder = photoface.SPLITS_DIR
    test = photoface._read_ranks(folder / "photoface_test.txt")
    val = photoface._read_ranks(folder / "photoface_val.txt")
    assert len(test) == 100 and len(val) == 35 and not set(test) & set(val)
    train = set(range(1, 454)) - set(test) - set(val)
    assert len(train) == 318 and sorted([*test, *val, *train]) == list(range(1, 454))
    order = np.random.default_rng(2020).permutation(453) + 1
    assert test == sorted(order[:100].tolist()) and val == sorted(order[100:135].tolist())
    for name in ("photoface_test.txt", "photoface_val.txt"):
        assert (folder / name).read_text().startswith("# Photoface")


def test_split_subjects_follows_the_files_for_453_subjects_and_draws_otherwise(caplog):
    subjects = [f"{1000 + i}" for i in range(453)][::-1]
    splits = photoface.split_subjects(subjects, photoface.SPLITS_DIR, seed=0)
    test = photoface._read_ranks(photoface.SPLITS_DIR / "photoface_test.txt")
    assert {s for s, v in splits.items() if v == "test"} == {f"{999 + r}" for r in test}
    assert sorted(splits.values()).count("val") == 35
    some = photoface.split_subjects([f"s{i}" for i in range(45)], photoface.SPLITS_DIR, 7)
    assert "not the database's 453" in caplog.text
    assert [list(some.values()).count(v) for v in ("test", "val", "train")] == [10, 3, 32]
    assert some == photoface.split_subjects([f"s{i}" for i in range(45)][::-1],
                                            photoface.SPLITS_DIR, 7)


def test_a_bmp_declaring_a_huge_size_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.bmp"
    write_bmp(path, np.zeros((4, 4, 3)))
    data = bytearray(path.read_bytes())
    data[18:26] = (100_000).to_bytes(4, "little") + (100_000).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="above the limit") as info:
        photoface.read_bmp(path)
    assert "\n" not in str(info.value)
    image = tmp_path / "ok.bmp"
    write_bmp(image, np.full((3, 5, 3), 0.5))
    assert photoface.read_bmp(image).shape == (3, 5, 3)


def test_light_files_hold_directions_or_zenith_azimuth(tmp_path):
    path = tmp_path / "LightSource.m"
    path.write_text("% zenith azimuth\nL = [0 0; 90 90;\n 90 180];\n")
    assert np.allclose(photoface.read_lights(path), [[0, 0, 1], [0, 1, 0], [-1, 0, 0]],
                       atol=1e-12)
    path.write_text("1 2\n3 4 5\n")
    with pytest.raises(InputError, match="rows of 3 numbers"):
        photoface.read_lights(path)


def test_image_patterns():
    assert photoface.image_names("im{0..3}.bmp") == [f"im{i}.bmp" for i in range(4)]
    assert photoface.image_names("a.png, b.png,c.png") == ["a.png", "b.png", "c.png"]
    assert photoface.image_names("*.bmp") == ["*.bmp"]


def test_dlib_finds_the_rendered_faces_on_the_mean_image(tmp_path):
    """The real detector (no stub), in two worker processes, on the fabricated sessions:
    every rendered face is found on the mean of its four images, the grey card is not a
    face."""
    make_raw(tmp_path / "raw")
    report = prepare(tmp_path / "raw", tmp_path / "out", "--workers", "2")
    assert report["counts"]["sessions"] == len(GOOD)
    assert {s["item"] for s in report["skipped"]} == {MISSING, CORRUPT, FACELESS}
