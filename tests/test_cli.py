"""The ``crossmodal`` command line: help, the normal-map tools, and one-line errors."""

import argparse
import importlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from crossmodal import io
from crossmodal.cli import COMMAND_MODULES, main
from crossmodal.metrics import angular_error
from crossmodal.shapes import face_relief, orthographic_sphere


@pytest.fixture
def sphere_exr(tmp_path):
    sphere = orthographic_sphere(49)
    path = tmp_path / "sphere.exr"
    io.write_normals(path, sphere.normals, mask=sphere.mask)
    return path, sphere


def registered_commands() -> dict[str, list[str]]:
    """Each module of the CLI's command table -> the commands it registers."""
    commands = {}
    for module in COMMAND_MODULES:
        subparsers = argparse.ArgumentParser(prog="crossmodal").add_subparsers()
        importlib.import_module(module).register(subparsers)
        commands[module] = list(subparsers.choices)
    return commands


COMMANDS = [c for names in registered_commands().values() for c in names]


def test_help_lists_every_command(capsys):
    assert all(registered_commands().values())  # no module of the table registers nothing
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    # argparse lists each command at the start of a line indented by four spaces.
    assert re.findall(r"^    (\S+)", out, re.MULTILINE) == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: crossmodal {command} ")


@pytest.mark.skipif(shutil.which("crossmodal") is None and not (
    __import__("pathlib").Path(sys.executable).parent / "crossmodal").exists(),
    reason="console script not installed")
def test_console_script_and_module_entry_point():
    script = shutil.which("crossmodal") or str(
        __import__("pathlib").Path(sys.executable).parent / "crossmodal")
    for cmd in ([script, "--help"], [sys.executable, "-m", "crossmodal", "--help"]):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "convert" in result.stdout


def test_conventions_lists_every_name(capsys):
    assert main(["conventions"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == [
        "opengl", "opencv", "datagen", "sfsnet", "official"]


def test_convert_to_opencv_png_and_back(tmp_path, sphere_exr):
    path, sphere = sphere_exr
    png = tmp_path / "sphere_cv.png"
    assert main(["-q", "convert", str(path), str(png), "--to", "opencv"]) == 0
    # The PNG encodes the OpenCV frame: a camera-facing pixel has z = -1, i.e. B = 0.
    raw = io.read_image(png)
    np.testing.assert_allclose(raw[24, 24], [0.5, 0.5, 0.0], atol=1e-4)
    back, valid = io.read_normals(png)  # the sidecar says opencv
    np.testing.assert_array_equal(valid, sphere.mask)
    errors, _ = angular_error(torch.from_numpy(back).permute(2, 0, 1),
                              torch.from_numpy(sphere.normals).permute(2, 0, 1))
    assert errors.max() < 0.01  # 16-bit quantisation


def test_convert_reads_a_foreign_convention(tmp_path):
    sphere = orthographic_sphere(32)
    npy = tmp_path / "foreign.npy"
    np.save(npy, sphere.normals * np.array([1, -1, -1], np.float32))  # OpenCV frame
    out = tmp_path / "ours.exr"
    assert main(["-q", "convert", str(npy), str(out), "--from", "opencv"]) == 0
    back, _ = io.read_normals(out)
    np.testing.assert_array_equal(back, sphere.normals)


def test_relight_writes_views_and_panel(tmp_path, sphere_exr):
    path, sphere = sphere_exr
    out = tmp_path / "relit"
    assert main(["-q", "relight", str(path), "--out", str(out), "--views", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "panel.png", "relit_0.png", "relit_1.png", "relit_2.png"]
    view = io.read_image(out / "relit_0.png")
    assert view.shape == (49, 49, 3)
    assert not view[~sphere.mask].any() and view[sphere.mask].max() > 0.5


def test_mesh_recovers_the_relief(tmp_path):
    face = face_relief(64)
    path = tmp_path / "face.exr"
    io.write_normals(path, face.normals, mask=face.mask)
    mesh, depth_out = tmp_path / "face.ply", tmp_path / "depth.npy"
    assert main(["-q", "mesh", str(path), "--out", str(mesh),
                 "--depth-out", str(depth_out)]) == 0
    depth = np.load(depth_out)
    m = face.mask
    residual = depth[m] - face.depth[m]
    residual -= residual.mean()
    assert np.sqrt(np.mean(residual**2)) < 0.01 * np.ptp(face.depth[m])
    assert np.isnan(depth[~m]).all()
    header = mesh.read_bytes().split(b"end_header")[0].decode()
    assert f"element vertex {int(m.sum())}" in header


@pytest.mark.parametrize("argv, message", [
    (["convert", "{missing}", "{out}"], "missing.exr"),
    (["convert", "{bad_exr}", "{out}"], "bad.exr"),
    (["convert", "{sphere}", "{tmp}/out.tiff"], ".exr"),
    (["convert", "{sphere}", "{out}", "--mask", "{small_mask}"], "mask of shape (8, 8)"),
    (["relight", "{sphere}", "--out", "{tmp}/r", "--albedo", "{small_mask}"], "resize"),
    (["convert", "{non_unit}", "{out}"], "renormal"),
])
def test_user_mistakes_end_in_one_line_and_status_2(
        tmp_path, sphere_exr, capsys, argv, message):
    path, _ = sphere_exr
    bad = tmp_path / "bad.exr"
    bad.write_bytes(path.read_bytes()[:300])
    io.write_mask(tmp_path / "small_mask.png", np.ones((8, 8), bool))
    non_unit = tmp_path / "non_unit.npy"
    np.save(non_unit, orthographic_sphere(16).normals * 2)
    names = {"missing": tmp_path / "missing.exr", "out": tmp_path / "out.exr",
             "bad_exr": bad, "sphere": path, "tmp": tmp_path,
             "small_mask": tmp_path / "small_mask.png", "non_unit": non_unit}
    code = main([a.format(**names) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("crossmodal: error:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err


def test_non_unit_input_is_accepted_with_renormalize(tmp_path):
    path = tmp_path / "non_unit.npy"
    np.save(path, orthographic_sphere(16).normals * 2)
    out = tmp_path / "fixed.exr"
    assert main(["-q", "convert", str(path), str(out), "--renormalize"]) == 0
    fixed, valid = io.read_normals(out)
    np.testing.assert_allclose(np.linalg.norm(fixed[valid], axis=-1), 1.0, atol=1e-6)
