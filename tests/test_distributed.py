"""Two-process DDP training on the CPU (gloo), as ``torchrun --nproc_per_node=2`` runs it."""

import json
import os
import socket
from dataclasses import replace

import pytest
import torch
import torch.multiprocessing as mp

from crossmodal.config import DataConfig, ExperimentConfig, TrainConfig
from crossmodal.data import read_dataset
from crossmodal.engine import distributed
from crossmodal.engine.trainer import Trainer
from crossmodal.synth.generate import generate
from crossmodal.synth.sampler import SynthConfig

from conftest import smoke_model


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """24 synthetic faces at 64 px: train rows of all three kinds and val pairs."""
    root = tmp_path_factory.mktemp("data")
    generate(root / "synth", 24, seed=0, progress=False,
             config=replace(SynthConfig(), size=64, samples_per_subject=2, val_fraction=0.2))
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world: int, port: int, config: ExperimentConfig, out: str) -> None:
    """One rank, as torchrun starts it: join the group from the environment, train, and
    leave the final weights, the result and what each optimizer step saw in ``out``."""
    torch.set_num_threads(1)  # the ranks share the machine's cores
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        assert distributed.init_distributed("cpu") == (rank, world, rank)
        assert (distributed.rank(), distributed.world_size()) == (rank, world)
        trainer = Trainer(config)
        routes, steps = [], []
        trainer.net.register_forward_pre_hook(lambda module, args: routes.append(args[1]))
        step = trainer.optimizer.step

        def spy(*args, **kwargs):
            steps.append({"route": routes[-1], "image_encoder_grad": any(
                p.grad is not None and bool(p.grad.any())
                for p in trainer.net.image_encoder.parameters())})
            return step(*args, **kwargs)

        trainer.optimizer.step = spy
        result = trainer.train()
        torch.save(trainer.net.state_dict(), f"{out}/state{rank}.pt")
        if trainer.ema is not None:
            torch.save(trainer.ema.net.state_dict(), f"{out}/ema{rank}.pt")
        with open(f"{out}/result{rank}.json", "w") as f:
            json.dump({"result": result, "steps": steps}, f)
    finally:
        distributed.cleanup()


def run_ranks(data_root, tmp_path, steps: int, world: int = 2, ema_decay: float = 0.0):
    config = ExperimentConfig(
        name="ddp", run_dir=str(tmp_path / "run"), model=smoke_model(),
        data=DataConfig(root=str(data_root), paired=["synth"], image=["synth"],
                        normal=["synth"], val=["synth"], image_size=64, batch_size=1,
                        num_workers=0),
        train=TrainConfig(max_steps=steps, log_every=1, val_every=0, checkpoint_every=0,
                          ema_decay=ema_decay))
    mp.spawn(worker, args=(world, free_port(), config, str(tmp_path)), nprocs=world)
    states = [torch.load(tmp_path / f"state{r}.pt", weights_only=True) for r in range(world)]
    outputs = [json.loads((tmp_path / f"result{r}.json").read_text()) for r in range(world)]
    return states, outputs


def test_two_ranks_train_the_same_network(data_root, tmp_path):
    (a, b), outputs = run_ranks(data_root, tmp_path, steps=3)
    assert a.keys() == b.keys()
    for name in a:  # parameters and BatchNorm statistics alike
        assert torch.equal(a[name], b[name]), name
    results = [o["result"] for o in outputs]
    assert results[0]["step"] == results[1]["step"] == 3
    # Validation combines the two shards of the val images: the same on every rank.
    assert results[0]["val"] == results[1]["val"]
    n_val = sum(s.split == "val" for s in read_dataset(data_root / "synth")[1])
    assert n_val >= 2 and results[0]["val"]["val/n_images"] == n_val
    # Both ranks ran the same passes, and a normal->normal step leaves E_I without a
    # gradient under DDP too (so Adam does not move it).
    assert outputs[0]["steps"] == outputs[1]["steps"]
    routes = [s["route"] for s in outputs[0]["steps"]]
    assert "normal_to_normal" in routes and "image_to_normal" in routes
    for s in outputs[0]["steps"]:
        assert s["image_encoder_grad"] == (s["route"] != "normal_to_normal")
    checkpoint = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert checkpoint["world_size"] == 2
    assert all(torch.equal(checkpoint["model"][k], a[k]) for k in a)


def test_two_ranks_keep_the_same_weight_average(data_root, tmp_path):
    """train.ema_decay under DDP: every rank averages the same synchronised weights, the
    average's BatchNorm statistics (each rank's own forwards) are rank 0's once validation
    and last.pt broadcast them, and validation, which scores the average, agrees."""
    (a, _), outputs = run_ranks(data_root, tmp_path, steps=3, ema_decay=0.5)
    ema = [torch.load(tmp_path / f"ema{r}.pt", weights_only=True) for r in range(2)]
    assert ema[0].keys() == ema[1].keys() == a.keys()
    for name in a:
        assert torch.equal(ema[0][name], ema[1][name]), name
    floats = [k for k, v in a.items() if v.is_floating_point() and "running" not in k]
    assert any(not torch.equal(ema[0][k], a[k]) for k in floats)  # an average, not a copy
    results = [o["result"] for o in outputs]
    assert results[0]["val"] == results[1]["val"]
    checkpoint = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert all(torch.equal(checkpoint["ema"][k], ema[0][k]) for k in ema[0])
