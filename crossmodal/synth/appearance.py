"""Skin, eyes, mouth and backgrounds for synthetic faces.

ICT-FaceKit Light has no albedo, so appearance is synthesised per vertex: a skin tone from
a range spanning very light to very dark skin, low-frequency variation over the surface
(blotchiness, redder cheeks and nose), darker brows, tinted lips, eyes (sclera, iris of a
sampled colour, pupil), teeth, gums and mouth interior, and optionally hair on the scalp.
A realism lever (``SynthConfig.skin_detail``) adds what a photographed skin has besides:
pores and fine mottling, freckles and moles, stubble, and make-up-like tones (eye shadow,
blush, lip colour).
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
    #: Amplitude of the skin detail (0: none) and the seed of its random layout.
    detail: float = 0.0
    detail_seed: int = 0


def _pick(palette: np.ndarray, rng: np.random.Generator, jitter: float) -> tuple:
    """A colour between two neighbouring palette entries, jittered per channel."""
    t = rng.uniform(0, len(palette) - 1)
    i = min(int(t), len(palette) - 2)
    colour = palette[i] + (t - i) * (palette[i + 1] - palette[i])
    colour = colour * rng.uniform(1 - jitter, 1 + jitter, 3)
    return tuple(float(c) for c in np.clip(colour, 0.0, 1.0))


def sample_look(rng: np.random.Generator, specular: tuple[float, float] = (0.03, 0.25),
                detail: float = 0.0, detail_seed: int = 0) -> SubjectLook:
    """A person's look from ``rng``; ``specular`` is the range of their specular weight,
    ``detail`` and ``detail_seed`` the skin detail's amplitude and layout (they draw
    nothing from ``rng``, so the rest of the look does not depend on them)."""
    return SubjectLook(
        skin=_pick(_SKIN_TONES, rng, 0.04),
        iris=_pick(_IRIS_COLOURS, rng, 0.1),
        hair=_pick(_HAIR_COLOURS, rng, 0.1),
        has_hair=bool(rng.random() < 0.7),
        brow_density=float(rng.uniform(0.4, 0.9)),
        lip_tint=(float(rng.uniform(0.85, 1.0)), float(rng.uniform(0.55, 0.75)),
                  float(rng.uniform(0.55, 0.75))),
        blotch_phases=tuple(float(p) for p in rng.uniform(0, 2 * np.pi, 12)),
        specular=float(rng.uniform(*specular)),
        shininess=float(rng.uniform(8.0, 40.0)),
        detail=float(detail),
        detail_seed=int(detail_seed),
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
    if look.detail > 0:
        colours = _skin_detail(colours, v, lm, front & model.region_mask("face"), lips, look)

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


def _skin_detail(colours: np.ndarray, v: np.ndarray, lm: np.ndarray, skin: np.ndarray,
                 lips: np.ndarray, look: SubjectLook) -> np.ndarray:
    """What photographed skin has besides its tone, on the ``skin`` vertices of the
    neutral mesh ``v`` (cm), scaled by ``look.detail`` and laid out by
    ``look.detail_seed``: mottling (plane waves of 0.5-2.5 cm), pores (per-vertex noise;
    the face has ~4 vertices per pixel at 64 px), freckles and moles for some people,
    stubble for some, and make-up-like tones (eye shadow, blush, a lip colour) for some."""
    rng = np.random.default_rng(look.detail_seed)
    a = look.detail
    out = colours.copy()
    n = len(v)
    directions = rng.normal(size=(8, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wavelengths = rng.uniform(0.5, 2.5, 8)
    mottle = np.sin(v @ (directions / wavelengths[:, None]).T * 2 * np.pi
                    + rng.uniform(0, 2 * np.pi, 8)).mean(1)
    pores = rng.normal(0.0, 1.0, n)
    out *= (1.0 + a * skin * (0.08 * mottle + 0.04 * pores))[:, None]

    face = np.flatnonzero(skin)
    if rng.random() < 0.4 and len(face):  # freckles over the nose and cheeks
        centre = lm[30] + [0.0, 1.0, 0.0]
        weights = np.exp(-((v[face] - centre) ** 2).sum(1) / (2 * 3.0 ** 2))
        spots = rng.choice(face, size=int(rng.integers(30, 120)), p=weights / weights.sum())
        out = _spots(out, v, spots, rng.uniform(0.08, 0.2, len(spots)),
                     a * rng.uniform(0.15, 0.35), (0.85, 0.7, 0.55))
    if len(face):  # a few moles anywhere on the face
        moles = rng.choice(face, size=int(rng.integers(0, 4)))
        out = _spots(out, v, moles, rng.uniform(0.1, 0.25, len(moles)),
                     a * rng.uniform(0.3, 0.6), (0.55, 0.4, 0.3))
    if rng.random() < 0.3:  # stubble: below the nose, around the mouth, along the jaw
        beard = skin & (v[:, 1] < lm[33, 1]) & (v[:, 1] > lm[8, 1] - 1.0) & (lips < 0.5)
        density = rng.uniform(0.2, 0.6) * a * np.clip(rng.normal(1.0, 0.5, n), 0, 2)
        stubble = np.clip(density * beard, 0, 1)[:, None]
        out += stubble * (np.asarray(look.hair) - out)
    if rng.random() < 0.4:  # make-up-like tones
        tint = rng.uniform(0.5, 1.1, 3)
        for eye in (lm[36:42], lm[42:48]):  # eye shadow on the upper lid
            d = np.linalg.norm(v[:, :2] - (eye.mean(0)[:2] + [0.0, 0.5]), axis=1)
            lid = skin * _smoothstep((1.2 - d) / 0.6) * (v[:, 1] > eye[:, 1].mean())
            out *= 1.0 - (a * 0.5 * lid)[:, None] * (1.0 - tint)
        blush = sum(np.exp(-((v - lm[i]) ** 2).sum(1) / (2 * 1.8 ** 2)) for i in (2, 14))
        blush_tint = np.array([1.0, rng.uniform(0.7, 0.9), rng.uniform(0.75, 0.95)])
        out *= 1.0 - (a * skin * np.clip(blush, 0, 1))[:, None] * (1.0 - blush_tint)
        lip_colour = rng.uniform([0.5, 0.05, 0.1], [0.9, 0.4, 0.45])
        out += (a * 0.6 * lips)[:, None] * (lip_colour - out)
    return out


def _spots(colours: np.ndarray, v: np.ndarray, centres: np.ndarray, radii: np.ndarray,
           strength: float, tint: tuple[float, float, float]) -> np.ndarray:
    """Darken round spots (``centres``: vertex indices, ``radii`` in cm) towards ``tint``."""
    for centre, radius in zip(centres, radii):
        near = np.flatnonzero(np.abs(v - v[centre]).max(1) < 3 * radius)
        weight = np.exp(-((v[near] - v[centre]) ** 2).sum(1) / (2 * radius ** 2))
        colours[near] *= 1.0 - strength * weight[:, None] * (1.0 - np.asarray(tint))
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
