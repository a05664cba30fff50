"""Cameras of the renderer: pixel rays and projection in our camera frame.

The frame is the package's (:mod:`crossmodal.normals`): +x right, +y up, +z towards the
viewer; the camera looks along -z, so the scene lies at negative z. Pixels follow
:mod:`crossmodal.shapes`: ``u`` = column (right), ``v`` = row (down), pixel centres at
integer coordinates. Depth is the z-depth ``-z`` of a camera-space point.

A perspective camera is a pinhole at the origin with OpenCV-style :class:`Intrinsics`; the
ray of pixel ``(u, v)`` has direction ``((u - cx) / fx, -(v - cy) / fy, -1)``. An
orthographic camera (``intrinsics=None``) maps ``ortho_scale`` world units to one pixel:
the ray of ``(u, v)`` runs along -z through ``x = (u - cx) * s, y = -(v - cy) * s`` with
the principal point at the image centre, ``cx = (W - 1) / 2, cy = (H - 1) / 2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

__all__ = ["Camera", "Intrinsics"]


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels (OpenCV ``K``: u = fx * X / Z + cx, v = fy * Y / Z + cy
    with OpenCV's Y down and Z forward)."""

    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def centred(cls, size: int, fov_deg: float) -> Intrinsics:
        """Square image of ``size`` pixels, principal point at the centre."""
        f = 0.5 * size / np.tan(np.radians(fov_deg) / 2)
        c = (size - 1) / 2
        return cls(f, f, c, c)


@dataclass(frozen=True)
class Camera:
    """A perspective (``intrinsics`` given) or orthographic (``intrinsics=None``) camera.

    Attributes:
        width, height: image size in pixels.
        intrinsics: pinhole intrinsics in pixels, or None for an orthographic camera.
        ortho_scale: orthographic only: world units per pixel.
    """

    width: int
    height: int
    intrinsics: Intrinsics | None = None
    ortho_scale: float = 1.0

    def __post_init__(self) -> None:
        if int(self.width) < 1 or int(self.height) < 1:
            raise InputError(f"camera size must be positive, got {self.width}x{self.height}")
        if self.intrinsics is None and not (np.isfinite(self.ortho_scale)
                                            and self.ortho_scale > 0):
            raise InputError(f"ortho_scale must be a positive number, got {self.ortho_scale}")

    @classmethod
    def perspective(cls, size: int, fov_deg: float) -> Camera:
        """Square pinhole camera of ``size`` pixels and field of view ``fov_deg`` (degrees,
        across the image), principal point at the centre (:meth:`Intrinsics.centred`)."""
        return cls(size, size, Intrinsics.centred(size, fov_deg))

    @property
    def is_perspective(self) -> bool:
        return self.intrinsics is not None

    def _centre(self) -> tuple[float, float, float, float]:
        """``(fx, fy, cx, cy)``; orthographic: ``fx = fy = 1 / ortho_scale``."""
        if self.intrinsics is not None:
            k = self.intrinsics
            return k.fx, k.fy, k.cx, k.cy
        f = 1.0 / self.ortho_scale
        return f, f, (self.width - 1) / 2, (self.height - 1) / 2

    def pixel_grid(self) -> np.ndarray:
        """float64 ``(H * W, 2)`` pixel centres ``(u, v)`` in row-major order (the order
        of :meth:`rays` and of a flattened ``(H, W)`` image)."""
        v, u = np.mgrid[0:self.height, 0:self.width].astype(np.float64)
        return np.stack([u.ravel(), v.ravel()], axis=-1)

    def unproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Camera-space points at pixel coordinates ``uv`` (N, 2) and z-depth ``depth``
        (N,): the inverse of :meth:`project`. Returns float64 ``(N, 3)``."""
        uv = np.asarray(uv, dtype=np.float64)
        depth = np.asarray(depth, dtype=np.float64)
        fx, fy, cx, cy = self._centre()
        x, y = (uv[..., 0] - cx) / fx, -(uv[..., 1] - cy) / fy
        if self.is_perspective:
            # The ray direction (x, y, -1) reaches z-depth d at d times itself.
            return np.stack([x * depth, y * depth, -depth], axis=-1)
        return np.stack([x, y, -depth], axis=-1)

    def rays(self, *, start_z: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """One ray per pixel, in camera space, row-major (pixel ``(u, v)`` is row
        ``v * W + u``).

        Perspective: every ray starts at the pinhole (the origin) with direction
        ``((u - cx) / fx, -(v - cy) / fy, -1)``, scaled to z = -1 so that the point at
        ``origin + t * direction`` has z-depth ``t``. Orthographic: rays start on the plane
        ``z = start_z`` (ignored for perspective) with direction (0, 0, -1); they see what
        lies below that plane, so pass a ``start_z`` in front of the scene.

        Returns:
            ``(origins, directions)``, float64 ``(H * W, 3)`` each.
        """
        uv = self.pixel_grid()
        if self.is_perspective:
            directions = self.unproject(uv, np.ones(len(uv)))
            return np.zeros_like(directions), directions
        origins = self.unproject(uv, np.full(len(uv), -float(start_z)))
        directions = np.broadcast_to(np.array([0.0, 0.0, -1.0]), origins.shape).copy()
        return origins, directions

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates and z-depth of camera-space points, the exact inverse of the
        ray construction (:meth:`rays`, :meth:`unproject`).

        Args:
            points: ``(N, 3)`` camera-space points.

        Returns:
            ``(uv, depth)``: float64 ``(N, 2)`` pixel coordinates ``(u, v)`` (not rounded,
            possibly outside the image) and float64 ``(N,)`` depth ``-z``. Perspective:
            points with depth <= 0 are at or behind the pinhole and get ``uv = nan``.
        """
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 3:
            raise InputError(f"points must be (N, 3), got shape {points.shape}")
        fx, fy, cx, cy = self._centre()
        depth = -points[:, 2]
        x, y = points[:, 0], points[:, 1]
        if self.is_perspective:
            in_front = depth > 0
            safe = np.where(in_front, depth, 1.0)
            x = np.where(in_front, x / safe, np.nan)
            y = np.where(in_front, y / safe, np.nan)
        uv = np.stack([cx + fx * x, cy - fy * y], axis=-1)
        return uv, depth
