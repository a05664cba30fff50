"""``crossmodal predict`` on a batch of real and broken inputs (issue 11, and the classes of
issue 10): one bad file is reported and skipped, never the end of the batch; outputs never
land on inputs; the exit status is non-zero only when nothing was predicted."""

import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from crossmodal import io
from crossmodal.checkpoint import save_checkpoint
from crossmodal.cli import main
from crossmodal.models import CrossModalNet
from crossmodal.photos import BUNDLED_PHOTOS

from conftest import smoke_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = smoke_model()
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt",
                           model=CrossModalNet(config),
                           config={"name": "tiny", "model": config.to_dict(),
                                   "data": {"image_size": 64}})


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """A folder of what users feed a photo tool, good and bad."""
    folder = tmp_path_factory.mktemp("photos")
    astronaut = cv2.imread(str(BUNDLED_PHOTOS["astronaut"]))  # BGR uint8
    hopper = cv2.imread(str(BUNDLED_PHOTOS["grace_hopper"]))
    data = BUNDLED_PHOTOS["astronaut"].read_bytes()
    (folder / "corrupt.jpg").write_bytes(data[:len(data) // 3])  # cut short
    (folder / "notes.png").write_text("not a picture, whatever the name says")
    cv2.imwrite(str(folder / "wall.jpg"), np.full((400, 300, 3), 128, np.uint8))
    cv2.imwrite(str(folder / "grey.png"), cv2.cvtColor(hopper, cv2.COLOR_BGR2GRAY))
    rgba = cv2.cvtColor(astronaut, cv2.COLOR_BGR2BGRA)
    rgba[..., 3] = 200
    cv2.imwrite(str(folder / "rgba.png"), rgba)
    # Stored lying on its side, with the EXIF orientation that turns it upright (6: rotate
    # 90 deg clockwise to display), as phones write them.
    sideways = np.ascontiguousarray(np.rot90(hopper[..., ::-1], 1))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(sideways).save(folder / "phone.jpg", exif=exif.tobytes(), quality=95)
    cv2.imwrite(str(folder / "sixteen.png"), astronaut.astype(np.uint16) * 257)
    return folder


GOOD = ("grey", "phone", "rgba", "sixteen")
BAD = {"corrupt.jpg": "truncated or corrupt", "notes.png": "not a PNG or JPEG file",
       "wall.jpg": "no face found"}


def run(*args):
    return main(["-q", "predict", *map(str, args)])


def test_a_batch_with_bad_files_predicts_every_good_face_and_lists_the_rest(
        checkpoint, batch, tmp_path, capsys):
    out = tmp_path / "out"
    missing = tmp_path / "nowhere.jpg"
    assert run("--checkpoint", checkpoint, batch, missing, "--out", out, "--paste-back") == 0
    err = capsys.readouterr().err
    summary = json.loads((out / "predictions.json").read_text())
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in summary["inputs"]}
    for name, reason in {**BAD, "nowhere.jpg": "does not exist"}.items():
        record = by_name[name]
        assert record["status"] == "skipped" and reason in record["reason"], record
        assert f"skipped {record['path']}: " in err
    assert summary["photos"] == len(GOOD) and summary["faces_predicted"] == len(GOOD)
    for stem in GOOD:
        record = by_name[next(n for n in by_name if n.startswith(stem + "."))]
        assert record["status"] == "ok" and len(record["faces"]) == 1, record
        normals, valid = io.read_normals(out / f"{stem}_face0_normal.exr")
        mask = io.read_mask(out / f"{stem}_face0_mask.png")
        assert normals.shape == (256, 256, 3) and (valid == mask).all() and mask.mean() > 0.1
        crop = json.loads((out / f"{stem}_face0_crop.json").read_text())
        assert crop["convention"] == "opengl" and crop["landmarks"]["backend"] == "dlib"
        assert len(crop["landmarks"]["xy"]) == 68
    # The EXIF-rotated photo was read upright: its face is found at the same place as in
    # the grey copy of the same photo, and the full-frame maps have the upright size.
    phone = json.loads((out / "phone_face0_crop.json").read_text())
    grey = json.loads((out / "grey_face0_crop.json").read_text())
    np.testing.assert_allclose(phone["crop"]["box_x0_y0_side"], grey["crop"]["box_x0_y0_side"],
                               atol=3)
    assert io.read_mask(out / "phone_mask.png").shape == (600, 512)


def test_nothing_predicted_is_a_failure(checkpoint, batch, tmp_path, capsys):
    out = tmp_path / "out"
    assert run("--checkpoint", checkpoint, batch / "wall.jpg", batch / "notes.png",
               "--out", out) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("crossmodal: error: no face was predicted: all 2 input(s) were "
                           "skipped")
    assert json.loads((out / "predictions.json").read_text())["skipped"] == 2


def test_outputs_never_land_on_inputs(checkpoint, batch, tmp_path, capsys):
    before = checkpoint.read_bytes()
    assert run("--checkpoint", checkpoint, batch / "grey.png", "--out", checkpoint) == 2
    assert "is the checkpoint" in capsys.readouterr().err
    assert run("--checkpoint", checkpoint, batch, "--out", batch / "results") == 2
    assert "inside an input folder" in capsys.readouterr().err
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.png").write_bytes((batch / "grey.png").read_bytes())
    assert run("--checkpoint", checkpoint, out / "old.png", "--out", out) == 2
    assert f"input {out / 'old.png'} lies in --out {out}" in capsys.readouterr().err
    assert checkpoint.read_bytes() == before and not (batch / "results").exists()


def test_same_file_names_in_two_folders_do_not_collide(checkpoint, batch, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "face.png").write_bytes((batch / "grey.png").read_bytes())
    out = tmp_path / "out"
    assert run("--checkpoint", checkpoint, a / "face.png", b / "face.png", "--out", out) == 0
    summary = json.loads((out / "predictions.json").read_text())
    assert [r["name"] for r in summary["inputs"]] == ["face", "face-2"]
    assert (out / "face_face0_normal.exr").is_file() and (out / "face-2_face0_normal.exr").is_file()


def test_globs_and_folders_expand_and_a_pattern_matching_nothing_is_reported(
        checkpoint, batch, tmp_path):
    out = tmp_path / "out"
    assert run("--checkpoint", checkpoint, str(batch / "g*.png"), str(tmp_path / "z*.jpg"),
               "--out", out) == 0
    inputs = json.loads((out / "predictions.json").read_text())["inputs"]
    assert [(r["input"].rsplit("/", 1)[-1], r["status"]) for r in inputs] == [
        ("g*.png", "ok"), ("z*.jpg", "skipped")]
    assert "matches no file" in inputs[1]["reason"]


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--crop-size", "16"], "--crop-size must be at least 32, got 16"),
    (["--min-face", "-1"], "--min-face must be at least 0, got -1"),
    (["--backend", "onnx"], "--backend onnx runs an ONNX export, and"),
])
def test_bad_options_are_one_line_before_any_work(checkpoint, batch, tmp_path, capsys, argv,
                                                  message):
    out = tmp_path / "out"
    assert run("--checkpoint", checkpoint, batch / "grey.png", "--out", out, *argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_a_huge_jpeg_is_decoded_smaller_and_its_face_still_found(
        checkpoint, tmp_path, monkeypatch):
    """Above the pixel limit a JPEG is decoded at 1/2, 1/4 or 1/8 (never whole); a PNG is
    refused (a 20,000 x 20,000 PNG: tests/robustness/test_readers.py)."""
    big = cv2.resize(cv2.imread(str(BUNDLED_PHOTOS["grace_hopper"])), (1024, 1200))
    cv2.imwrite(str(tmp_path / "big.jpg"), big)
    cv2.imwrite(str(tmp_path / "big.png"), big)
    monkeypatch.setenv("CROSSMODAL_MAX_IMAGE_PIXELS", str(600 * 700))
    out = tmp_path / "out"
    assert run("--checkpoint", checkpoint, tmp_path / "big.jpg", tmp_path / "big.png",
               "--out", out, "--paste-back") == 0
    jpeg, png = json.loads((out / "predictions.json").read_text())["inputs"]
    assert jpeg["status"] == "ok" and "above the limit" in png["reason"]
    assert json.loads((out / "big_face0_crop.json").read_text())["photo_decoded_at"] == 0.5
    assert io.read_mask(out / "big_mask.png").shape == (600, 512)


def test_relight_depth_and_mesh_outputs(checkpoint, batch, tmp_path):
    import trimesh

    out = tmp_path / "out"
    assert run("--checkpoint", checkpoint, batch / "grey.png", "--out", out, "--relight",
               "--depth", "--mesh") == 0
    mask = io.read_mask(out / "grey_face0_mask.png")
    depth = np.load(out / "grey_face0_depth.npy")
    assert depth.shape == mask.shape and np.isfinite(depth[mask]).all()
    assert np.isnan(depth[~mask]).all() and abs(np.nanmean(depth)) < 1e-6  # mean 0 (Poisson)
    mesh = trimesh.load(out / "grey_face0_mesh.obj", process=False)
    assert len(mesh.vertices) == mask.sum() and len(mesh.faces) > len(mesh.vertices)
    relit = io.read_image(out / "grey_face0_relit.png")
    assert relit.shape[1] > 6 * 256  # photo | normals | four lights
    assert io.read_image(out / "grey_face0_depth.png").shape == (256, 256, 3)


def test_an_onnx_export_predicts_what_the_checkpoint_does(checkpoint, batch, tmp_path):
    """``--backend onnx`` (implied by a .onnx checkpoint) runs onnxruntime through the same
    crop, resize and paste-back path: the normals equal torch's to float precision."""
    pytest.importorskip("onnxruntime")
    onnx = tmp_path / "tiny.onnx"
    assert main(["-q", "export", "--checkpoint", str(checkpoint), "--onnx", str(onnx)]) == 0
    for backend, model in (("torch", checkpoint), ("onnx", onnx)):
        assert run("--checkpoint", model, batch / "grey.png", "--out", tmp_path / backend) == 0
    torch_normals, _ = io.read_normals(tmp_path / "torch" / "grey_face0_normal.exr")
    onnx_normals, _ = io.read_normals(tmp_path / "onnx" / "grey_face0_normal.exr")
    np.testing.assert_allclose(onnx_normals, torch_normals, atol=1e-5)
    summary = json.loads((tmp_path / "onnx" / "predictions.json").read_text())
    assert summary["backend"] == "onnx"
