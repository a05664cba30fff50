"""An exponential moving average of the model's weights (Polyak averaging), which is what
validation scores and ``best.pt`` keeps when ``train.ema_decay`` is set.

At a constant learning rate the weights keep moving around the minimum by the size of
the step; their average sits closer to it, without the rate decaying (which, on the
under-trained CPU quickstart, costs more progress than it gains: ``benchmarks/RESULTS.md``).
After step ``t`` (1-based) the average is

    avg <- d_t * avg + (1 - d_t) * weights,   d_t = min(decay, (1 + t) / (10 + t)),

the warm-up of ``d_t`` (as in TensorFlow's and timm's averages) letting the random
initial weights fade within the first few dozen steps instead of over ``1 / (1 - decay)``
steps. BatchNorm's running statistics are averaged the same way; integer buffers (the
batch counters) are copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["WeightAverage"]


class WeightAverage:
    """The averaged copy of a network.

    Args:
        net: the bare network being trained; the average starts as a copy of it (same
            device and memory format), in eval mode and without gradients.
        decay: the rate of the average once warmed up, in ``[0, 1)``.
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.net = copy.deepcopy(net).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """``d_t`` of the update after step ``step`` (1-based)."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        """Move the average towards ``net``'s weights and buffers after step ``step``."""
        weight = 1.0 - self.decay_at(step)
        live = net.state_dict()
        for name, average in self.net.state_dict().items():
            if average.is_floating_point():
                average.lerp_(live[name], weight)
            else:
                average.copy_(live[name])
