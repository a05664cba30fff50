"""The Pix2Pix baseline ("Normal Map Estimation in the Wild") in the one trainer: the
seed's loss terms as schedule data, the discriminator's step alternating with the
generator's, its state in last.pt and exact resume, best.pt through eval, and the VGG16
weights file of the perceptual term."""

from __future__ import annotations

import copy
import json
import signal

import pytest
import torch
import yaml

from crossmodal.checkpoint import build_model, load_checkpoint
from crossmodal.cli import main
from crossmodal.config import (DataConfig, ExperimentConfig, OptimConfig, ScheduleConfig,
                               TrainConfig, config_to_dict)
from crossmodal.engine.data import train_loader
from crossmodal.engine.trainer import Trainer
from crossmodal.errors import CrossmodalError
from crossmodal.models import ModelConfig, PatchDiscriminator, Pix2PixGenerator
from crossmodal.models.losses import LOSS_TERMS, masked_normals, normal_mse_loss
from crossmodal.models.vgg import VGG16, VGG16_FILE

from conftest import one_error_line

STEPS = 4
#: The seed's weights, L = 10 L_rec + 0.25 L_adv (+ 1 L_vgg where a test adds it).
WEIGHTS = {"normal": 0.0, "image": 0.0, "normal_mse": 10.0, "perceptual": 0.0,
           "adversarial": 0.25}


def config(data_root, run_dir, perceptual=0.0, vgg16_weights=None, **train):
    """A tiny pix2pix run on paired data only (~60k generator, ~10k discriminator
    parameters), with a different discriminator rate to see it applied."""
    return ExperimentConfig(
        name="pix2pix_tiny", run_dir=str(run_dir),
        model=ModelConfig(variant="pix2pix", pix2pix_width=8, discriminator_width=8,
                          discriminator_layers=2),
        data=DataConfig(root=str(data_root), paired=["synth"], val=["synth"],
                        proportions={"paired": 1.0, "image": 0.0, "normal": 0.0},
                        image_size=64, batch_size=2, num_workers=0),
        schedule=ScheduleConfig(paired=["image_to_normal"], image=[], normal=[],
                                loss_weights={"image_to_normal": {**WEIGHTS,
                                                                  "perceptual": perceptual}}),
        optim=OptimConfig(lr=7e-4, discriminator_lr=3.5e-4),
        train=TrainConfig(**{"max_steps": STEPS, "log_every": 1, "val_every": 2,
                             "checkpoint_every": 0, "val_batches": 1,
                             "vgg16_weights": vgg16_weights, **train}))


def write_yaml(cfg: ExperimentConfig, path) -> str:
    data = config_to_dict(cfg)
    del data["run_dir"]
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture(scope="module")
def straight(data_root, tmp_path_factory):
    """STEPS steps without interruption."""
    trainer = Trainer(config(data_root, tmp_path_factory.mktemp("runs") / "a"))
    return trainer, trainer.train()


def test_networks_and_the_discriminator_rate(straight):
    trainer, _ = straight
    assert isinstance(trainer.net, Pix2PixGenerator)
    assert isinstance(trainer.discriminator, PatchDiscriminator)
    assert set(trainer.critics) == {"adversarial"}  # perceptual weight 0: no VGG16
    assert [g["lr"] for g in trainer.d_optimizer.param_groups] == [pytest.approx(3.5e-4)]
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [pytest.approx(7e-4)]


def test_discriminator_and_generator_steps_alternate_with_their_own_gradients(
        data_root, tmp_path):
    trainer = Trainer(config(data_root, tmp_path / "grads", val_every=0))
    generator, discriminator = trainer.net, trainer.discriminator
    g_grads = []  # generator gradients computed since the last optimizer step
    for p in generator.parameters():
        p.register_hook(lambda grad: g_grads.append(grad))

    def snapshot(phase):
        snap = {"phase": phase, "G grads computed": len(g_grads)}
        for name, module in (("G", generator), ("D", discriminator)):
            # Parameters only: the forwards update the BatchNorm statistics anyway.
            snap[name] = [p.detach().clone() for p in module.parameters()]
            snap[f"{name} grads"] = [None if p.grad is None else p.grad.clone()
                                     for p in module.parameters()]
        g_grads.clear()
        return snap

    phases = []
    for optimizer, phase in ((trainer.d_optimizer, "D"), (trainer.optimizer, "G")):
        def recorded(*args, step=optimizer.step, phase=phase, **kwargs):
            phases.append(snapshot(phase))
            return step(*args, **kwargs)

        optimizer.step = recorded
    before = snapshot("before")
    losses = trainer.train_step(next(iter(trainer_loader(trainer))))
    after = snapshot("after")
    assert [p["phase"] for p in phases] == ["D", "G"]
    d_step, g_step = phases
    # The D step: gradients reach the discriminator only (the prediction is detached).
    assert d_step["G grads computed"] == 0 and all(g is None for g in d_step["G grads"])
    assert all(g is not None and bool(g.abs().sum() > 0) for g in d_step["D grads"])
    assert all(torch.equal(a, b) for a, b in zip(before["G"], d_step["G"]))
    # The G step: the generator gets gradients, the discriminator none (its .grad is the
    # D step's, untouched) and keeps the weights its own step gave it.
    assert g_step["G grads computed"] > 0 and all(g is not None for g in g_step["G grads"])
    assert all(torch.equal(a, b) for a, b in zip(d_step["D grads"], g_step["D grads"]))
    assert all(torch.equal(a, b) for a, b in zip(g_step["D"], after["D"]))
    assert not all(torch.equal(a, b) for a, b in zip(before["D"], after["D"]))
    assert not all(torch.equal(a, b) for a, b in zip(g_step["G"], after["G"]))
    assert not any(p.requires_grad for p in discriminator.parameters())
    i2n = losses["image_to_normal"]
    assert set(i2n) == {"total", "normal_mse", "adversarial"}
    assert i2n["total"] == pytest.approx(10 * i2n["normal_mse"] + 0.25 * i2n["adversarial"],
                                         rel=1e-5)
    assert 0 < losses["discriminator"]["total"] < 10


def trainer_loader(trainer):
    """The loader of the trainer's next step."""
    return train_loader(trainer.train_set, trainer.schedule, batch_size=2, rank=0,
                        world_size=1, start_step=trainer.step, end_step=trainer.step + 1,
                        num_workers=0, pin_memory=False)


def test_normal_mse_is_the_seeds_scale_and_masked():
    """MSE of the maps encoded in [0, 1]: ||a - b||^2 / 12 per pixel, e.g. 2/12 for
    orthogonal normals; pixels outside the mask or with a zero target do not count."""
    pred = torch.zeros(1, 3, 2, 2)
    pred[:, 0] = 1.0
    target = torch.zeros(1, 3, 2, 2)
    target[:, 2] = 1.0
    target[0, :, 1, 1] = 0.0
    mask = torch.tensor([[[True, True], [False, True]]])
    assert normal_mse_loss(pred, target, mask).item() == pytest.approx(2 / 12)
    assert normal_mse_loss(pred, pred, mask).item() == 0
    nan = target.clone()
    nan[0, :, 1, 0] = float("nan")
    masked = masked_normals(nan, mask)
    assert torch.equal(masked[0, :, 1, 0], torch.zeros(3)) and torch.equal(
        masked[0, :, 0, 0], target[0, :, 0, 0])


def test_last_pt_holds_the_discriminator_and_the_d_loss_is_logged(straight):
    trainer, result = straight
    last = load_checkpoint(trainer.run_dir / "last.pt")
    assert result["step"] == STEPS and last["step"] == STEPS
    saved = last["discriminator"]
    assert saved["model"].keys() == trainer.discriminator.state_dict().keys()
    assert len(saved["optimizer"]["state"]) == len(list(trainer.discriminator.parameters()))
    assert not any(k.startswith("layers.") for k in last["model"])  # the generator alone
    best = load_checkpoint(trainer.run_dir / "best.pt")
    assert "discriminator" not in best and best["optimizer"] is None
    events = [json.loads(line)
              for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in events if e["event"] == "train"]
    assert len(train) == STEPS
    assert all({"loss/paired/discriminator", "loss/paired/image_to_normal/adversarial",
                "loss/paired/image_to_normal/normal_mse"} <= set(e) for e in train)


def test_resume_reproduces_the_uninterrupted_run(straight, data_root, tmp_path, monkeypatch):
    trainer_a, _ = straight
    first = Trainer(config(data_root, tmp_path / "b"))
    monkeypatch.setattr(first, "_stop_requested",
                        lambda: signal.SIGINT if first.step == 2 else None)
    assert first.train()["step"] == 2
    resumed = Trainer(config(data_root, tmp_path / "b"), resume=True)
    assert resumed.step == 2
    assert resumed.train()["step"] == STEPS
    a = load_checkpoint(trainer_a.run_dir / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    for x, y in ((a, b), (a["discriminator"], b["discriminator"])):
        assert x["model"].keys() == y["model"].keys()
        assert all(torch.equal(x["model"][k], y["model"][k]) for k in x["model"])
        assert x["optimizer"]["param_groups"] == y["optimizer"]["param_groups"]
        sx, sy = x["optimizer"]["state"], y["optimizer"]["state"]
        assert sx.keys() == sy.keys()
        assert all(torch.equal(sx[i][k], sy[i][k]) for i in sx for k in sx[i])


def test_best_pt_rebuilds_and_crossmodal_eval_scores_it(straight, data_root, tmp_path):
    trainer, result = straight
    best = trainer.run_dir / "best.pt"
    model = build_model(load_checkpoint(best))
    assert isinstance(model, Pix2PixGenerator) and not model.training
    out = tmp_path / "eval.json"
    assert main(["-q", "eval", "--checkpoint", str(best), "--data",
                 str(data_root / "synth"), "--split", "val", "--out", str(out),
                 "--device", "cpu"]) == 0
    scored = json.loads(out.read_text())
    assert scored["mean"] == pytest.approx(result["best"]["val/mean"], abs=1e-3)


@pytest.mark.parametrize("vgg16_weights", ["missing", None])
def test_a_perceptual_term_without_its_vgg16_file_stops_at_start(
        data_root, tmp_path, capsys, monkeypatch, vgg16_weights):
    path = None if vgg16_weights is None else tmp_path / "weights" / VGG16_FILE
    cfg = config(data_root, "unused", perceptual=1.0,
                 vgg16_weights=None if path is None else str(path))
    started = []
    monkeypatch.setattr(Trainer, "train_step", lambda self, batch: started.append(1))
    run = tmp_path / "run"
    assert main(["-q", "train", write_yaml(cfg, tmp_path / "e.yaml"), f"run_dir={run}"]) == 2
    line = one_error_line(capsys)
    assert VGG16_FILE in line and not started and not (run / "last.pt").exists()
    if path is None:
        assert line == ("crossmodal: error: the perceptual loss term needs VGG16 weights: set "
                        "train.vgg16_weights to a local copy of torchvision's "
                        "vgg16-397923af.pth (https://download.pytorch.org/models/"
                        "vgg16-397923af.pth), or weigh the term 0")
    else:
        assert str(path) in line


def test_weight_zero_needs_no_vgg16_file(data_root, tmp_path):
    missing = str(tmp_path / VGG16_FILE)
    trainer = Trainer(config(data_root, tmp_path / "run", vgg16_weights=missing, max_steps=1,
                             val_every=0))
    assert "perceptual" not in trainer.critics
    assert trainer.train()["step"] == 1


def test_perceptual_term_with_a_local_vgg16_file(data_root, tmp_path):
    path = tmp_path / VGG16_FILE
    torch.manual_seed(0)
    torch.save(VGG16().state_dict(), path)  # torchvision's names, random values
    trainer = Trainer(config(data_root, tmp_path / "run", perceptual=1.0,
                             vgg16_weights=str(path), max_steps=1, val_every=0))
    assert set(trainer.critics) == {"adversarial", "perceptual"}
    losses = trainer.train_step(next(iter(trainer_loader(trainer))))["image_to_normal"]
    assert 0 < losses["perceptual"] < float("inf")
    assert losses["total"] == pytest.approx(
        10 * losses["normal_mse"] + losses["perceptual"] + 0.25 * losses["adversarial"],
        rel=1e-5)
    assert not any(p.requires_grad for p in trainer.critics["perceptual"].parameters())


def test_a_non_finite_generator_loss_rolls_the_discriminator_back(data_root, tmp_path,
                                                                  monkeypatch):
    """The D step of step 2 has already run when the adversarial term turns NaN: the saved
    state is the one before step 2, the discriminator's included."""
    trainer = Trainer(config(data_root, tmp_path / "nan", val_every=0))
    output, adversarial = LOSS_TERMS["adversarial"]

    def poisoned(network, pred, batch):
        loss = adversarial(network, pred, batch)
        return loss * float("nan") if trainer.step == 1 else loss

    monkeypatch.setitem(LOSS_TERMS, "adversarial", (output, poisoned))
    before = {}
    train_step = trainer.train_step

    def remember(batch):
        if trainer.step == 1:
            before.update(model=copy.deepcopy(trainer.discriminator.state_dict()),
                          optimizer=copy.deepcopy(trainer.d_optimizer.state_dict()))
        return train_step(batch)

    monkeypatch.setattr(trainer, "train_step", remember)
    with pytest.raises(CrossmodalError, match=r"non-finite loss in step 2 \(paired batch, "
                       r"image_to_normal iteration\): total nan.*adversarial nan"):
        trainer.train()
    saved = load_checkpoint(tmp_path / "nan" / "last.pt")
    assert saved["step"] == 1
    d = saved["discriminator"]
    assert all(torch.equal(v, before["model"][k]) for k, v in d["model"].items())
    state = d["optimizer"]["state"]
    assert state.keys() == before["optimizer"]["state"].keys()
    assert all(torch.equal(state[i][k], before["optimizer"]["state"][i][k])
               for i in state for k in state[i])
