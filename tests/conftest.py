"""Shared fixtures: a small synthetic dataset and the smoke model for engine tests."""

import functools
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from crossmodal.config import load_config
from crossmodal.models import ModelConfig
from crossmodal.synth.generate import generate
from crossmodal.synth.sampler import SynthConfig

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@functools.cache
def _smoke() -> ModelConfig:
    return load_config(EXPERIMENTS / "smoke.yaml").model


def smoke_model(**changes) -> ModelConfig:
    """The model of experiments/smoke.yaml, the one tiny model of the tests (the real
    graph at 1/8 of ResNet-18's width, ~0.4M parameters), with ``changes`` applied,
    e.g. ``smoke_model(variant="plain_unet")``; a new config on every call."""
    return replace(_smoke(), **changes)


def compact_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with other values but the same names, shapes and aliases, small on disk:
    every float tensor is an overlapping strided view (strides 1, 3, 7, 13, ...) into one
    shared random buffer, so ``torch.save`` writes that buffer once (a few hundred kB for
    the authors' 141 MB state dict). Values vary along every axis, so a transposed or
    misplaced tensor does not compare equal; ``load_state_dict`` copies them like any
    tensor."""
    floats = {id(t): t for t in state.values() if t.is_floating_point()}
    steps = (1, 3, 7, 13)
    strides = {key: tuple(steps[min(len(t.shape) - 1 - d, 3)] for d in range(t.dim()))
               for key, t in floats.items()}
    span = max((sum((n - 1) * s for n, s in zip(t.shape, strides[key])) + 1 if t.dim() else 1)
               for key, t in floats.items())
    buffer = torch.randn(span + len(floats), generator=torch.Generator().manual_seed(3))
    views = {key: buffer.as_strided(t.shape, strides[key], i)
             for i, (key, t) in enumerate(floats.items())}
    return {name: views.get(id(t), t) for name, t in state.items()}


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """20 synthetic faces at 64 px in ``data_root/synth``: train rows of all three kinds,
    plus val and test identities."""
    root = tmp_path_factory.mktemp("data")
    generate(root / "synth", 20, seed=0, progress=False,
             config=replace(SynthConfig(), size=64, samples_per_subject=2))
    return root


@pytest.fixture(scope="session")
def data_root_256(tmp_path_factory):
    """6 synthetic faces at 256 px in ``data_root_256/large``, one per subject, split
    between val (3) and test (3): data at another resolution than the 64 px models."""
    root = tmp_path_factory.mktemp("data256")
    generate(root / "large", 6, seed=1, progress=False,
             config=replace(SynthConfig(), size=256, samples_per_subject=1,
                            val_fraction=0.5, test_fraction=0.5))
    return root


def one_error_line(capsys, status: int | None = None) -> str:
    """The one line a command printed on stderr, a ``crossmodal: error:`` line (a user
    mistake: nothing else, no traceback); with ``status``, the exit status it returned,
    which must be 2."""
    err = capsys.readouterr().err
    assert status in (None, 2), err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crossmodal: error: "), err
    return lines[0]
