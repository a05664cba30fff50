"""Depth from a normal map: orthographic normal integration.

The inverse of :func:`crossmodal.geometry.depth_to_normals` in its orthographic form,
``n ∝ (D_u, -D_v, s)`` (``s`` the pixel size), so the depth gradient a normal implies is

    D_u = s n_x / n_z,    D_v = -s n_y / n_z    (per pixel, u right, v down).

A normal map fixes depth only up to one additive constant per connected piece of surface;
this module sets each constant so that the piece's mean depth is 0.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import linalg as sparse_linalg

from ..errors import InputError
from ..normals import _as_mask, normalize

__all__ = ["INTEGRATION_METHODS", "MIN_NZ", "integrate_normals"]

INTEGRATION_METHODS = ("poisson", "fc")

#: Normals with ``n_z`` below this are clipped to it before their gradient is taken: at a
#: silhouette ``n_z -> 0`` and ``n_x / n_z`` explodes (or flips sign for a normal that
#: faces away), which would let a few rim pixels dominate the least-squares fit. 0.1 caps
#: the slope at about 10 pixel sizes per pixel (84 degrees from the viewing axis); of
#: 0.01, 0.05, 0.1 and 0.2 it gives the smallest error on a 128-pixel sphere.
MIN_NZ = 0.1


def integrate_normals(
    normals: np.ndarray,
    mask: np.ndarray | None,
    *,
    pixel_size: float = 1.0,
    method: str = "poisson",
) -> np.ndarray:
    """Integrate an orthographic normal map into depth.

    Args:
        normals: ``(H, W, 3)`` normals in our camera frame, of any length.
        mask: ``(H, W)`` region to integrate; ``None`` for every pixel with a valid normal.
            Mask pixels whose normal is zero or non-finite are left out, as if outside.
        pixel_size: pixel spacing in the units wanted for the depth.
        method: ``"poisson"``: sparse least squares on forward differences between
            4-neighbouring mask pixels, each edge asked to match the mean of its two
            pixels' gradients (exact for a plane); each 4-connected component of the mask
            gets its own constant, set so that its mean depth is 0, and an isolated pixel
            gets depth 0. ``"fc"``: Frankot-Chellappa, a Fourier-domain projection of the
            gradient field onto integrable surfaces over the mask's bounding box mirrored
            across its edges (so no periodic wrap-around), with zero gradient (a flat
            surface) assumed at its non-mask pixels; one constant for the whole mask,
            again mean 0. Faster but smoother and biased near silhouettes (about twice
            the Poisson error on a sphere); "poisson" is the accurate one.

    Returns:
        float64 ``(H, W)`` depth (growing away from the camera, :mod:`crossmodal.shapes`),
        mean 0 over each component (hence over the mask), NaN outside the integrated
        pixels.

    Raises:
        InputError: normals not ``(H, W, 3)``, a mask of another shape, an empty mask (or
            one with no valid normal), a non-positive pixel size or an unknown method.
    """
    normals = np.asarray(normals)
    if normals.ndim != 3 or normals.shape[-1] != 3:
        raise InputError(f"normal map must be (H, W, 3), got shape {normals.shape}")
    if method not in INTEGRATION_METHODS:
        raise InputError(f"unknown integration method {method!r}; valid: "
                         f"{', '.join(INTEGRATION_METHODS)}")
    if not pixel_size > 0:
        raise InputError(f"pixel_size must be positive, got {pixel_size}")
    user_mask = _as_mask(mask, normals.shape[:2], "normal map")
    _, valid = normalize(normals, user_mask)
    if not valid.any():
        raise InputError("nothing to integrate: the mask is empty or holds no valid normal; "
                         "pass the mask of the surface")
    # The gradient is a ratio of components, so the vectors need no normalising; staying
    # in float64 (normalize() returns float32) keeps a plane exact to ~1e-12.
    vectors = np.where(valid[..., None], normals, 0.0).astype(np.float64)
    length = np.where(valid, np.linalg.norm(vectors, axis=-1), 1.0)
    n_z = np.maximum(vectors[..., 2], MIN_NZ * length)  # > 0 everywhere; 0 / n_z outside
    grad_u = pixel_size * vectors[..., 0] / n_z
    grad_v = -pixel_size * vectors[..., 1] / n_z
    solve = _poisson if method == "poisson" else _frankot_chellappa
    depth = np.full(valid.shape, np.nan)
    depth[valid] = solve(grad_u, grad_v, valid)
    return depth


def _poisson(grad_u: np.ndarray, grad_v: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Least-squares depth at the ``valid`` pixels (row-major order), mean 0 per component."""
    index = np.full(valid.shape, -1, dtype=np.int64)
    index[valid] = np.arange(int(valid.sum()))
    starts, ends, rhs = [], [], []
    # One equation D[b] - D[a] = (g[a] + g[b]) / 2 per edge a -> b between mask neighbours:
    # the trapezoidal rule, exact wherever the gradient is linear along the edge.
    for axis, grad in ((1, grad_u), (0, grad_v)):
        a = (slice(None), slice(None, -1)) if axis == 1 else (slice(None, -1), slice(None))
        b = (slice(None), slice(1, None)) if axis == 1 else (slice(1, None), slice(None))
        edge = valid[a] & valid[b]
        starts.append(index[a][edge])
        ends.append(index[b][edge])
        rhs.append(0.5 * (grad[a][edge] + grad[b][edge]))
    start, end, rhs = (np.concatenate(x) for x in (starts, ends, rhs))
    n_pix, n_edge = int(valid.sum()), len(rhs)
    edges = np.arange(n_edge)
    diff = sparse.csr_matrix(
        (np.r_[-np.ones(n_edge), np.ones(n_edge)], (np.r_[edges, edges], np.r_[start, end])),
        shape=(n_edge, n_pix))
    laplacian = (diff.T @ diff).tocsc()
    divergence = diff.T @ rhs

    # The Laplacian is singular, one null vector (a constant) per 4-connected component:
    # pin the first pixel of each component to 0, solve the rest exactly, then shift
    # every component to mean 0.
    labels, n_comp = ndimage.label(valid)  # default structure: 4-connectivity
    labels = labels[valid]
    pinned = np.zeros(n_pix, dtype=bool)
    pinned[np.unique(labels, return_index=True)[1]] = True
    depth = np.zeros(n_pix)
    free = ~pinned
    if free.any():
        depth[free] = sparse_linalg.spsolve(laplacian[free][:, free], divergence[free])
    means = np.bincount(labels, weights=depth, minlength=n_comp + 1)
    means /= np.maximum(np.bincount(labels, minlength=n_comp + 1), 1)
    return depth - means[labels]


def _frankot_chellappa(grad_u: np.ndarray, grad_v: np.ndarray,
                       valid: np.ndarray) -> np.ndarray:
    """Frankot-Chellappa depth at the ``valid`` pixels over their bounding box, mean 0."""
    vs, us = np.nonzero(valid)
    box = (slice(vs.min(), vs.max() + 1), slice(us.min(), us.max() + 1))
    p, q = grad_u[box], grad_v[box]
    # The FFT assumes a periodic surface, which a tilted plane or a surface cut by the box
    # is not (a 21% error on a plane). Mirroring the depth across the box edges makes it
    # periodic and continuous; d/du of the mirror image is -p, d/dv is -q.
    p = np.block([[p, -p[:, ::-1]], [p[::-1], -p[::-1, ::-1]]])
    q = np.block([[q, q[:, ::-1]], [-q[::-1], -q[::-1, ::-1]]])
    h, w = p.shape
    # The forward FFT turns d/du into multiplication by j * w_u; the least-squares
    # integrable surface is Z = -j (w_u P + w_v Q) / (w_u^2 + w_v^2).
    w_u = 2 * np.pi * np.fft.fftfreq(w)[None, :]
    w_v = 2 * np.pi * np.fft.fftfreq(h)[:, None]
    denom = w_u**2 + w_v**2
    denom[0, 0] = 1.0  # the mean (DC term) is free; it is set to 0 below
    z_hat = -1j * (w_u * np.fft.fft2(p) + w_v * np.fft.fft2(q)) / denom
    z_hat[0, 0] = 0.0
    depth = np.real(np.fft.ifft2(z_hat))[: h // 2, : w // 2][valid[box]]
    return depth - depth.mean()
