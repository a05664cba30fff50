"""Calibrated Lambertian photometric stereo: normals and albedo from images under known lights.

A Lambertian pixel of normal ``n`` and albedo ``rho`` lit by a directional light ``l``
(unit direction times intensity) records ``I = rho * max(n . l, 0)``. With K >= 3 lights
that see the pixel, ``g = rho * n`` solves the linear system ``L g = I`` (``L`` the
``(K, 3)`` light matrix), in the least-squares sense when K > 3 (Woodham, 1980):
``g = pinv(L) I``, ``n = g / |g|``, ``rho = |g|``.

Everything is in our camera frame (docs/design.md §2: +x right, +y up, +z towards the
camera), lights pointing from the surface towards the light, as
:class:`crossmodal.geometry.Light`.

Shadows and saturation: a measurement at or below ``shadow`` (the pixel does not see the
light, or barely: ``max(n . l, 0)`` clips there, so it does not obey the linear model) or
at or above ``saturation`` (clipped by the sensor) is dropped, and the pixel is solved
from the remaining images when at least 3 remain and their lights span 3 dimensions well
(condition number below :data:`MAX_CONDITION`). Otherwise the pixel is invalid: two
equations cannot fix a normal. A solution facing away from the camera (``n_z <= 0``, which
no visible surface has) or of zero albedo is invalid too.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

__all__ = ["LUMINANCE", "MAX_CONDITION", "photometric_stereo"]

#: Rec. 709 luminance weights: the grey image of linear RGB that the normals are solved on.
LUMINANCE = np.array([0.2126, 0.7152, 0.0722])
#: The largest condition number (largest over smallest singular value) of the light matrix
#: of the images a pixel is solved from; beyond it the lights are nearly coplanar with the
#: origin and image noise is amplified so much that the normal is not trusted.
MAX_CONDITION = 100.0


def _as_unit_float(images: np.ndarray) -> np.ndarray:
    """Integer images scaled by their dtype's maximum to [0, 1]; floats as they are."""
    if np.issubdtype(images.dtype, np.integer):
        return images.astype(np.float64) / np.iinfo(images.dtype).max
    if not np.issubdtype(images.dtype, np.floating):
        raise InputError(f"photometric stereo images must be numbers, got dtype {images.dtype}")
    return images.astype(np.float64, copy=False)


def _light_matrix(lights: np.ndarray, intensities: np.ndarray | None, k: int) -> np.ndarray:
    """``(K, 3)`` unit directions times intensities, after checking them."""
    lights = np.asarray(lights, dtype=np.float64)
    if lights.shape != (k, 3):
        raise InputError(f"photometric stereo needs one light direction (x, y, z) per image: "
                         f"lights of shape (K, 3) = ({k}, 3), got shape {lights.shape}")
    length = np.linalg.norm(lights, axis=1)
    if not (np.isfinite(lights).all() and (length > 0).all()):
        raise InputError(f"light directions must be finite non-zero vectors, got "
                         f"{lights.tolist()}")
    scale = np.ones(k) if intensities is None else np.asarray(intensities, dtype=np.float64)
    if scale.shape != (k,) or not (np.isfinite(scale).all() and (scale > 0).all()):
        raise InputError(f"light intensities must be {k} positive numbers (one per image), "
                         f"got {np.asarray(intensities).tolist()}")
    matrix = lights / length[:, None] * scale[:, None]
    singular = np.linalg.svd(matrix, compute_uv=False)
    if singular[-1] <= 1e-6 * singular[0]:
        raise InputError(f"the light directions {np.round(lights, 4).tolist()} lie in a plane "
                         f"through the origin (or on one line): they cannot fix a 3D normal; "
                         f"give lights from at least 3 independent directions")
    return matrix


def photometric_stereo(
    images: np.ndarray,
    lights: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    intensities: np.ndarray | None = None,
    shadow: float = 0.02,
    saturation: float = 0.98,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel normals and albedo from K >= 3 images of a Lambertian surface.

    Args:
        images: ``(K, H, W)`` grey or ``(K, H, W, 3)`` linear RGB images, float in [0, 1]
            or uint8/uint16 (scaled to [0, 1]). Colour images are solved on their
            luminance (:data:`LUMINANCE`) for the normals; the albedo is then fitted per
            channel.
        lights: ``(K, 3)`` direction of each image's light, from the surface towards the
            light, in our camera frame; any length (normalised here).
        mask: optional bool ``(H, W)``: pixels outside it are invalid.
        intensities: optional ``(K,)`` positive intensity of each light (default 1).
        shadow: a measurement at or below this (in [0, 1] units) is taken as shadowed.
        saturation: a measurement at or above this (any channel) is taken as clipped.

    Returns:
        ``(normals, albedo, valid)``: float32 ``(H, W, 3)`` unit normals in our convention,
        zero where invalid; float32 albedo ``(H, W)`` (grey images) or ``(H, W, 3)``, zero
        where invalid; bool ``(H, W)`` valid pixels.

    Raises:
        InputError: fewer than 3 images, lights not ``(K, 3)`` or spanning fewer than 3
            dimensions, intensities not ``(K,)`` positive, a mask of another shape,
            images not ``(K, H, W)`` or ``(K, H, W, 3)``.
    """
    images = np.asarray(images)
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] != 3):
        raise InputError(f"photometric stereo images must be (K, H, W) grey or (K, H, W, 3) "
                         f"RGB, got shape {images.shape}")
    k, height, width = images.shape[:3]
    if k < 3:
        raise InputError(f"photometric stereo needs at least 3 images under different "
                         f"lights, got {k}")
    matrix = _light_matrix(lights, intensities, k)
    values = _as_unit_float(images)
    colour = values.ndim == 4
    grey = values @ LUMINANCE if colour else values
    if mask is None:
        inside = np.ones((height, width), dtype=bool)
    else:
        inside = np.asarray(mask, dtype=bool)
        if inside.shape != (height, width):
            raise InputError(f"mask of shape {inside.shape} does not match the images' "
                             f"{(height, width)}")

    # (N, K) measurements of the N pixels inside the mask, and which of them to use.
    grey_px = grey[:, inside].T
    clipped = (values.max(axis=-1) if colour else values)[:, inside].T >= saturation
    usable = (grey_px > shadow) & ~clipped
    # Pixels using the same images share one pseudo-inverse: at most 2^K of them.
    subset = usable @ (1 << np.arange(k))
    g = np.zeros((len(grey_px), 3))
    for code in np.unique(subset):
        used = (code >> np.arange(k)) & 1 == 1
        if used.sum() < 3:
            continue
        singular = np.linalg.svd(matrix[used], compute_uv=False)
        if singular[0] > MAX_CONDITION * singular[-1]:
            continue
        rows = subset == code
        g[rows] = grey_px[np.ix_(rows, used)] @ np.linalg.pinv(matrix[used]).T

    rho = np.linalg.norm(g, axis=1)
    solved = (rho > 1e-12) & (g[:, 2] > 0)
    n = np.zeros_like(g)
    n[solved] = g[solved] / rho[solved, None]

    normals = np.zeros((height, width, 3), np.float32)
    normals[inside] = n
    valid = np.zeros((height, width), bool)
    valid[inside] = solved
    if colour:
        # Per channel: the least-squares rho_c of I_c = rho_c * s with s = n . l over the
        # images used, the normal held fixed.
        shading = np.where(usable, n @ matrix.T, 0.0)
        px = values[:, inside].transpose(1, 0, 2)  # (N, K, 3)
        energy = (shading**2).sum(axis=1)
        fitted = np.einsum("nk,nkc->nc", shading, px) / np.maximum(energy, 1e-12)[:, None]
        albedo = np.zeros((height, width, 3), np.float32)
        albedo[inside] = np.where(solved[:, None], fitted, 0.0)
    else:
        albedo = np.zeros((height, width), np.float32)
        albedo[inside] = np.where(solved, rho, 0.0)
    return normals, albedo, valid
