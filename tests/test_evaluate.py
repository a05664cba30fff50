"""Evaluation (docs/design.md §6): ``evaluate`` against hand-checkable models, ``crossmodal eval``
and ``crossmodal report``."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from crossmodal import io, viz
from crossmodal.checkpoint import save_checkpoint
from crossmodal.cli import main
from crossmodal.data import FaceNormalsDataset
from crossmodal.errors import CrossmodalError
from crossmodal.evaluate import (
    ERROR_VMAX, JSON_KEYS, evaluate, evaluate_checkpoint, metrics_json, report_table)
from crossmodal.inference import NormalPredictor
from crossmodal.metrics import AngularErrorMeter
from crossmodal.models import CrossModalNet
from crossmodal.synth.generate import generate
from crossmodal.synth.sampler import SynthConfig

from conftest import smoke_model

TINY = smoke_model()
EXTRAS = {"experiment", "variant", "image_size", "model_image_size", "n_excluded_pred",
          "n_empty_images"}


def predictor(model, batch_size=8, image_size=None):
    """The inference path on ``model`` on the CPU; by default at each input's own size."""
    return NormalPredictor(model, image_size=image_size, batch_size=batch_size)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """16 synthetic 64 px faces; the test split has 4 paired samples (2 subjects)."""
    return generate(tmp_path_factory.mktemp("eval") / "faces", 16, seed=0,
                    config=SynthConfig(size=64, samples_per_subject=2, test_fraction=0.3),
                    progress=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = CrossModalNet(TINY).eval()  # as build_model returns it
    path = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny" / "best.pt", model=model,
                           config={"name": "tiny", "model": TINY.to_dict()})
    return path, model


class GroundTruthStub(nn.Module):
    """Returns the ground truth of the test split, batch after batch in dataset order,
    each normal turned by ``degrees`` towards a direction perpendicular to it (so every
    pixel's error is exactly ``degrees``)."""

    def __init__(self, dataset: FaceNormalsDataset, degrees: float = 0.0) -> None:
        super().__init__()
        self.normals = torch.stack([item["normals"] for item in dataset])  # (N, 3, H, W)
        self.angle = math.radians(degrees)
        self.seen = 0

    def forward(self, x: torch.Tensor, route: str, outputs=None) -> dict[str, torch.Tensor]:
        assert route == "image_to_normal" and outputs == ("normals",)
        assert not torch.is_grad_enabled() and not self.training
        start = self.seen % len(self.normals)  # a panel after the pass starts over
        n = self.normals[start:start + len(x)].double()
        self.seen += len(x)
        # A unit vector perpendicular to n: n x e for whichever axis e is least parallel.
        candidates = [torch.linalg.cross(n, torch.tensor([a, b, 1.0 - a - b], dtype=n.dtype)
                                         .view(1, 3, 1, 1).expand_as(n), dim=1)
                      for a, b in ((1.0, 0.0), (0.0, 1.0))]
        u = torch.where(candidates[0].norm(dim=1, keepdim=True)
                        >= candidates[1].norm(dim=1, keepdim=True), *candidates)
        u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return {"normals": (math.cos(self.angle) * n + math.sin(self.angle) * u).float()}


def test_evaluate_equals_a_manual_loop(data, checkpoint):
    _, model = checkpoint
    summary, panel = evaluate(predictor(model, 3), data, progress=False)
    assert panel is None
    meter = AngularErrorMeter()
    with torch.no_grad():
        for batch in DataLoader(FaceNormalsDataset(data, "test", kinds=("paired",)),
                                batch_size=3):
            meter.update(model(batch["image"])["normals"], batch["normals"], batch["mask"])
    expected = meter.summary()
    assert summary["n_images"] == expected["n_images"] == 4
    assert summary["n_pixels"] == expected["n_pixels"] > 0
    for key in ("mean", "std", "median", "pixel_mean"):
        assert summary[key] == pytest.approx(expected[key], rel=1e-5, abs=0.01)
    for t in ("20", "25", "30"):
        assert summary["below"][t] == pytest.approx(expected["below"][t], abs=0.05)
    assert not model.training  # the mode it came in


def test_evaluate_restores_the_training_mode(data, checkpoint):
    _, model = checkpoint
    model.train()
    try:
        evaluate(predictor(model, 4), data, progress=False)
        assert model.training
    finally:
        model.eval()


def test_ground_truth_scores_zero(data):
    stub = GroundTruthStub(FaceNormalsDataset(data, "test", kinds=("paired",)))
    summary, _ = evaluate(predictor(stub, 3), data, progress=False)
    # Not exactly 0: the cross product of equal vectors leaves FMA residuals (~1e-7 deg).
    for key in ("mean", "std", "median", "pixel_mean"):
        assert summary[key] == pytest.approx(0.0, abs=1e-4)
    assert summary["below"] == {"20": 100.0, "25": 100.0, "30": 100.0}
    assert summary["n_excluded_pred"] == summary["n_empty_images"] == 0


@pytest.mark.parametrize("degrees, below", [
    (30.0, {"20": 0.0, "25": 0.0}),  # "30" depends on float rounding at exactly 30
    (35.0, {"20": 0.0, "25": 0.0, "30": 0.0}),
    (27.5, {"20": 0.0, "25": 0.0, "30": 100.0}),
])
def test_a_constant_rotation_scores_its_angle(data, degrees, below):
    stub = GroundTruthStub(FaceNormalsDataset(data, "test", kinds=("paired",)), degrees)
    summary, _ = evaluate(predictor(stub, 3), data, progress=False)
    assert summary["mean"] == pytest.approx(degrees, abs=1e-3)
    assert summary["pixel_mean"] == pytest.approx(degrees, abs=1e-3)
    assert summary["std"] == pytest.approx(0.0, abs=1e-3)
    assert summary["median"] == pytest.approx(degrees, abs=0.01)  # the histogram's bin
    assert {t: summary["below"][t] for t in below} == below


def test_panel_rows_are_input_prediction_truth_error(data):
    dataset = FaceNormalsDataset(data, "test", kinds=("paired",))
    degrees = 10.0
    _, panel = evaluate(predictor(GroundTruthStub(dataset, degrees), 3), data,
                        progress=False, panel_count=3)
    rows = []
    for item in [dataset[i] for i in range(3)]:
        mask = item["mask"].numpy()
        truth = item["normals"].permute(1, 2, 0).numpy()
        error = np.where(mask, degrees, 0.0)
        rows.append(([viz.to_uint8(item["image"].permute(1, 2, 0).numpy()),
                      None,  # the prediction, drawn below from the stub's output
                      viz.normals_to_rgb(truth, valid=mask & np.any(truth != 0, axis=-1)),
                      viz.error_to_rgb(error, mask, vmax=ERROR_VMAX)],
                     [item["id"], "prediction", "ground truth", f"error {degrees:.1f} deg"]))
    stub = GroundTruthStub(dataset, degrees).eval()
    with torch.no_grad():
        pred = stub(torch.zeros(3, 3, 64, 64), "image_to_normal", ("normals",))["normals"]
    for i, (tiles, _) in enumerate(rows):
        tiles[1] = viz.normals_to_rgb(pred[i].permute(1, 2, 0).numpy(),
                                      valid=dataset[i]["mask"].numpy())
    expected = viz.panel([t for tiles, _ in rows for t in tiles],
                         [label for _, labels in rows for label in labels], ncols=4)
    assert panel.shape == expected.shape and np.abs(panel.astype(int) - expected).max() <= 1
    # The comparison sees the order: prediction and ground truth swapped (10 degrees
    # apart) is another picture, and so is the error map first.
    for order in ((0, 2, 1, 3), (3, 1, 2, 0)):
        swapped = viz.panel([tiles[k] for tiles, _ in rows for k in order],
                            [label for _, labels in rows for label in labels], ncols=4)
        assert np.abs(panel.astype(int) - swapped).max() > 10


def test_evaluate_refuses_bad_input(data, tmp_path, checkpoint):
    _, model = checkpoint
    with pytest.raises(CrossmodalError, match=r"no paired samples in split 'test' of"):
        evaluate(predictor(model), _without_test_rows(data, tmp_path), progress=False)
    with pytest.raises(CrossmodalError, match="batch size must be at least 1, got 0"):
        predictor(model, batch_size=0)
    with pytest.raises(CrossmodalError, match="unknown device 'gpu0' for --device"):
        NormalPredictor.from_checkpoint(checkpoint[0], device="gpu0")
    with pytest.raises(CrossmodalError, match="number of workers must be at least 0"):
        evaluate(predictor(model), data, num_workers=-1, progress=False)


def test_a_size_the_network_cannot_take_is_resized_to_its_own(tmp_path, checkpoint):
    """48 px crops: refused at their own size (not a multiple of 32), scored at 48 px when
    the network runs at 64 px."""
    _, model = checkpoint
    odd = generate(tmp_path / "odd", 6, seed=1, progress=False,
                   config=SynthConfig(size=48, samples_per_subject=1, val_fraction=0.0,
                                      test_fraction=0.5))
    with pytest.raises(CrossmodalError, match="48x48 is not a positive multiple of 32"):
        evaluate(predictor(model), odd, progress=False)
    summary, _ = evaluate(predictor(model, image_size=64), odd, progress=False)
    dataset = FaceNormalsDataset(odd, "test", kinds=("paired",))
    assert summary["image_size"] == 48
    assert summary["n_pixels"] == sum(int((item["mask"] & (item["normals"] != 0).any(0)).sum())
                                      for item in dataset)


def _without_test_rows(data, tmp_path):
    """A copy of the dataset whose test split is empty."""
    out = tmp_path / "no_test"
    shutil.copytree(data, out)
    lines = (out / "samples.csv").read_text().splitlines(keepends=True)
    (out / "samples.csv").write_text("".join(line for line in lines if ",test," not in line))
    return out


def test_evaluate_checkpoint_adds_where_it_came_from(data, checkpoint):
    path, _ = checkpoint
    metrics, _ = evaluate_checkpoint(path, data, device="cpu", progress=False)
    assert list(metrics)[:len(JSON_KEYS)] == list(JSON_KEYS)
    assert metrics["dataset"] == "faces" and metrics["split"] == "test"
    assert metrics["checkpoint"] == str(path)
    assert metrics["experiment"] == "tiny" and metrics["variant"] == "full"


def _strict_json(text: str) -> dict:
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_eval_cli_writes_standard_json_and_panel(data, checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    out, picture = tmp_path / "res" / "eval.json", tmp_path / "panel.png"
    assert main(["-q", "eval", "--checkpoint", str(path), "--data", str(data), "--out",
                 str(out), "--batch-size", "3", "--device", "cpu", "--panel", str(picture),
                 "--panel-count", "2"]) == 0
    result = _strict_json(out.read_text())
    assert set(result) == set(JSON_KEYS) | EXTRAS
    assert set(result["below"]) == {"20", "25", "30"}
    assert result["n_images"] == 4 and result["experiment"] == "tiny"
    tiles = [np.zeros((64, 64, 3), np.uint8)] * 8
    assert io.read_image(picture).shape == viz.panel(tiles, ["x"] * 8, ncols=4).shape
    assert capsys.readouterr().out == ""  # with --out, nothing on stdout
    # Without --out the JSON is the command's output.
    assert main(["-q", "eval", "--checkpoint", str(path), "--data", str(data),
                 "--device", "cpu"]) == 0
    assert _strict_json(capsys.readouterr().out)["mean"] == pytest.approx(result["mean"])


def test_metrics_json_writes_null_for_nan():
    """A meter without a valid pixel has NaN metrics, written as standard JSON's null (eval
    itself refuses such a result: tests/robustness/test_outputs_and_results.py)."""
    meter = AngularErrorMeter()
    meter.update(torch.full((1, 3, 4, 4), float("nan")), torch.ones(1, 3, 4, 4))
    result = _strict_json(metrics_json(meter.summary()))
    assert result["mean"] is None and result["below"]["20"] is None
    assert result["n_excluded_pred"] == 16


@pytest.mark.parametrize("case", ["checkpoint", "data", "split"])
def test_eval_cli_user_errors_are_one_line(case, data, checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    args = {"checkpoint": [str(tmp_path / "missing.pt"), str(data)],
            "data": [str(path), str(tmp_path / "nowhere")],
            "split": [str(path), str(_without_test_rows(data, tmp_path))]}[case]
    assert main(["-q", "eval", "--checkpoint", args[0], "--data", args[1],
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crossmodal: error:") and len(err.strip().splitlines()) == 1
    assert {"checkpoint": "missing.pt", "data": "nowhere",
            "split": "no paired samples in split 'test'"}[case] in err


def _result(mean: float, below20: float, **extra) -> dict:
    below = {"20": below20, "25": below20 + 10, "30": below20 + 20}
    return {"n_images": 4, "n_pixels": 1000, "mean": mean, "std": 1.5, "median": mean - 1,
            "pixel_mean": mean + 0.5, "below": below,
            "dataset": "faces", "split": "test", "checkpoint": "run/best.pt", **extra}


def test_report_table_bolds_the_best_of_each_column(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_result(22.8, 49.0, experiment="quickstart", variant="full")))
    b.write_text(json.dumps(_result(24.4, 46.6, experiment="ablation", variant="no_skips")))
    md = tmp_path / "report" / "table.md"
    assert main(["-q", "report", str(a), str(b), "--out", str(md), "--title", "Ablation"]) == 0
    out = capsys.readouterr().out
    assert md.read_text() == out
    lines = out.splitlines()
    assert lines[0] == "## Ablation"
    assert lines[2] == ("| Model | Mean ± std | Median | Pixel mean | < 20° | < 25° | < 30° "
                        "| Images |")
    assert lines[4] == ("| quickstart (full) | **22.80 ± 1.50** | **21.80** | **23.30** | "
                        "**49.00%** | **59.00%** | **69.00%** | 4 |")
    assert lines[5] == ("| ablation (no_skips) | 24.40 ± 1.50 | 23.40 | 24.90 | 46.60% | "
                        "56.60% | 66.60% | 4 |")
    assert "dataset faces, split test" in out and "not directly comparable" not in out


def test_report_reads_run_dirs_and_notes_mismatched_data(tmp_path, capsys):
    run = tmp_path / "runs" / "quickstart"
    run.mkdir(parents=True)
    (run / "eval.json").write_text(json.dumps(_result(12.0, 80.0)))
    other = tmp_path / "florence.json"
    other.write_text(json.dumps(_result(11.3, 89.3, dataset="florence")))
    assert main(["-q", "report", str(run), str(other)]) == 0
    out = capsys.readouterr().out
    assert "| quickstart |" in out and "| florence |" in out  # no experiment: dir / stem
    assert "not directly comparable" in out
    assert "- quickstart: dataset faces, split test" in out
    assert "- florence: dataset florence, split test" in out


def test_results_sharing_a_label_are_told_apart_by_test_set_else_by_path(tmp_path):
    from crossmodal.evaluate import load_results

    run = {"experiment": "quickstart", "variant": "full"}
    paths = []
    for name, dataset, split in (("synth", "synth", "test"), ("real", "real_scans", "test"),
                                 ("val", "synth", "val")):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(_result(12.0, 80.0, dataset=dataset, split=split,
                                                **run)))
    assert [label for label, _ in load_results(paths)] == [
        "quickstart (full) on synth/test", "quickstart (full) on real_scans/test",
        "quickstart (full) on synth/val"]
    twice = [paths[0], paths[0]]  # the same test set twice: only the paths differ
    assert [label for label, _ in load_results(twice)] == [
        f"quickstart (full) [{paths[0]}]"] * 2
    alone = [label for label, _ in load_results([paths[1]])]
    assert alone == ["quickstart (full)"]


def test_report_without_eval_json_names_the_fix(tmp_path, capsys):
    run = tmp_path / "runs" / "bare"
    run.mkdir(parents=True)
    assert main(["-q", "report", str(run)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"crossmodal eval --checkpoint {run / 'best.pt'} --data DIR --out " \
           f"{run / 'eval.json'}" in err


def test_report_table_of_one_row_bolds_nothing_and_shows_null_as_na():
    table = report_table([("only", {**_result(10.0, 50.0), "median": None})])
    assert "**" not in table and "| n/a |" in table


def test_a_64px_checkpoint_runs_at_64px_and_is_scored_at_256px(data_root_256, tmp_path):
    """The checkpoint's training resolution is where the network runs; the 256 px ground
    truth is scored as it is, against predictions resized back (bilinear, renormalised)."""
    torch.manual_seed(1)
    model = CrossModalNet(TINY).eval()
    path = save_checkpoint(tmp_path / "ckpt.pt", model=model,
                           config={"name": "tiny", "model": TINY.to_dict(),
                                   "data": {"image_size": 64}})
    large = data_root_256 / "large"
    seen = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: seen.append(tuple(args[0].shape[-2:]))
        if isinstance(module, CrossModalNet) else None)
    try:
        metrics, _ = evaluate_checkpoint(path, large, device="cpu", progress=False)
    finally:
        hook.remove()
    assert seen and set(seen) == {(64, 64)}
    assert metrics["image_size"] == 256 and metrics["model_image_size"] == 64
    # By hand: area-downsample, predict at 64 px, upsample, renormalise, score at 256 px.
    dataset = FaceNormalsDataset(large, "test", kinds=("paired",))
    batch = next(iter(DataLoader(dataset, batch_size=len(dataset))))
    with torch.no_grad():
        pred = model(torch.nn.functional.interpolate(batch["image"], size=64, mode="area"),
                     "image_to_normal")["normals"]
    pred = torch.nn.functional.normalize(
        torch.nn.functional.interpolate(pred, size=256, mode="bilinear"), dim=1)
    meter = AngularErrorMeter()
    meter.update(pred, batch["normals"], batch["mask"])
    expected = meter.summary()
    assert metrics["n_pixels"] == expected["n_pixels"] == int(
        (batch["mask"] & (batch["normals"] != 0).any(1)).sum())
    assert metrics["mean"] == pytest.approx(expected["mean"], abs=1e-4)
    assert metrics["pixel_mean"] == pytest.approx(expected["pixel_mean"], abs=1e-4)
    # Asked to, it runs at the data's resolution instead.
    seen.clear()
    at_256, _ = evaluate_checkpoint(path, large, image_size=256, device="cpu", progress=False)
    assert at_256["model_image_size"] == 256 and at_256["mean"] != metrics["mean"]
