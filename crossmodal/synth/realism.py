"""Realism levers of the synthesis (issue 14): what a real photo has that a clean render
lacks.

Each lever is switched and scaled by a field of :class:`~crossmodal.synth.sampler.SynthConfig`
(0 = off) and draws its randomness from its own generator, seeded by ``(seed, sample,
lever)``, so switching one lever changes nothing else in a dataset: a study of the
levers compares datasets with the same identities, poses and lights.
``benchmarks/sim2real.py`` measures each on the real-scan set.

- :func:`random_environment`: a soft, coloured environment light (spherical harmonics,
  bands 0-2), on top of the point lights.
- :func:`photo_background`: a crop of a real photograph (``assets/backgrounds``, CC0 and
  public domain) instead of a procedural background.
- :func:`occlude`: hair over the forehead, glasses or a hand at the crop border; the
  occluded pixels leave the facial mask, so no loss is computed on them.
- :func:`camera_effects`: white balance, exposure, vignetting, defocus or motion blur,
  sensor noise and JPEG compression.
- :func:`jitter_box`: the crop box moved and scaled as a face detector's would be.

Skin detail (pores, mottling, freckles, moles, stubble, make-up-like tones) is per person,
so it lives with the rest of the albedo in :mod:`crossmodal.synth.appearance`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from ..geometry.shading import SH_BASIS_SIZE

__all__ = ["BACKGROUND_PHOTOS", "LEVER_STREAMS", "camera_effects", "jitter_box", "lever_rng",
           "occlude", "photo_background", "random_environment"]

#: Real photographs without faces (assets/backgrounds/ATTRIBUTION.md: CC0 or public domain).
BACKGROUND_PHOTOS = tuple(sorted(
    (Path(__file__).resolve().parents[1] / "assets" / "backgrounds").glob("*.jpg")))
#: Each lever's stream of random numbers (the last entry of its generator's seed).
LEVER_STREAMS = {"environment": 0, "background": 1, "occluder": 2, "camera": 3, "crop": 4,
                 "skin": 5}


def lever_rng(seed: int, index: int, lever: str) -> np.random.Generator:
    """The generator of one lever for sample (or subject) ``index``."""
    return np.random.default_rng([seed, 3, index, LEVER_STREAMS[lever]])


def random_environment(rng: np.random.Generator) -> np.ndarray:
    """A random soft environment: ``(9, 3)`` spherical-harmonic radiance coefficients
    (:func:`crossmodal.geometry.shading.sh_irradiance`).

    A tinted mean radiance (a room, overcast sky or shade), a brighter side in a random
    direction of the upper front hemisphere (a window, the sky) and weaker second-order
    variation. The irradiance it gives a face is mostly in [0.2, 0.9] pi: soft light of
    about the strength of one of synth's point lights.
    """
    mean = rng.uniform(0.1, 0.5)
    tint = rng.uniform(0.8, 1.2, 3)
    coefficients = np.zeros((SH_BASIS_SIZE, 3))
    coefficients[0] = mean * np.sqrt(4 * np.pi) * tint
    direction = rng.normal(size=3)
    direction[1] = abs(direction[1])  # light comes from above more often than from below
    direction[2] = abs(direction[2])
    direction /= np.linalg.norm(direction)
    # Y_1-1, Y_10, Y_11 are y, z, x: a linear gradient of up to 90% of the mean along it.
    strength = rng.uniform(0.2, 0.9) * mean * np.sqrt(4 * np.pi / 3)
    coefficients[1:4] = strength * direction[[1, 2, 0], None] * rng.uniform(0.9, 1.1, 3)
    coefficients[4:] = rng.normal(0, 0.15 * mean, (5, 3))
    return coefficients


@lru_cache(maxsize=len(BACKGROUND_PHOTOS) or 1)
def _photo(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read the bundled background {path}; reinstall "
                                f"crossmodal")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    image.flags.writeable = False
    return image


def photo_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``(size, size, 3)`` float32 crop of a bundled photo: a random square of 30-100%
    of its shorter side, maybe mirrored, tinted and brightened or darkened."""
    photo = _photo(BACKGROUND_PHOTOS[rng.integers(len(BACKGROUND_PHOTOS))])
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.3, 1.0) * min(h, w))
    y0, x0 = rng.integers(h - side + 1), rng.integers(w - side + 1)
    crop = cv2.resize(photo[y0:y0 + side, x0:x0 + side], (size, size),
                      interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = crop * rng.uniform(0.5, 1.3) * rng.uniform(0.85, 1.15, 3)
    return np.clip(crop, 0.0, 1.0).astype(np.float32)


def _antialiased(draw, size: int, supersample: int = 4) -> np.ndarray:
    """Coverage in [0, 1] ``(size, size)`` of shapes ``draw(canvas, scale)`` paints in
    white on a ``supersample`` x finer uint8 canvas (``scale`` = its pixels per pixel)."""
    canvas = np.zeros((size * supersample, size * supersample), np.uint8)
    draw(canvas, supersample)
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA) / 255.0


def _hair(size: int, landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A fringe from the top of the crop down over part of the forehead, with a wavy edge."""
    brow_y = landmarks[17:27, 1].min()
    bottom = rng.uniform(0.3, 0.95) * max(brow_y, 1.0)
    x = np.linspace(-0.5, size - 0.5, 24)
    wave = bottom * (1 + 0.15 * np.sin(x / size * rng.uniform(4, 14) + rng.uniform(0, 6)))
    left, right = sorted(rng.uniform(-0.3, 1.3, 2) * size)
    edge = np.where((x >= left) & (x <= right), wave, -1.0)

    def draw(canvas, s):
        points = np.concatenate([[[x[0], -1]], np.stack([x, edge], 1), [[x[-1], -1]]])
        cv2.fillPoly(canvas, [np.round((points + 0.5) * s).astype(np.int32)], 255)
    return _antialiased(draw, size)


def _glasses(size: int, landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Frames around both eyes, a bridge and temples out to the crop's sides."""
    thickness = rng.uniform(0.01, 0.03) * size
    eyes = [landmarks[36:42], landmarks[42:48]]
    centres = [e.mean(0) for e in eyes]
    half_width = rng.uniform(1.0, 1.4) * max(np.ptp(e[:, 0]) for e in eyes) / 2 + thickness
    half_height = half_width * rng.uniform(0.6, 0.9)

    def draw(canvas, s):
        t = max(int(round(thickness * s)), 1)
        for c in centres:
            cv2.ellipse(canvas, tuple(np.round((c + 0.5) * s).astype(int)),
                        (int(half_width * s), int(half_height * s)), 0, 0, 360, 255, t)
        inner = [centres[0] + [half_width, 0], centres[1] - [half_width, 0]]
        outer = [centres[0] - [half_width, 0], centres[1] + [half_width, 0]]
        for a, b in (inner, (outer[0], [-1, outer[0][1]]), (outer[1], [size, outer[1][1]])):
            cv2.line(canvas, tuple(np.round((np.asarray(a) + 0.5) * s).astype(int)),
                     tuple(np.round((np.asarray(b) + 0.5) * s).astype(int)), 255, t)
    return _antialiased(draw, size)


def _hand(size: int, landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A palm and fingers reaching in from the bottom or a side, towards the jaw."""
    side = rng.integers(3)  # bottom, left, right
    target = landmarks[rng.choice([4, 8, 12])] + rng.normal(0, 0.04 * size, 2)
    start = {0: [target[0], size * 1.2], 1: [-0.2 * size, target[1]],
             2: [1.2 * size, target[1]]}[side]
    axis = target - np.asarray(start)
    axis /= max(np.linalg.norm(axis), 1e-6)
    palm = rng.uniform(0.12, 0.2) * size

    def draw(canvas, s):
        centre = target - axis * palm
        angle = np.degrees(np.arctan2(axis[1], axis[0]))
        cv2.ellipse(canvas, tuple(np.round((centre + 0.5) * s).astype(int)),
                    (int(palm * 1.2 * s), int(palm * s)), angle, 0, 360, 255, -1)
        cv2.line(canvas, tuple(np.round((centre + 0.5) * s).astype(int)),
                 tuple(np.round((np.asarray(start) + 0.5) * s).astype(int)), 255,
                 int(palm * 1.6 * s))
        normal = np.array([-axis[1], axis[0]])
        for k in range(4):
            base = centre + axis * palm * 0.8 + normal * palm * (k - 1.5) * 0.45
            tip = base + axis * palm * rng.uniform(0.6, 1.1)
            cv2.line(canvas, tuple(np.round((base + 0.5) * s).astype(int)),
                     tuple(np.round((tip + 0.5) * s).astype(int)), 255,
                     max(int(palm * 0.35 * s), 1))
    return _antialiased(draw, size)


_OCCLUDERS = {"hair": _hair, "glasses": _glasses, "hand": _hand}


def occlude(image: np.ndarray, mask: np.ndarray, landmarks: np.ndarray,
            rng: np.random.Generator, *, hair: tuple[float, float, float],
            skin: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray, str]:
    """Paint one occluder (hair, glasses or a hand) over a rendered face.

    Args:
        image: ``(S, S, 3)`` float32 render; mask: its ``(S, S)`` facial mask.
        landmarks: ``(68, 2)`` landmarks in the crop, placing the occluder.
        hair, skin: the person's hair and skin colours (the hand's skin is theirs).

    Returns:
        ``(image, mask, kind)``: the painted image, the mask without every pixel the
        occluder touches (its normals are not the face's) and which occluder it was.
    """
    size = image.shape[0]
    kind = list(_OCCLUDERS)[rng.integers(len(_OCCLUDERS))]
    coverage = _OCCLUDERS[kind](size, landmarks, rng)
    yy, xx = np.mgrid[0:size, 0:size] / size
    # A plausible shading: a gradient in a random direction and some texture.
    a = rng.uniform(0, 2 * np.pi)
    shading = rng.uniform(0.4, 1.0) * (0.75 + 0.25 * np.cos(a) * (xx - 0.5) * 2
                                       + 0.25 * np.sin(a) * (yy - 0.5) * 2)
    if kind == "hair":
        colour = np.asarray(hair)
        shading = shading * (0.8 + 0.2 * np.sin(xx * size * rng.uniform(0.8, 2.0)))
    elif kind == "glasses":
        colour = rng.uniform(0.0, 0.6, 3) if rng.random() < 0.5 else np.full(3, 0.05)
    else:
        colour = np.asarray(skin) * rng.uniform(0.9, 1.1, 3)
    paint = np.clip(colour * shading[..., None], 0.0, 1.0)
    alpha = coverage[..., None]
    image = (image * (1 - alpha) + paint * alpha).astype(np.float32)
    return image, mask & (coverage < 1e-3), kind


def camera_effects(image: np.ndarray, rng: np.random.Generator,
                   probability: float) -> tuple[np.ndarray, list[str]]:
    """Apply each camera effect with ``probability``, in a camera's order: white balance,
    exposure, vignetting, defocus or motion blur, sensor noise, JPEG compression.
    Returns the float32 ``(S, S, 3)`` image and the names of the effects applied."""
    size = image.shape[0]
    applied = []
    out = image.astype(np.float32)
    draws = rng.random(6)
    if draws[0] < probability:
        out = out * rng.uniform(0.8, 1.2, 3).astype(np.float32)
        applied.append("white_balance")
    if draws[1] < probability:
        out = out * np.float32(2.0 ** rng.uniform(-1.0, 0.7))
        applied.append("exposure")
    if draws[2] < probability:
        yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1) - 0.5
        centre = rng.uniform(-0.15, 0.15, 2)
        r2 = ((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / 0.5
        out = out * (1 - rng.uniform(0.1, 0.5) * r2)[..., None].astype(np.float32)
        applied.append("vignetting")
    if draws[3] < probability:
        if rng.random() < 0.5:
            sigma = rng.uniform(0.3, 1.2) * size / 64
            out = cv2.GaussianBlur(out, (0, 0), sigma)
            applied.append("defocus")
        else:
            length = max(int(round(rng.uniform(2, 5) * size / 64)), 2)
            kernel = np.zeros((length, length), np.float32)
            kernel[length // 2] = 1.0 / length
            rotation = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2),
                                               rng.uniform(0, 180), 1.0)
            kernel = cv2.warpAffine(kernel, rotation, (length, length))
            out = cv2.filter2D(out, -1, kernel / max(kernel.sum(), 1e-6))
            applied.append("motion_blur")
    out = np.clip(out, 0.0, 1.0)
    if draws[4] < probability:
        # Shot noise grows with the signal, read noise does not.
        shot, read = rng.uniform(0.0, 0.02), rng.uniform(0.002, 0.02)
        sigma = np.sqrt(shot * shot * out + read * read)
        out = np.clip(out + sigma * rng.standard_normal(out.shape), 0.0, 1.0)
        applied.append("noise")
    if draws[5] < probability:
        quality = int(rng.integers(30, 91))
        encoded = cv2.imencode(".jpg", np.round(out * 255).astype(np.uint8),
                               [cv2.IMWRITE_JPEG_QUALITY, quality])[1]
        out = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED) / 255.0
        applied.append("jpeg")
    return out.astype(np.float32), applied


def jitter_box(box: tuple[float, float, float], rng: np.random.Generator,
               amount: float) -> tuple[float, float, float]:
    """The crop square ``(x0, y0, side)`` moved by N(0, amount) x side in x and y and
    scaled by exp(N(0, amount)), as the landmarks of a detector scatter about a face's
    true ones."""
    x0, y0, side = box
    shift = rng.normal(0.0, amount, 2) * side
    new_side = side * float(np.exp(rng.normal(0.0, amount)))
    cx, cy = x0 + side / 2 + shift[0], y0 + side / 2 + shift[1]
    return cx - new_side / 2, cy - new_side / 2, new_side
