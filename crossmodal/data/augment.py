"""Normal-aware data augmentation for one sample (torch tensors, no torchvision).

A sample is a dict ``{"image": (3, H, W) float in [0, 1], "normals": (3, H, W) unit
vectors in our convention (+x right, +y up, +z towards the camera; zero = invalid),
"mask": (H, W) bool, ...}``; a missing or ``None`` entry is skipped and other keys are
passed through. Every function returns a new dict and leaves its input untouched.

Geometric transforms move the pixels *and* turn the vectors with them: the camera looks
along -z, so an in-plane motion of the picture is a rotation (or mirror) about z. Angles
are counter-clockwise **as seen on screen**; image rows grow downwards while +y points
up, so a counter-clockwise turn on screen is the usual positive rotation of (x, y).
Photometric jitter touches the image only.

The ideas follow DSINE's augmentation (Bae & Davison 2024); the code is our own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InputError

__all__ = [
    "Augment",
    "AugmentConfig",
    "PhotometricJitter",
    "hflip",
    "rot90",
    "rotate",
]

SampleDict = dict[str, Any]

#: A resampled validity weight below this means an invalid neighbour contributed:
#: grid_sample's float32 bilinear weights of valid pixels sum to 1 within ~1e-7.
_FULL = 1.0 - 1e-5

# RGB -> YIQ (NTSC). Rows I and Q sum to zero, so greys have I = Q = 0 and stay grey.
_YIQ = torch.tensor([[0.299, 0.587, 0.114],
                     [0.595716, -0.274453, -0.321263],
                     [0.211456, -0.522591, 0.311135]], dtype=torch.float64)


def _parts(sample: Mapping[str, Any]) -> tuple[torch.Tensor | None, ...]:
    """The sample's image, normals and mask, shape-checked."""
    image, normals, mask = (sample.get(k) for k in ("image", "normals", "mask"))
    for name, t, ndim in (("image", image, 3), ("normals", normals, 3), ("mask", mask, 2)):
        if t is not None and (t.ndim != ndim or (ndim == 3 and t.shape[0] != 3)):
            want = "(3, H, W)" if ndim == 3 else "(H, W)"
            raise InputError(f"augment: {name} must be {want}, got {tuple(t.shape)}")
    return image, normals, mask


def _turn_xy(normals: torch.Tensor, cos: float, sin: float) -> torch.Tensor:
    """Rotate the (x, y) components of ``(3, H, W)`` vectors counter-clockwise."""
    x, y, z = normals.unbind(0)
    return torch.stack([cos * x - sin * y, sin * x + cos * y, z])


def hflip(sample: Mapping[str, Any]) -> SampleDict:
    """Mirror left-right: pixels flip along W and the normals' x component changes sign."""
    image, normals, mask = _parts(sample)
    out = dict(sample)
    if image is not None:
        out["image"] = image.flip(-1)
    if normals is not None:
        sign = torch.tensor([-1.0, 1.0, 1.0], dtype=normals.dtype, device=normals.device)
        out["normals"] = normals.flip(-1) * sign[:, None, None]
    if mask is not None:
        out["mask"] = mask.flip(-1)
    return out


def rot90(sample: Mapping[str, Any], k: int) -> SampleDict:
    """Turn the sample ``k`` quarter turns counter-clockwise on screen.

    ``torch.rot90(x, k, dims=(-2, -1))`` turns an image counter-clockwise as displayed
    (like ``np.rot90``); the vectors turn by ``k * 90`` degrees too: (x, y) -> (-y, x) per
    quarter turn. Non-square samples swap H and W. Exact (no resampling).
    """
    image, normals, mask = _parts(sample)
    k = int(k) % 4
    cos, sin = ((1, 0), (0, 1), (-1, 0), (0, -1))[k]
    out = dict(sample)
    if image is not None:
        out["image"] = torch.rot90(image, k, dims=(-2, -1))
    if normals is not None:
        out["normals"] = _turn_xy(torch.rot90(normals, k, dims=(-2, -1)), cos, sin)
    if mask is not None:
        out["mask"] = torch.rot90(mask, k, dims=(-2, -1))
    return out


def _rotation_grid(height: int, width: int, degrees: float,
                   device: torch.device) -> torch.Tensor:
    """float64 ``grid_sample`` grid ``(1, H, W, 2)`` of an on-screen CCW turn about the
    picture's centre."""
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64, device=device),
                          torch.arange(width, dtype=torch.float64, device=device),
                          indexing="ij")
    cu, cv = (width - 1) / 2, (height - 1) / 2
    # Output pixel -> source pixel is the turn by -theta, computed in (x right, y up).
    x, y = u - cu, cv - v
    us = cu + cos * x + sin * y
    vs = cv - (-sin * x + cos * y)
    # align_corners=False: pixel i's centre is at normalised (2 i + 1) / size - 1.
    return torch.stack([(2 * us + 1) / width - 1, (2 * vs + 1) / height - 1], dim=-1)[None]


def _sample(t: torch.Tensor, grid: torch.Tensor, mode: str) -> torch.Tensor:
    """grid_sample one float ``(C, H, W)`` tensor; outside the picture reads 0."""
    return F.grid_sample(t[None], grid.to(t.dtype), mode=mode, padding_mode="zeros",
                         align_corners=False)[0]


def rotate(sample: Mapping[str, Any], degrees: float) -> SampleDict:
    """Turn the sample by ``degrees`` counter-clockwise on screen about its centre.

    Image: bilinear, black outside. Normals: bilinear, renormalised, and their (x, y)
    turned by the same angle; a pixel is valid only if all its bilinear neighbours were
    (outside the picture is invalid), invalid pixels are zero. Mask: nearest, outside
    False. Meant for small angles (the corners leave the picture).
    """
    image, normals, mask = _parts(sample)
    out = dict(sample)
    present = [t for t in (image, normals, mask) if t is not None]
    if not present:
        return out
    height, width = present[0].shape[-2:]
    grid = _rotation_grid(height, width, degrees, present[0].device)
    if image is not None:
        out["image"] = _sample(image, grid, "bilinear")
    if normals is not None:
        valid = (normals != 0).any(dim=0) & torch.isfinite(normals).all(dim=0)
        # Validity travels as a fourth channel: exactly 1 only where every neighbour was.
        stacked = torch.cat([torch.where(valid, normals, 0.0), valid[None].to(normals.dtype)])
        moved = _sample(stacked, grid, "bilinear")
        theta = math.radians(degrees)
        turned = _turn_xy(F.normalize(moved[:3], dim=0), math.cos(theta), math.sin(theta))
        out["normals"] = torch.where(moved[3] >= _FULL, turned, 0.0)
    if mask is not None:
        out["mask"] = _sample(mask[None].float(), grid, "nearest")[0] > 0.5
    return out


@dataclass(frozen=True)
class PhotometricJitter:
    """Random gamma, brightness, saturation and hue of the image; nothing else changes.

    Attributes:
        gamma: range of the exponent (drawn log-uniformly): ``image ** gamma``.
        brightness: range of the gain (uniform): ``image * b``.
        saturation: range of the chroma gain (uniform): 0 is grey, 1 unchanged.
        hue: largest hue turn, in turns (0.03 = 10.8 degrees; uniform in +-hue).

    Saturation and hue act on the I, Q (chroma) plane of YIQ, so luma is kept and greys
    stay grey. The result is clipped to [0, 1] once, at the end.
    """

    gamma: tuple[float, float] = (0.8, 1.25)
    brightness: tuple[float, float] = (0.8, 1.2)
    saturation: tuple[float, float] = (0.8, 1.2)
    hue: float = 0.03

    def __post_init__(self) -> None:
        for name in ("gamma", "brightness", "saturation"):
            lo, hi = (float(v) for v in getattr(self, name))
            low_ok = lo > 0 if name == "gamma" else lo >= 0
            if not (low_ok and lo <= hi):
                raise InputError(f"photometric {name} range must be 0 <= low <= high "
                                 f"(gamma > 0), got {getattr(self, name)!r}")
            object.__setattr__(self, name, (lo, hi))
        if not 0 <= self.hue <= 0.5:
            raise InputError(f"photometric hue must be in [0, 0.5] turns, got {self.hue!r}")

    def colour_matrix(self, saturation: float, hue: float) -> torch.Tensor:
        """float64 ``(3, 3)`` RGB -> RGB: chroma scaled by ``saturation`` and turned by
        ``hue`` turns."""
        angle = 2 * math.pi * hue
        c, s = math.cos(angle), math.sin(angle)
        chroma = torch.tensor([[1.0, 0.0, 0.0],
                               [0.0, saturation * c, -saturation * s],
                               [0.0, saturation * s, saturation * c]], dtype=torch.float64)
        return torch.linalg.inv(_YIQ) @ chroma @ _YIQ

    def __call__(self, sample: Mapping[str, Any], generator: torch.Generator) -> SampleDict:
        # Draw every parameter even without an image, so the generator's stream (and
        # any later draws) does not depend on which modalities a sample has.
        u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        log_lo, log_hi = math.log(self.gamma[0]), math.log(self.gamma[1])
        gamma = math.exp(log_lo + (log_hi - log_lo) * u[0])
        gain = self.brightness[0] + (self.brightness[1] - self.brightness[0]) * u[1]
        saturation = self.saturation[0] + (self.saturation[1] - self.saturation[0]) * u[2]
        hue = self.hue * (2 * u[3] - 1)
        image, _, _ = _parts(sample)
        out = dict(sample)
        if image is not None:
            matrix = self.colour_matrix(saturation, hue).to(image.dtype).to(image.device)
            toned = image.clamp(0, 1) ** gamma * gain
            out["image"] = torch.einsum("ij,jhw->ihw", matrix, toned).clamp(0, 1)
        return out


@dataclass(frozen=True)
class AugmentConfig:
    """What :class:`Augment` does, with which probability.

    Attributes:
        flip_p: probability of a left-right mirror.
        rot90: also turn by a uniform random number of quarter turns (for square crops;
            faces are upright in the paper's data, so off by default).
        max_rotation_deg: an in-plane turn uniform in +-this many degrees (0 disables).
        photometric: apply :attr:`jitter` to the image.
        jitter: the photometric ranges.
    """

    flip_p: float = 0.5
    rot90: bool = False
    max_rotation_deg: float = 10.0
    photometric: bool = True
    jitter: PhotometricJitter = field(default_factory=PhotometricJitter)

    def __post_init__(self) -> None:
        if not 0 <= self.flip_p <= 1:
            raise InputError(f"augment flip_p must be in [0, 1], got {self.flip_p!r}")
        if not 0 <= self.max_rotation_deg <= 180:
            raise InputError(f"augment max_rotation_deg must be in [0, 180], got "
                             f"{self.max_rotation_deg!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AugmentConfig:
        """From plain containers (an experiment YAML); unknown keys are errors."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(f"unknown augment option(s) {', '.join(unknown)}; valid: "
                             f"{', '.join(sorted(names))}")
        values = dict(data)
        if isinstance(values.get("jitter"), Mapping):
            jitter_names = {f.name for f in fields(PhotometricJitter)}
            bad = sorted(set(values["jitter"]) - jitter_names)
            if bad:
                raise InputError(f"unknown augment.jitter option(s) {', '.join(bad)}; valid: "
                                 f"{', '.join(sorted(jitter_names))}")
            values["jitter"] = PhotometricJitter(**{
                k: tuple(v) if isinstance(v, list) else v for k, v in values["jitter"].items()})
        return cls(**values)


class Augment:
    """The training augmentation: flip, quarter turns, small turn, photometric jitter.

    Deterministic given the ``torch.Generator`` passed per call: the same seed gives the
    same transform, whatever the sample's modalities.
    """

    def __init__(self, config: AugmentConfig | Mapping[str, Any] | None = None) -> None:
        if config is None:
            config = AugmentConfig()
        elif not isinstance(config, AugmentConfig):
            config = AugmentConfig.from_dict(config)
        self.config = config

    def __call__(self, sample: Mapping[str, Any], generator: torch.Generator) -> SampleDict:
        cfg = self.config
        u = torch.rand(3, generator=generator, dtype=torch.float64).tolist()
        out = dict(sample)
        if u[0] < cfg.flip_p:
            out = hflip(out)
        if cfg.rot90:
            out = rot90(out, min(int(u[1] * 4), 3))
        if cfg.max_rotation_deg > 0:
            out = rotate(out, cfg.max_rotation_deg * (2 * u[2] - 1))
        if cfg.photometric:
            out = cfg.jitter(out, generator)
        return out
