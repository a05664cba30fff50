"""The learning rate of each step, from ``optim``'s settings and the step alone.

The paper trains with a constant rate (§4.1: Adam, 1e-4), which stays the default. Short
runs such as the quickstart learn more in the same number of steps from a warm-up and a
cosine decay (measured in ``benchmarks/RESULTS.md``), so both are available as data:

- warm-up: step ``s < warmup_steps`` (counting from 0) uses ``lr * (s + 1) / warmup_steps``,
  so the first step already moves and step ``warmup_steps - 1`` reaches ``lr``;
- ``constant``: ``lr`` afterwards;
- ``cosine``: ``min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2`` with ``t`` going from 0
  at the end of the warm-up to 1 at the last step (``max_steps - 1``).
"""

from __future__ import annotations

import math

from ..config import OptimConfig

__all__ = ["learning_rate"]


def learning_rate(optim: OptimConfig, step: int, max_steps: int) -> float:
    """The rate for step ``step`` (0-based) of a run of ``max_steps`` steps."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    decay_steps = max_steps - 1 - optim.warmup_steps
    t = 1.0 if decay_steps <= 0 else min(1.0, (step - optim.warmup_steps) / decay_steps)
    return optim.min_lr + (optim.lr - optim.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
