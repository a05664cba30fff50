"""Analytic surfaces with exact depth and normals, for tests, demos and figures.

Pixel grid: OpenCV image coordinates, ``u`` = column (right), ``v`` = row (down), pixel
centres at integer coordinates. Normals follow the package convention (+x right, +y up,
+z towards the camera). **Depth** is the distance along the viewing axis, positive and
growing away from the camera (``depth = -z`` of the camera-space point).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .render.camera import Intrinsics

__all__ = ["Surface", "face_relief", "orthographic_sphere", "perspective_sphere", "plane"]


@dataclass
class Surface:
    """A rendered analytic surface.

    Attributes:
        depth: float64 ``(H, W)``, 0 outside the mask.
        normals: float32 ``(H, W, 3)`` unit normals, (0, 0, 0) outside the mask.
        mask: bool ``(H, W)``.
    """

    depth: np.ndarray
    normals: np.ndarray
    mask: np.ndarray


def _grid(size: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = (size, size) if np.isscalar(size) else size
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    return u, v


def orthographic_sphere(
    size: int | tuple[int, int],
    radius: float | None = None,
    center: tuple[float, float] | None = None,
    distance: float | None = None,
) -> Surface:
    """A sphere seen by an orthographic camera, in pixel units.

    Args:
        size: image side, or ``(H, W)``.
        radius: in pixels (default: 40% of the smaller side).
        center: ``(u, v)`` of the sphere's centre (default: image centre).
        distance: depth of the sphere's centre (default: ``3 * radius``).
    """
    u, v = _grid(size)
    h, w = u.shape
    r = 0.4 * min(h, w) if radius is None else float(radius)
    cu, cv = ((w - 1) / 2, (h - 1) / 2) if center is None else center
    d0 = 3.0 * r if distance is None else float(distance)
    x, y = u - cu, -(v - cv)
    inside = x**2 + y**2 < r**2
    height = np.sqrt(np.clip(r**2 - x**2 - y**2, 0.0, None))
    normals = np.stack([x, y, height], axis=-1) / r
    normals[~inside] = 0.0
    depth = np.where(inside, d0 - height, 0.0)
    return Surface(depth, normals.astype(np.float32), inside)


def perspective_sphere(
    size: int | tuple[int, int], intrinsics: Intrinsics, radius: float, distance: float
) -> Surface:
    """A sphere of ``radius`` centred on the optical axis at ``distance``, pinhole camera.

    Depth is the z-depth (along the optical axis) of the first ray hit, in the units of
    ``radius``.
    """
    u, v = _grid(size)
    # Ray directions in our camera frame (y up, z towards the viewer), scaled to z = -1.
    d = np.stack([(u - intrinsics.cx) / intrinsics.fx,
                  -(v - intrinsics.cy) / intrinsics.fy,
                  -np.ones_like(u)], axis=-1)
    c = np.array([0.0, 0.0, -distance])
    # |t d - c|^2 = r^2  ->  t^2 (d.d) - 2 t (d.c) + (c.c - r^2) = 0; the nearer root.
    a = (d * d).sum(-1)
    b = (d @ c)
    disc = b**2 - a * (c @ c - radius**2)
    inside = disc > 0
    t = (b - np.sqrt(np.clip(disc, 0.0, None))) / a
    points = t[..., None] * d
    normals = (points - c) / radius
    normals[~inside] = 0.0
    depth = np.where(inside, t, 0.0)  # z-depth: points have z = -t
    return Surface(depth, normals.astype(np.float32), inside)


def plane(
    size: int | tuple[int, int], slope: tuple[float, float] = (0.3, -0.2), offset: float = 100.0
) -> Surface:
    """An orthographic tilted plane ``depth = offset + sx * u + sy * v`` (pixel units).

    Its normal is constant: with height ``z = -depth`` over ``(x, y) = (u, -v)``,
    n is proportional to ``(sx, -sy, 1)``.
    """
    u, v = _grid(size)
    sx, sy = slope
    depth = offset + sx * u + sy * v
    n = np.array([sx, -sy, 1.0])
    n /= np.linalg.norm(n)
    normals = np.broadcast_to(n, u.shape + (3,)).astype(np.float32).copy()
    return Surface(depth, normals, np.ones(u.shape, dtype=bool))


# (u, v, amplitude, sigma_u, sigma_v) of the Gaussian features of :func:`face_relief`, in
# units of the image width, v downwards; a negative amplitude is a hollow.
_FACE_FEATURES = (
    (0.0, 0.02, 0.10, 0.045, 0.11),  # nose
    (-0.12, -0.08, -0.035, 0.06, 0.045),  # eye sockets
    (0.12, -0.08, -0.035, 0.06, 0.045),
    (0.0, -0.16, 0.025, 0.20, 0.035),  # brow ridge
    (-0.15, 0.10, 0.025, 0.07, 0.07),  # cheeks
    (0.15, 0.10, 0.025, 0.07, 0.07),
    (0.0, 0.22, 0.02, 0.08, 0.025),  # lips
)


def face_relief(size: int, distance: float | None = None) -> Surface:
    """A face-like orthographic relief with exact normals: a half-ellipsoid head with
    Gaussian nose, eye sockets, brow ridge, cheeks and lips (pixel units).

    Height ``h(x, y)`` (towards the camera) is analytic, so its normal
    ``(-dh/dx, -dh/dy, 1) / |.|`` is exact; depth is ``distance - h``.
    """
    u, v = _grid(size)
    c = (size - 1) / 2
    a, b, thickness = 0.34 * size, 0.44 * size, 0.30 * size
    x, y = u - c, -(v - c)
    r2 = (x / a) ** 2 + (y / b) ** 2
    inside = r2 < 1.0
    root = np.sqrt(np.clip(1.0 - r2, 1e-12, None))
    h = thickness * root
    hx = -thickness * x / (a**2 * root)
    hy = -thickness * y / (b**2 * root)
    for fu, fv, amp, su, sv in _FACE_FEATURES:
        dx, dy = x - fu * size, y + fv * size
        su, sv = su * size, sv * size
        g = amp * size * np.exp(-0.5 * ((dx / su) ** 2 + (dy / sv) ** 2))
        h += g
        hx -= g * dx / su**2
        hy -= g * dy / sv**2
    normals = np.stack([-hx, -hy, np.ones_like(h)], axis=-1)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    normals[~inside] = 0.0
    d0 = 2.0 * thickness if distance is None else float(distance)
    depth = np.where(inside, d0 - h, 0.0)
    return Surface(depth, normals.astype(np.float32), inside)
