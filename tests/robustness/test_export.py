"""``crossmodal export`` and the ONNX readers: the output never lands on the checkpoint,
bad options, checkpoints and ONNX files end in one line, an export that does not reproduce
torch is not kept, and missing ONNX packages say how to install them.

Every refusal here comes before any export, so no test pays for one (the ONNX files read
are a few hundred bytes, built with ``onnx.helper``)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crossmodal.checkpoint import save_checkpoint
from crossmodal.cli import main
from crossmodal.errors import CrossmodalError
from crossmodal.models import CrossModalNet

from conftest import one_error_line, smoke_model

onnx = pytest.importorskip("onnx")

from crossmodal.onnx_export import (  # noqa: E402 (after the skip)
    OnnxImageToNormal, load_onnx_predictor, onnx_metadata)

ROOT = Path(__file__).resolve().parents[2]
INSTALL = "pip install 'crossmodal[export]'"


def write_checkpoint(path: Path, data: dict | None = None) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(path, model=CrossModalNet(smoke_model()), config={
        "name": "tiny", "model": smoke_model().to_dict(),
        "data": {"image_size": 32} if data is None else data})


@pytest.fixture
def checkpoint(tmp_path):
    return write_checkpoint(tmp_path / "run" / "best.pt")


def export(checkpoint, onnx_path, *extra) -> int:
    return main(["-q", "export", "--checkpoint", str(checkpoint), "--onnx", str(onnx_path),
                 *map(str, extra)])


def identity_onnx(path: Path, metadata: dict[str, str] | None = None, size: int = 32) -> Path:
    """A valid ONNX model ``image (N, 3, size, size) -> normals``, an Identity, carrying
    ``metadata``: what another tool could have written."""
    shape = ["N", 3, size, size]
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["image"], ["normals"])], "identity",
        [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, shape)],
        [onnx.helper.make_tensor_value_info("normals", onnx.TensorProto.FLOAT, shape)])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    model.ir_version = 8  # readable by any onnxruntime >= 1.18 (the extra's floor)
    onnx.helper.set_model_props(model, metadata or {})
    onnx.checker.check_model(model)
    onnx.save_model(model, path)
    return path


CROSSMODAL_METADATA = {"crossmodal_version": "0.1.0", "image_size": "32", "variant": "full",
                       "convention": "opengl", "source": "best.pt"}


# ------------------------------------------------------------ the output is not an input

def test_export_onto_its_checkpoint_is_refused_and_the_checkpoint_unchanged(checkpoint):
    """As a user runs it, in a fresh process."""
    before = checkpoint.read_bytes()
    run = subprocess.run([sys.executable, "-m", "crossmodal", "export", "--checkpoint",
                          checkpoint, "--onnx", checkpoint],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crossmodal: error: --onnx"), run.stderr
    assert "is the checkpoint" in lines[0] and "would destroy it" in lines[0]
    assert checkpoint.read_bytes() == before


@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_export_onto_a_link_to_its_checkpoint_is_refused(tmp_path, checkpoint, capsys, link):
    before = checkpoint.read_bytes()
    target = tmp_path / "model.onnx"  # the right suffix: only the link gives it away
    (os.symlink if link == "symbolic" else os.link)(checkpoint, target)
    line = one_error_line(capsys, export(checkpoint, target))
    assert "is the checkpoint" in line and str(target) in line
    assert checkpoint.read_bytes() == before and target.read_bytes() == before


def test_export_onto_an_existing_folder_is_refused(tmp_path, checkpoint, capsys):
    folder = tmp_path / "exports.onnx"
    folder.mkdir()
    line = one_error_line(capsys, export(checkpoint, folder))
    assert "is an existing folder" in line and str(folder) in line
    assert list(folder.iterdir()) == []


def test_export_needs_an_onnx_suffix(tmp_path, checkpoint, capsys):
    out = tmp_path / "model.pt"
    line = one_error_line(capsys, export(checkpoint, out))
    assert "ending in .onnx" in line and str(out) in line
    assert not out.exists()


# ------------------------------------------------------------------ bad checkpoints, options

@pytest.mark.parametrize("case", ["missing", "truncated", "not a torch file"])
def test_export_of_a_missing_or_corrupt_checkpoint_is_one_line(
        tmp_path, checkpoint, capsys, case):
    bad = tmp_path / "bad.pt"
    if case == "truncated":
        bad.write_bytes(checkpoint.read_bytes()[:5000])
    elif case == "not a torch file":
        bad.write_text("not a checkpoint\n")
    out = tmp_path / "model.onnx"
    line = one_error_line(capsys, export(bad, out))
    assert str(bad) in line
    assert ("does not exist" if case == "missing" else "cannot read checkpoint") in line
    assert not out.exists()


@pytest.mark.parametrize("option, value, named", [
    ("--image-size", 50, "--image-size 50 is not a positive multiple of 32"),
    ("--image-size", 0, "--image-size 0 is not a positive multiple of 32"),
    ("--opset", 11, "--opset 11 is not one the exporter can write"),
    ("--opset", 999, "--opset 999 is not one the exporter can write"),
])
def test_export_refuses_sizes_and_opsets_it_cannot_write(tmp_path, checkpoint, capsys,
                                                         option, value, named):
    out = tmp_path / "model.onnx"
    line = one_error_line(capsys, export(checkpoint, out, option, value))
    assert named in line
    assert not out.exists()


def test_export_of_a_checkpoint_without_its_image_size_asks_for_one(tmp_path, capsys):
    bare = write_checkpoint(tmp_path / "bare.pt", data={})
    out = tmp_path / "model.onnx"
    line = one_error_line(capsys, export(bare, out))
    assert "bare.pt does not record the resolution it was trained at" in line
    assert "--image-size" in line and not out.exists()


def test_an_export_that_does_not_reproduce_torch_is_not_kept(tmp_path, checkpoint, capsys,
                                                             monkeypatch):
    """An exporter fault, simulated: the file is never renamed into place, and the file
    that was there stays as it was."""
    import crossmodal.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "export_onnx",
                        lambda ckpt, out, **_: Path(out).write_bytes(b"onnx"))
    out = tmp_path / "exports" / "model.onnx"
    out.parent.mkdir()
    out.write_bytes(b"an earlier export")
    for difference in (0.01, float("nan")):
        monkeypatch.setattr(onnx_export, "verify_onnx", lambda path, ckpt, d=difference: d)
        line = one_error_line(capsys, export(checkpoint, out))
        assert "does not reproduce its normals" in line and "nothing was written" in line
        assert str(checkpoint) in line
        assert [p.name for p in out.parent.iterdir()] == ["model.onnx"]
        assert out.read_bytes() == b"an earlier export"


# ------------------------------------------------------------------- reading ONNX files

READERS = {"onnx_metadata": onnx_metadata, "load_onnx_predictor": load_onnx_predictor,
           "OnnxImageToNormal": OnnxImageToNormal}


def _corrupt(path: Path, case: str) -> Path:
    if case == "truncated":
        whole = identity_onnx(path.with_name("whole.onnx"), CROSSMODAL_METADATA).read_bytes()
        path.write_bytes(whole[:len(whole) // 2])
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("this is not an ONNX model\n")
    elif case == "random bytes":
        path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8,
                                       generator=torch.Generator().manual_seed(0))
                         .numpy().tobytes())
    elif case == "a checkpoint":
        path.write_bytes(write_checkpoint(path.with_name("c.pt")).read_bytes())
    return path


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("case", ["missing", "a folder", "truncated", "empty", "text",
                                  "random bytes", "a checkpoint"])
def test_loading_a_corrupt_onnx_file_is_one_line(tmp_path, case, reader):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "model.onnx"
    if case == "a folder":
        path.mkdir()
    elif case != "missing":
        _corrupt(path, case)
    with pytest.raises(CrossmodalError) as err:
        READERS[reader](path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message, message
    assert "crossmodal export" in message  # how to get a good file


@pytest.mark.parametrize("reader", READERS)
def test_an_onnx_model_not_exported_by_crossmodal_is_refused(tmp_path, reader):
    pytest.importorskip("onnxruntime")
    path = identity_onnx(tmp_path / "other.onnx", {"author": "someone else"})
    with pytest.raises(CrossmodalError, match="an ONNX model that crossmodal did not export"
                       ) as err:
        READERS[reader](path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("case", ["image_size not a number", "image_size 50",
                                  "another graph"])
def test_an_onnx_file_with_damaged_metadata_or_graph_is_refused(tmp_path, case):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "model.onnx"
    if case == "another graph":  # says 32 px, takes 64
        identity_onnx(path, CROSSMODAL_METADATA, size=64)
    else:
        size = "thirty-two" if case == "image_size not a number" else "50"
        identity_onnx(path, {**CROSSMODAL_METADATA, "image_size": size})
    with pytest.raises(CrossmodalError) as err:
        load_onnx_predictor(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert ("not an image->normal export" if case == "another graph"
            else "damaged image_size") in message


# ----------------------------------------------------------- the optional packages missing

@pytest.mark.parametrize("package", ["onnxruntime", "onnxscript", "onnx"])
def test_without_an_onnx_package_export_says_how_to_install(tmp_path, checkpoint, capsys,
                                                            monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` raises ImportError
    out = tmp_path / "model.onnx"
    line = one_error_line(capsys, export(checkpoint, out))
    assert line.endswith(INSTALL) and package in line
    assert not out.exists()


def test_without_onnxruntime_loading_an_export_says_how_to_install(tmp_path, monkeypatch):
    path = identity_onnx(tmp_path / "model.onnx", CROSSMODAL_METADATA)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    for reader in (load_onnx_predictor, OnnxImageToNormal):
        with pytest.raises(CrossmodalError, match=r"onnxruntime, which is not installed") as err:
            reader(path)
        assert str(err.value).endswith(INSTALL)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(CrossmodalError, match="onnx, which is not installed"):
        onnx_metadata(path)
