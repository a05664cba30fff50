"""The training job: run directory, TensorBoard, exact resume, the finite-loss guard,
signals, the ``crossmodal train`` command and the checkpoints it writes."""

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from crossmodal.checkpoint import build_model, load_checkpoint
from crossmodal.cli import main
from crossmodal.config import (DataConfig, ExperimentConfig, OptimConfig, TrainConfig,
                               config_to_dict)
from crossmodal.engine.data import TrainSet, resize_sample
from crossmodal.engine.ema import WeightAverage
from crossmodal.engine.lr_schedule import learning_rate
from crossmodal.engine.trainer import Trainer, resolve_amp
from crossmodal.errors import CrossmodalError
from crossmodal.evaluate import evaluate_checkpoint
from crossmodal.models.losses import LOSS_TERMS

from conftest import smoke_model

STEPS = 6
#: A warm-up and a cosine decay, so that resuming must also restore the rate's position.
OPTIM = OptimConfig(lr=1e-4, schedule="cosine", warmup_steps=2, min_lr=1e-5)


def config(data_root, run_dir, **train):
    return ExperimentConfig(
        name="tiny", run_dir=str(run_dir), model=smoke_model(),
        data=DataConfig(root=str(data_root), paired=["synth"], image=["synth"],
                        normal=["synth"], val=["synth"], image_size=64, batch_size=2,
                        num_workers=0),
        optim=OPTIM,
        train=TrainConfig(**{"max_steps": STEPS, "log_every": 1, "val_every": 3,
                             "checkpoint_every": 0, **train}))


@pytest.fixture(scope="module")
def straight(data_root, tmp_path_factory):
    """Run A: STEPS steps without interruption."""
    trainer = Trainer(config(data_root, tmp_path_factory.mktemp("runs") / "a"))
    return trainer, trainer.train()


def assert_same_state(a: dict, b: dict) -> None:
    """Model and optimizer states bit for bit."""
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for index in sa:
        for key in sa[index]:
            assert torch.equal(sa[index][key], sb[index][key]), (index, key)


def test_run_directory(straight):
    trainer, result = straight
    run = trainer.run_dir
    for name in ("last.pt", "best.pt", "config.yaml", "metrics.jsonl"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert result["step"] == STEPS and result["stopped_by"] is None
    assert result["val"]["val/n_images"] == 2
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "train"] == list(range(1, STEPS + 1))
    assert [e["step"] for e in events if e["event"] == "val"] == [3, STEPS]
    last = load_checkpoint(run / "last.pt")
    assert last["step"] == STEPS
    assert last["config"] == config_to_dict(trainer.config)
    assert last["metrics"]["best"] == result["best"]
    assert set(last["rng"]) == {"torch"} and last["world_size"] == 1


def test_tensorboard_has_losses_per_iteration_type_lr_val_and_panel(straight):
    trainer, _ = straight
    acc = EventAccumulator(str(trainer.run_dir / "tb"), size_guidance={"images": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    kinds = {trainer.schedule.kind_at(s) for s in range(STEPS)}
    assert kinds == {"paired", "image", "normal"}  # seed 0 covers every type in 6 steps
    assert {"loss/paired/normal_to_normal", "loss/paired/image_to_normal",
            "loss/paired/image_to_normal/normal", "loss/paired/image_to_normal/image",
            "loss/image/image_to_image", "loss/normal/normal_to_normal", "lr",
            "speed/images_per_s", "val/mean", "val/median", "val/below_20", "val/below_25",
            "val/below_30"} <= tags
    assert [e.step for e in acc.Scalars("val/mean")] == [3, STEPS]
    # The rate logged at step s is the one step s ran with (0-based index s - 1).
    assert [(e.step, e.value) for e in acc.Scalars("lr")] == [
        (s, pytest.approx(learning_rate(OPTIM, s - 1, STEPS))) for s in range(1, STEPS + 1)]
    panels = acc.Images("val/panel")
    assert [p.step for p in panels] == [3, STEPS]
    assert panels[-1].width > 4 * 64 and panels[-1].height > 2 * 64  # 2 samples x 4 tiles


def test_checkpoints_load_safely_and_rebuild_the_model(straight):
    trainer, result = straight
    x = torch.rand(2, 3, 64, 64)
    trainer.net.eval()
    with torch.no_grad():
        expected = trainer.net(x.contiguous(memory_format=torch.channels_last))["normals"]
    for name in ("last.pt", "best.pt"):
        raw = torch.load(trainer.run_dir / name, weights_only=True)
        assert {"format_version", "config", "model", "optimizer", "step", "metrics",
                "git_commit"} <= set(raw)
    best = load_checkpoint(trainer.run_dir / "best.pt")
    assert best["optimizer"] is None and best["step"] == result["best"]["step"]
    with torch.no_grad():
        rebuilt = build_model(load_checkpoint(trainer.run_dir / "last.pt"))(x)["normals"]
    torch.testing.assert_close(rebuilt, expected, rtol=1e-4, atol=1e-5)


def test_resume_reproduces_the_uninterrupted_run(straight, data_root, tmp_path, monkeypatch):
    trainer_a, _ = straight
    first = Trainer(config(data_root, tmp_path / "b"))
    monkeypatch.setattr(first, "_stop_requested",
                        lambda: signal.SIGINT if first.step == 3 else None)
    assert first.train()["step"] == 3
    resumed = Trainer(config(data_root, tmp_path / "b"), resume=True)
    assert resumed.step == 3
    assert resumed.train()["step"] == STEPS
    assert_same_state(load_checkpoint(trainer_a.run_dir / "last.pt"),
                      load_checkpoint(tmp_path / "b" / "last.pt"))
    steps = [json.loads(line)["step"]
             for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps.count(STEPS) == 2  # a train and a val event


def test_init_from_loads_the_weights_only(straight, data_root, tmp_path):
    trainer_a, _ = straight
    source = trainer_a.run_dir / "last.pt"
    trainer = Trainer(config(data_root, tmp_path / "ft", init_from=str(source), seed=1))
    weights = load_checkpoint(source)["model"]
    assert all(torch.equal(v, weights[k]) for k, v in trainer.net.state_dict().items())
    assert trainer.step == 0 and not trainer.optimizer.state


def test_weight_average_follows_its_formula_and_copies_integer_buffers():
    net = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    ema = WeightAverage(net, decay=0.5)
    assert ema.decay_at(1) == pytest.approx(2 / 11)  # warming up: (1 + t) / (10 + t)
    assert ema.decay_at(100) == 0.5                    # capped by the decay
    with torch.no_grad():
        net[0].weight.fill_(12.0)
    net[1].num_batches_tracked.fill_(7)
    ema.update(net, 1)  # 2/11 * 1 + 9/11 * 12 = 10
    assert ema.net[0].weight.item() == pytest.approx(10.0)
    assert ema.net[1].num_batches_tracked.item() == 7
    ema.update(net, 100)  # 0.5 * 10 + 0.5 * 12
    assert ema.net[0].weight.item() == pytest.approx(11.0)
    assert net[0].weight.item() == 12.0 and not ema.net[0].weight.requires_grad
    for decay in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"decay must be in \[0, 1\)"):
            WeightAverage(net, decay)
    with pytest.raises(CrossmodalError, match=r"train.ema_decay must be in \[0, 1\)"):
        TrainConfig(ema_decay=1.0)


def test_ema_is_what_validation_scores_and_best_pt_keeps(data_root, tmp_path, monkeypatch):
    trainer = Trainer(config(data_root, tmp_path / "ema", val_every=0, ema_decay=0.5))
    initial = copy.deepcopy(trainer.net.state_dict())
    seen = []
    update = trainer.ema.update

    def record(net, step):
        seen.append((step, copy.deepcopy(net.state_dict())))
        update(net, step)

    monkeypatch.setattr(trainer.ema, "update", record)
    result = trainer.train()
    assert [step for step, _ in seen] == list(range(1, STEPS + 1))
    name = next(k for k, v in initial.items() if v.is_floating_point() and v.dim() == 4)
    expected = initial[name].clone()
    for step, weights in seen:
        d = min(0.5, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * weights[name]
    best = load_checkpoint(tmp_path / "ema" / "best.pt")
    torch.testing.assert_close(best["model"][name], expected)
    assert not torch.equal(best["model"][name], trainer.net.state_dict()[name])
    # The mean best.pt was chosen on is that of the averaged weights.
    scored, _ = evaluate_checkpoint(tmp_path / "ema" / "best.pt", data_root / "synth",
                                    split="val", device="cpu", progress=False)
    assert scored["mean"] == pytest.approx(result["val"]["val/mean"], abs=1e-4)
    last = load_checkpoint(tmp_path / "ema" / "last.pt")
    assert torch.equal(last["model"][name], trainer.net.state_dict()[name])
    assert torch.equal(last["ema"][name], best["model"][name])


def test_resume_restores_the_average(data_root, tmp_path, monkeypatch, caplog):
    straight = Trainer(config(data_root, tmp_path / "a", val_every=0, ema_decay=0.5))
    straight.train()
    first = Trainer(config(data_root, tmp_path / "b", val_every=0, ema_decay=0.5))
    monkeypatch.setattr(first, "_stop_requested",
                        lambda: signal.SIGINT if first.step == 3 else None)
    first.train()
    Trainer(config(data_root, tmp_path / "b", val_every=0, ema_decay=0.5),
            resume=True).train()
    a, b = (load_checkpoint(tmp_path / run / "last.pt")["ema"] for run in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # A run without an average, resumed with one: it starts from the resumed weights.
    plain = Trainer(config(data_root, tmp_path / "c", val_every=0, max_steps=2))
    plain.train()
    resumed = Trainer(config(data_root, tmp_path / "c", val_every=0, ema_decay=0.5),
                      resume=True)
    assert "holds no averaged weights" in caplog.text
    weights = load_checkpoint(tmp_path / "c" / "last.pt")["model"]
    assert all(torch.equal(v, weights[k]) for k, v in resumed.ema.net.state_dict().items())


def test_resume_without_last_pt_is_a_clear_error(data_root, tmp_path):
    with pytest.raises(CrossmodalError, match="nothing to resume in .*start without --resume"):
        Trainer(config(data_root, tmp_path / "empty"), resume=True)


def test_non_finite_loss_stops_and_saves_the_state_before_the_step(
        data_root, tmp_path, monkeypatch):
    trainer = Trainer(config(data_root, tmp_path / "nan", val_every=0))
    # Step 3 (index 2) is a paired batch: poison its second iteration (image->normal), so
    # the first (normal->normal) has already updated the weights when the guard fires.
    assert trainer.schedule.kind_at(2) == "paired"
    output, image_loss = LOSS_TERMS["image"]

    def poisoned(pred, truth, mask):
        loss = image_loss(pred, truth, mask)
        return loss * float("nan") if trainer.step == 2 else loss

    monkeypatch.setitem(LOSS_TERMS, "image", (output, poisoned))
    before = {}
    train_step = trainer.train_step

    def remember(batch):
        if trainer.step == 2:
            before.update(model=copy.deepcopy(trainer.net.state_dict()),
                          optimizer=copy.deepcopy(trainer.optimizer.state_dict()))
        return train_step(batch)

    monkeypatch.setattr(trainer, "train_step", remember)
    with pytest.raises(CrossmodalError, match=r"non-finite loss in step 3 \(paired batch, "
                       r"image_to_normal iteration\): total nan.*image nan.*lower optim.lr"):
        trainer.train()
    saved = load_checkpoint(tmp_path / "nan" / "last.pt")
    assert saved["step"] == 2
    assert_same_state(saved, before)


def test_sigterm_finishes_the_step_and_saves(data_root, tmp_path, monkeypatch):
    trainer = Trainer(config(data_root, tmp_path / "term", val_every=0))
    train_step = trainer.train_step

    def signalled(batch):
        if trainer.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of step 2
        return train_step(batch)

    monkeypatch.setattr(trainer, "train_step", signalled)
    handler = signal.getsignal(signal.SIGTERM)
    result = trainer.train()
    assert result["stopped_by"] == "SIGTERM" and result["step"] == 2
    assert load_checkpoint(tmp_path / "term" / "last.pt")["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is handler  # the old handler is back


def test_crossmodal_train_command(data_root, tmp_path, capsys):
    cfg = config_to_dict(config(data_root, "unused"))
    del cfg["run_dir"]
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "cli"
    args = ["-q", "train", str(path), f"run_dir={run}", "train.max_steps=2",
            "train.val_every=0"]
    assert main(args) == 0
    assert load_checkpoint(run / "last.pt")["step"] == 2
    assert "max_steps: 2" in (run / "config.yaml").read_text()
    # The overrides may follow the options; the settings that differ are said.
    assert main([*args[:-2], "--resume", "train.max_steps=3"]) == 0
    assert load_checkpoint(run / "last.pt")["step"] == 3
    out, err = capsys.readouterr()
    assert out == ""
    assert (f"{run}: resuming after step 2 with changed settings: train.max_steps 2 (now 3); "
            f"train.val_every 0 (now ") in err
    assert main(["-q", "train", str(path), f"run_dir={tmp_path / 'none'}", "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_a_failing_run_with_loader_workers_exits(data_root, tmp_path):
    """An exception in the step loop must not leave the process waiting for its
    DataLoader workers (they ignore SIGTERM, which is how exit would stop them)."""
    cfg = config_to_dict(config(data_root, tmp_path / "fail"))
    cfg["data"]["num_workers"] = 1
    path = tmp_path / "fail.yaml"
    path.write_text(yaml.safe_dump(cfg))
    script = textwrap.dedent(f"""
        import sys
        from crossmodal.cli import main
        from crossmodal.engine.trainer import Trainer
        step = Trainer.train_step
        def failing(self, batch):
            if self.step == 1:
                raise ValueError("injected failure")
            return step(self, batch)
        Trainer.train_step = failing
        sys.exit(main(["-q", "train", {str(path)!r}]))
    """)
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the failed run did not exit within 120 s (waiting for its workers)")
    assert done.returncode != 0 and "injected failure" in done.stderr


def test_missing_dataset_folder_names_it_and_the_fix(data_root):
    data = DataConfig(root=str(data_root), paired=["synth", "photoface"], image_size=64)
    with pytest.raises(CrossmodalError, match=r"photoface.*does not exist.*crossmodal synth.*"
                       r"crossmodal prepare"):
        TrainSet(data)


def test_resize_sample_keeps_unit_normals_and_a_binary_mask():
    normals = torch.nn.functional.normalize(torch.randn(3, 64, 64), dim=0)
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[16:48, 16:48] = True
    normals[:, ~mask] = 0
    item = {"image": torch.rand(3, 64, 64), "normals": normals, "mask": mask}
    small = resize_sample(item, 32)
    assert small["image"].shape == (3, 32, 32) and small["mask"].dtype == torch.bool
    torch.testing.assert_close(small["image"][:, 0, 0], item["image"][:, :2, :2].mean((1, 2)))
    length = torch.linalg.vector_norm(small["normals"], dim=0)
    valid = length > 0
    torch.testing.assert_close(length[valid], torch.ones(int(valid.sum())))
    assert small["mask"].sum() == 16 * 16 and valid[small["mask"]].all()
    assert resize_sample(item, 64)["normals"] is normals


@pytest.mark.parametrize("mode, dtype", [("auto", None), ("off", None),
                                         ("bf16", torch.bfloat16)])
def test_amp_on_the_cpu_is_off_unless_bf16_is_asked_for(mode, dtype):
    assert resolve_amp(mode, torch.device("cpu")) is dtype


def test_fp16_on_the_cpu_is_a_clear_error():
    with pytest.raises(CrossmodalError, match="train.amp=fp16 needs a CUDA device; on the "
                                              "CPU use train.amp=bf16 or off"):
        resolve_amp("fp16", torch.device("cpu"))


def test_bf16_training_on_the_cpu(data_root, tmp_path):
    trainer = Trainer(config(data_root, tmp_path / "bf16", amp="bf16", max_steps=2,
                             val_every=0))
    assert trainer.amp_dtype is torch.bfloat16 and not trainer.scaler.is_enabled()
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    dtypes = {True: set(), False: set()}
    trainer.net.register_forward_hook(lambda module, inputs, outputs: dtypes[
        module.training].update(t.dtype for t in outputs.values()))
    result = trainer.train()
    # Every training forward ran in bf16; validation, the inference path, in float32.
    assert dtypes == {True: {torch.bfloat16}, False: {torch.float32}}
    assert result["step"] == 2 and 0 < result["val"]["val/mean"] < 180
    after = trainer.net.state_dict()
    # Autocast computes in bf16 but the weights, and so the checkpoint, stay float32.
    assert all(v.dtype == before[k].dtype for k, v in after.items())
    assert any(not torch.equal(v, before[k]) for k, v in after.items())


def test_validation_is_the_measurement_crossmodal_eval_reports(data_root, data_root_256,
                                                               tmp_path):
    """A 64 px model validated on 256 px data: the trainer's metrics (which pick best.pt)
    are exactly what `crossmodal eval` gives for the saved weights on that split."""
    large = str(data_root_256 / "large")
    cfg = config(data_root, tmp_path / "val", max_steps=2, val_every=0)
    cfg.data.val = [large]
    trainer = Trainer(cfg)
    result = trainer.train()
    metrics, _ = evaluate_checkpoint(tmp_path / "val" / "last.pt", large, split="val",
                                     device="cpu", progress=False)
    assert metrics["image_size"] == 256 and metrics["model_image_size"] == 64
    val = result["val"]
    assert val["val/n_images"] == metrics["n_images"] == 3
    assert val["val/n_pixels"] == metrics["n_pixels"]
    for key in ("mean", "std", "median", "pixel_mean"):
        assert val[f"val/{key}"] == pytest.approx(metrics[key], abs=1e-4)
    for t in ("20", "25", "30"):
        assert val[f"val/below_{t}"] == pytest.approx(metrics["below"][t], abs=1e-4)
