"""What a training run records as it goes: ``metrics.jsonl`` and TensorBoard, rank 0 only.

``RUN/metrics.jsonl`` holds one JSON object per event (``{"event": "train" | "val",
"step", "time", ...scalars}``); ``RUN/tb/`` the same scalars, plus image panels, for
TensorBoard. Loss values are accumulated on every rank between two log events and averaged
over all ranks when logged (a collective).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from . import distributed

__all__ = ["METRICS", "TB", "RunLog"]

METRICS, TB = "metrics.jsonl", "tb"


class RunLog:
    """The event log of a run in ``run_dir``; ``is_main`` is whether this rank writes it."""

    def __init__(self, run_dir: Path, *, is_main: bool, device: torch.device) -> None:
        self.run_dir = run_dir
        self.is_main = is_main
        self.device = device
        self.writer = None  # the SummaryWriter, open inside tensorboard()
        self._losses: dict[str, list[float]] = {}  # "KIND/ROUTE[/TERM]" -> [sum, count]

    def reset(self, step: int) -> None:
        """Start ``metrics.jsonl`` afresh, or on resume at ``step`` keep only the events up
        to that step (later ones belong to steps about to be run again, and a line cut
        short by a crash is dropped)."""
        if not self.is_main:
            return
        path = self.run_dir / METRICS
        kept = []
        if step and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    event_step = json.loads(line)["step"]
                except (ValueError, TypeError, KeyError):
                    continue
                if event_step <= step:
                    kept.append(line)
        path.write_text("".join(line + "\n" for line in kept))

    @contextmanager
    def tensorboard(self, step: int) -> Iterator[None]:
        """The SummaryWriter of rank 0 while training runs. TensorBoard hides earlier
        events from ``step`` on (``purge_step``): on resume those of the steps about to be
        redone, on a fresh start all of an overwritten run's."""
        if self.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / TB), purge_step=step)
        try:
            yield
        finally:
            if self.writer is not None:
                self.writer.close()
                self.writer = None

    def add_loss(self, key: str, value: float) -> None:
        acc = self._losses.setdefault(key, [0.0, 0])
        acc[0] += value
        acc[1] += 1

    def mean_losses(self) -> dict[str, float]:
        """``{"loss/KEY": mean}`` since the last call, averaged over every rank (a
        collective: every rank ran the same iterations, so has the same keys)."""
        keys = sorted(self._losses)
        sums = torch.tensor([self._losses[k] for k in keys], dtype=torch.float64).reshape(-1, 2)
        if distributed.world_size() > 1:
            sums = sums.to(distributed.comm_device(self.device))
            dist.all_reduce(sums)
            sums = sums.cpu()
        self._losses.clear()
        return {f"loss/{k}": s / max(n, 1) for k, (s, n) in zip(keys, sums.tolist(), strict=True)}

    def write_scalars(self, event: str, step: int, scalars: dict[str, float]) -> None:
        """TensorBoard scalars and a ``metrics.jsonl`` line; rank 0 only."""
        if not self.is_main:
            return
        if self.writer is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)
        record = {"event": event, "step": step, "time": time.time(), **scalars}
        with open(self.run_dir / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")

    def write_image(self, tag: str, step: int, image: np.ndarray) -> None:
        """An RGB uint8 ``(H, W, 3)`` picture in TensorBoard; rank 0 only."""
        if self.writer is not None:
            self.writer.add_image(tag, image, step, dataformats="HWC")
