"""Synthetic faces: the plan, the renders, determinism, resuming, and the flip convention."""

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import replace

import numpy as np
import pytest
import torch

from crossmodal.cli import main
from crossmodal.data.augment import hflip
from crossmodal.data.format import read_dataset
from crossmodal.render import Camera, Intrinsics, render
from crossmodal.synth.face_model import FaceModel
import crossmodal.parallel as parallel
from crossmodal.synth.generate import generate
from crossmodal.synth.sampler import SynthConfig, plan_dataset, render_sample

SMALL = replace(SynthConfig(), size=64)


@pytest.fixture(scope="module")
def model():
    return FaceModel.load()


def folder_digest(root):
    """Every file's bytes, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_plan_is_subject_disjoint_with_disjoint_unpaired_identities():
    plans = plan_dataset(400, SynthConfig())
    split_of, kind_of = {}, defaultdict(set)
    for p in plans:
        assert split_of.setdefault(p.subject, p.split) == p.split
        kind_of[p.subject].add(p.kind)
    # Each identity has exactly one data type, so unpaired identities never appear paired.
    assert all(len(kinds) == 1 for kinds in kind_of.values())
    subjects = Counter(split_of.values())
    assert subjects == {"train": 80, "val": 10, "test": 10}
    kinds = Counter(p.kind for p in plans if p.split == "train")
    assert kinds == {"paired": 192, "image": 64, "normal": 64}  # 48/16/16 subjects x 4
    assert {p.kind for p in plans if p.split != "train"} == {"paired"}
    assert [p.id for p in plans[:2]] == ["synth_000000", "synth_000001"]


def test_tiny_plan_still_has_val_and_test():
    plans = plan_dataset(12, SynthConfig())  # 3 subjects
    assert Counter(p.split for p in plans) == {"train": 4, "val": 4, "test": 4}


def test_render_sample_is_a_valid_cropped_face(model):
    plans = plan_dataset(8, SMALL)
    a = render_sample(plans[5], 3, SMALL, model)
    b = render_sample(plans[5], 3, SMALL, model)
    for x, y in ((a.image, b.image), (a.normals, b.normals), (a.mask, b.mask)):
        np.testing.assert_array_equal(x, y)  # same (sample, seed) -> same arrays
    assert a.image.shape == (64, 64, 3) and a.image.min() >= 0 and a.image.max() <= 1
    length = np.linalg.norm(a.normals[a.mask], axis=-1)
    np.testing.assert_allclose(length, 1.0, atol=1e-5)
    # The facial mask sits inside the rendered surface and the normals face the camera.
    assert a.mask.sum() > 0.2 * 64 * 64
    assert np.all(np.any(a.normals != 0, axis=-1)[a.mask])
    assert (a.normals[a.mask][:, 2] >= 0).all()
    # Crop protocol: the landmarks' box, enlarged 1.2x, spans the image.
    lo, hi = a.landmarks.min(0), a.landmarks.max(0)
    side = (hi - lo).max()
    assert side * 1.2 == pytest.approx(64, abs=0.05)
    other = render_sample(plans[6], 3, SMALL, model)
    assert not np.array_equal(a.image, other.image)


def test_visible_landmarks_land_on_pixels_of_their_depth(model):
    config = replace(SynthConfig(), size=256, shadow_probability=0.0)
    identity = np.random.default_rng(0).standard_normal(model.n_identity)
    vertices = model.vertices(identity) - np.array([0, 0, 60.0], np.float32)
    camera = Camera.perspective(config.size, 30.0)
    result = render(vertices, model.triangles, camera, landmarks=model.landmarks68)
    visible = result.landmarks_visible
    assert visible.sum() >= 60  # a frontal face shows nearly all of its landmarks
    u, v = np.round(result.landmarks[visible]).astype(int).T
    assert result.mask[v, u].all()
    depth = np.where(result.mask, result.depth, np.inf)
    window = np.stack([depth[v + dv, u + du] for dv in (-1, 0, 1) for du in (-1, 0, 1)])
    target = result.landmarks_depth[visible]
    # Away from depth edges the pixel under a landmark has the landmark's depth (1 px is
    # ~1.3 mm here; steep places such as the nose's sides change a few mm a pixel).
    smooth = np.ptp(window, axis=0) < 1.0
    assert smooth.sum() >= 45  # the inner face: brows, eyes, nose, mouth
    np.testing.assert_allclose(depth[v, u][smooth], target[smooth], atol=0.4)
    # The jaw contour is a silhouette: seen at grazing angles the surface's depth changes
    # by centimetres within a pixel, so there only the position is checked (on the face).


def test_mirrored_mesh_render_equals_the_flip_augmentation(model):
    rng = np.random.default_rng(1)
    vertices = model.vertices(rng.standard_normal(model.n_identity),
                              {"jawLeft": 0.6, "mouthSmile_L": 0.8})
    # An asymmetric pose too, so the mirror is a different picture.
    c, s = np.cos(0.4), np.sin(0.4)
    vertices = vertices @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], np.float32).T
    vertices[:, 2] -= 55.0
    camera = Camera(128, 128, Intrinsics(300.0, 300.0, 63.5, 63.5))  # centred: mirrors onto itself
    original = render(vertices, model.triangles, camera)
    mirrored = render(vertices * np.array([-1, 1, 1], np.float32),
                      model.triangles[:, ::-1].copy(), camera)  # mirroring flips the winding
    flipped = hflip({"normals": torch.from_numpy(original.normals).permute(2, 0, 1),
                     "mask": torch.from_numpy(original.mask)})
    flipped_mask = flipped["mask"].numpy()
    flipped_normals = flipped["normals"].permute(1, 2, 0).numpy()
    differ = flipped_mask != mirrored.mask
    assert differ.sum() <= 0.01 * mirrored.mask.sum()  # boundary pixels only
    both = flipped_mask & mirrored.mask
    cos = np.clip((flipped_normals[both] * mirrored.normals[both]).sum(-1), -1, 1)
    angles = np.degrees(np.arccos(cos))
    assert np.percentile(angles, 99) < 1.0 and np.median(angles) < 0.05


def test_same_seed_same_bytes_with_one_and_two_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(parallel, "available_cores", lambda: 2)  # a pool, even on one core
    # Same folder name in different places: the name is recorded in dataset.json.
    one = generate(tmp_path / "one" / "synth", 10, seed=7, config=SMALL, workers=1, progress=False)
    two = generate(tmp_path / "two" / "synth", 10, seed=7, config=SMALL, workers=2, progress=False)
    assert folder_digest(one) == folder_digest(two)
    other = generate(tmp_path / "other" / "synth", 10, seed=8, config=SMALL, workers=1,
                     progress=False)
    assert folder_digest(one)["normals/synth_000000.exr"] != \
        folder_digest(other)["normals/synth_000000.exr"]


def test_resuming_completes_a_partial_folder_identically(tmp_path):
    whole = generate(tmp_path / "whole" / "synth", 12, config=SMALL, progress=False)
    part = generate(tmp_path / "part" / "synth", 12, config=SMALL, progress=False)
    # Simulate a run killed after 5 samples: the rows and files of the rest are gone.
    lines = (part / "samples.csv").read_text().splitlines()
    (part / "samples.csv").write_text("\n".join(lines[:6]) + "\n")
    for name in ("images", "normals", "masks"):
        for f in sorted((part / name).iterdir())[5:]:
            f.unlink()
    generate(part, 12, config=SMALL, progress=False)
    assert folder_digest(part) == folder_digest(whole)
    info, samples = read_dataset(part)
    assert len(samples) == 12 and info.image_size == 64


def test_resuming_with_other_options_is_refused(tmp_path, capsys):
    generate(tmp_path / "d", 4, config=SMALL, progress=False)
    code = main(["synth", "--out", str(tmp_path / "d"), "--count", "8", "--size", "64"])
    assert code == 2
    assert "other options" in capsys.readouterr().err


def test_synth_command_writes_the_format_and_a_preview(tmp_path):
    out = tmp_path / "synth"
    assert main(["-q", "synth", "--out", str(out), "--count", "8", "--size", "64",
                 "--per-subject", "2", "--kinds", "1,1,0", "--preview"]) == 0
    info, samples = read_dataset(out)
    assert info.convention == "opengl" and info.crop == "landmarks-1.2"
    assert {s.kind for s in samples if s.split == "train"} <= {"paired", "image"}
    options = json.loads((out / "synth.json").read_text())
    assert options["count"] == 8 and options["config"]["size"] == 64
    from crossmodal.io import read_image
    sheet = read_image(out / "preview.png")
    assert sheet.shape[0] > 4 * 64 and sheet.shape[1] > 6 * 64  # 8 samples, 2 a row


@pytest.mark.parametrize("argv, message", [
    (["--size", "100"], "multiple of 32"),
    (["--val", "0.6", "--test", "0.5"], "leave identities"),
    (["--kinds", "1,2"], None),
])
def test_synth_rejects_bad_options(tmp_path, capsys, argv, message):
    args = ["synth", "--out", str(tmp_path / "x"), "--count", "4", *argv]
    if message is None:  # argparse's own error
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 2
        assert "PAIRED,IMAGE,NORMAL" in capsys.readouterr().err
    else:
        assert main(args) == 2
        assert message in capsys.readouterr().err
