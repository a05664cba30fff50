"""Issue 10, classes 2, 4 (checkpoints) and 5: a result that is no result is not a success,
checkpoints of any structure end in one line, and no command's output lands on its inputs.

Every input is fabricated in ``tmp_path``: a two-face 32 px dataset and the smoke model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from crossmodal import io
from crossmodal.checkpoint import load_checkpoint, save_checkpoint
from crossmodal.checkpoint.official import OFFICIAL_TO_OURS, TARGET_SHAPES, import_official
from crossmodal.cli import main
from crossmodal.data import DatasetInfo, DatasetWriter
from crossmodal.errors import CrossmodalError
from crossmodal.inference import NormalPredictor
from crossmodal.models import CrossModalNet
from crossmodal.shapes import orthographic_sphere

from conftest import compact_copy, one_error_line, smoke_model

SIZE = 32
ROOT = Path(__file__).resolve().parents[2]


def write_dataset(root: Path, *, empty_masks: bool = False) -> Path:
    """Two paired test faces (a sphere's normals on a grey image), SIZE px."""
    info = DatasetInfo(name="tiny", source="tests", license="MIT", image_size=SIZE,
                       created_by="tests")
    sphere = orthographic_sphere(SIZE)
    mask = np.zeros_like(sphere.mask) if empty_masks else sphere.mask
    with DatasetWriter(root, info) as writer:
        for i in range(2):
            writer.add(f"f{i}", f"s{i}", "test", image=np.full((SIZE, SIZE, 3), 0.25 + i / 4),
                       normals=sphere.normals, mask=mask)
    return root


def write_checkpoint(path: Path, fill: float | None = None) -> Path:
    """The smoke model; ``fill`` sets every weight of its normal decoder."""
    torch.manual_seed(0)
    model = CrossModalNet(smoke_model()).eval()
    if fill is not None:
        with torch.no_grad():
            for p in model.normal_decoder.parameters():
                p.fill_(fill)
    return save_checkpoint(path, model=model, config={
        "name": "tiny", "model": smoke_model().to_dict(), "data": {"image_size": SIZE}})


# New for each test, so that an output that was not refused cannot spoil the next test.
@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path / "faces")


@pytest.fixture
def checkpoint(tmp_path):
    return write_checkpoint(tmp_path / "run" / "best.pt")


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    """One checkpoint for the tests that only read it."""
    return write_checkpoint(tmp_path_factory.mktemp("good") / "best.pt")


def eval_args(checkpoint, dataset, *extra) -> list[str]:
    return ["-q", "eval", "--checkpoint", str(checkpoint), "--data", str(dataset),
            "--device", "cpu", *map(str, extra)]


# ------------------------------------------------------------ class 5: no result, no success

def test_eval_with_every_mask_empty_exits_2_saying_so(tmp_path, checkpoint, capsys):
    data = write_dataset(tmp_path / "empty", empty_masks=True)
    out = tmp_path / "eval.json"
    line = one_error_line(capsys, main(eval_args(checkpoint, data, "--out", out)))
    assert "no pixel could be scored" in line and "2 images" in line
    assert "empty mask" in line and str(data) in line
    assert not out.exists()


def test_eval_with_every_prediction_non_finite_exits_2_saying_so(tmp_path, dataset, capsys):
    """Finite weights so large that every prediction overflows to NaN/inf."""
    ckpt = write_checkpoint(tmp_path / "overflow.pt", fill=3e38)
    line = one_error_line(capsys, main(eval_args(ckpt, dataset)))
    assert "no pixel could be scored" in line and "NaN, inf or zero prediction" in line
    assert str(ckpt) in line
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_checkpoint_with_non_finite_weights_is_refused_at_load(
        tmp_path, dataset, capsys, value):
    ckpt = write_checkpoint(tmp_path / "diverged.pt", fill=value)
    for load in (load_checkpoint, NormalPredictor.from_checkpoint):
        with pytest.raises(CrossmodalError, match="non-finite") as err:
            load(ckpt)
        assert str(ckpt) in str(err.value) and "normal_decoder." in str(err.value)
    line = one_error_line(capsys, main(eval_args(ckpt, dataset)))
    assert "non-finite" in line and str(ckpt) in line


# ------------------------------------------------ class 4: checkpoints of any structure

def _set(path: tuple, value):
    def change(checkpoint):
        *parents, key = path
        node = checkpoint
        for p in parents:
            node = node[p]
        node[key] = value
    return change


MALFORMED = {
    "model not a dict": (_set(("model",), [1, 2]), "'model'"),
    "model values not tensors": (_set(("model", "normal_decoder.head.weight"), 0.5),
                                 "normal_decoder.head.weight"),
    "model names not strings": (_set(("model", 3), torch.zeros(1)), "'model'"),
    "config a list": (_set(("config",), [1, 2]), "config"),
    "config.model unknown key": (_set(("config", "model", "depth"), 3), "model.depth"),
    "config.model wrong type": (_set(("config", "model", "trunk_width"), "wide"),
                                "model.trunk_width"),
    "config.model widths not a list": (_set(("config", "model", "normal_decoder_widths"), 5),
                                       "model.normal_decoder_widths"),
    "config.data a list": (_set(("config", "data"), [32]), "config['data']"),
    "config.data.image_size a string": (_set(("config", "data", "image_size"), "32"),
                                        "image_size"),
    "config.name a number": (_set(("config", "name"), 7), "config['name']"),
    "format_version a bool": (_set(("format_version",), True), "format_version"),
    "step a string": (_set(("step",), "100"), "'step'"),
    "step negative": (_set(("step",), -1), "'step'"),
    "optimizer a list": (_set(("optimizer",), [1]), "'optimizer'"),
    "optimizer without param_groups": (_set(("optimizer",), {"state": {}}), "'optimizer'"),
    "metrics a list": (_set(("metrics",), [1.0]), "'metrics'"),
    "git_commit a number": (_set(("git_commit",), 5), "'git_commit'"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_a_malformed_checkpoint_is_one_line_naming_file_and_key(
        tmp_path, good_checkpoint, dataset, capsys, case):
    change, named = MALFORMED[case]
    raw = torch.load(good_checkpoint, weights_only=True)
    raw["model"] = compact_copy(raw["model"])  # 17 cases: a small file each
    change(raw)
    bad = tmp_path / "bad.pt"
    torch.save(raw, bad)
    with pytest.raises(CrossmodalError) as err:
        load_checkpoint(bad)
    message = str(err.value)
    assert str(bad) in message and named in message and "\n" not in message
    line = one_error_line(capsys, main(eval_args(bad, dataset)))
    assert str(bad) in line


# ------------------------------------------------ class 2: outputs never land on inputs

def test_eval_out_onto_its_checkpoint_is_refused_and_the_checkpoint_unchanged(
        tmp_path, dataset):
    """The issue's acceptance test, as a user runs it."""
    ckpt = write_checkpoint(tmp_path / "best.pt")
    before = ckpt.read_bytes()
    run = subprocess.run([sys.executable, "-m", "crossmodal", "eval", "--checkpoint", ckpt,
                          "--data", dataset, "--device", "cpu", "--out", ckpt],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crossmodal: error: --out"), run.stderr
    assert "the checkpoint" in lines[0]
    assert ckpt.read_bytes() == before


@pytest.mark.parametrize("option, target, named", [
    ("--out", "{data}/samples.csv", "inside the dataset"),
    ("--out", "{data}/dataset.json", "inside the dataset"),
    ("--out", "{data}/evaluation.json", "inside the dataset"),
    ("--panel", "{data}/images/f0.png", "inside the dataset"),
    ("--panel", "{ckpt_link}", "the checkpoint"),  # a symbolic link to it
])
def test_eval_outputs_onto_its_inputs_are_refused(tmp_path, checkpoint, dataset, capsys,
                                                  option, target, named):
    link = tmp_path / "link.png"
    link.symlink_to(checkpoint)
    target = Path(target.format(data=dataset, ckpt_link=link))
    before = target.read_bytes() if target.exists() else None
    line = one_error_line(capsys, main(eval_args(checkpoint, dataset, option, target)))
    assert line.startswith(f"crossmodal: error: {option} {target}") and named in line
    assert (target.read_bytes() if target.exists() else None) == before


def test_eval_out_onto_an_existing_folder_is_refused_before_evaluating(
        tmp_path, checkpoint, dataset, capsys, monkeypatch):
    import crossmodal.evaluate
    monkeypatch.setattr(crossmodal.evaluate, "_evaluate", None)  # must not be reached
    (tmp_path / "results").mkdir()
    line = one_error_line(capsys, main(eval_args(checkpoint, dataset, "--out",
                                                 tmp_path / "results")))
    assert "is an existing folder" in line and "name a file" in line


def test_eval_out_and_panel_naming_one_file_is_refused(tmp_path, checkpoint, dataset, capsys):
    both = tmp_path / "result.png"
    line = one_error_line(capsys, main(eval_args(checkpoint, dataset, "--out", both,
                                                 "--panel", both)))
    assert f"--panel {both} is the --out file" in line


def test_an_output_under_a_file_is_refused_before_work(tmp_path, checkpoint, dataset, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    line = one_error_line(capsys, main(eval_args(checkpoint, dataset, "--out",
                                                 blocker / "eval.json")))
    assert f"{blocker} is a file, not a folder" in line
    assert blocker.read_text() == "mine"


def test_an_unwritable_output_folder_is_refused_before_work(
        tmp_path, checkpoint, dataset, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root writes into read-only folders: the refusal is simulated
        import crossmodal.fileutil

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(crossmodal.fileutil.tempfile, "TemporaryFile", refuse)
    try:
        line = one_error_line(capsys, main(eval_args(checkpoint, dataset, "--out",
                                                     locked / "new" / "eval.json")))
    finally:
        locked.chmod(0o700)
    assert f"cannot write in {locked} (Permission denied)" in line


def test_import_official_out_onto_its_pth_is_refused(tmp_path, capsys):
    pth = tmp_path / "model.pth"
    torch.save({"conv_last.bias": torch.ones(3)}, pth)
    before = pth.read_bytes()
    line = one_error_line(capsys, main(["import-official", str(pth), "--out", str(pth)]))
    assert f"--out {pth} is the authors' weights" in line
    assert pth.read_bytes() == before


def test_import_official_refuses_non_finite_weights(tmp_path):
    """Their names and shapes, every tensor a view of one zero (a few KB on disk), one NaN."""
    state = {theirs: torch.zeros((), dtype=torch.long if ours.endswith("batches_tracked")
                                 else torch.float32).expand(TARGET_SHAPES[ours])
             for theirs, ours in OFFICIAL_TO_OURS.items()}
    state["conv_last.bias"] = torch.tensor([0.0, float("nan"), 0.0])
    pth = tmp_path / "model.pth"
    torch.save(state, pth)
    with pytest.raises(CrossmodalError, match=r"model\.pth holds non-finite .* conv_last\.bias"):
        import_official(pth, tmp_path / "o.pt")
    assert not (tmp_path / "o.pt").exists()


@pytest.fixture
def sphere_npy(tmp_path):
    sphere = orthographic_sphere(16)
    path = tmp_path / "sphere.npy"
    io.write_normals(path, sphere.normals, mask=sphere.mask)
    io.write_mask(tmp_path / "mask.png", sphere.mask)
    return path


@pytest.mark.parametrize("argv, target, named", [
    (["convert", "{n}", "{n}"], "{n}", "output {n} is the input normal map"),
    (["convert", "{n}", "{t}/mask.png", "--mask", "{t}/mask.png"], "{t}/mask.png",
     "output {t}/mask.png is the --mask image"),
    (["mesh", "{n}", "--out", "{t}/link.ply"], "{n}",  # a symbolic link to the input
     "--out {t}/link.ply is the input normal map"),
    (["mesh", "{n}", "--out", "{t}/m.ply", "--depth-out", "{n}"], "{n}",
     "--depth-out {n} is the input normal map"),
    (["mesh", "{n}", "--out", "{t}/m.ply", "--depth-out", "{t}/sphere"], "{n}",
     "--depth-out {t}/sphere.npy is the input normal map"),  # np.save adds .npy
    (["mesh", "{n}", "--out", "{t}/views.ply"], None, "--out {t}/views.ply is an existing folder"),
    (["mesh", "{n}", "--out", "{t}/m.stl"], None, "--out {t}/m.stl: name a mesh file ending"),
    (["relight", "{n}", "--out", "{n}"], "{n}", "--out {n} is the input normal map"),
    (["relight", "{t}/panel.png", "--out", "{t}"], "{t}/panel.png",
     "--out {t}/panel.png is the input normal map"),
])
def test_normal_tools_outputs_onto_their_inputs_are_refused(tmp_path, sphere_npy, capsys,
                                                            argv, target, named):
    names = {"n": sphere_npy, "t": tmp_path}
    sphere = orthographic_sphere(16)
    io.write_normals(tmp_path / "panel.png", sphere.normals, mask=sphere.mask)
    (tmp_path / "views.ply").mkdir()
    (tmp_path / "link.ply").symlink_to(sphere_npy)
    target = None if target is None else Path(target.format(**names))
    before = None if target is None else target.read_bytes()
    line = one_error_line(capsys, main(["-q", *(a.format(**names) for a in argv)]))
    assert named.format(**names) in line
    assert target is None or target.read_bytes() == before


def _eval_json(path: Path, mean: float) -> Path:
    result = {"n_images": 1, "n_pixels": 10, "mean": mean, "std": 0.0, "median": mean,
              "pixel_mean": mean, "below": {"20": 50.0, "25": 60.0, "30": 70.0},
              "dataset": "tiny", "split": "test", "checkpoint": "best.pt"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return path


@pytest.mark.parametrize("out", ["{a}", "{run}/eval.json"])
def test_report_out_onto_one_of_its_results_is_refused(tmp_path, capsys, out):
    a = _eval_json(tmp_path / "a.json", 10.0)
    run = tmp_path / "run"
    _eval_json(run / "eval.json", 12.0)
    target = Path(out.format(a=a, run=run))
    before = target.read_bytes()
    line = one_error_line(capsys, main(["-q", "report", str(a), str(run), "--out",
                                        str(target)]))
    assert f"--out {target} is the eval result" in line
    assert target.read_bytes() == before


# ------------------------------------------------ the shared check, for every command

def test_check_output_compares_resolved_paths_and_refuses_inside_input_folders(tmp_path):
    from crossmodal.fileutil import check_output
    data, ckpt = tmp_path / "data", tmp_path / "c.pt"
    data.mkdir()
    ckpt.write_bytes(b"x")
    (tmp_path / "alias").symlink_to(data)
    inputs = {"the checkpoint": ckpt, "the dataset": data, "an absent option": None,
              "the results": [tmp_path / "a.json", tmp_path / "b.json"]}
    new = tmp_path / "new" / "r.json"
    assert check_output(new, inputs=inputs, what="--out") == new
    assert not new.parent.exists()  # checked, not created
    for path, message in [
            (tmp_path / "new" / ".." / "c.pt", "--out .*new/../c.pt is the checkpoint"),
            (tmp_path / "alias" / "deep" / "r.json", "is inside the dataset"),
            (tmp_path / "b.json", "is the results"),
            (data, "is the dataset"),
            (tmp_path, "is an existing folder; name a file")]:
        with pytest.raises(CrossmodalError, match=message):
            check_output(path, inputs=inputs, what="--out")
    views = tmp_path / "views"
    assert check_output(views, inputs=inputs, what="--out", kind="folder") == views
    with pytest.raises(CrossmodalError, match="is the dataset"):
        check_output(tmp_path / "alias", inputs=inputs, what="--out", kind="folder")
    with pytest.raises(CrossmodalError, match="--out-dir .* is an existing file, not a folder"):
        check_output(ckpt, inputs={}, what="--out-dir", kind="folder")
