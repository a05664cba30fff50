"""Skin, eyes, mouth and backgrounds for synthetic faces.

ICT-FaceKit Light has no albedo, so appearance is synthesised per vertex: a skin tone from
a range spanning very light to very dark skin, low-frequency variation over the surface
(blotchiness, redder cheeks and nose), darker brows, tinted lips, eyes (sclera, iris of a
sampled colour, pupil), teeth, gums and mouth interior, and optionally hair on the scalp.
Backgrounds are procedural (gradients, fractal noise, stripes, checkers, blobs) so that a
network cannot find the face by its flat surroundings.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from .face_model import FaceModel

__all__ = ["SubjectLook", "background", "sample_look", "vertex_colors"]

# Linear-ish sRGB anchors from very light to very dark skin; a tone is a point on this path.
_SKIN_TONES = np.array([
    [0.96, 0.82, 0.72], [0.90, 0.72, 0.60], [0.78, 0.58, 0.44], [0.62, 0.43, 0.30],
    [0.45, 0.30, 0.20], [0.30, 0.19, 0.13]], np.float32)
_IRIS_COLOURS = np.array([
    [0.30, 0.18, 0.08], [0.45, 0.28, 0.12], [0.22, 0.35, 0.55], [0.30, 0.45, 0.30],
    [0.45, 0.40, 0.25], [0.15, 0.10, 0.06]], np.float32)
_HAIR_COLOURS = np.array([
    [0.05, 0.04, 0.03], [0.18, 0.11, 0.06], [0.35, 0.22, 0.12], [0.60, 0.45, 0.25],
    [0.45, 0.18, 0.08], [0.55, 0.55, 0.55]], np.float32)
_FIXED_REGION_COLOURS = {  # regions whose colour does not follow the skin
    "teeth": (0.88, 0.85, 0.76),
    "gums_tongue": (0.70, 0.30, 0.30),
    "mouth_socket": (0.30, 0.08, 0.08),
}


@dataclass(frozen=True)
class SubjectLook:
    """What makes one synthetic person look like themselves across their renders."""

    skin: tuple[float, float, float]
    iris: tuple[float, float, float]
    hair: tuple[float, float, float]
    has_hair: bool
    brow_density: float
    lip_tint: tuple[float, float, float]
    blotch_phases: tuple[float, ...]
    specular: float
    shininess: float


def _pick(palette: np.ndarray, rng: np.random.Generator, jitter: float) -> tuple:
    """A colour between two neighbouring palette entries, jittered per channel."""
    t = rng.uniform(0, len(palette) - 1)
    i = min(int(t), len(palette) - 2)
    colour = palette[i] + (t - i) * (palette[i + 1] - palette[i])
    colour = colour * rng.uniform(1 - jitter, 1 + jitter, 3)
    return tuple(float(c) for c in np.clip(colour, 0.0, 1.0))


def sample_look(rng: np.random.Generator) -> SubjectLook:
    return SubjectLook(
        skin=_pick(_SKIN_TONES, rng, 0.04),
        iris=_pick(_IRIS_COLOURS, rng, 0.1),
        hair=_pick(_HAIR_COLOURS, rng, 0.1),
        has_hair=bool(rng.random() < 0.7),
        brow_density=float(rng.uniform(0.4, 0.9)),
        lip_tint=(float(rng.uniform(0.85, 1.0)), float(rng.uniform(0.55, 0.75)),
                  float(rng.uniform(0.55, 0.75))),
        blotch_phases=tuple(float(p) for p in rng.uniform(0, 2 * np.pi, 12)),
        specular=float(rng.uniform(0.03, 0.25)),
        shininess=float(rng.uniform(8.0, 40.0)),
    )


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _distance_to_polyline(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Distance of ``(N, 2)`` points to the segments of an open ``(K, 2)`` polyline."""
    a, b = line[:-1], line[1:]
    ab = b - a
    t = np.clip(((points[:, None] - a) * ab).sum(-1) / (ab * ab).sum(-1), 0.0, 1.0)
    closest = a + t[..., None] * ab
    return np.linalg.norm(points[:, None] - closest, axis=-1).min(axis=1)


def _polygon_weight(points: np.ndarray, polygon: np.ndarray, soft_cm: float,
                    resolution_cm: float = 0.02) -> np.ndarray:
    """1 inside a closed ``(K, 2)`` polygon, 0 outside, blurred over ``soft_cm``; for
    ``(N, 2)`` points. Rasterised once on a fine grid, so it costs no per-point loop."""
    margin = 4 * soft_cm
    lo = polygon.min(0) - margin
    shape = np.ceil((polygon.max(0) + margin - lo) / resolution_cm).astype(int) + 1
    grid = np.zeros((shape[1], shape[0]), np.float32)
    cv2.fillPoly(grid, [np.round((polygon - lo) / resolution_cm).astype(np.int32)], 1.0)
    grid = cv2.GaussianBlur(grid, (0, 0), soft_cm / resolution_cm)
    ij = np.round((points - lo) / resolution_cm).astype(int)
    inside = (ij >= 0).all(1) & (ij[:, 0] < shape[0]) & (ij[:, 1] < shape[1])
    weight = np.zeros(len(points), np.float32)
    weight[inside] = grid[ij[inside, 1], ij[inside, 0]]
    return weight


@lru_cache(maxsize=16)  # a subject's renders share it; FaceModel hashes by identity
def vertex_colors(model: FaceModel, look: SubjectLook) -> np.ndarray:
    """Per-vertex albedo ``(V, 3)`` float32 in [0, 1] on the model's neutral mesh (cm);
    read-only, as it is cached."""
    v = model.neutral
    lm = v[model.landmarks68]
    colours = np.broadcast_to(np.asarray(look.skin, np.float32), v.shape).copy()

    # Low-frequency blotchiness: a few plane waves of 4-12 cm wavelength, +-6%.
    phases = np.asarray(look.blotch_phases).reshape(4, 3)
    dirs = np.array([[1, 0.3, 0.2], [-0.4, 1, 0.1], [0.2, -0.5, 1], [0.7, 0.7, -0.3]])
    waves = sum(np.sin(v @ d / np.linalg.norm(d) * (2 * np.pi / (4 + 2.7 * i)) + p[0])
                for i, (d, p) in enumerate(zip(dirs, phases)))
    colours *= (1.0 + 0.06 * waves / 4)[:, None]

    # Redder cheeks and nose: Gaussian bumps around landmarks 2/14 (cheeks), 30 (nose tip).
    red = np.zeros(len(v))
    for idx, sigma in ((1, 2.5), (15, 2.5), (30, 1.5)):
        centre = (lm[idx] + lm[30]) / 2 if idx != 30 else lm[30]
        red += np.exp(-((v - centre) ** 2).sum(-1) / (2 * sigma**2))
    colours *= 1.0 - 0.12 * np.clip(red, 0, 1)[:, None] * np.array([0.0, 1.0, 0.8])

    front = v[:, 2] > lm[:, 2].min() - 2.0  # frontal surface only: brows/lips are drawn in xy
    # Brows: within ~0.5 cm of the brow polylines (17-21, 22-26), lifted 0.3 cm.
    brow_d = np.minimum(_distance_to_polyline(v[:, :2], lm[17:22, :2] + [0, 0.3]),
                        _distance_to_polyline(v[:, :2], lm[22:27, :2] + [0, 0.3]))
    brow = look.brow_density * _smoothstep((0.6 - brow_d) / 0.3) * front
    colours += brow[:, None] * (np.asarray(look.hair) - colours)

    # Lips: inside the outer lip contour (48-59), with a soft edge.
    lips = _polygon_weight(v[:, :2], lm[48:60, :2], soft_cm=0.1) * front
    colours *= 1.0 - lips[:, None] * (1.0 - np.asarray(look.lip_tint))

    regions = {name: model.region_mask(name) for name in model.region_names}
    if look.has_hair:  # a scalp cap above the brows, behind the hairline
        hairline = lm[19, 1] + 2.5
        back_of_head = (v[:, 1] > lm[0, 1]) & (v[:, 2] < -2.0)
        scalp = regions["head_neck"] & ((v[:, 1] > hairline) | back_of_head)
        colours[scalp] = look.hair
    for side in ("L", "R"):
        colours[regions[f"eye_socket_{side}"]] *= 0.8
        eyeball = regions[f"eyeball_{side}"]
        colours[eyeball] = (0.72, 0.69, 0.65)  # sclera: white, but not paper-white
        iris = model.material_vertices(f"M_Iris{'Left' if side == 'L' else 'Right'}")
        if iris.any():
            centre = v[iris].mean(0)
            radius = np.linalg.norm(v[iris] - centre, axis=-1).max()
            d = np.linalg.norm(v - centre, axis=-1) / max(radius, 1e-6)
            colours[iris] = look.iris
            colours[iris & (d < 0.45)] = (0.03, 0.03, 0.03)  # pupil
    for name, colour in _FIXED_REGION_COLOURS.items():
        colours[regions[name]] = colour
    colours = np.clip(colours, 0.0, 1.0).astype(np.float32)
    colours.flags.writeable = False
    return colours


def _fractal_noise(size: int, rng: np.random.Generator, octaves: int = 4) -> np.ndarray:
    """Value noise in [0, 1], ``(size, size)``: random grids upsampled and summed."""
    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = 2 ** (o + 2)
        grid = rng.random((cells, cells)).astype(np.float32)
        out += amp * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
    out /= total
    return (out - out.min()) / max(float(np.ptp(out)), 1e-6)


def background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A procedural ``(size, size, 3)`` float32 background in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    c0, c1 = rng.random(3).astype(np.float32), rng.random(3).astype(np.float32)
    kind = rng.integers(5)
    if kind == 0:  # linear gradient at a random angle
        a = rng.uniform(0, 2 * np.pi)
        t = (np.cos(a) * xx + np.sin(a) * yy)
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    elif kind == 1:  # fractal noise
        t = _fractal_noise(size, rng)
    elif kind == 2:  # stripes
        a, freq = rng.uniform(0, np.pi), rng.uniform(3, 20)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(a) * xx + np.sin(a) * yy))
    elif kind == 3:  # checker
        n = rng.integers(3, 12)
        t = ((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(np.float32)
    else:  # soft blobs
        t = np.zeros_like(xx)
        for _ in range(rng.integers(3, 8)):
            cx, cy, r = rng.random(), rng.random(), rng.uniform(0.05, 0.3)
            t += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        t = np.clip(t, 0, 1)
    image = c0 + t[..., None] * (c1 - c0)
    # Some texture on everything: low-amplitude noise so no background is perfectly flat.
    image *= 0.85 + 0.3 * _fractal_noise(size, rng, octaves=3)[..., None]
    return np.clip(image, 0.0, 1.0).astype(np.float32)
