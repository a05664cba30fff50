"""The training job: :class:`Trainer` builds a run from an experiment config and runs the
step loop (:meth:`Trainer.train`).

A step loads one batch of one data type and runs that type's iterations of the mixed-batch
schedule (:mod:`crossmodal.engine.schedule`), each its own optimizer step. An iteration
with the ``adversarial`` term (the Pix2Pix baseline, ``experiments/pix2pix.yaml``) is two
alternating steps on the same forward pass, Pix2Pix's: first the discriminator's (real
pairs, image and ground-truth normals, against fake ones, image and the prediction
detached), then the model's, judged by the just-updated discriminator, frozen. The concerns
around the loop live beside it: the finite-loss guard (:mod:`.guard`), the event log and
TensorBoard (:mod:`.run_log`), validation (:mod:`.validation`) and the resumable state
(:mod:`crossmodal.checkpoint.training`). Rank 0 alone writes the run directory::

    RUN/config.yaml      the resolved config (and the overrides it came from)
    RUN/last.pt          every train.checkpoint_every steps, at the end and on SIGINT/SIGTERM
                         (with the discriminator and its optimizer, when there is one)
    RUN/best.pt          the weights with the lowest validation mean angular error (the
                         measurement `crossmodal eval` reports, docs/design.md §6); with
                         train.ema_decay, the averaged weights (:mod:`.ema`) are the ones
                         validated and kept
    RUN/metrics.jsonl    one JSON object per log or validation event
    RUN/tb/              TensorBoard: losses per iteration type, lr, speed, validation
                         metrics and image panels

The data of step s depends on (seed, s) only, so ``resume=True`` continues from
``last.pt`` with exactly the data, weights and optimizer state an uninterrupted run has.
"""

from __future__ import annotations

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
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..checkpoint import load_checkpoint, save_checkpoint
from ..checkpoint.training import (Trained, load_weights, restore_training_state,
                                   save_training_state)
from ..config import AMP_MODES, ExperimentConfig, config_to_dict, save_run_config
from ..device import resolve_device
from ..errors import CrossmodalError
from ..fileutil import check_output
from ..models import PatchDiscriminator, build_network
from ..models.losses import discriminator_loss
from ..models.vgg import VGG16_FILE, VGG16_URL, PerceptualLoss, load_vgg16_weights
from ..provenance import settings_changes
from . import distributed
from .data import TrainSet, train_loader
from .ema import WeightAverage
from .guard import FiniteLossGuard
from .lr_schedule import learning_rate
from .run_log import RunLog
from .schedule import Iteration, MixedBatchSchedule, iteration_losses, plan_for, resolve_proportions
from .validation import Validator

__all__ = ["Trainer", "resolve_amp", "seed_everything"]

log = logging.getLogger(__name__)

LAST, BEST = "last.pt", "best.pt"
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


def _adam(net: nn.Module, config: ExperimentConfig, scale: float = 1.0) -> torch.optim.Adam:
    """Adam with ``config.optim``'s settings (paper §4.1), its rate times ``scale``."""
    optim = config.optim
    try:
        if len(optim.betas) != 2:
            raise ValueError(f"betas needs two numbers, got {list(optim.betas)}")
        # The fused kernel makes one pass over each parameter's state: 34 ms a step for
        # the 35M parameters on two CPU cores, against 48 ms for the default foreach one.
        return torch.optim.Adam(net.parameters(), lr=optim.lr * scale,
                                betas=tuple(optim.betas), weight_decay=optim.weight_decay,
                                fused=True)
    except ValueError as err:  # Adam's own checks: negative lr, betas outside [0, 1), ...
        raise CrossmodalError(f"optim settings rejected: {err}") from None


class Trainer:
    """Everything a training run needs, built from an experiment config.

    Args:
        config: the experiment (:class:`crossmodal.config.ExperimentConfig`).
        overrides: the ``key=value`` overrides it was loaded with, recorded beside it.
        resume: continue from ``run_dir/last.pt`` (model, optimizer, GradScaler, step, RNG
            state, best metric; the discriminator and its optimizer).
        overwrite: start afresh in a ``run_dir`` that holds an earlier run's checkpoints,
            deleting them; without it (or ``resume``) such a ``run_dir`` is refused, so an
            earlier run is never lost to a forgotten ``--resume``.
        source: the experiment file, recorded in ``config.yaml``.

    Call inside an initialised process group (:func:`distributed.init_distributed`) to
    train with DDP; every rank builds the same model from ``train.seed``.

    Raises:
        CrossmodalError: bad settings, missing data folders or no usable data, a
            ``perceptual`` term without its VGG16 weights (``train.vgg16_weights``),
            nothing to resume, a ``last.pt`` that does not fit the config, or an earlier run
            in ``run_dir`` without ``resume`` or ``overwrite``.
    """

    def __init__(self, config: ExperimentConfig, overrides: Sequence[str] = (),
                 resume: bool = False, source: str | Path | None = None,
                 overwrite: bool = False) -> None:
        self.config = config
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0
        self.run_dir = Path(config.run_dir)
        if resume and overwrite:
            raise CrossmodalError("--resume continues the run in run_dir and --overwrite "
                                  "deletes it: give one of them")
        self._check_run_dir_is_no_input()
        if not resume:
            self._claim_run_dir(overwrite)
        checkpoint = self._checkpoint_to_resume() if resume else None
        self._build_device()
        self._build_model(checkpoint is None)
        self._build_critics()
        self._build_data()
        self.validator = Validator(self.scored_net, config, rank=self.rank,
                                   world_size=self.world_size, device=self.device)
        self._build_optimizer()
        self.step, self.best, self.last_val = 0, None, {}
        if checkpoint is not None:
            self._restore(checkpoint)
        self.model = self._wrap_for_ddp()
        self.log = RunLog(self.run_dir, is_main=self.is_main, device=self.device)
        self._start_run_dir(overrides, source)
        self._stop_signal: int | None = None
        self._since = (self.step, time.perf_counter())
        self._log_setup(resumed=checkpoint is not None)

    # ------------------------------------------------------------------ set-up steps

    def _check_run_dir_is_no_input(self) -> None:
        """A run directory that is, or lies inside, a dataset folder the run reads, or is
        its ``train.init_from`` checkpoint, is refused before anything (``--overwrite``
        included) touches it; so is one that cannot be written."""
        data = self.config.data
        folders = [Path(data.root) / Path(p).expanduser()
                   for p in (*data.paired, *data.image, *data.normal, *data.val)]
        check_output(self.run_dir, what="run_dir", kind="folder",
                     inputs={"the dataset folder": folders,
                             "the train.init_from checkpoint": self.config.train.init_from,
                             "the train.vgg16_weights file": self.config.train.vgg16_weights})

    def _claim_run_dir(self, overwrite: bool) -> None:
        """Refuse a run directory holding an earlier run's checkpoints unless told to
        overwrite it; then delete them (rank 0), so no stale ``best.pt`` survives."""
        earlier = [self.run_dir / name for name in (LAST, BEST)
                   if (self.run_dir / name).is_file()]
        if not earlier:
            return
        if not overwrite:
            raise CrossmodalError(
                f"{self.run_dir} holds an earlier run ({', '.join(p.name for p in earlier)}); "
                f"continue it with --resume, start afresh with --overwrite (deletes them), or "
                f"set another run_dir (e.g. name=NEW_NAME)")
        distributed.barrier()  # every rank has looked before rank 0 deletes
        if self.is_main:
            log.warning("%s: --overwrite: deleting the earlier run's %s", self.run_dir,
                        ", ".join(p.name for p in earlier))
            for path in earlier:
                path.unlink()

    def _checkpoint_to_resume(self) -> dict:
        path = self.run_dir / LAST
        if not path.is_file():
            raise CrossmodalError(f"nothing to resume in {self.run_dir} (no {LAST}); start "
                                  f"without --resume")
        return load_checkpoint(path)

    def _build_device(self) -> None:
        self.device = resolve_device(self.config.train.device, distributed.local_rank(),
                                     option="train.device")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest convs
        self.amp_dtype = resolve_amp(self.config.train.amp, self.device)

    def _build_model(self, fresh: bool) -> None:
        """The network, seeded (so every rank builds the same one), optionally initialised
        from ``train.init_from`` when not resuming, and the schedule's iterations for it."""
        train = self.config.train
        seed_everything(train.seed)
        self.net = build_network(self.config.model)
        if train.init_from and fresh:
            load_weights(self.net, load_checkpoint(train.init_from)["model"], train.init_from,
                         self.config.model.variant)
        self.memory_format = (torch.channels_last if train.channels_last
                              else torch.contiguous_format)
        self.net.to(self.device, memory_format=self.memory_format)
        self.ema = (WeightAverage(self.net, train.ema_decay) if train.ema_decay > 0
                    else None)
        self.plan = plan_for(self.config.schedule, self.net.routes)

    @property
    def scored_net(self) -> nn.Module:
        """The weights validation scores and ``best.pt`` keeps: the average with
        ``train.ema_decay``, else the trained network itself."""
        return self.net if self.ema is None else self.ema.net

    def _build_critics(self) -> None:
        """The networks beside the model that the planned loss terms need, and only those:
        the discriminator (seeded after the model, so the model's init does not depend on
        it; trainable only inside its own step) for ``adversarial``, frozen VGG16 features
        for ``perceptual``, whose weights file must exist now, before any step."""
        weighted = {term for iterations in self.plan.values() for it in iterations
                    for term in it.losses}
        self.critics: dict[str, nn.Module] = {}
        self.discriminator: nn.Module | None = None
        if "adversarial" in weighted:
            self.discriminator = PatchDiscriminator(self.config.model).requires_grad_(False)
            self.discriminator.to(self.device, memory_format=self.memory_format)
            self.critics["adversarial"] = self.discriminator
        if "perceptual" in weighted:
            path = self.config.train.vgg16_weights
            if path is None:
                raise CrossmodalError(
                    f"the perceptual loss term needs VGG16 weights: set train.vgg16_weights "
                    f"to a local copy of torchvision's {VGG16_FILE} ({VGG16_URL}), or weigh "
                    f"the term 0")
            self.critics["perceptual"] = PerceptualLoss(load_vgg16_weights(path)).to(
                self.device, memory_format=self.memory_format)

    def _build_data(self) -> None:
        """The training samples, the share of batches of each data type, and the number
        of steps."""
        data, train = self.config.data, self.config.train
        self.train_set = TrainSet(data)
        self.proportions = resolve_proportions(data.proportions, self.plan,
                                               self.train_set.n_by_kind, self.config.model.variant)
        self.schedule = MixedBatchSchedule(self.proportions, train.seed)
        self.n_train = sum(self.train_set.n_by_kind[k] for k in self.proportions)
        steps_per_epoch = math.ceil(self.n_train / (data.batch_size * self.world_size))
        self.max_steps = (train.max_steps if train.max_steps is not None
                          else train.epochs * steps_per_epoch)

    def _build_optimizer(self) -> None:
        """Adam for the model and, with a discriminator, its own Adam; one GradScaler
        (updated once per iteration, after both steps) and a finite-loss guard for each."""
        self.optimizer = _adam(self.net, self.config)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.guard = FiniteLossGuard(self.net, self.optimizer, self.scaler, self.device)
        self.d_optimizer = self.d_guard = None
        if self.discriminator is not None:
            self.d_optimizer = _adam(self.discriminator, self.config,
                                     self.config.optim.discriminator_scale)
            self.d_guard = FiniteLossGuard(self.discriminator, self.d_optimizer, self.scaler,
                                           self.device)

    @property
    def _discriminator_state(self) -> Trained | None:
        """The discriminator and its optimizer, as checkpoints carry them; None without."""
        if self.discriminator is None:
            return None
        return self.discriminator, self.d_optimizer

    def _restore(self, checkpoint: dict) -> None:
        optim = self.config.optim
        state = restore_training_state(
            checkpoint, self.run_dir / LAST, net=self.net, variant=self.config.model.variant,
            optimizer=self.optimizer, scaler=self.scaler, device=self.device,
            world_size=self.world_size, discriminator=self._discriminator_state,
            ema=None if self.ema is None else self.ema.net,
            optim_settings={"betas": tuple(optim.betas), "weight_decay": optim.weight_decay})
        self.step = state["step"]
        self.best = state["metrics"].get("best")
        self.last_val = state["metrics"].get("val", {})
        # Allowed (longer schedules, a lower rate after a divergence), but said: the run
        # directory's config.yaml then records only the settings of the latest part.
        changes = settings_changes(checkpoint["config"], config_to_dict(self.config))
        if changes and self.is_main:
            log.warning("%s: resuming after step %d with changed settings: %s", self.run_dir,
                        self.step, "; ".join(changes))

    def _wrap_for_ddp(self) -> nn.Module:
        """DDP around the network when several processes train. Each route uses a subset
        of the parameters, hence find_unused_parameters. broadcast_buffers stays on:
        BatchNorm running statistics are rank 0's before every forward, and
        :func:`distributed.broadcast_buffers` makes them identical before validation and
        saving, so every rank validates, and rank 0 saves, the same network."""
        if self.world_size == 1:
            return self.net
        return DistributedDataParallel(
            self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=True)

    def _start_run_dir(self, overrides: Sequence[str], source: str | Path | None) -> None:
        """Write the run's records before any training: an unwritable ``run_dir`` fails
        now, not at the first checkpoint."""
        if not self.is_main:
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_run_config(self.config, self.run_dir, tuple(overrides),
                            None if source is None else Path(source))
            self.log.reset(self.step)
        except OSError as err:
            raise CrossmodalError(f"cannot write the run directory {self.run_dir} "
                                  f"({err.strerror or err}); set a writable run_dir") from None

    def _log_setup(self, resumed: bool) -> None:
        n_params = sum(p.numel() for p in self.net.parameters())
        beside = [f"{name} {sum(p.numel() for p in critic.parameters()) / 1e6:.1f}M"
                  for name, critic in self.critics.items()]
        log.info("%s: %s model (%.1fM parameters%s) on %s%s, %d training samples (%s), "
                 "%d steps of %d samples x %d process(es)%s", self.config.name,
                 self.config.model.variant, n_params / 1e6,
                 f"; loss networks: {', '.join(beside)}" if beside else "", self.device,
                 f" with {str(self.amp_dtype).removeprefix('torch.')} autocast"
                 if self.amp_dtype else "", self.n_train,
                 ", ".join(f"{k} {self.train_set.n_by_kind[k]}, {p:.0%} of batches"
                           for k, p in self.proportions.items()),
                 self.max_steps, self.config.data.batch_size, self.world_size,
                 f", resuming after step {self.step}" if resumed else "")

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
        data = self.config.data
        loader = train_loader(self.train_set, self.schedule, batch_size=data.batch_size,
                              rank=self.rank, world_size=self.world_size,
                              start_step=self.step, end_step=self.max_steps,
                              num_workers=data.num_workers,
                              pin_memory=self.device.type == "cuda")
        stopped_by = None
        with self.log.tensorboard(self.step), self._stop_signals():
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
            ``{route: {"total": weighted sum, term: unweighted loss, ...}}`` for each
            iteration run, and ``{"discriminator": {"total": its loss}}`` after an
            iteration with the adversarial term.
        """
        kind = batch["kind"][0]
        expected = self.schedule.kind_at(self.step)
        if kind != expected:  # the loader and the schedule disagree: a bug, not a user error
            raise RuntimeError(f"step {self.step}: got a {kind} batch, the schedule says "
                               f"{expected}")
        lr = learning_rate(self.config.optim, self.step, self.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.d_optimizer is not None:
            for group in self.d_optimizer.param_groups:
                group["lr"] = lr * self.config.optim.discriminator_scale
        out = self.run_iterations(kind, batch)
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.net, self.step)
        return out

    def run_iterations(self, kind: str, batch: dict[str, Any]) -> dict[str, dict[str, float]]:
        """The iterations of data type ``kind`` on ``batch`` (``"image"``, ``"normals"``
        ``(B, 3, H, W)`` as the type has them, ``"mask"`` ``(B, H, W)``, on any device),
        each an optimizer step at the current learning rate, with their losses logged: a
        step without the schedule's bookkeeping (what ``benchmarks/train_throughput.py``
        times). Returns :meth:`train_step`'s dict."""
        batch = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                 for k, v in batch.items()}
        iterations = self.plan[kind]
        adversarial = any("adversarial" in it.losses for it in iterations)
        # Later optimizer steps run on weights the earlier ones updated (the model's in a
        # second iteration, the discriminator's in the model's step after it); keep the
        # state before the step so a non-finite loss there can still save it.
        snapshots = (self.guard.snapshot() if len(iterations) > 1 else None,
                     self.d_guard.snapshot() if adversarial else None)
        out = {}
        for iteration in iterations:
            values, d_loss = self._iteration(kind, iteration, batch, snapshots)
            out[iteration.route] = values
            key = f"{kind}/{iteration.route}"
            self.log.add_loss(key, values["total"])
            if len(values) > 2:  # several terms: log each too
                for term in iteration.losses:
                    self.log.add_loss(f"{key}/{term}", values[term])
            if d_loss is not None:
                out["discriminator"] = {"total": d_loss}
                self.log.add_loss(f"{kind}/discriminator", d_loss)
        return out

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype,
                              enabled=self.amp_dtype is not None)

    def _iteration(self, kind: str, iteration: Iteration, batch: dict[str, Any],
                   snapshots: tuple[Any, Any]) -> tuple[dict[str, float], float | None]:
        """The optimizer step of ``iteration`` on ``batch``, preceded by the
        discriminator's when the iteration has the adversarial term; returns the model's
        loss values and the discriminator's loss (None without)."""
        x = batch[iteration.input].contiguous(memory_format=self.memory_format)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            outputs = self.model(x, iteration.route, iteration.outputs)
        d_loss = None
        if "adversarial" in iteration.losses:
            d_loss = self._discriminator_step(kind, iteration, outputs["normals"], batch,
                                              snapshots)
        # Outside autocast: the losses, and the networks beside the model they run
        # (discriminator, VGG16), compute in float32 whatever the outputs' dtype.
        terms = iteration_losses(iteration, outputs, batch, self.critics)
        loss = sum(w * t for w, t in zip(iteration.weights, terms.values(), strict=True))
        values = torch.stack([loss.detach(), *(t.detach() for t in terms.values())])
        self._check_finite(values, ("total", *iteration.losses), snapshots, kind, iteration)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return dict(zip(("total", *terms), values.tolist(), strict=True)), d_loss

    def _discriminator_step(self, kind: str, iteration: Iteration, normals: torch.Tensor,
                            batch: dict[str, Any], snapshots: tuple[Any, Any]) -> float:
        """One step of the discriminator's Adam on real pairs (image, ground-truth
        normals) against fake ones (image, ``normals`` ``(B, 3, H, W)``, the model's
        prediction, detached: the model gets no gradient); returns the loss. The
        discriminator is trainable during this step only, so the model's step after it
        leaves its gradients and weights alone."""
        discriminator = self.discriminator.requires_grad_(True)
        try:
            self.d_optimizer.zero_grad(set_to_none=True)
            loss = discriminator_loss(discriminator, normals, batch)
            value = loss.detach()
            self._check_finite(value.reshape(1), ("discriminator",), snapshots, kind,
                               iteration)
            self.scaler.scale(loss).backward()
            self._average_gradients(discriminator)
            self.scaler.step(self.d_optimizer)
        finally:
            discriminator.requires_grad_(False)
        return value.item()

    def _average_gradients(self, module: nn.Module) -> None:
        """Average ``module``'s gradients over the processes, as DDP does for the model's
        (the discriminator is not wrapped: its real and fake forwards before one backward,
        and its frozen forward in the model's step, do not fit DDP's reducer)."""
        if self.world_size == 1:
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads]).to(distributed.comm_device(
            self.device))
        torch.distributed.all_reduce(flat)
        flat = flat.to(self.device) / self.world_size
        for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            g.copy_(part.view_as(g))

    def _check_finite(self, values: torch.Tensor, names: tuple[str, ...],
                      snapshots: tuple[Any, Any], kind: str, iteration: Iteration) -> None:
        """Stop training, with the state from before this step saved, when any rank's
        ``values`` are not finite (a collective)."""
        snapshot, d_snapshot = snapshots
        found = self.guard.check(values, names, snapshot)
        if found is None:
            return
        if d_snapshot is not None:
            # Every rank found the failure, so every rank takes part in this collective,
            # which finds it again and rolls the discriminator back as well.
            self.d_guard.check(values, names, d_snapshot)
        self.save_last()
        distributed.barrier()  # rank 0's save completes before any rank exits
        raise CrossmodalError(
            f"non-finite loss in step {self.step + 1} ({kind} batch, {iteration.route} "
            f"iteration): {found}; saved the state before this step to "
            f"{self.run_dir / LAST}. Try a lower optim.lr (now {self.config.optim.lr:g}) "
            f"or train.amp=off, and check the data for NaN/inf or empty masks; then "
            f"continue with --resume")

    def _stop_requested(self) -> int | None:
        """The stop signal received by any rank (all agree, so all stop at the same step)."""
        return distributed.all_reduce_max(self._stop_signal or 0, self.device) or None

    def _log_losses(self, bar: tqdm) -> None:
        """Average losses since the last log (over all ranks), lr and speed; a collective."""
        scalars = self.log.mean_losses()
        steps, start = self._since
        elapsed = max(time.perf_counter() - start, 1e-9)
        samples = (self.step - steps) * self.config.data.batch_size * self.world_size
        scalars["lr"] = self.optimizer.param_groups[0]["lr"]
        scalars["speed/images_per_s"] = samples / elapsed
        self._since = (self.step, time.perf_counter())
        self.log.write_scalars("train", self.step, scalars)
        if self.is_main:
            bar.set_postfix({k.removeprefix("loss/"): f"{v:.4f}" for k, v in scalars.items()
                             if k.startswith("loss/") and k.count("/") == 2})
            log.debug("step %d: %s", self.step, scalars)

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

    def validate(self) -> dict[str, float]:
        """:class:`~.validation.Validator`'s metrics (a collective; ``{}`` without
        validation data), logged, and ``best.pt`` saved on a new lowest mean."""
        if not self.validator:
            return {}
        distributed.broadcast_buffers(self.net)  # each rank's forwards updated its own BN
        if self.ema is not None:
            distributed.broadcast_buffers(self.ema.net)  # and its average of them
        metrics = self.last_val = self.validator.run()
        improved = math.isfinite(metrics["val/mean"]) and (
            self.best is None or metrics["val/mean"] < self.best["val/mean"])
        if improved:
            self.best = {"val/mean": metrics["val/mean"], "step": self.step}
        self.log.write_scalars("val", self.step, metrics)
        if self.is_main:
            log.info("step %d: validation mean %.2f deg, median %.2f deg, %.1f%% < 20 deg "
                     "(%d images)%s", self.step, metrics["val/mean"], metrics["val/median"],
                     metrics["val/below_20"], metrics["val/n_images"],
                     ", best so far" if improved else "")
            if improved:
                save_checkpoint(self.run_dir / BEST, model=self.scored_net,
                                config=config_to_dict(self.config), step=self.step,
                                metrics=self._checkpoint_metrics())
            if self.config.train.image_every == 0:
                self._log_panel()
        return metrics

    def _log_panel(self) -> None:
        """TensorBoard image ``val/panel`` of the first validation samples; rank 0 only."""
        if self.is_main and self.log.writer is not None:
            panel = self.validator.panel()
            if panel is not None:
                self.log.write_image("val/panel", self.step, panel)

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint_metrics(self) -> dict[str, Any]:
        return {"val": self.last_val, "best": self.best}

    def save_last(self) -> Path:
        """Write ``last.pt`` (rank 0) with everything resuming needs
        (:mod:`crossmodal.checkpoint.training`); a collective (every rank calls it, at the
        same step)."""
        distributed.broadcast_buffers(self.net)
        if self.ema is not None:
            distributed.broadcast_buffers(self.ema.net)
        if self.discriminator is not None:
            distributed.broadcast_buffers(self.discriminator)
        path = self.run_dir / LAST
        if self.is_main:
            save_training_state(path, net=self.net, config=config_to_dict(self.config),
                                optimizer=self.optimizer, scaler=self.scaler, step=self.step,
                                metrics=self._checkpoint_metrics(), device=self.device,
                                world_size=self.world_size,
                                discriminator=self._discriminator_state,
                                ema=None if self.ema is None else self.ema.net)
        return path
