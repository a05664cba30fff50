"""Checkpoints (docs/design.md §8): safe plain-dict files that rebuild the model alone."""

import re

import numpy as np
import pytest
import torch
from torch import nn

from crossmodal.checkpoint import (
    FORMAT_VERSION, build_model, load_checkpoint, save_checkpoint, unwrap_model)
from crossmodal.errors import CrossmodalError
from crossmodal.models import VARIANTS, CrossModalNet

from conftest import smoke_model


def small_model(variant: str = "full", seed: int = 0) -> CrossModalNet:
    """The smoke model: its trunk and decoder widths are not the defaults, so a rebuild
    from the saved config alone has to read them."""
    torch.manual_seed(seed)
    return CrossModalNet(smoke_model(variant=variant))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trained-a-step model saved with its optimizer."""
    model = small_model("plain_unet")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(1, 3, 64, 64))["normals"].mean().backward()
    optimizer.step()
    config = {"model": model.config.to_dict(), "train": {"lr": 1e-3, "crop": (256, 256)}}
    path = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "run" / "last.pt", model=model,
                           config=config, optimizer=optimizer, step=7,
                           metrics={"mean": np.float32(12.5), "n": np.int64(3),
                                    "loss": torch.tensor(0.25)})
    return path, model, optimizer


def test_round_trip_with_plain_weights_only_load(saved):
    path, model, optimizer = saved
    raw = torch.load(path, weights_only=True)  # nothing but tensors and builtins inside
    assert set(raw) == {"format_version", "config", "model", "optimizer", "step", "metrics",
                        "git_commit"}
    checkpoint = load_checkpoint(path)
    assert checkpoint["format_version"] == FORMAT_VERSION
    assert checkpoint["step"] == 7
    assert checkpoint["metrics"] == {"mean": 12.5, "n": 3, "loss": 0.25}
    assert type(checkpoint["metrics"]["mean"]) is float
    assert checkpoint["config"]["train"] == {"lr": 1e-3, "crop": [256, 256]}
    assert checkpoint["git_commit"] is None or len(checkpoint["git_commit"]) == 40
    state = model.state_dict()
    assert checkpoint["model"].keys() == state.keys()
    assert all(torch.equal(checkpoint["model"][k], state[k]) for k in state)


def test_optimizer_state_resumes(saved):
    path, model, optimizer = saved
    checkpoint = load_checkpoint(path)
    fresh = torch.optim.Adam(build_model(checkpoint).parameters(), lr=1e-3)
    fresh.load_state_dict(checkpoint["optimizer"])
    before, after = optimizer.state_dict(), fresh.state_dict()
    assert before["param_groups"] == after["param_groups"]
    assert all(torch.equal(before["state"][i]["exp_avg"], after["state"][i]["exp_avg"])
               for i in before["state"])


def test_atomic_write_leaves_only_the_checkpoint(saved):
    path = saved[0]
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = nn.Linear(2, 2)
    path = save_checkpoint(tmp_path / "c.pt", model=model, config={"model": {}}, step=1)

    def broken_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model=model, config={"model": {}}, step=2)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert load_checkpoint(path)["step"] == 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_build_model_from_the_config_alone(tmp_path, variant):
    model = small_model(variant, seed=3).eval()
    path = save_checkpoint(tmp_path / f"{variant}.pt", model=model,
                           config={"model": model.config.to_dict()})
    rebuilt = build_model(load_checkpoint(path))
    assert not rebuilt.training and rebuilt.config == model.config
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for route in model.routes:
            expected, got = model(x, route), rebuilt(x, route)
            assert expected.keys() == got.keys()
            assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_build_model_ignores_the_imagenet_init_file(saved):
    checkpoint = load_checkpoint(saved[0])
    checkpoint["config"]["model"]["imagenet_weights"] = "/nowhere/resnet18-f37072fd.pth"
    assert build_model(checkpoint).config.imagenet_weights is None


def test_weights_that_do_not_fit_the_config_are_refused(saved):
    checkpoint = load_checkpoint(saved[0])
    checkpoint["config"]["model"]["variant"] = "full"
    with pytest.raises(CrossmodalError, match="do not match its model config"):
        build_model(checkpoint)


def test_wrapped_models_are_unwrapped(tmp_path):
    class Wrapper(nn.Module):  # what DDP / DataParallel look like: the net under .module
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.module = inner

    class Compiled(nn.Module):  # what torch.compile looks like: the net under ._orig_mod
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self._orig_mod = inner

    inner = nn.Sequential(nn.Linear(2, 3))
    assert unwrap_model(Compiled(Wrapper(inner))) is inner
    assert unwrap_model(inner) is inner
    path = save_checkpoint(tmp_path / "w.pt", model=Wrapper(inner), config={"model": {}})
    assert list(load_checkpoint(path)["model"]) == ["0.weight", "0.bias"]


def test_unplain_config_values_are_refused(tmp_path):
    with pytest.raises(TypeError, match=r"config\.model\.obj"):
        save_checkpoint(tmp_path / "x.pt", model=nn.Linear(1, 1),
                        config={"model": {"obj": object()}})
    assert not list(tmp_path.iterdir())


def test_truncated_file(tmp_path, saved):
    bad = tmp_path / "truncated.pt"
    data = saved[0].read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CrossmodalError, match=re.escape(f"cannot read checkpoint {bad}")):
        load_checkpoint(bad)


def test_text_file(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("hello")
    with pytest.raises(CrossmodalError, match=re.escape(str(bad))):
        load_checkpoint(bad)


def test_a_bare_state_dict_points_to_import_official(tmp_path):
    bad = tmp_path / "model.pth"
    torch.save({"conv_last.weight": torch.zeros(3, 64, 1, 1)}, bad)
    with pytest.raises(CrossmodalError, match=re.escape(str(bad)) + " is not a crossmodal "
                       "checkpoint.*import-official"):
        load_checkpoint(bad)


def test_missing_file(tmp_path):
    missing = tmp_path / "none.pt"
    with pytest.raises(CrossmodalError, match=re.escape(f"checkpoint {missing} does not exist")):
        load_checkpoint(missing)
    with pytest.raises(CrossmodalError, match=re.escape(f"checkpoint {tmp_path} is a folder")):
        load_checkpoint(tmp_path)


def test_newer_format_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", model=nn.Linear(1, 1), config={"model": {}})
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["format_version"] = FORMAT_VERSION + 1
    torch.save(checkpoint, path)
    with pytest.raises(CrossmodalError, match="newer crossmodal.*upgrade"):
        load_checkpoint(path)


def test_a_checkpoint_without_model_config_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", model=nn.Linear(1, 1), config={"train": {}})
    with pytest.raises(CrossmodalError, match=r"no model config"):
        load_checkpoint(path)
