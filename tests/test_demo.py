"""The main job end to end, shrunk: synthetic data, training, evaluation, summary."""

import json
from pathlib import Path

from crossmodal import demo
from crossmodal.io import read_image


def test_main_job_writes_the_summary(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    experiment = tmp_path / "tiny.yaml"
    smoke = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"
    experiment.write_text(f"_base_: {smoke}\nname: tiny\nrun_dir: runs/tiny\n")
    run_dir = demo.run(experiment, ("train.max_steps=3",), count=16, workers=1,
                       real_renders=2)
    assert run_dir.resolve() == tmp_path / "runs" / "tiny"
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["split"] == "test" and result["n_images"] > 0
    summary = (run_dir / "summary.md").read_text()
    assert "| tiny (full) on synth_quickstart/test |" in summary
    assert f"{result['mean']:.2f}" in summary
    assert "![validation curve](curve.png)" in summary
    # The real scan's renders, scored beside the synthetic test split.
    real = json.loads((run_dir / "eval_real.json").read_text())
    assert real["dataset"] == "real_scans" and real["n_images"] == 2
    assert f"{real['mean']:.2f}" in summary and "| tiny (full) on real_scans/test |" in summary
    assert read_image(run_dir / "curve.png").shape == (400, 640, 3)
    assert read_image(run_dir / "panel.png").shape[0] > 64
    # The bundled photos, predicted by the trained model: a row of 4 crops per photo.
    assert "![photo | normals | relit" in summary
    photos = read_image(run_dir / "photos.png")
    assert 2 * 256 < photos.shape[0] < 3 * 256 and 4 * 256 < photos.shape[1] < 5 * 256
    predicted = json.loads((run_dir / "photos" / "predictions.json").read_text())
    assert predicted["photos"] == 2 and predicted["skipped"] == 0
    # A second run reuses the data and the finished training.
    demo.run(experiment, ("train.max_steps=3",), count=16, workers=1, real_renders=2)
    assert sum(1 for line in (run_dir / "metrics.jsonl").read_text().splitlines()
               if json.loads(line)["event"] == "val") >= 1
