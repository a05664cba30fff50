"""The mixed-batch schedule of paper §3.3: which passes a batch of each data type runs, and
which data every step and every rank sees.

Configuration as data: the ``schedule`` section of an experiment
(:class:`~crossmodal.config.ScheduleConfig`) lists, per data type, the passes its batch runs
and the weight of each loss term; :func:`plan_for` turns it into the :class:`Iteration`
each batch type runs on a model variant (Fig. 6), each one ``zero_grad`` / forward / loss /
backward / ``step``, and :func:`resolve_proportions` drops the data types a run cannot use.

:class:`MixedBatchSchedule` decides the data without any sampler state: the data type of
step ``s`` depends on ``(seed, s)`` only, so every DDP rank runs the same passes; the
samples are read from one infinite stream of epoch-wise permutations per data type, where
the n-th batch of a type takes the next ``batch_size * world_size`` positions and rank r
its own ``batch_size`` slice. Resuming at step s, or running on W ranks, therefore sees
exactly the data an uninterrupted single run sees (per rank), with nothing to save but s.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config import ScheduleConfig
from ..data.format import KINDS
from ..errors import CrossmodalError, InputError
from ..models import ROUTE_INPUTS
from ..models.losses import CRITIC_TERMS, LOSS_TERMS

__all__ = ["Iteration", "MixedBatchSchedule", "iteration_losses", "plan_for",
           "resolve_proportions"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Iteration:
    """One optimizer step on a batch: ``model(batch[input], route, outputs)`` and the
    weighted sum of its loss terms.

    Attributes:
        route: the model pass (:data:`crossmodal.models.ROUTES`); also the name of the
            iteration in logs (``loss/KIND/ROUTE``).
        input: the batch entry fed in: ``"image"`` ``(B, 3, H, W)`` in [0, 1] or
            ``"normals"`` ``(B, 3, H, W)`` unit vectors.
        losses: the loss terms (names in :data:`~crossmodal.models.losses.LOSS_TERMS`).
        weights: their weights, positive, in the same order.
    """

    route: str
    input: str
    losses: tuple[str, ...]
    weights: tuple[float, ...]

    @property
    def outputs(self) -> tuple[str, ...]:
        """The model outputs the losses score: all the pass computes."""
        return tuple(LOSS_TERMS[name][0] for name in self.losses)


def plan_for(schedule: ScheduleConfig, routes: Sequence[str]) -> dict[str, tuple[Iteration, ...]]:
    """The iterations each data type runs on a model that can run ``routes``
    (``CrossModalNet.routes``), from the experiment's ``schedule``.

    Passes the variant lacks are dropped, and so are the image loss where there is no
    image decoder (D_I decodes images on every image pass, so it exists exactly when
    'image_to_image' is a route) and terms of weight 0; a pass left without terms is not
    run. A data type may be left with no iteration (e.g. normal-only data without E_N);
    :func:`resolve_proportions` then drops it.
    """
    has_image_decoder = "image_to_image" in routes
    plan = {}
    for kind in KINDS:
        iterations = []
        for route in getattr(schedule, kind):
            if route not in routes:
                continue
            terms = [(name, float(weight))
                     for name, weight in schedule.loss_weights[route].items()
                     if weight > 0 and (LOSS_TERMS[name][0] != "image" or has_image_decoder)]
            if terms:
                names, weights = zip(*terms, strict=True)
                iterations.append(Iteration(route, ROUTE_INPUTS[route], names, weights))
        plan[kind] = tuple(iterations)
    return plan


def iteration_losses(
    iteration: Iteration, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
    critics: Mapping[str, nn.Module] | None = None,
) -> dict[str, torch.Tensor]:
    """The scalar loss terms of ``iteration``, unweighted: ``{name: loss}`` in
    ``iteration.losses`` order.

    Args:
        outputs: the model's ``{"normals", "image"}`` for the iteration's route.
        batch: the batch with the targets (``"normals"``, ``"image"``, ``(B, 3, H, W)``)
            and ``"mask"`` ``(B, H, W)``.
        critics: the network scoring each term of
            :data:`~crossmodal.models.losses.CRITIC_TERMS` the iteration has, by term name
            (``"perceptual"``: a ``PerceptualLoss``, ``"adversarial"``: the discriminator).
    """
    terms = {}
    for name in iteration.losses:
        output, loss = LOSS_TERMS[name]
        if name in CRITIC_TERMS:
            terms[name] = loss((critics or {})[name], outputs[output], batch)
        else:
            terms[name] = loss(outputs[output], batch[output], batch["mask"])
    return terms


def resolve_proportions(
    proportions: Mapping[str, float],
    plan: Mapping[str, Sequence[Iteration]],
    n_by_kind: Mapping[str, int] | None = None,
    variant: str = "this",
) -> dict[str, float]:
    """The data types a run uses, with their share of batches (normalised to sum 1).

    Args:
        proportions: ``{type: share >= 0}`` (``data.proportions``, validated by the
            config).
        plan: :func:`plan_for`'s iterations per type.
        n_by_kind: training samples per type; None skips that check.
        variant: the model variant, for the messages.

    A type with a zero share is left out quietly; one with a positive share but no
    iteration in ``plan`` (the model variant cannot use it) or no training samples in
    ``n_by_kind`` is left out with a logged warning.

    Raises:
        CrossmodalError: no type left.
    """
    shares: dict[str, float] = {}
    for kind in KINDS:
        share = float(proportions.get(kind, 0.0))
        if share <= 0:
            continue
        if not plan.get(kind):
            log.warning("dropping %s batches (data.proportions.%s = %g): the %s model variant "
                        "has no pass with a loss for them (schedule.%s)", kind, kind, share,
                        variant, kind)
        elif n_by_kind is not None and not n_by_kind.get(kind):
            log.warning("dropping %s batches (data.proportions.%s = %g): no %s training "
                        "samples (data.%s lists no folder with such 'train' rows)", kind,
                        kind, share, kind, kind)
        else:
            shares[kind] = share
    if not shares:
        raise CrossmodalError(
            f"no usable training data: data.proportions {dict(proportions)} leaves no data "
            f"type with both samples and a pass in the {variant} model variant; list dataset "
            f"folders under data.paired/image/normal and give them a positive share")
    total = sum(shares.values())
    return {kind: share / total for kind, share in shares.items()}


class MixedBatchSchedule:
    """The data type of every step and the sample indices of every rank, from
    ``(seed, step, rank)`` alone.

    Data types: steps are cut into chunks of :attr:`CHUNK`; a chunk holds each type
    ``proportions[type] * CHUNK`` times up to rounding (stratified: the points
    ``(j + u_c) / CHUNK`` are mapped through the cumulative shares, with ``u_c`` an
    equidistributed offset per chunk, so the rounding averages out), in a random order
    drawn from ``(seed, chunk)``. Shares are therefore respected within one batch per
    type per chunk, and the number of earlier steps of a type is a cumulative count per
    chunk (cached) plus a count inside the chunk.

    Samples: per type an infinite stream of permutations of ``range(n)``, permutation e
    drawn from ``(seed, type, e)``; the n-th batch of a type takes stream positions
    ``[n*B*W, (n+1)*B*W)`` and rank r positions ``n*B*W + r*B + [0, B)``.

    Args:
        proportions: ``{type: share}`` (types of :data:`KINDS`), e.g. from
            :func:`resolve_proportions`; normalised here; zero shares are left out.
        seed: a non-negative integer.
    """

    #: Steps per stratified chunk.
    CHUNK = 64
    # Stream tags, so that the draws of different purposes never share a seed.
    _ORDER, _OFFSET, _SAMPLES, _AUGMENT = 1, 2, 3, 4
    _GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0

    def __init__(self, proportions: Mapping[str, float], seed: int) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise InputError(f"train.seed must be a non-negative integer, got {seed!r}")
        unknown = sorted(set(proportions) - set(KINDS))
        if unknown:
            raise InputError(f"unknown data type(s) {unknown}; use {', '.join(KINDS)}")
        shares = {k: float(proportions[k]) for k in KINDS if proportions.get(k, 0) > 0}
        if not shares:
            raise InputError(f"no data type has a positive share in {dict(proportions)}")
        self.seed = seed
        #: The scheduled types, in :data:`KINDS` order.
        self.kinds: tuple[str, ...] = tuple(shares)
        total = sum(shares.values())
        self.proportions = {k: v / total for k, v in shares.items()}
        cumulative = np.cumsum([shares[k] for k in self.kinds]) / total
        cumulative[-1] = 1.0  # rounding must not leave a gap below 1
        self._cumulative = cumulative
        self._start = float(np.random.default_rng([seed, self._OFFSET]).random())
        # _counts[c, k]: steps of type k in chunks < c (grown on demand).
        self._counts = np.zeros((1, len(self.kinds)), np.int64)
        self._chunks: OrderedDict[int, np.ndarray] = OrderedDict()
        self._permutations: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()

    # ------------------------------------------------------------------ data types

    def _sorted_types(self, chunks: np.ndarray) -> np.ndarray:
        """``(len(chunks), CHUNK)`` type indices of each chunk's stratified points, in
        increasing order (before the chunk's shuffle)."""
        offsets = (self._start + chunks.astype(np.float64) * self._GOLDEN) % 1.0
        points = (np.arange(self.CHUNK)[None, :] + offsets[:, None]) / self.CHUNK
        return np.searchsorted(self._cumulative, points, side="right")

    def _chunk(self, chunk: int) -> np.ndarray:
        """Type indices of the ``CHUNK`` steps of ``chunk``, in step order (LRU-cached)."""
        types = self._chunks.get(chunk)
        if types is None:
            order = np.random.default_rng([self.seed, self._ORDER, chunk]).permutation(
                self.CHUNK)
            types = self._sorted_types(np.array([chunk]))[0][order]
            self._chunks[chunk] = types
            if len(self._chunks) > 4:
                self._chunks.popitem(last=False)
        else:
            self._chunks.move_to_end(chunk)
        return types

    def _counts_before_chunk(self, chunk: int) -> np.ndarray:
        """``(n_types,)`` steps of each type in the chunks before ``chunk``."""
        known = len(self._counts) - 1
        if chunk > known:
            new = np.arange(known, max(chunk, 2 * known))  # grow geometrically
            types = self._sorted_types(new)
            per_chunk = np.stack([(types == k).sum(axis=1) for k in range(len(self.kinds))],
                                 axis=1)
            self._counts = np.concatenate(
                [self._counts, self._counts[-1] + np.cumsum(per_chunk, axis=0)])
        return self._counts[chunk]

    def kind_at(self, step: int) -> str:
        """The data type of step ``step`` (0-based); the same on every rank."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        chunk, pos = divmod(int(step), self.CHUNK)
        return self.kinds[int(self._chunk(chunk)[pos])]

    def batches_before(self, step: int) -> dict[str, int]:
        """``{type: number of steps of that type before step}``."""
        chunk, pos = divmod(int(step), self.CHUNK)
        counts = self._counts_before_chunk(chunk) + np.bincount(
            self._chunk(chunk)[:pos], minlength=len(self.kinds))
        return {k: int(c) for k, c in zip(self.kinds, counts, strict=True)}

    # ------------------------------------------------------------------ samples

    def _permutation(self, kind: str, n: int, epoch: int) -> np.ndarray:
        key = (KINDS.index(kind), n, epoch)
        perm = self._permutations.get(key)
        if perm is None:
            perm = np.random.default_rng([self.seed, self._SAMPLES, key[0], epoch]).permutation(n)
            self._permutations[key] = perm
            if len(self._permutations) > 2 * len(KINDS):  # a batch spans <= 2 epochs
                self._permutations.popitem(last=False)
        else:
            self._permutations.move_to_end(key)
        return perm

    def indices(
        self, step: int, rank: int, world_size: int, batch_size: int,
        n_by_kind: Mapping[str, int],
    ) -> tuple[str, list[int]]:
        """The data type of ``step`` and the ``batch_size`` sample indices rank ``rank``
        (of ``world_size``) loads for it, into that type's ``n_by_kind[type]`` samples.

        A batch larger than the data wraps into the next permutation, so indices may
        repeat only across an epoch boundary.
        """
        if not 0 <= rank < world_size or batch_size < 1:
            raise ValueError(f"need 0 <= rank < world_size and batch_size >= 1, got rank "
                             f"{rank}, world_size {world_size}, batch_size {batch_size}")
        kind = self.kind_at(step)
        n = int(n_by_kind.get(kind, 0))
        if n < 1:
            raise InputError(f"step {step} is a {kind} batch but there are no {kind} samples")
        first = (self.batches_before(step)[kind] * world_size + rank) * batch_size
        out = []
        for position in range(first, first + batch_size):
            epoch, offset = divmod(position, n)
            out.append(int(self._permutation(kind, n, epoch)[offset]))
        return kind, out

    def augmentation_seed(self, step: int, slot: int) -> int:
        """Seed of the augmentation of the sample in place ``slot`` of step ``step``'s
        global batch (``slot = rank * batch_size + i``), so W ranks of B samples and one
        process of W*B samples augment alike."""
        state = np.random.SeedSequence([self.seed, self._AUGMENT, int(step), int(slot)])
        return int(state.generate_state(1, dtype=np.uint64)[0])
