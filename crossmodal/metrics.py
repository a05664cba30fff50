"""Angular error of predicted normal maps: the one metric implementation (docs/design.md §6).

Per pixel the error is the angle in degrees between the prediction and the ground truth,
over mask pixels where both vectors are usable. :func:`angular_error` gives the per-pixel
map; :class:`AngularErrorMeter` accumulates a whole evaluation without storing pixels
(training validation, possibly under DDP, ``crossmodal eval`` and the benchmarks all use
it); :func:`summarize` is the one-shot form.

Summary (the §6 JSON less the ``dataset``/``split``/``checkpoint`` keys callers add)::

    n_images        images with at least one valid pixel (the ones "mean"/"std" are over)
    n_pixels        pooled valid pixels
    mean            mean over images of the per-image mean error (the paper's "Mean")
    std             population std (ddof=0) over images of the per-image mean error
    median          median of the pooled pixel errors, exact to ``bin_width`` degrees
    pixel_mean      mean of the pooled pixel errors
    below           {"20": pct, "25": pct, "30": pct}: % of pooled pixels with error < t
    n_excluded_pred pixels in the mask with a valid target but a NaN/inf/zero prediction
    n_empty_images  images without any valid pixel (left out of mean/std and n_images)

With no valid pixel every metric value is ``float('nan')`` (``json.dump`` writes ``NaN``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

from .errors import InputError
from .vectors import unit_vectors

__all__ = ["AngularErrorMeter", "angular_error", "summarize"]

DEFAULT_THRESHOLDS = (20.0, 25.0, 30.0)


def _batched(x: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{what} must be a torch tensor (B, 3, H, W), got {type(x).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] != 3:
        raise InputError(f"{what} must have shape (B, 3, H, W) or (3, H, W), got "
                         f"{tuple(x.shape)}")
    return x


def _errors(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pixel errors, valid pixels and the excluded-prediction pixels, all (B, H, W)."""
    pred, target = _batched(pred, "prediction"), _batched(target, "target")
    if pred.shape != target.shape:
        raise InputError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} "
                         f"differ in shape")
    # float32 at least: half precision (AMP) is too coarse for small angles.
    dtype = torch.float64 if torch.float64 in (pred.dtype, target.dtype) else torch.float32
    p, p_ok = unit_vectors(pred.detach().to(dtype))
    t, t_ok = unit_vectors(target.detach().to(device=pred.device, dtype=dtype))
    p_ok, t_ok = p_ok.squeeze(1), t_ok.squeeze(1)
    usable = t_ok
    if mask is not None:
        m = mask.to(pred.device)
        if m.ndim == 4 and m.shape[1] == 1:
            m = m.squeeze(1)
        elif m.ndim == 2:
            m = m.unsqueeze(0)
        if m.shape != t_ok.shape:
            raise InputError(f"mask {tuple(mask.shape)} does not match the normal maps "
                             f"{tuple(pred.shape)}; expected (B, H, W) or (B, 1, H, W)")
        usable = usable & (m != 0)
    valid = usable & p_ok
    # atan2(|a x b|, a . b) is accurate at every angle, unlike acos of a clamped dot
    # product, which loses precision near 0 and 180 degrees.
    sin = torch.linalg.vector_norm(torch.linalg.cross(p, t, dim=1), dim=1)
    cos = (p * t).sum(dim=1)
    err = torch.where(valid, torch.rad2deg(torch.atan2(sin, cos)), 0.0).float()
    return err, valid, usable & ~p_ok


def angular_error(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel angle in degrees between predicted and ground-truth normals.

    Args:
        pred: ``(B, 3, H, W)`` or ``(3, H, W)`` predicted normals of any length (the angle
            does not depend on it, so the prediction is in effect renormalised).
        target: ground-truth normals, same shape as ``pred``.
        mask: optional ``(B, H, W)`` or ``(B, 1, H, W)`` (``(H, W)`` for a single map),
            bool or numeric; non-zero marks pixels to evaluate.

    Returns:
        ``(errors, valid)``: float32 ``(B, H, W)`` errors in [0, 180] and the bool
        ``(B, H, W)`` pixels that count: inside ``mask``, with a finite target and
        prediction of length > :data:`crossmodal.vectors.EPS`. Errors at invalid pixels
        are 0; use ``valid``.
        Computed on ``pred``'s device, without gradients (this is a metric, not a loss).
    """
    err, valid, _ = _errors(pred, target, mask)
    return err, valid


def _maps_from_numpy(x, device: torch.device | None, what: str) -> torch.Tensor:
    """Numpy channel-last ``(H, W, 3)``/``(B, H, W, 3)`` -> torch ``(B, 3, H, W)``/
    ``(3, H, W)``; torch tensors pass through."""
    if isinstance(x, torch.Tensor):
        return x
    a = np.array(x)  # a copy: writable and contiguous for torch
    if a.ndim not in (3, 4) or a.shape[-1] != 3:
        raise InputError(f"numpy {what} must be channel-last (H, W, 3) or (B, H, W, 3), "
                         f"got {a.shape}")
    t = torch.from_numpy(a).movedim(-1, -3)
    return t if device is None else t.to(device)


def _mask_from_numpy(m, maps_ndim: int | None, device: torch.device | None):
    """A numpy mask -> torch; a trailing 1 matching channel-last maps is dropped."""
    if m is None or isinstance(m, torch.Tensor):
        return m
    a = np.array(m)
    if maps_ndim is not None and a.ndim == maps_ndim and a.shape[-1] == 1:
        a = a[..., 0]
    t = torch.from_numpy(a)
    return t if device is None else t.to(device)


def _masked_extreme(err: torch.Tensor, valid: torch.Tensor, reduce, empty: float):
    """``reduce`` (amin/amax) of the valid float64 errors as a ``(1,)`` tensor; ``empty``
    (the reduction's identity) when there are none, including an empty batch."""
    values = err.double().masked_fill(~valid, empty).flatten()
    return reduce(torch.cat([values, values.new_full((1,), empty)])).view(1)


class AngularErrorMeter:
    """Streaming accumulator of angular-error statistics; never stores per-pixel errors.

    Keeps the per-image mean errors (one float per image), the pooled pixel count and
    float64 error sum, exact pooled counts below each threshold (strict ``<``), and a
    histogram of errors over [0, 180] in bins of ``bin_width`` degrees from which the
    pooled median is interpolated (so it is exact to within ``bin_width``; 0.01 degrees
    by default is 18,000 int64 bins), clamped to the exact pooled minimum and maximum so
    that a constant error (zero, say) has exactly that median.

    Args:
        thresholds: degrees for the "below" percentages, keyed ``f"{t:g}"``.
        bin_width: histogram resolution in degrees, the precision of the median.
        device: where the histogram lives; by default the device of the first batch, so
            a GPU validation loop moves only a few numbers to the CPU per batch.
    """

    def __init__(
        self,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        bin_width: float = 0.01,
        device: torch.device | str | None = None,
    ) -> None:
        if not bin_width > 0:
            raise ValueError(f"bin_width must be positive, got {bin_width}")
        self.thresholds = tuple(float(t) for t in thresholds)
        self.bin_width = float(bin_width)
        self.n_bins = math.ceil(180.0 / self.bin_width - 1e-9)
        self.device = None if device is None else torch.device(device)
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        self.image_means: list[float] = []
        self.n_pixels = 0
        self.error_sum = 0.0  # a Python float: float64
        self.below = [0] * len(self.thresholds)
        self.n_excluded_pred = 0
        self.n_empty_images = 0
        self.error_min = math.inf
        self.error_max = -math.inf
        self._hist: torch.Tensor | None = None  # int64 (n_bins,), allocated on first use

    def _hist_add(self, counts: torch.Tensor) -> None:
        if self._hist is None:
            self._hist = torch.zeros(self.n_bins, dtype=torch.int64,
                                     device=self.device or counts.device)
        self._hist += counts.to(self._hist.device)

    @torch.no_grad()
    def update(self, pred, target, mask=None) -> None:
        """Add a batch.

        Args:
            pred: torch ``(B, 3, H, W)``/``(3, H, W)``, or numpy channel-last
                ``(B, H, W, 3)``/``(H, W, 3)`` (converted to torch; put on ``device`` if
                set). Any length; see :func:`angular_error`.
            target: ground truth in the same layout as ``pred``.
            mask: optional; torch ``(B, H, W)``/``(B, 1, H, W)``, numpy ``(B, H, W)``/
                ``(H, W)`` (a trailing 1 allowed); non-zero marks pixels to evaluate.
        """
        ndim = None if isinstance(pred, torch.Tensor) else np.ndim(pred)
        pred = _maps_from_numpy(pred, self.device, "prediction")
        target = _maps_from_numpy(target, self.device, "target")
        mask = _mask_from_numpy(mask, ndim, self.device)
        err, valid, excluded = _errors(pred, target, mask)

        thr = torch.tensor(self.thresholds, dtype=err.dtype, device=err.device)
        below = ((err.unsqueeze(0) < thr.view(-1, 1, 1, 1)) & valid).sum(dim=(1, 2, 3))
        # One device->host transfer per batch; float64 holds these counts exactly.
        small = torch.cat([
            err.double().sum(dim=(1, 2)),  # invalid pixels hold 0
            valid.sum(dim=(1, 2)).double(),
            below.double(),
            excluded.sum().double().view(1),
            _masked_extreme(err, valid, torch.amin, math.inf),
            _masked_extreme(err, valid, torch.amax, -math.inf),
        ]).cpu().tolist()
        b, t = err.shape[0], len(self.thresholds)
        for s, n in zip(small[:b], small[b:2 * b], strict=True):
            if n > 0:
                self.image_means.append(s / n)
            else:
                self.n_empty_images += 1
            self.n_pixels += int(n)
            self.error_sum += s
        below_counts = small[2 * b:2 * b + t]
        self.below = [c + int(x) for c, x in zip(self.below, below_counts, strict=True)]
        self.n_excluded_pred += int(small[-3])
        self.error_min = min(self.error_min, small[-2])
        self.error_max = max(self.error_max, small[-1])

        # Invalid pixels go to an overflow bin that is dropped.
        idx = (err.double() / self.bin_width).long().clamp_(0, self.n_bins - 1)
        idx = torch.where(valid, idx, self.n_bins)
        self._hist_add(torch.bincount(idx.flatten(), minlength=self.n_bins + 1)[:-1])

    def _median(self) -> float:
        """Pooled median as numpy defines it (mean of the two middle values for an even
        count). Each middle value is placed inside its histogram bin by its rank among
        the bin's counts, so it, and the median, are within ``bin_width`` of exact."""
        if self.n_pixels == 0 or self._hist is None:
            return float("nan")
        hist = self._hist.cpu().numpy()
        cum = np.cumsum(hist)

        def order_statistic(rank: int) -> float:  # the rank-th smallest error, 1-based
            k = int(np.searchsorted(cum, rank, side="left"))
            before = int(cum[k - 1]) if k > 0 else 0
            return (k + (rank - before - 0.5) / int(hist[k])) * self.bin_width

        n = self.n_pixels
        median = (order_statistic((n + 1) // 2) + order_statistic(n // 2 + 1)) / 2.0
        return min(max(median, self.error_min), self.error_max)

    def summary(self) -> dict:
        """The §6 metrics (see the module docstring); NaN values when nothing is valid."""
        nan = float("nan")
        means = np.asarray(self.image_means, dtype=np.float64)
        n = self.n_pixels
        return {
            "n_images": len(self.image_means),
            "n_pixels": n,
            "mean": float(means.mean()) if means.size else nan,
            "std": float(means.std(ddof=0)) if means.size else nan,
            "median": self._median(),
            "pixel_mean": self.error_sum / n if n else nan,
            "below": {f"{t:g}": 100.0 * c / n if n else nan
                      for t, c in zip(self.thresholds, self.below, strict=True)},
            "n_excluded_pred": self.n_excluded_pred,
            "n_empty_images": self.n_empty_images,
        }

    def _check_compatible(self, thresholds, bin_width) -> None:
        if tuple(thresholds) != self.thresholds or bin_width != self.bin_width:
            raise ValueError(f"meters differ: thresholds {tuple(thresholds)} vs "
                             f"{self.thresholds}, bin_width {bin_width} vs {self.bin_width}")

    def merge(self, other: AngularErrorMeter) -> AngularErrorMeter:
        """Add ``other``'s accumulated statistics to this meter; returns ``self``."""
        self._check_compatible(other.thresholds, other.bin_width)
        self.image_means.extend(other.image_means)
        self.n_pixels += other.n_pixels
        self.error_sum += other.error_sum
        self.below = [a + b for a, b in zip(self.below, other.below, strict=True)]
        self.n_excluded_pred += other.n_excluded_pred
        self.n_empty_images += other.n_empty_images
        self.error_min = min(self.error_min, other.error_min)
        self.error_max = max(self.error_max, other.error_max)
        if other._hist is not None:
            self._hist_add(other._hist)
        return self

    def all_reduce(self, group=None) -> AngularErrorMeter:
        """Combine the meters of all ranks in place, so every rank holds the totals.

        A collective: every rank of ``group`` must call it, once (a second call would
        count everything again). A no-op unless ``torch.distributed`` is initialised.
        Per-image means are concatenated in rank order. With NCCL the tensors travel on
        the current CUDA device (``torch.cuda.set_device`` must be set, as DDP needs).
        Note that a ``DistributedSampler`` pads ranks with repeated images.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = (torch.device("cuda", torch.cuda.current_device())
                  if dist.get_backend(group) == "nccl" else torch.device("cpu"))
        hist = self._hist
        if hist is None:
            hist = torch.zeros(self.n_bins, dtype=torch.int64)
        # One int64 vector for the exact counts, one float64 scalar for the error sum.
        counts = torch.cat([
            torch.tensor([self.n_pixels, self.n_excluded_pred, self.n_empty_images,
                          *self.below], dtype=torch.int64),
            hist.cpu(),
        ]).to(device)
        total = torch.tensor([self.error_sum], dtype=torch.float64, device=device)
        extremes = torch.tensor([-self.error_min, self.error_max], dtype=torch.float64,
                                device=device)
        dist.all_reduce(counts, group=group)
        dist.all_reduce(total, group=group)
        dist.all_reduce(extremes, op=dist.ReduceOp.MAX, group=group)
        lists: list = [None] * dist.get_world_size(group)
        dist.all_gather_object(lists, self.image_means, group=group)

        t = len(self.thresholds)
        head = counts[:3 + t].tolist()
        self.n_pixels, self.n_excluded_pred, self.n_empty_images = head[:3]
        self.below = head[3:]
        self.error_sum = float(total.item())
        self.error_min, self.error_max = -float(extremes[0]), float(extremes[1])
        self.image_means = [m for part in lists for m in part]
        self._hist = counts[3 + t:].to(self.device or hist.device)
        return self

    def state_dict(self) -> dict:
        """Everything accumulated, as plain Python containers (JSON- and pickle-safe)."""
        hist = (self._hist.cpu().tolist() if self._hist is not None else [0] * self.n_bins)
        return {
            "thresholds": list(self.thresholds),
            "bin_width": self.bin_width,
            "image_means": list(self.image_means),
            "n_pixels": self.n_pixels,
            "error_sum": self.error_sum,
            "below": list(self.below),
            "n_excluded_pred": self.n_excluded_pred,
            "n_empty_images": self.n_empty_images,
            "error_min": self.error_min,
            "error_max": self.error_max,
            "hist": hist,
        }

    def load_state_dict(self, state: dict) -> None:
        """Replace this meter's configuration and statistics with ``state``."""
        self.thresholds = tuple(float(t) for t in state["thresholds"])
        self.bin_width = float(state["bin_width"])
        self.n_bins = len(state["hist"])
        self.image_means = [float(m) for m in state["image_means"]]
        self.n_pixels = int(state["n_pixels"])
        self.error_sum = float(state["error_sum"])
        self.below = [int(c) for c in state["below"]]
        self.n_excluded_pred = int(state["n_excluded_pred"])
        self.n_empty_images = int(state["n_empty_images"])
        self.error_min = float(state["error_min"])
        self.error_max = float(state["error_max"])
        self._hist = torch.tensor(state["hist"], dtype=torch.int64, device=self.device)


def summarize(
    pred,
    target,
    mask=None,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    bin_width: float = 0.01,
) -> dict:
    """One-shot :meth:`AngularErrorMeter.summary` of a batch (inputs as in ``update``)."""
    meter = AngularErrorMeter(thresholds, bin_width)
    meter.update(pred, target, mask)
    return meter.summary()
