"""The mixed-batch schedule (paper §3.3): passes per data type, gradients, variants, and the
data every step and rank sees."""

import logging
import re
from collections import Counter

import pytest
import torch
from torch.utils.data import default_collate

from crossmodal.config import (
    ConfigError, DataConfig, ExperimentConfig, ScheduleConfig, TrainConfig, load_config)
from crossmodal.engine.data import StepBatchSampler
from crossmodal.engine.schedule import (
    Iteration, MixedBatchSchedule, plan_for, resolve_proportions)
from crossmodal.engine.trainer import Trainer
from crossmodal.errors import CrossmodalError
from crossmodal.models import CrossModalNet

from conftest import smoke_model

GROUPS = ("image_encoder", "normal_encoder", "normal_decoder", "image_decoder")


ALL_ROUTES = ("image_to_normal", "normal_to_normal", "image_to_image")


def config(data_root, run_dir, variant="full", schedule=None, **train):
    return ExperimentConfig(
        name="schedule", run_dir=str(run_dir), model=smoke_model(variant=variant),
        data=DataConfig(root=str(data_root), paired=["synth"], image=["synth"],
                        normal=["synth"], val=[], image_size=64, batch_size=2, num_workers=0),
        schedule=schedule or ScheduleConfig(),
        train=TrainConfig(**{"max_steps": 4, "log_every": 1, **train}))


def batch_of(trainer, kind):
    """A collated batch of ``kind`` and a step of that kind, as the loader would give."""
    step = next(s for s in range(1000) if trainer.schedule.kind_at(s) == kind)
    items = [trainer.train_set[(kind, i, 7 + i)] for i in range(2)]
    return step, default_collate(items)


class Recorder:
    """Records the route of every forward pass and, at every optimizer step, which
    module groups hold a non-zero gradient."""

    def __init__(self, trainer):
        self.routes, self.grads = [], []
        net = trainer.net
        net.register_forward_pre_hook(lambda module, args: self.routes.append(args[1]))
        step = trainer.optimizer.step

        def spy(*args, **kwargs):
            self.grads.append({g: any(p.grad is not None and bool(p.grad.abs().sum() > 0)
                                      for p in getattr(net, g).parameters())
                               for g in GROUPS if getattr(net, g) is not None})
            return step(*args, **kwargs)

        trainer.optimizer.step = spy

    def run(self, trainer, kind):
        self.routes.clear()
        self.grads.clear()
        trainer.step, batch = batch_of(trainer, kind)
        return trainer.train_step(batch)


@pytest.fixture(scope="module")
def full_trainer(data_root, tmp_path_factory):
    trainer = Trainer(config(data_root, tmp_path_factory.mktemp("run")))
    return trainer, Recorder(trainer)


def test_default_schedule_is_the_papers():
    """§3.3: paired -> normal->normal, then image->normal with the image loss on the same
    encoding; image-only -> image->image; normal-only -> normal->normal; equal weights."""
    assert plan_for(ScheduleConfig(), ALL_ROUTES) == {
        "paired": (Iteration("normal_to_normal", "normals", ("normal",), (1.0,)),
                   Iteration("image_to_normal", "image", ("normal", "image"), (1.0, 1.0))),
        "image": (Iteration("image_to_image", "image", ("image",), (1.0,)),),
        "normal": (Iteration("normal_to_normal", "normals", ("normal",), (1.0,)),),
    }
    assert plan_for(ScheduleConfig(), ALL_ROUTES)["paired"][1].outputs == ("normals", "image")


def test_schedule_is_a_yaml_diff(tmp_path):
    """An ablation of the schedule is a few lines on top of an experiment."""
    (tmp_path / "ablation.yaml").write_text(
        "_base_: base.yaml\nschedule:\n  paired: [image_to_normal]\n"
        "  loss_weights:\n    image_to_normal: {image: 0.5}\n")
    (tmp_path / "base.yaml").write_text("name: base\n")
    schedule = load_config(tmp_path / "ablation.yaml").schedule
    assert schedule.paired == ["image_to_normal"]
    assert schedule.loss_weights["image_to_normal"] == {"normal": 1.0, "image": 0.5}
    assert schedule.image == ["image_to_image"]  # the rest stays the paper's


@pytest.mark.parametrize("override, message", [
    ("schedule.image=[image_to_normal]",
     "schedule.image: the image_to_normal pass needs normals, which image samples do not"),
    ("schedule.normal=[image_to_image]", "needs image, which normal samples do not have"),
    ("schedule.paired=[image_to_depth]", "unknown route 'image_to_depth'; valid: "
     "image_to_normal, normal_to_normal, image_to_image"),
    ("schedule.loss_weights.image_to_image.normal=1",
     "unknown loss term 'schedule.loss_weights.image_to_image.normal'; the image_to_image "
     "pass has image"),
    ("schedule.loss_weights.normal_to_normal.normal=-1",
     "schedule.loss_weights.normal_to_normal.normal must be a non-negative number"),
    ("schedule.loss_weights.image_to_normal=null",
     "schedule.loss_weights must be dict[str, dict[str, float]], got"),
    ("schedule.iterations=[]", "unknown key 'schedule.iterations'; valid keys in schedule: "
     "paired, image, normal, loss_weights"),
])
def test_bad_schedules_are_one_line_errors(tmp_path, override, message):
    (tmp_path / "e.yaml").write_text("name: e\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(tmp_path / "e.yaml", [override])


def test_paired_batch_runs_normal_to_normal_then_image_to_normal(full_trainer):
    trainer, rec = full_trainer
    losses = rec.run(trainer, "paired")
    assert rec.routes == ["normal_to_normal", "image_to_normal"]
    assert list(losses) == ["normal_to_normal", "image_to_normal"]
    assert set(losses["normal_to_normal"]) == {"total", "normal"}
    i2n = losses["image_to_normal"]
    assert set(i2n) == {"total", "normal", "image"}  # image->image rides on the same pass
    assert i2n["total"] == pytest.approx(i2n["normal"] + i2n["image"], rel=1e-6)
    # One optimizer step each. Normal->normal (skips off) trains E_N and D_N only: E_I
    # gets no gradient at all; image->normal+image trains E_I, D_N and D_I, not E_N.
    assert rec.grads == [
        {"image_encoder": False, "normal_encoder": True, "normal_decoder": True,
         "image_decoder": False},
        {"image_encoder": True, "normal_encoder": False, "normal_decoder": True,
         "image_decoder": True},
    ]


@pytest.mark.parametrize("kind, route, term, trained", [
    ("image", "image_to_image", "image", {"image_encoder", "image_decoder"}),
    ("normal", "normal_to_normal", "normal", {"normal_encoder", "normal_decoder"}),
])
def test_single_type_batch_runs_its_one_iteration(full_trainer, kind, route, term, trained):
    trainer, rec = full_trainer
    losses = rec.run(trainer, kind)
    assert rec.routes == [route]
    assert set(losses[route]) == {"total", term}
    assert rec.grads == [{name: name in trained for name in (
        "image_encoder", "normal_encoder", "normal_decoder", "image_decoder")}]


def test_weighted_terms_and_a_zero_weight(data_root, tmp_path):
    """The total is the weighted sum of the terms (hand-computed); a term of weight 0 is not
    computed, so the parameters only it reaches (D_I) get no gradient."""
    schedule = ScheduleConfig(loss_weights={"normal_to_normal": {"normal": 2.0},
                                            "image_to_normal": {"normal": 0.5, "image": 0.0},
                                            "image_to_image": {"image": 1.0}})
    trainer = Trainer(config(data_root, tmp_path, schedule=schedule))
    rec = Recorder(trainer)
    losses = rec.run(trainer, "paired")
    assert losses["normal_to_normal"]["total"] == pytest.approx(
        2.0 * losses["normal_to_normal"]["normal"], rel=1e-6)
    assert set(losses["image_to_normal"]) == {"total", "normal"}
    assert losses["image_to_normal"]["total"] == pytest.approx(
        0.5 * losses["image_to_normal"]["normal"], rel=1e-6)
    assert [g["image_decoder"] for g in rec.grads] == [False, False]
    assert rec.grads[1]["image_encoder"] and rec.grads[1]["normal_decoder"]


def test_zero_image_to_image_weight_trains_without_image_batches(data_root, tmp_path,
                                                                 caplog):
    """With the image->image term (and the paired image term) at weight 0, image-only
    batches have nothing to train and are dropped; training runs, and D_I is never
    updated: no gradient, no optimizer state, its initial weights."""
    schedule = ScheduleConfig(loss_weights={"normal_to_normal": {"normal": 1.0},
                                            "image_to_normal": {"normal": 1.0, "image": 0.0},
                                            "image_to_image": {"image": 0.0}})
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(config(data_root, tmp_path, schedule=schedule, max_steps=6))
    assert "dropping image batches" in caplog.text
    assert set(trainer.proportions) == {"paired", "normal"}
    initial = {k: v.clone() for k, v in trainer.net.image_decoder.state_dict().items()}
    trained = {k: v.clone() for k, v in trainer.net.normal_decoder.state_dict().items()}
    assert trainer.train()["step"] == 6
    decoder = trainer.net.image_decoder
    assert all(p.grad is None for p in decoder.parameters())
    assert not any(p in trainer.optimizer.state for p in decoder.parameters())
    assert all(torch.equal(v, initial[k]) for k, v in decoder.state_dict().items())
    assert not all(torch.equal(v, trained[k])
                   for k, v in trainer.net.normal_decoder.state_dict().items())


def test_plain_unet_runs_only_image_to_normal(data_root, tmp_path, caplog):
    routes = CrossModalNet(smoke_model(variant="plain_unet")).routes
    plan = plan_for(ScheduleConfig(), routes)
    assert plan == {"paired": (Iteration("image_to_normal", "image", ("normal",), (1.0,)),),
                    "image": (), "normal": ()}
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(config(data_root, tmp_path, variant="plain_unet"))
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "dropping image batches" in warned and "dropping normal batches" in warned
    assert trainer.proportions == {"paired": 1.0}
    rec = Recorder(trainer)
    losses = rec.run(trainer, "paired")
    assert rec.routes == ["image_to_normal"]
    assert set(losses["image_to_normal"]) == {"total", "normal"}  # no D_I, no image loss
    assert rec.grads == [{"image_encoder": True, "normal_decoder": True}]


def test_no_normal_encoder_keeps_the_image_passes():
    routes = CrossModalNet(smoke_model(variant="no_normal_encoder")).routes
    plan = plan_for(ScheduleConfig(), routes)
    assert plan == {"paired": (Iteration("image_to_normal", "image", ("normal", "image"),
                                         (1.0, 1.0)),),
                    "image": (Iteration("image_to_image", "image", ("image",), (1.0,)),),
                    "normal": ()}


def test_resolve_proportions_drops_types_without_data(caplog):
    plan = plan_for(ScheduleConfig(), ALL_ROUTES)
    with caplog.at_level(logging.WARNING):
        shares = resolve_proportions({"paired": 2, "image": 1, "normal": 1}, plan,
                                     {"paired": 5, "image": 3, "normal": 0})
    assert shares == pytest.approx({"paired": 2 / 3, "image": 1 / 3})
    assert "no normal training samples" in caplog.text
    with pytest.raises(CrossmodalError, match="no usable training data"):
        resolve_proportions({"normal": 1}, plan_for(ScheduleConfig(), ("image_to_normal",)),
                            None, "plain_unet")


# ---------------------------------------------------------------------- the data


PROPORTIONS = {"paired": 0.5, "image": 0.3, "normal": 0.2}
N = {"paired": 101, "image": 37, "normal": 53}


def test_kind_at_is_a_function_of_seed_and_step():
    a, b = MixedBatchSchedule(PROPORTIONS, 3), MixedBatchSchedule(PROPORTIONS, 3)
    steps = list(range(500))
    forward = [a.kind_at(s) for s in steps]
    # Another instance queried backwards and from far away agrees: no hidden state.
    assert b.kind_at(10_000) == a.kind_at(10_000)
    assert [b.kind_at(s) for s in reversed(steps)][::-1] == forward
    other = [MixedBatchSchedule(PROPORTIONS, 4).kind_at(s) for s in steps]
    assert other != forward


def test_proportions_are_respected():
    schedule = MixedBatchSchedule(PROPORTIONS, 0)
    for first, count in ((0, 4000), (123_457, 1000)):
        counts = Counter(schedule.kind_at(s) for s in range(first, first + count))
        for kind, share in PROPORTIONS.items():
            assert counts[kind] / count == pytest.approx(share, abs=0.02)
    # Stratified chunks: within one chunk each type is within one step of its share.
    chunk = Counter(schedule.kind_at(s) for s in range(0, schedule.CHUNK))
    for kind, share in PROPORTIONS.items():
        assert abs(chunk[kind] - share * schedule.CHUNK) < 1
    assert schedule.batches_before(4000) == {k: sum(schedule.kind_at(s) == k
                                                    for s in range(4000)) for k in N}


def test_indices_are_deterministic_per_seed_step_and_rank():
    a, b = MixedBatchSchedule(PROPORTIONS, 5), MixedBatchSchedule(PROPORTIONS, 5)
    for step in (0, 1, 77, 3000, 2):
        for rank in (0, 1, 2):
            assert a.indices(step, rank, 3, 4, N) == b.indices(step, rank, 3, 4, N)
    assert a.indices(5, 0, 3, 4, N) != a.indices(5, 1, 3, 4, N)
    assert (MixedBatchSchedule(PROPORTIONS, 6).indices(5, 0, 3, 4, N)
            != a.indices(5, 0, 3, 4, N))


def test_rank_slices_partition_the_single_process_batch():
    schedule = MixedBatchSchedule(PROPORTIONS, 1)
    for step in range(300):
        kind, whole = schedule.indices(step, 0, 1, 8, N)
        k0, first = schedule.indices(step, 0, 2, 4, N)
        k1, second = schedule.indices(step, 1, 2, 4, N)
        assert k0 == k1 == kind
        assert first + second == whole
        if len(set(whole)) == len(whole):  # no epoch boundary inside this batch
            assert not set(first) & set(second)


def test_each_type_is_seen_once_per_epoch():
    schedule = MixedBatchSchedule(PROPORTIONS, 2)
    seen = {k: [] for k in N}
    for step in range(400):
        kind, idx = schedule.indices(step, 0, 1, 1, N)
        seen[kind].append(idx[0])
    for kind, n in N.items():
        assert len(seen[kind]) >= n
        assert sorted(seen[kind][:n]) == list(range(n))


def test_sampler_gives_each_rank_its_slice_and_shared_augmentation_seeds():
    schedule = MixedBatchSchedule(PROPORTIONS, 9)

    def keys(rank, world, batch, start=0):
        return list(StepBatchSampler(schedule, N, batch_size=batch, rank=rank,
                                     world_size=world, start_step=start, end_step=20))

    single = keys(0, 1, 4)
    ranks = [keys(0, 2, 2), keys(1, 2, 2)]
    assert len(single) == 20
    assert [a + b for a, b in zip(*ranks)] == single  # same samples and augmentation seeds
    assert keys(0, 1, 4, start=13) == single[13:]     # a resumed loader continues exactly
    seeds = [seed for batch in single for _, _, seed in batch]
    assert len(set(seeds)) == len(seeds)
