"""The training job: set-up (:class:`Trainer`) apart from the step loop (:meth:`Trainer.train`).

A step loads one batch of one data type and runs that type's iterations of the mixed-batch
schedule (:mod:`crossmodal.engine.schedule`), each its own optimizer step. Rank 0 alone
writes the run directory::

    RUN/config.yaml      the resolved config (and the overrides it came from)
    RUN/last.pt          every train.checkpoint_every steps, at the end and on SIGINT/SIGTERM
    RUN/best.pt          the weights with the lowest validation mean angular error
    RUN/metrics.jsonl    one JSON object per log or validation event
    RUN/tb/              TensorBoard: losses per iteration type, lr, speed, validation
                         metrics and image panels

The data of step s depends on (seed, s) only, so ``resume=True`` continues from
``last.pt`` with exactly the data, weights and optimizer state an uninterrupted run has.
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import default_collate
from tqdm import tqdm

from .. import viz
from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import AMP_MODES, ExperimentConfig, config_to_dict, save_run_config
from ..errors import CrossmodalError
from ..metrics import AngularErrorMeter, angular_error
from ..models import CrossModalNet
from . import distributed
from .data import TrainSet, train_loader, val_loader
from .lr_schedule import learning_rate
from .schedule import (
    Iteration, MixedBatchSchedule, iteration_losses, plan_for, resolve_proportions)

__all__ = ["Trainer", "resolve_amp", "seed_everything"]

log = logging.getLogger(__name__)

#: Validation samples shown in the TensorBoard panel (rows of input | prediction | ...).
PANEL_SAMPLES = 4
LAST, BEST, METRICS, TB = "last.pt", "best.pt", "metrics.jsonl", "tb"
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device``; None for full precision.

    On CUDA, ``auto`` is bf16 where supported, else fp16. On the CPU, ``auto`` is full
    precision, and bf16 runs only when asked for (``train.amp=bf16``): CPUs with native
    bf16 (AVX512-BF16, AMX) run this network's training step 1.8x faster with it (a
    paired step at 64 px on 2 AMD EPYC cores: 0.55 s instead of 1.0 s), others emulate it
    and get slower. fp16 is CUDA's.
    """
    if mode not in AMP_MODES:
        raise CrossmodalError(f"train.amp {mode!r}: use one of {', '.join(AMP_MODES)}")
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        if mode == "fp16":
            raise CrossmodalError("train.amp=fp16 needs a CUDA device; on the CPU use "
                                  "train.amp=bf16 or off")
        return torch.bfloat16
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (every device): the model initialisation draws from
    torch's generator; the data has its own seeds (:class:`MixedBatchSchedule`)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _adam(net: nn.Module, config: ExperimentConfig) -> torch.optim.Adam:
    """Adam with ``config.optim``'s settings (paper §4.1)."""
    optim = config.optim
    try:
        if len(optim.betas) != 2:
            raise ValueError(f"betas needs two numbers, got {list(optim.betas)}")
        # The fused kernel makes one pass over each parameter's state: 34 ms a step for
        # the 35M parameters on two CPU cores, against 48 ms for the default foreach one.
        return torch.optim.Adam(net.parameters(), lr=optim.lr, betas=tuple(optim.betas),
                                weight_decay=optim.weight_decay, fused=True)
    except ValueError as err:  # Adam's own checks: negative lr, betas outside [0, 1), ...
        raise CrossmodalError(f"optim settings rejected: {err}") from None


class Trainer:
    """Everything a training run needs, built from an experiment config.

    Args:
        config: the experiment (:class:`crossmodal.config.ExperimentConfig`).
        overrides: the ``key=value`` overrides it was loaded with, recorded beside it.
        resume: continue from ``run_dir/last.pt`` (model, optimizer, GradScaler, step, RNG
            state, best metric); without it, training starts afresh, and an earlier run's
            files in ``run_dir`` are overwritten (with a warning).
        source: the experiment file, recorded in ``config.yaml``.

    Call inside an initialised process group (:func:`distributed.init_distributed`) to
    train with DDP; every rank builds the same model from ``train.seed``.

    Raises:
        CrossmodalError: bad settings, missing data folders or no usable data, nothing to
            resume, or a ``last.pt`` that does not fit the config.
    """

    def __init__(self, config: ExperimentConfig, overrides: Sequence[str] = (),
                 resume: bool = False, source: str | Path | None = None) -> None:
        self.config = config
        self.overrides = tuple(overrides)
        self.source = None if source is None else Path(source)
        data, train = config.data, config.train
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0
        self.run_dir = Path(config.run_dir)
        checkpoint = self._checkpoint_to_resume() if resume else None
        if not resume and self.is_main and (self.run_dir / LAST).is_file():
            log.warning("%s holds an earlier run (%s); starting afresh and overwriting it "
                        "(pass --resume to continue it instead)", self.run_dir, LAST)
        self.device = distributed.resolve_device(train.device, distributed.local_rank(),
                                                 option="train.device")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest convs
        self.amp_dtype = resolve_amp(train.amp, self.device)

        seed_everything(train.seed)  # before the model, so its initialisation is reproducible
        self.net = CrossModalNet(config.model)
        if train.init_from and checkpoint is None:
            self._load_weights(load_checkpoint(train.init_from)["model"], train.init_from)
        self.memory_format = torch.channels_last if train.channels_last else torch.contiguous_format
        self.net.to(self.device, memory_format=self.memory_format)

        self.plan = plan_for(self.net.routes)
        self.train_set = TrainSet(data)
        self.proportions = resolve_proportions(data.proportions, self.plan,
                                               self.train_set.n_by_kind, config.model.variant)
        self.schedule = MixedBatchSchedule(self.proportions, train.seed)
        self.n_train = sum(self.train_set.n_by_kind[k] for k in self.proportions)
        self.steps_per_epoch = math.ceil(self.n_train / (data.batch_size * self.world_size))
        self.max_steps = (train.max_steps if train.max_steps is not None
                          else train.epochs * self.steps_per_epoch)
        self.val_loader = val_loader(data, val_batches=train.val_batches, rank=self.rank,
                                     world_size=self.world_size,
                                     pin_memory=self.device.type == "cuda")

        self.optimizer = _adam(self.net, config)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self._snapshot_buffers: list[torch.Tensor] | None = None
        self.step = 0
        self.best: dict[str, float | int] | None = None  # {"val/mean", "step"}
        self.last_val: dict[str, float] = {}
        if checkpoint is not None:
            self._restore(checkpoint)
        # DDP: each route uses a subset of the parameters, hence find_unused_parameters.
        # broadcast_buffers stays on: BatchNorm running statistics are rank 0's before every
        # forward, and _sync_buffers makes them identical before validation and saving, so
        # every rank validates, and rank 0 saves, the same network.
        self.model: nn.Module = self.net
        if self.world_size > 1:
            self.model = DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)

        self.writer = None  # TensorBoard, rank 0, opened by train()
        self._stop_signal: int | None = None
        self._losses: dict[str, list[float]] = {}  # "KIND/ROUTE[/TERM]" -> [sum, count]
        self._since = (self.step, time.perf_counter())
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_run_config(config, self.run_dir, self.overrides, self.source)
            self._reset_metrics_file()
        n_params = sum(p.numel() for p in self.net.parameters())
        log.info("%s: %s model (%.1fM parameters) on %s%s, %d training samples (%s), "
                 "%d steps of %d samples x %d process(es)%s", config.name,
                 config.model.variant, n_params / 1e6, self.device,
                 f" with {str(self.amp_dtype).removeprefix('torch.')} autocast"
                 if self.amp_dtype else "", self.n_train,
                 ", ".join(f"{k} {self.train_set.n_by_kind[k]}, {p:.0%} of batches"
                           for k, p in self.proportions.items()),
                 self.max_steps, data.batch_size, self.world_size,
                 f", resuming after step {self.step}" if checkpoint else "")

    # ------------------------------------------------------------------ set-up helpers

    def _checkpoint_to_resume(self) -> dict:
        path = self.run_dir / LAST
        if not path.is_file():
            raise CrossmodalError(f"nothing to resume in {self.run_dir} (no {LAST}); start "
                                  f"without --resume")
        return load_checkpoint(path)

    def _load_weights(self, state: dict[str, torch.Tensor], source: str | Path) -> None:
        try:
            self.net.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise CrossmodalError(
                f"the weights in {source} do not fit the {self.config.model.variant!r} model "
                f"of this config: {' '.join(str(err).split())[:300]}") from None

    def _restore(self, checkpoint: dict) -> None:
        """Continue from ``checkpoint``: weights, optimizer, GradScaler, RNG, step, best."""
        self._load_weights(checkpoint["model"], self.run_dir / LAST)
        if checkpoint["optimizer"] is not None:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        # The config's hyper-parameters win, so a diverged run can resume with a lower lr
        # (train_step sets each step's rate from it).
        for group in self.optimizer.param_groups:
            group.update(betas=tuple(self.config.optim.betas),
                         weight_decay=self.config.optim.weight_decay)
        if self.scaler.is_enabled() and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        rng = checkpoint.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        saved_world = checkpoint.get("world_size", self.world_size)
        if saved_world != self.world_size:
            log.warning("%s was written by %d processes, resuming with %d: the global batch, "
                        "and so the data of each step, differ from the original run",
                        self.run_dir / LAST, saved_world, self.world_size)
        self.step = int(checkpoint["step"])
        metrics = checkpoint["metrics"]
        self.best = metrics.get("best")
        self.last_val = metrics.get("val", {})

    def _reset_metrics_file(self) -> None:
        """Start ``metrics.jsonl`` afresh, or on resume keep only the events up to the
        resumed step (later ones belong to steps about to be run again, and a line cut
        short by a crash is dropped)."""
        path = self.run_dir / METRICS
        kept = []
        if self.step and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    step = json.loads(line)["step"]
                except (ValueError, TypeError, KeyError):
                    continue
                if step <= self.step:
                    kept.append(line)
        path.write_text("".join(line + "\n" for line in kept))

    # ------------------------------------------------------------------ the loop

    def train(self) -> dict[str, Any]:
        """Train from :attr:`step` to :attr:`max_steps`.

        SIGINT/SIGTERM finish the current step, save ``last.pt`` and return (a second
        SIGINT raises ``KeyboardInterrupt`` at once).

        Returns:
            ``{"run_dir", "step", "max_steps", "val": {...} (latest validation metrics),
            "best": {"val/mean", "step"} | None, "stopped_by": None | "SIGINT" | "SIGTERM"}``.

        Raises:
            CrossmodalError: a non-finite loss (the state before that step is saved).
        """
        if self.step >= self.max_steps:
            log.info("%s already trained for %d steps (max %d); nothing to do",
                     self.run_dir, self.step, self.max_steps)
            return self._result(None)
        loader = train_loader(self.train_set, self.schedule,
                              batch_size=self.config.data.batch_size, rank=self.rank,
                              world_size=self.world_size, start_step=self.step,
                              end_step=self.max_steps,
                              num_workers=self.config.data.num_workers,
                              pin_memory=self.device.type == "cuda")
        stopped_by = None
        with self._tensorboard(), self._stop_signals():
            bar = tqdm(total=self.max_steps, initial=self.step, desc="train", unit="step",
                       disable=not self.is_main, dynamic_ncols=True)
            self.model.train()
            self._since = (self.step, time.perf_counter())
            batches = iter(loader)
            try:
                while self.step < self.max_steps:
                    self.train_step(next(batches))
                    bar.update()
                    self._after_step(bar)
                    if (signum := self._stop_requested()) is not None:
                        stopped_by = signal.Signals(signum).name
                        break
                else:
                    self._log_losses(bar)  # the last step's (never due in _after_step)
            finally:
                bar.close()
                # Shut the loader's workers down now, also when an exception is on its way
                # out (its traceback would keep the iterator alive): left to interpreter
                # exit, they would get a SIGTERM, which they ignore, and the process would
                # wait for them forever.
                del batches
            if stopped_by is None:
                self.validate()
            self.save_last()
            distributed.barrier()  # no rank leaves before rank 0 has written last.pt
        if stopped_by and self.is_main:
            log.warning("%s: stopped by %s after step %d of %d; saved %s; continue with "
                        "--resume", self.config.name, stopped_by, self.step, self.max_steps,
                        self.run_dir / LAST)
        return self._result(stopped_by)

    def _result(self, stopped_by: str | None) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "step": self.step, "max_steps": self.max_steps,
                "val": dict(self.last_val), "best": self.best, "stopped_by": stopped_by}

    def _after_step(self, bar: tqdm) -> None:
        """Logging, validation, panels and checkpoints due after step :attr:`step`; the
        final step's logging, validation and checkpoint are done by :meth:`train`."""
        train, step = self.config.train, self.step

        def due(every: int, last_too: bool = False) -> bool:
            return every > 0 and step % every == 0 and (last_too or step < self.max_steps)

        if due(train.log_every):
            self._log_losses(bar)
        if due(train.val_every):
            self.validate()
        if due(train.image_every, last_too=True):
            self._log_panel()
        if due(train.checkpoint_every):
            self.save_last()

    def train_step(self, batch: dict[str, Any]) -> dict[str, dict[str, float]]:
        """Run step :attr:`step` on its ``batch`` (one data type, collated); advances
        :attr:`step`.

        Returns:
            ``{route: {"total": loss, term: loss, ...}}`` for each iteration run.
        """
        kind = batch["kind"][0]
        expected = self.schedule.kind_at(self.step)
        if kind != expected:  # the loader and the schedule disagree: a bug, not a user error
            raise RuntimeError(f"step {self.step}: got a {kind} batch, the schedule says "
                               f"{expected}")
        batch = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                 for k, v in batch.items()}
        lr = learning_rate(self.config.optim, self.step, self.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        iterations = self.plan[kind]
        # Later iterations run on weights the earlier ones updated; keep the state before
        # the step so a non-finite loss there can still save it (costs a copy of model and
        # optimizer state per multi-iteration step).
        snapshot = self._snapshot() if len(iterations) > 1 else None
        out = {}
        for iteration in iterations:
            values = self._iteration(kind, iteration, batch, snapshot)
            out[iteration.route] = values
            key = f"{kind}/{iteration.route}"
            self._add_loss(key, values["total"])
            if len(values) > 2:  # several terms: log each too
                for term in iteration.losses:
                    self._add_loss(f"{key}/{term}", values[term])
        self.step += 1
        return out

    def _iteration(self, kind: str, iteration: Iteration, batch: dict[str, Any],
                   snapshot: tuple | None) -> dict[str, float]:
        """One optimizer step of ``iteration`` on ``batch``; returns its loss values."""
        x = batch[iteration.input].contiguous(memory_format=self.memory_format)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype,
                            enabled=self.amp_dtype is not None):
            outputs = self.model(x, iteration.route)
        # Outside autocast: the losses compute in float32 whatever the outputs' dtype.
        terms = iteration_losses(iteration, outputs, batch)
        loss = torch.stack(list(terms.values())).sum()
        values = torch.stack([loss.detach(), *(t.detach() for t in terms.values())])
        self._check_finite(kind, iteration, values, snapshot)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return dict(zip(("total", *terms), values.tolist(), strict=True))

    def _check_finite(self, kind: str, iteration: Iteration, values: torch.Tensor,
                      snapshot: tuple | None) -> None:
        """The finite-loss guard: on a NaN/inf loss on any rank, every rank restores the
        state before the step, rank 0 saves it as ``last.pt``, and all raise."""
        bad = (~torch.isfinite(values)).any().to(torch.int32).reshape(1)
        if self.world_size > 1:
            bad = bad.to(self._comm_device())
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if not bad.item():
            return
        names = ("total", *iteration.losses)
        per_rank = [values.cpu()]
        if self.world_size > 1:
            per_rank = [torch.empty_like(values, device=self._comm_device())
                        for _ in range(self.world_size)]
            dist.all_gather(per_rank, values.to(self._comm_device()))
        found = "; ".join(
            (f"rank {r}: " if self.world_size > 1 else "")
            + ", ".join(f"{n} {v:.4g}" for n, v in zip(names, vals.tolist(), strict=True))
            for r, vals in enumerate(per_rank))
        if snapshot is not None:
            self._restore_snapshot(snapshot)
        self.save_last()
        distributed.barrier()  # rank 0's save completes before any rank exits
        raise CrossmodalError(
            f"non-finite loss in step {self.step + 1} ({kind} batch, {iteration.route} "
            f"iteration): {found}; saved the state before this step to "
            f"{self.run_dir / LAST}. Try a lower optim.lr (now {self.config.optim.lr:g}) or "
            f"train.amp=off, and check the data for NaN/inf or empty masks; then continue "
            f"with --resume")

    def _live_tensors(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """The training state's tensors: model weights and buffers, then the optimizer
        state of ``params`` in that order."""
        tensors = list(self.net.state_dict().values())
        for p in params:
            tensors += [v for v in self.optimizer.state[p].values()
                        if isinstance(v, torch.Tensor)]
        return tensors

    def _snapshot(self) -> tuple[list[torch.Tensor], list[torch.Tensor], dict]:
        """Copy the training state into buffers allocated once: this runs on every paired
        step, where allocating ~3x the model's size each time would cost more than the
        copy (a deepcopy added ~10% to a CPU step)."""
        params = list(self.optimizer.state)  # Adam creates state lazily, per parameter
        live = self._live_tensors(params)
        if self._snapshot_buffers is None or len(self._snapshot_buffers) != len(live):
            self._snapshot_buffers = [t.detach().clone() for t in live]
        else:
            for buffer, t in zip(self._snapshot_buffers, live, strict=True):
                buffer.copy_(t)
        return self._snapshot_buffers, params, self.scaler.state_dict()

    @torch.no_grad()
    def _restore_snapshot(self, snapshot: tuple[list[torch.Tensor], list[torch.Tensor], dict]
                          ) -> None:
        buffers, params, scaler = snapshot
        had_state = set(params)
        for p in [p for p in self.optimizer.state if p not in had_state]:
            del self.optimizer.state[p]  # first touched during the failed step
        for buffer, t in zip(buffers, self._live_tensors(params), strict=True):
            t.copy_(buffer)
        if self.scaler.is_enabled():
            self.scaler.load_state_dict(scaler)

    # ------------------------------------------------------------------ collectives

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def _stop_requested(self) -> int | None:
        """The stop signal received by any rank (all agree, so all stop at the same step)."""
        signum = self._stop_signal or 0
        if self.world_size > 1:
            flag = torch.tensor([signum], dtype=torch.int64, device=self._comm_device())
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signum = int(flag.item())
        return signum or None

    def _sync_buffers(self) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics: each rank's last forward
        updated its own); a collective."""
        if self.world_size > 1:
            for buffer in self.net.buffers():
                dist.broadcast(buffer, src=0)

    # ------------------------------------------------------------------ logging

    def _add_loss(self, key: str, value: float) -> None:
        acc = self._losses.setdefault(key, [0.0, 0])
        acc[0] += value
        acc[1] += 1

    def _log_losses(self, bar: tqdm) -> None:
        """Average losses since the last log (over all ranks), lr and speed; a collective."""
        keys = sorted(self._losses)
        sums = torch.tensor([self._losses[k] for k in keys], dtype=torch.float64).reshape(-1, 2)
        if self.world_size > 1:  # every rank ran the same iterations, so has the same keys
            sums = sums.to(self._comm_device())
            dist.all_reduce(sums)
            sums = sums.cpu()
        steps, start = self._since
        elapsed = max(time.perf_counter() - start, 1e-9)
        samples = (self.step - steps) * self.config.data.batch_size * self.world_size
        scalars = {f"loss/{k}": s / max(n, 1) for k, (s, n) in zip(keys, sums.tolist(),
                                                                   strict=True)}
        scalars["lr"] = self.optimizer.param_groups[0]["lr"]
        scalars["speed/images_per_s"] = samples / elapsed
        self._losses.clear()
        self._since = (self.step, time.perf_counter())
        if self.is_main:
            self._write_scalars("train", scalars)
            bar.set_postfix({k.removeprefix("loss/"): f"{v:.4f}" for k, v in scalars.items()
                             if k.startswith("loss/") and k.count("/") == 2})
            log.debug("step %d: %s", self.step, scalars)

    def _write_scalars(self, event: str, scalars: dict[str, float]) -> None:
        """TensorBoard scalars and a ``metrics.jsonl`` line; rank 0 only."""
        if self.writer is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, self.step)
        record = {"event": event, "step": self.step, "time": time.time(), **scalars}
        with open(self.run_dir / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")

    @contextmanager
    def _tensorboard(self) -> Iterator[None]:
        """The SummaryWriter of rank 0 for the duration of :meth:`train`. TensorBoard hides
        earlier events from :attr:`step` on (``purge_step``): on resume those of the steps
        about to be redone, on a fresh start all of an overwritten run's."""
        if self.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / TB), purge_step=self.step)
        try:
            yield
        finally:
            if self.writer is not None:
                self.writer.close()
                self.writer = None

    @contextmanager
    def _stop_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM set a flag the loop checks after each step (main thread only:
        Python delivers signals there)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
            self._stop_signal = signum
            if self.is_main:
                log.warning("%s: stopping after the current step and saving %s (Ctrl-C "
                            "again to abort)", signal.Signals(signum).name, self.run_dir / LAST)

        self._stop_signal = None
        previous = {s: signal.signal(s, handler) for s in _STOP_SIGNALS}
        try:
            yield
        finally:
            for s, old in previous.items():
                signal.signal(s, old)

    # ------------------------------------------------------------------ validation

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Angular error of image->normal on this rank's validation shard, combined over
        ranks (a collective); logged, and ``best.pt`` saved on a new lowest mean.

        Returns:
            ``{"val/mean", "val/std", "val/median", "val/pixel_mean", "val/below_20",
            "val/below_25", "val/below_30", "val/n_images", "val/n_pixels"}``; ``{}``
            without validation data.
        """
        if self.val_loader is None:
            return {}
        self._sync_buffers()
        meter = AngularErrorMeter()
        for batch in self.val_loader:
            normals = self._predict(batch["image"])
            meter.update(normals, batch["normals"].to(self.device),
                         batch["mask"].to(self.device))
        summary = meter.all_reduce().summary()
        metrics = {f"val/{k}": float(summary[k])
                   for k in ("mean", "std", "median", "pixel_mean", "n_images", "n_pixels")}
        metrics.update({f"val/below_{t}": float(v) for t, v in summary["below"].items()})
        self.last_val = metrics
        improved = math.isfinite(metrics["val/mean"]) and (
            self.best is None or metrics["val/mean"] < self.best["val/mean"])
        if improved:
            self.best = {"val/mean": metrics["val/mean"], "step": self.step}
        if self.is_main:
            self._write_scalars("val", metrics)
            log.info("step %d: validation mean %.2f deg, median %.2f deg, %.1f%% < 20 deg "
                     "(%d images)%s", self.step, metrics["val/mean"], metrics["val/median"],
                     metrics["val/below_20"], metrics["val/n_images"],
                     ", best so far" if improved else "")
            if improved:
                save_checkpoint(self.run_dir / BEST, model=self.net,
                                config=config_to_dict(self.config), step=self.step,
                                metrics=self._checkpoint_metrics())
            if self.config.train.image_every == 0:
                self._log_panel()
        return metrics

    def _predict(self, images: torch.Tensor) -> torch.Tensor:
        """Image->normal normals ``(B, 3, H, W)`` float32 of the bare network (DDP's forward
        would need every rank in step) in eval mode; the mode is restored after."""
        x = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.autocast(self.device.type, dtype=self.amp_dtype,
                                enabled=self.amp_dtype is not None):
                return self.net(x, "image_to_normal")["normals"].float()
        finally:
            self.net.train(was_training)

    @torch.no_grad()
    def _log_panel(self) -> None:
        """TensorBoard image ``val/panel``: input | prediction | ground truth | error map
        for the first validation samples; rank 0 only."""
        if not self.is_main or self.writer is None or self.val_loader is None:
            return
        val_set = self.val_loader.dataset
        n = min(PANEL_SAMPLES, len(val_set))
        if n == 0:
            return
        batch = default_collate([val_set[i] for i in range(n)])
        pred = self._predict(batch["image"]).cpu()
        errors, valid = angular_error(pred, batch["normals"], batch["mask"])
        tiles, labels = [], []
        for i in range(n):
            mask = batch["mask"][i].numpy()
            image = batch["image"][i].permute(1, 2, 0).numpy()
            truth = batch["normals"][i].permute(1, 2, 0).numpy()
            valid_i = valid[i].numpy()
            mean = float(errors[i][valid[i]].mean()) if valid_i.any() else float("nan")
            tiles += [image, viz.normals_to_rgb(pred[i].permute(1, 2, 0).numpy(), mask),
                      viz.normals_to_rgb(truth), viz.error_to_rgb(errors[i].numpy(), valid_i)]
            labels += [batch["id"][i], "prediction", "ground truth", f"error {mean:.1f} deg"]
        self.writer.add_image("val/panel", viz.panel(tiles, labels, ncols=4), self.step,
                              dataformats="HWC")

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint_metrics(self) -> dict[str, Any]:
        return {"val": self.last_val, "best": self.best}

    def save_last(self) -> Path:
        """Write ``last.pt`` (rank 0) with everything :meth:`_restore` needs; a collective
        (every rank calls it, at the same step)."""
        self._sync_buffers()
        path = self.run_dir / LAST
        if self.is_main:
            rng = {"torch": torch.get_rng_state()}
            if self.device.type == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state(self.device)
            save_checkpoint(path, model=self.net, config=config_to_dict(self.config),
                            optimizer=self.optimizer, step=self.step,
                            metrics=self._checkpoint_metrics(),
                            extra={"rng": rng, "scaler": self.scaler.state_dict(),
                                   "world_size": self.world_size})
        return path
