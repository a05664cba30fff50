"""ONNX export of the image->normal pass (``crossmodal.onnx_export``, ``crossmodal export``):
onnxruntime reproduces torch at any batch size and for every variant, runs behind the one
inference path, and the file says what it holds.

On the smoke model with random BatchNorm statistics, so that folding BatchNorm into the
convolutions, which the exporter's optimiser does, is tested too."""

import contextlib
import io
import logging
import subprocess
import sys

import pytest
import torch

import crossmodal
from crossmodal.checkpoint import build_model, load_checkpoint, save_checkpoint
from crossmodal.cli import main
from crossmodal.errors import InputError
from crossmodal.inference import NormalPredictor
from crossmodal.models import CrossModalNet

from conftest import smoke_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from crossmodal.onnx_export import (  # noqa: E402 (after the skips)
    OnnxImageToNormal, export_onnx, load_onnx_predictor, onnx_metadata)

SIZE = 64


def write_checkpoint(path, **changes):
    """A smoke-model checkpoint trained (its config says) at SIZE px, with random weights
    and random BatchNorm statistics and affine terms."""
    torch.manual_seed(0)
    model = CrossModalNet(smoke_model(**changes)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    return save_checkpoint(path, model=model, config={
        "name": "tiny", "model": smoke_model(**changes).to_dict(),
        "data": {"image_size": SIZE}})


def torch_normals(checkpoint, images):
    """What the checkpoint's torch model predicts for ``images``, at their size."""
    model = build_model(load_checkpoint(checkpoint))
    with torch.inference_mode():
        return model(images, "image_to_normal", outputs=("normals",))["normals"]


def images(count, size=SIZE, seed=1):
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(checkpoint, its ONNX export), exported once, by the command as a user runs it, for
    the tests that only read them; the command's exit status and log are checked by
    :func:`test_export_command_writes_a_verified_file`."""
    root = tmp_path_factory.mktemp("onnx")
    checkpoint = write_checkpoint(root / "run" / "best.pt")
    path = root / "exports" / "best.onnx"
    log = io.StringIO()
    with contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
        status = main(["export", "--checkpoint", str(checkpoint), "--onnx", str(path)])
    root_logger = logging.getLogger()
    for handler in list(root_logger.handlers):  # the command's, writing into `log`
        if getattr(handler, "stream", None) is log:
            root_logger.removeHandler(handler)
    return checkpoint, path, status, log.getvalue()


def test_onnx_matches_torch_at_two_batch_sizes(exported):
    """The acceptance criterion: within 1e-4 (max abs) on random inputs, batch 1 and 3,
    neither of which is the exported example's batch of 2."""
    checkpoint, path, *_ = exported
    model = OnnxImageToNormal(path)
    for count in (1, 3):
        x = images(count)
        got = model(x)["normals"]
        assert got.shape == (count, 3, SIZE, SIZE) and got.dtype == torch.float32
        assert (got - torch_normals(checkpoint, x)).abs().max() < 1e-4
        assert torch.allclose(got.norm(dim=1), torch.ones(1), atol=1e-5)  # unit vectors


@pytest.mark.parametrize("changes", [
    {"variant": "no_skips"}, {"variant": "no_normal_encoder"}, {"variant": "plain_unet"},
    pytest.param({"output_activation": "tanh"}, marks=pytest.mark.slow),
], ids=lambda c: "-".join(map(str, c.values())))
def test_every_variant_exports_its_image_to_normal_pass(tmp_path, changes):
    checkpoint = write_checkpoint(tmp_path / "ckpt.pt", **changes)
    path = export_onnx(checkpoint, tmp_path / "model.onnx")
    x = images(2)
    got = OnnxImageToNormal(path)(x)["normals"]
    assert (got - torch_normals(checkpoint, x)).abs().max() < 1e-4
    assert onnx_metadata(path)["variant"] == changes.get("variant", "full")


@pytest.mark.parametrize("crop", [96, 48], ids=["shrunk-96px", "enlarged-48px"])
def test_the_onnx_predictor_equals_the_torch_predictor_on_crops_of_another_size(
        exported, crop):
    """Resizing to the model's 64 px and back is the shared NormalPredictor's, and 5 crops
    in batches of 2 go through the export's dynamic batch."""
    checkpoint, path, *_ = exported
    crops = images(5, size=crop, seed=2)
    expected = NormalPredictor.from_checkpoint(checkpoint, device="cpu", batch_size=2)(crops)
    predictor = load_onnx_predictor(path, batch_size=2)
    assert predictor.image_size == SIZE
    got = predictor(crops)
    assert got.shape == (5, 3, crop, crop)
    assert (got - expected).abs().max() < 1e-4


def test_metadata_round_trip(exported):
    checkpoint, path, *_ = exported
    stored = load_checkpoint(checkpoint)
    expected = {"crossmodal_version": crossmodal.__version__,
                "image_size": SIZE, "variant": "full", "convention": "opengl",
                "source": "best.pt"}
    if stored["git_commit"]:
        expected["git_commit"] = stored["git_commit"]
    assert onnx_metadata(path) == expected
    assert OnnxImageToNormal(path).metadata == expected
    graph = onnx.load(path).graph
    (image,), (normals,) = graph.input, graph.output
    assert (image.name, normals.name) == ("image", "normals")
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [3, SIZE, SIZE]  # a dynamic batch


def test_a_loaded_checkpoint_exports_at_another_size_in_its_convention(exported, tmp_path):
    """A checkpoint dict (imported weights, convention 'official', no commit) exported at
    32 px instead of its 64."""
    checkpoint, *_ = exported
    stored = load_checkpoint(checkpoint)
    stored["config"]["source"] = {"official_model": "model.pth", "output_convention": "official"}
    stored["git_commit"] = None
    path = export_onnx(stored, tmp_path / "official.onnx", image_size=32)
    assert onnx_metadata(path) == {
        "crossmodal_version": crossmodal.__version__, "image_size": 32, "variant": "full",
        "convention": "official", "source": "in-memory"}
    x = images(2, size=32)
    assert (OnnxImageToNormal(path)(x)["normals"]
            - torch_normals(checkpoint, x)).abs().max() < 1e-4


def test_the_onnx_module_takes_only_what_was_exported(exported):
    _, path, *_ = exported
    model = OnnxImageToNormal(path)
    assert list(model.parameters()) == [] and model.eval() is model
    assert set(model(images(1), "image_to_normal", outputs=None)) == {"normals"}
    for call, named in ((lambda: model(images(1), "normal_to_normal"), "image_to_normal pass only"),
                        (lambda: model(images(1), outputs=("normals", "image")), "normals only"),
                        (lambda: model(images(1, size=32)), f"(B, 3, {SIZE}, {SIZE})")):
        with pytest.raises(InputError, match="ONNX model") as err:
            call()
        assert named in str(err.value) and str(path) in str(err.value)


def test_export_command_writes_a_verified_file(exported):
    checkpoint, path, status, log = exported
    assert status == 0
    assert onnx_metadata(path)["image_size"] == SIZE
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.onnx"]  # no temporaries
    assert "onnxruntime matches torch within" in log and f"wrote {path}" in log
    assert " MB)" in log and "full variant" in log and "(B, 3, 64, 64)" in log
    # Nothing on standard output, and not the exporter's own chatter (a hundred optimiser
    # lines at INFO, torch's warning that torchvision is missing).
    assert all(line.startswith("INFO crossmodal.") for line in log.splitlines()), log


def test_importing_the_module_loads_no_onnx_package():
    code = ("import sys, crossmodal.onnx_export, crossmodal.commands.export; "
            "print(sorted(m for m in ('onnx', 'onnxscript', 'onnxruntime') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr
