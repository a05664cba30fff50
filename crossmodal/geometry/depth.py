"""Surface normals from a depth map (a Blender tutorial's recipe, corrected for our frame).

The tutorial "Generate Depth and Normal Maps with Blender" (docs/design.md §10) takes, in
its ``dmap2norm``, 5x5 Sobel derivatives ``zx, zy`` of a height map and writes
``n ∝ (-zx, -zy, 1)``. Two things in it do not carry over to this package:

* its derivatives are in image axes (row index downwards) of a *height*, while our depth
  grows *away* from the camera and our normals have +y up (:mod:`crossmodal.normals`);
* ``cv2.Sobel`` is unnormalised: on the ramp ``f(u) = u`` a ksize-3 kernel answers 8 and a
  ksize-5 kernel 128, so the tutorial's ``(-zx, -zy, 1)`` mixes a derivative scaled by 128
  with a unit z and flattens every slope by that factor.

Orthographic maths. A pixel ``(u, v)`` (u right, v down, spacing ``s = pixel_size``) sees
the camera-space point ``P = (u s, -v s, -D)``. Its tangents are ``P_u = (s, 0, -D_u)`` and
``P_v = (0, -s, -D_v)`` and ``P_v x P_u = s (D_u, -D_v, s)``, which has a positive z for
any depth map, so ``n ∝ (D_u, -D_v, s)`` with ``D_u, D_v`` the per-pixel derivatives.
(Equivalently: the height ``z = -D`` over ``(x, y) = (u s, -v s)`` has ``z_x = -D_u / s``
and ``z_y = D_v / s``, and ``n ∝ (-z_x, -z_y, 1)``.) A plane ``D = a u + b v`` gets
``n ∝ (a, -b, s)``, the normal :func:`crossmodal.shapes.plane` gives.

Perspective maths. The back-projected point is ``P = D ((u - cx) / fx, -(v - cy) / fy, -1)``
with ``D`` the z-depth, and again ``n ∝ P_v x P_u``: near the optical axis ``P_u ≈
(D / fx, 0, -D_u)`` and ``P_v ≈ (0, -D / fy, -D_v)``, the orthographic case with
``s = D / f``, so the same order makes the normal face the camera.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..normals import _as_mask, normalize
from ..render.camera import Intrinsics

__all__ = ["depth_to_normals"]

SOBEL_SIZES = (3, 5)


def _sobel_derivatives(image: np.ndarray, ksize: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel derivatives ``(d/du, d/dv)`` of a finite float ``(H, W)`` image by Sobel.

    ``cv2.Sobel`` returns the derivative times the kernel's gain (8 for ksize 3, 128 for
    ksize 5); the gain is read from OpenCV's own kernels, the response of the derivative
    kernel to a unit ramp times the sum of the smoothing kernel, and divided out, so a
    ramp of slope ``a`` gives exactly ``a``. Values within ``ksize // 2`` of the border
    see OpenCV's reflected border and are not derivatives; callers mask them out.
    """
    deriv, smooth = (k.ravel() for k in cv2.getDerivKernels(1, 0, ksize, normalize=False))
    offsets = np.arange(ksize) - ksize // 2
    scale = 1.0 / (float(deriv @ offsets) * float(smooth.sum()))
    image = np.asarray(image, dtype=np.float64)
    du = cv2.Sobel(image, cv2.CV_64F, 1, 0, ksize=ksize, scale=scale)
    dv = cv2.Sobel(image, cv2.CV_64F, 0, 1, ksize=ksize, scale=scale)
    return du, dv


def depth_to_normals(
    depth: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    intrinsics: Intrinsics | None = None,
    pixel_size: float = 1.0,
    ksize: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """Normals of a depth map by Sobel derivatives (see the module docstring).

    Args:
        depth: ``(H, W)`` depth, distance along the viewing axis growing away from the
            camera (:mod:`crossmodal.shapes`). Values outside ``mask`` are ignored.
        mask: optional ``(H, W)`` mask of the surface (default: every finite pixel).
        intrinsics: pinhole camera of a z-depth map; ``None`` for an orthographic one.
        pixel_size: orthographic only: pixel spacing in the units of ``depth``. Ignored
            with ``intrinsics`` (the back-projection fixes the scale).
        ksize: Sobel aperture, 3 or 5.

    Returns:
        ``(normals, valid)``: float32 ``(H, W, 3)`` unit normals in our camera frame, zero
        where invalid, and the bool ``(H, W)`` valid mask: pixels whose whole
        ``ksize x ksize`` Sobel footprint lies inside the image, inside ``mask`` and on
        finite depth (positive depth too with ``intrinsics``), so that no derivative mixes
        the surface with the background at a silhouette.

    Raises:
        InputError: a depth map that is not 2-D, a mask of another shape, a ksize other
            than 3 or 5 or a non-positive pixel size.
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise InputError(f"depth map must be 2-D (H, W), got shape {depth.shape}; pass a "
                         f"single-channel depth image")
    if ksize not in SOBEL_SIZES:
        raise InputError(f"Sobel ksize must be one of {SOBEL_SIZES}, got {ksize}")
    if not pixel_size > 0:
        raise InputError(f"pixel_size must be positive, got {pixel_size}")
    user_mask = _as_mask(mask, depth.shape, "depth map")
    good = np.isfinite(depth)
    if intrinsics is not None:
        good &= depth > 0  # a visible point lies in front of a pinhole camera
    if user_mask is not None:
        good &= user_mask
    # border_value=0 counts the outside of the image as background, so border pixels
    # whose footprint reaches OpenCV's reflected border are invalid too.
    valid = ndimage.binary_erosion(good, np.ones((ksize, ksize), bool), border_value=0)
    # Background values only reach invalid pixels, but they must be finite so that
    # NaN/inf do not spread through cv2.Sobel's arithmetic.
    depth = np.where(good, depth, 0.0)

    if intrinsics is None:
        d_u, d_v = _sobel_derivatives(depth, ksize)
        vectors = np.stack([d_u, -d_v, np.full_like(depth, pixel_size)], axis=-1)
    else:
        h, w = depth.shape
        v, u = np.mgrid[0:h, 0:w].astype(np.float64)
        points = depth[..., None] * np.stack(
            [(u - intrinsics.cx) / intrinsics.fx, -(v - intrinsics.cy) / intrinsics.fy,
             -np.ones_like(u)], axis=-1)
        tangents = [_sobel_derivatives(points[..., c], ksize) for c in range(3)]
        p_u = np.stack([t[0] for t in tangents], axis=-1)
        p_v = np.stack([t[1] for t in tangents], axis=-1)
        vectors = np.cross(p_v, p_u)
    return normalize(vectors, valid)
