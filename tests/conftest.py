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
    """``state`` with other values but the same names, shapes and aliases: every float
    tensor a view of one random buffer (as long as the largest), so ``torch.save`` writes
    the buffer once: ~9 MB for ResNet-sized state dicts instead of 45 to 141 MB."""
    floats = {id(t): t for t in state.values() if t.is_floating_point()}
    buffer = torch.randn(max(t.numel() for t in floats.values()) + len(floats),
                         generator=torch.Generator().manual_seed(3))
    views = {key: buffer[i:i + t.numel()].view(t.shape)
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
