"""Training and validation data from the ``data`` section of an experiment.

Training: for each data type, the listed dataset folders' 'train' rows of that type, one
:class:`TrainSet`; a :class:`StepBatchSampler` asks the :class:`MixedBatchSchedule` for
the ``(type, index, augmentation seed)`` of every sample of every step of this rank, and
:class:`TrainSet` loads, resizes and augments it with a generator seeded by that seed.
Nothing about the data depends on the epoch, the worker or an iterator's history, so a
loader started at step s yields what an uninterrupted run yields from step s on.

Validation: the ``data.val`` folders' ``data.val_split`` paired rows, unaugmented and at
each folder's own resolution (the inference path resizes for the network and scores against
the ground truth as it is, docs/design.md §6), one loader per folder, each split into
disjoint contiguous shards across ranks (no padding, so every image counts once).
"""

from __future__ import annotations

import atexit
import functools
import logging
import multiprocessing
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset, Sampler, Subset

from ..config import DataConfig
from ..data.augment import Augment
from ..data.dataset import FaceNormalsDataset
from ..data.format import KINDS
from ..data.loader import SafeDataLoader
from ..data.resize import resize_images, resize_masks, resize_normals
from ..errors import CrossmodalError
from .schedule import MixedBatchSchedule

__all__ = ["StepBatchSampler", "TrainSet", "dataset_folder", "resize_sample", "train_loader",
           "val_loaders"]

log = logging.getLogger(__name__)

#: One sample of a step: (data type, index into that type's samples, augmentation seed).
SampleKey = tuple[str, int, int]


def dataset_folder(data: DataConfig, path: str, section: str) -> Path:
    """``path`` resolved against ``data.root`` (itself against the current directory).

    Raises:
        CrossmodalError: the folder does not exist, naming it, its config key and how to
            make one.
    """
    folder = Path(data.root) / Path(path).expanduser()
    if not folder.is_dir():
        raise CrossmodalError(
            f"dataset folder {folder} (data.{section}: {path!r}, data.root {data.root!r}) "
            f"does not exist; render one with `crossmodal synth --out {folder} --count N` "
            f"or convert a dataset with `crossmodal prepare NAME --raw RAW --out {folder}`")
    return folder


def resize_sample(item: Mapping[str, Any], size: int) -> dict[str, Any]:
    """A sample at ``size`` x ``size`` by the rules of :mod:`crossmodal.data.resize`: image
    ``(3, H, W)``, normals ``(3, H, W)`` and mask ``(H, W)``, each as is when already that
    size."""
    out = dict(item)
    for name, resize in (("image", resize_images), ("normals", resize_normals),
                         ("mask", resize_masks)):
        x = item.get(name)
        if x is not None and tuple(x.shape[-2:]) != (size, size):
            out[name] = resize(x[None], (size, size))[0]
    return out


def _split_rows(folders: Sequence[Path], split: str, kind: str) -> list[FaceNormalsDataset]:
    """One :class:`FaceNormalsDataset` per folder with rows of ``kind`` in ``split``; a
    folder without any is logged and skipped."""
    parts = []
    for folder in folders:
        part = FaceNormalsDataset(folder, split=split, kinds=(kind,))
        if len(part):
            parts.append(part)
        else:
            log.warning("%s has no %s rows in its %r split; it adds nothing", folder, kind,
                        split)
    return parts


class TrainSet(Dataset):
    """The training samples of every data type of ``data``, indexed by :data:`SampleKey`.

    Item ``(kind, index, seed)``: the ``index``-th sample of type ``kind`` (the folders
    of ``data.<kind>`` concatenated in order), resized to ``data.image_size`` and augmented
    by a generator seeded with ``seed``: ``{"id": str, "kind": str, "mask": (S, S) bool}``
    plus ``"image"`` ``(3, S, S)`` float in [0, 1] and/or ``"normals"`` ``(3, S, S)`` unit
    vectors, as the type has them.

    Raises:
        CrossmodalError: a listed folder does not exist.
    """

    def __init__(self, data: DataConfig) -> None:
        self.image_size = int(data.image_size)
        self.augment = None if data.augment is None else Augment(data.augment)
        self.parts: dict[str, ConcatDataset] = {}
        for kind in KINDS:
            folders = [dataset_folder(data, p, kind) for p in getattr(data, kind)]
            parts = _split_rows(folders, "train", kind)
            if parts:
                self.parts[kind] = ConcatDataset(parts)

    @property
    def n_by_kind(self) -> dict[str, int]:
        """``{kind: number of samples}`` for every data type (0 when absent)."""
        return {kind: len(self.parts[kind]) if kind in self.parts else 0 for kind in KINDS}

    def __len__(self) -> int:
        return sum(self.n_by_kind.values())

    def __getitem__(self, key: SampleKey) -> dict[str, Any]:
        kind, index, seed = key
        item = resize_sample(self.parts[kind][index], self.image_size)
        if self.augment is not None:
            item = self.augment(item, torch.Generator().manual_seed(seed))
        return item


class StepBatchSampler(Sampler[list[SampleKey]]):
    """For every step in ``[start_step, end_step)``, this rank's batch as keys of
    :class:`TrainSet`: ``batch_size`` tuples ``(kind, index, augmentation seed)``."""

    def __init__(
        self, schedule: MixedBatchSchedule, n_by_kind: Mapping[str, int], *, batch_size: int,
        rank: int, world_size: int, start_step: int, end_step: int,
    ) -> None:
        self.schedule = schedule
        self.n_by_kind = dict(n_by_kind)
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.start_step = start_step
        self.end_step = end_step

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for step in range(self.start_step, self.end_step):
            kind, indices = self.schedule.indices(step, self.rank, self.world_size,
                                                  self.batch_size, self.n_by_kind)
            slot = self.rank * self.batch_size
            yield [(kind, index, self.schedule.augmentation_seed(step, slot + i))
                   for i, index in enumerate(indices)]


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGINT/SIGTERM to the main process, which finishes its
    step and checkpoints; a worker killed by a group-wide Ctrl-C or scheduler SIGTERM would
    make the main process fail ("worker exited unexpectedly") before it could save.
    Hence the loaders are :class:`SafeDataLoader` instances, which stop their workers
    when iteration ends, also by an exception; SIGTERM at interpreter exit would not
    (:func:`_kill_workers_at_exit`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _kill_workers_at_exit() -> None:
    """SIGKILL the loader workers still alive at interpreter exit: multiprocessing's exit
    handler (registered when it was imported, so it runs after this one) stops daemonic
    children with SIGTERM, which ours ignore, and would wait for them for ever.
    :class:`SafeDataLoader` stops its workers itself; this catches what no reference reaches,
    e.g. a worker's death that PyTorch reports while still starting the others, before the
    iterator exists. Every daemonic child gets this (the others would only get SIGTERM)."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # PyTorch's handler would raise about them
    for process in multiprocessing.active_children():
        if process.daemon:
            process.kill()


@functools.cache
def _register_exit_kill() -> None:
    atexit.register(_kill_workers_at_exit)


def _worker_init(num_workers: int) -> Callable[[int], None] | None:
    """A loader's ``worker_init_fn``: :func:`_ignore_stop_signals` (and
    :func:`_kill_workers_at_exit` registered) when it has workers."""
    if not num_workers:
        return None
    _register_exit_kill()
    return _ignore_stop_signals


def train_loader(
    train_set: TrainSet, schedule: MixedBatchSchedule, *, batch_size: int, rank: int,
    world_size: int, start_step: int, end_step: int, num_workers: int, pin_memory: bool,
) -> SafeDataLoader:
    """The training batches of this rank from ``start_step`` (resume just starts there)
    to ``end_step``; each is ``default_collate`` of :class:`TrainSet` items of one type."""
    sampler = StepBatchSampler(schedule, train_set.n_by_kind, batch_size=batch_size,
                               rank=rank, world_size=world_size, start_step=start_step,
                               end_step=end_step)
    return SafeDataLoader(train_set, batch_sampler=sampler, num_workers=num_workers,
                          pin_memory=pin_memory, worker_init_fn=_worker_init(num_workers))


def val_loaders(
    data: DataConfig, *, val_batches: int, rank: int, world_size: int, pin_memory: bool,
) -> list[SafeDataLoader]:
    """This rank's validation batches, one loader per ``data.val`` folder with paired
    ``data.val_split`` rows, at that folder's resolution; empty when there are none (logged).

    ``val_batches`` > 0 caps the validation set at its first ``val_batches *
    data.batch_size`` samples (the folders in order), before sharding, so the metrics do not
    depend on the number of ranks; rank r takes the r-th of ``world_size`` contiguous parts
    of each folder's samples.
    """
    if not data.val:
        return []
    folders = [dataset_folder(data, p, "val") for p in data.val]
    parts = _split_rows(folders, data.val_split, "paired")
    if not parts:
        log.warning("no validation: the data.val folders have no paired %r rows",
                    data.val_split)
        return []
    budget = val_batches * data.batch_size if val_batches > 0 else None
    loaders = []
    for part in parts:
        total = len(part) if budget is None else min(len(part), budget)
        if budget is not None:
            budget -= total
        shard = range(rank * total // world_size, (rank + 1) * total // world_size)
        if total:
            loaders.append(SafeDataLoader(
                Subset(part, shard), batch_size=data.batch_size, shuffle=False,
                num_workers=data.num_workers, pin_memory=pin_memory,
                worker_init_fn=_worker_init(data.num_workers)))
    return loaders
