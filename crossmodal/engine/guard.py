"""The finite-loss guard: a NaN or inf loss on any rank stops training with the state from
before that step (mae's ``math.isfinite(loss)`` check, plus the rollback).

A step may run several optimizer steps (a paired batch runs two, §3.3); when a later one
fails, the earlier ones have already changed the weights, so the guard copies the training
state before such a step and puts it back on failure. Every rank takes part in the check
(a collective), so all ranks stop at the same iteration.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from . import distributed

__all__ = ["FiniteLossGuard", "Snapshot"]

#: The copied tensors, the parameters whose optimizer state they include, the scaler state.
Snapshot = tuple[list[torch.Tensor], list[torch.Tensor], dict]


class FiniteLossGuard:
    """Checks loss values and rolls ``net``, ``optimizer`` and ``scaler`` back on failure.

    Args:
        net: the bare network (not the DDP wrapper).
        optimizer, scaler: the training's.
        device: the training device; the collectives use it under NCCL, the CPU under gloo.
    """

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, device: torch.device) -> None:
        self.net = net
        self.optimizer = optimizer
        self.scaler = scaler
        self.device = device
        self._buffers: list[torch.Tensor] | None = None

    def snapshot(self) -> Snapshot:
        """Copy the training state into buffers allocated once: this runs on every paired
        step, where allocating ~3x the model's size each time would cost more than the
        copy (a deepcopy added ~10% to a CPU step)."""
        params = list(self.optimizer.state)  # Adam creates state lazily, per parameter
        live = self._live_tensors(params)
        if self._buffers is None or len(self._buffers) != len(live):
            self._buffers = [t.detach().clone() for t in live]
        else:
            for buffer, t in zip(self._buffers, live, strict=True):
                buffer.copy_(t)
        return self._buffers, params, self.scaler.state_dict()

    def check(self, values: torch.Tensor, names: tuple[str, ...],
              snapshot: Snapshot | None) -> str | None:
        """None when every rank's ``values`` (one per name) are finite; otherwise restore
        ``snapshot`` (when given) and return every rank's values as text. A collective."""
        world = distributed.world_size()
        bad = (~torch.isfinite(values)).any().to(torch.int32).reshape(1)
        if world > 1:
            bad = bad.to(self._comm_device())
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if not bad.item():
            return None
        per_rank = [values.cpu()]
        if world > 1:
            per_rank = [torch.empty_like(values, device=self._comm_device())
                        for _ in range(world)]
            dist.all_gather(per_rank, values.to(self._comm_device()))
        if snapshot is not None:
            self._restore(snapshot)
        return "; ".join(
            (f"rank {r}: " if world > 1 else "")
            + ", ".join(f"{n} {v:.4g}" for n, v in zip(names, vals.tolist(), strict=True))
            for r, vals in enumerate(per_rank))

    def _comm_device(self) -> torch.device:
        return distributed.comm_device(self.device)

    def _live_tensors(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Model weights and buffers, then the optimizer state of ``params`` in order."""
        tensors = list(self.net.state_dict().values())
        for p in params:
            tensors += [v for v in self.optimizer.state[p].values()
                        if isinstance(v, torch.Tensor)]
        return tensors

    @torch.no_grad()
    def _restore(self, snapshot: Snapshot) -> None:
        buffers, params, scaler = snapshot
        had_state = set(params)
        for p in [p for p in self.optimizer.state if p not in had_state]:
            del self.optimizer.state[p]  # first touched during the failed step
        for buffer, t in zip(buffers, self._live_tensors(params), strict=True):
            t.copy_(buffer)
        if self.scaler.is_enabled():
            self.scaler.load_state_dict(scaler)
