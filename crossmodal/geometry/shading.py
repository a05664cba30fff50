"""Relighting a normal map: Lambert diffuse plus Blinn-Phong specular, under directional
lights and a soft environment.

Normal maps serve relighting and appearance editing (docs/design.md §10): a renderer only
needs the normal at each pixel to tell how much light it reflects. :func:`shade` is that
renderer for an orthographic camera looking along -z (the viewer sits at +z), in our
camera frame (+x right, +y up, +z towards the camera); :func:`relight_views` renders one
normal map under a ring of lights, to see its shape at a glance.

An environment (light arriving from every direction: sky, walls, a lit room) is given by
the 9 spherical-harmonic coefficients per colour channel of its radiance, bands 0-2: for
a Lambertian surface the irradiance depends on those alone (Ramamoorthi and Hanrahan, "An
Efficient Representation for Irradiance Environment Maps", SIGGRAPH 2001, eq. 13), so
:func:`sh_irradiance` is exact for such a surface, whatever higher bands the real
environment has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..normals import normalize

__all__ = ["SH_BASIS_SIZE", "Light", "relight_views", "shade", "sh_irradiance"]

#: Spherical-harmonic coefficients of an environment per colour channel (bands 0-2).
SH_BASIS_SIZE = 9
# Ramamoorthi and Hanrahan (2001), eq. 13.
_C1, _C2, _C3, _C4, _C5 = 0.429043, 0.511664, 0.743125, 0.886227, 0.247708


def _unit(vector, what: str) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    length = np.linalg.norm(vector) if vector.shape == (3,) else 0.0
    if not (np.isfinite(length) and length > 0):
        raise InputError(f"{what} must be a finite non-zero 3-vector, got {vector.tolist()}")
    return vector / length


@dataclass(frozen=True)
class Light:
    """A directional light.

    Attributes:
        direction: from the surface towards the light, in our camera frame; stored
            normalised (``Light((0, 0, 2)).direction == (0.0, 0.0, 1.0)``). (0, 0, 1) is
            a light at the camera.
        color: linear RGB of the light.
        intensity: scale applied to ``color``.
    """

    direction: tuple[float, float, float]
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    intensity: float = 1.0

    def __post_init__(self) -> None:
        # Frozen: the normalised direction is written once, here.
        unit = _unit(self.direction, "light direction")
        object.__setattr__(self, "direction", tuple(float(x) for x in unit))
        if np.shape(self.color) != (3,):
            raise InputError(f"light color must be 3 floats (RGB), got {self.color}")
        object.__setattr__(self, "color", tuple(float(x) for x in self.color))


def shade(
    normals: np.ndarray,
    lights: Light | Sequence[Light],
    *,
    albedo: float | np.ndarray | None = None,
    ambient: float = 0.1,
    specular: float = 0.0,
    shininess: float = 32.0,
    mask: np.ndarray | None = None,
    view: tuple[float, float, float] = (0.0, 0.0, 1.0),
    environment: np.ndarray | None = None,
    fresnel: float | None = None,
) -> np.ndarray:
    """Render a normal map under directional lights and an optional environment.

    Each valid pixel gets::

        (ambient + E(n) / pi) * albedo + sum over lights of intensity * color * (
            albedo * max(n.l, 0) + specular * F * max(n.h, 0) ** shininess * [n.l > 0])

    with ``h = normalize(l + view)`` the Blinn-Phong half vector, ``E`` the environment's
    irradiance (:func:`sh_irradiance`, 0 without one) and ``F`` 1, or with ``fresnel`` =
    F0 Schlick's reflectance relative to normal incidence,
    ``(F0 + (1 - F0) (1 - h.view)^5) / F0``: highlights brighten towards grazing angles
    (skin: F0 ~ 0.028), and ``specular`` stays the weight at normal incidence. The
    specular term is white (not multiplied by albedo) and switched off for a light behind
    the surface.

    Args:
        normals: ``(H, W, 3)`` normals in our frame; renormalised, zero vectors invalid.
        lights: one :class:`Light` or a sequence of them.
        albedo: diffuse reflectance: a scalar, an RGB ``(3,)`` or an ``(H, W, 3)`` image
            (default 1).
        ambient: ambient light, scaled by albedo.
        specular: specular weight (0 for a purely Lambertian surface).
        shininess: Blinn-Phong exponent.
        mask: optional ``(H, W)`` mask; pixels outside it are invalid.
        view: direction from the surface to the viewer (orthographic: the same for
            every pixel).
        environment: ``(9, 3)`` spherical-harmonic coefficients of the environment's
            radiance per RGB channel (:func:`sh_irradiance`); None for none.
        fresnel: Schlick's F0 in (0, 1], or None for no Fresnel factor.

    Returns:
        float32 ``(H, W, 3)`` linear radiance, 0 at invalid pixels. Not clipped: several
        or strong lights exceed 1, and clipping is the display's choice (callers clip
        or tone-map before writing an image).

    Raises:
        InputError: normals not ``(H, W, 3)``, a mask or albedo of another shape, or a
            zero view vector; an environment not ``(9, 3)``, a fresnel outside (0, 1].
    """
    if fresnel is not None and not 0 < fresnel <= 1:
        raise InputError(f"fresnel is Schlick's F0, in (0, 1], got {fresnel}")
    normals = np.asarray(normals)
    if normals.ndim != 3 or normals.shape[-1] != 3:
        raise InputError(f"normal map must be (H, W, 3), got shape {normals.shape}")
    unit, valid = normalize(normals, mask)
    unit = unit.astype(np.float64)
    rho = _albedo(albedo, normals.shape)
    view = _unit(view, "view direction")
    lights = [lights] if isinstance(lights, Light) else list(lights)

    out = ambient * np.broadcast_to(rho, normals.shape)
    if environment is not None:
        out = out + rho * sh_irradiance(unit, environment) / np.pi
    for light in lights:
        l_dir = np.asarray(light.direction)
        n_dot_l = unit @ l_dir
        lit = n_dot_l > 0
        radiance = light.intensity * np.asarray(light.color)
        out = out + radiance * (rho * np.where(lit, n_dot_l, 0.0)[..., None])
        half = l_dir + view
        # A light exactly opposite the viewer has no half vector, and n.l > 0 there
        # means the viewer sees the back of the surface: no highlight.
        if specular and np.linalg.norm(half) > 1e-12:
            n_dot_h = np.maximum(unit @ (half / np.linalg.norm(half)), 0.0)
            highlight = specular * np.where(lit, n_dot_h**shininess, 0.0)
            if fresnel is not None:
                h_dot_v = float(np.dot(half / np.linalg.norm(half), view))
                highlight = highlight * (1 + (1 / fresnel - 1) * (1 - h_dot_v) ** 5)
            out = out + radiance * highlight[..., None]
    return np.where(valid[..., None], out, 0.0).astype(np.float32)


def sh_irradiance(normals: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """Irradiance ``E(n)`` of an environment at unit ``normals`` ``(..., 3)``:
    ``(..., 3)`` float64, one value per colour channel, clamped at 0.

    ``coefficients`` ``(9, 3)`` are the environment's radiance in the real spherical
    harmonics ``Y_00, Y_1-1, Y_10, Y_11, Y_2-2, Y_2-1, Y_20, Y_21, Y_22`` (in terms of
    the unit direction (x, y, z): 1, y, z, x, xy, yz, 3z^2 - 1, xz, x^2 - y^2, up to the
    usual constants), per RGB channel. A constant environment ``L`` (only ``L_00 =
    L sqrt(4 pi)``) gives ``E = pi L`` everywhere; a Lambertian surface of albedo
    ``rho`` reflects ``rho E / pi``.
    """
    lighting = np.asarray(coefficients, dtype=np.float64)
    if lighting.shape != (SH_BASIS_SIZE, 3):
        raise InputError(f"environment must be {SH_BASIS_SIZE} spherical-harmonic "
                         f"coefficients per RGB channel, shape (9, 3), got {lighting.shape}")
    n = np.asarray(normals, dtype=np.float64)
    x, y, z = (n[..., i, None] for i in range(3))
    l00, l1m1, l10, l11, l2m2, l2m1, l20, l21, l22 = lighting
    irradiance = (_C1 * l22 * (x * x - y * y) + _C3 * l20 * z * z + _C4 * l00 - _C5 * l20
                  + 2 * _C1 * (l2m2 * x * y + l21 * x * z + l2m1 * y * z)
                  + 2 * _C2 * (l11 * x + l1m1 * y + l10 * z))
    return np.maximum(irradiance, 0.0)


def _albedo(albedo, shape: tuple[int, ...]) -> np.ndarray:
    """Albedo as an array that broadcasts against an ``(H, W, 3)`` image."""
    if albedo is None:
        return np.ones(3)
    rho = np.asarray(albedo, dtype=np.float64)
    if rho.shape not in ((), (3,), shape):
        raise InputError(f"albedo must be a scalar, an RGB triple or an {shape} image, got "
                         f"shape {rho.shape}")
    return rho


def relight_views(
    normals: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    n: int = 4,
    elevation_deg: float = 30.0,
    albedo: float | np.ndarray | None = None,
    **kw,
) -> list[np.ndarray]:
    """Render a normal map under ``n`` single lights circling the view axis.

    Light ``k`` has azimuth ``phi = 360 k / n`` degrees, measured in the image plane
    counter-clockwise from +x (image right) towards +y (image up), and elevation
    ``e = elevation_deg`` above the image plane, i.e. direction
    ``(cos e cos phi, cos e sin phi, sin e)``: light 0 comes from the right, and with
    ``n = 4`` lights 1, 2, 3 from the top, left and bottom. ``e = 90`` is a light at the
    camera.

    Args:
        normals, mask, albedo: as for :func:`shade`.
        n: number of lights (images), at least 1.
        elevation_deg: elevation of every light above the image plane, in degrees.
        **kw: passed to :func:`shade` (``ambient``, ``specular``, ``shininess``, ``view``).

    Returns:
        ``n`` float32 ``(H, W, 3)`` images, unclipped, in the order of ``k``.

    Raises:
        InputError: ``n < 1``, or as :func:`shade`.
    """
    if n < 1:
        raise InputError(f"relight_views needs at least one light, got n={n}")
    e = np.radians(elevation_deg)
    phis = 2 * np.pi * np.arange(n) / n
    return [
        shade(normals, Light((np.cos(e) * np.cos(phi), np.cos(e) * np.sin(phi), np.sin(e))),
              albedo=albedo, mask=mask, **kw)
        for phi in phis
    ]
