"""The learning-rate schedule (optim.schedule / warmup_steps / min_lr), against hand values."""

import math

import pytest

from crossmodal.config import ConfigError, OptimConfig, load_config
from crossmodal.engine.lr_schedule import learning_rate

from test_config import EXPERIMENTS


def rates(optim, max_steps):
    return [learning_rate(optim, s, max_steps) for s in range(max_steps)]


def test_constant_is_the_paper_default():
    optim = OptimConfig()
    assert (optim.schedule, optim.warmup_steps) == ("constant", 0)
    assert rates(optim, 5) == [1e-4] * 5


def test_warmup_rises_linearly_then_holds():
    optim = OptimConfig(lr=1e-3, warmup_steps=4)
    assert rates(optim, 6) == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


def test_cosine_after_warmup_ends_at_min_lr():
    optim = OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=2, min_lr=1e-4)
    # Steps 2..6 decay over t = 0, 1/4, 1/2, 3/4, 1: 1e-4 + 9e-4 * (1 + cos(pi t)) / 2.
    expected = [5e-4, 1e-3] + [1e-4 + 9e-4 * (1 + math.cos(math.pi * k / 4)) / 2
                               for k in range(5)]
    assert rates(optim, 7) == pytest.approx(expected)
    assert expected[2:] == pytest.approx([1e-3, 8.6820e-4, 5.5e-4, 2.3180e-4, 1e-4], abs=1e-7)


def test_cosine_without_warmup_halves_at_mid_run():
    optim = OptimConfig(lr=2e-4, schedule="cosine")
    assert learning_rate(optim, 0, 101) == pytest.approx(2e-4)
    assert learning_rate(optim, 50, 101) == pytest.approx(1e-4)
    assert learning_rate(optim, 100, 101) == 0.0
    assert learning_rate(optim, 0, 1) == 0.0  # a one-step run: already at the end


def test_cosine_is_monotone_and_never_below_min_lr():
    optim = OptimConfig(lr=3e-4, schedule="cosine", warmup_steps=30, min_lr=3e-6)
    values = rates(optim, 500)
    assert values[29] == pytest.approx(3e-4) and values[-1] == pytest.approx(3e-6)
    assert all(a <= b for a, b in zip(values[:30], values[1:30]))
    assert all(a >= b for a, b in zip(values[29:], values[30:]))
    assert min(values) >= 3e-6


@pytest.mark.parametrize("override, message", [
    ("optim.schedule=step", "optim.schedule 'step' is not one of constant, cosine"),
    ("optim.warmup_steps=-1", "optim.warmup_steps must be >= 0, got -1"),
    ("optim.min_lr=1e-3", r"optim.min_lr must be in \[0, optim.lr=0.0001\], got 0.001"),
])
def test_bad_schedule_settings_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(EXPERIMENTS / "base.yaml", [override])
