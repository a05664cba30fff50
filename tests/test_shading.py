"""Relighting normal maps: Lambert and Blinn-Phong values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from crossmodal.errors import InputError
from crossmodal.geometry import Light, relight_views, shade
from crossmodal.geometry.shading import sh_irradiance
from crossmodal.shapes import orthographic_sphere

FRONT = np.broadcast_to(np.float32([0, 0, 1]), (2, 3, 3))


def at_angle(deg: float, axis: str = "x") -> tuple[float, float, float]:
    """Unit vector ``deg`` degrees from +z, tilted towards +x or +y."""
    s, c = np.sin(np.radians(deg)), np.cos(np.radians(deg))
    return (s, 0.0, c) if axis == "x" else (0.0, s, c)


def test_light_is_normalised():
    light = Light((0, 0, 2))
    assert light.direction == (0.0, 0.0, 1.0)
    assert light.color == (1.0, 1.0, 1.0) and light.intensity == 1.0
    with pytest.raises(InputError, match="light direction"):
        Light((0, 0, 0))


def test_lambert_at_sixty_degrees():
    light = Light(at_angle(60), color=(1.0, 0.5, 0.25), intensity=2.0)
    out = shade(FRONT, light, albedo=(0.5, 0.8, 1.0), ambient=0.1)
    # ambient * albedo + intensity * color * albedo * cos 60
    expected = 0.1 * np.array([0.5, 0.8, 1.0]) + 2.0 * np.array([1.0, 0.5, 0.25]) * np.array(
        [0.5, 0.8, 1.0]) * 0.5
    assert out.shape == (2, 3, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), rtol=1e-6)


def test_back_facing_light_gives_ambient_only():
    out = shade(FRONT, Light((0.3, 0.0, -1.0)), albedo=0.6, ambient=0.2, specular=1.0)
    np.testing.assert_allclose(out, 0.12, rtol=1e-6)


def test_specular_peak_at_half_vector():
    # Light 60 degrees from the viewer (+z): the half vector is 30 degrees from +z. A
    # normal along it reflects specular * intensity on top of the diffuse cos 30.
    normals = np.broadcast_to(np.float32(at_angle(30)), (1, 1, 3))
    out = shade(normals, Light(at_angle(60), intensity=1.5), albedo=0.4, ambient=0.1,
                specular=0.7, shininess=50.0)
    expected = 0.1 * 0.4 + 1.5 * (0.4 * np.cos(np.radians(30)) + 0.7)
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)
    # Away from the half vector the highlight falls as cos^shininess.
    off = np.broadcast_to(np.float32(at_angle(40)), (1, 1, 3))
    out = shade(off, Light(at_angle(60)), albedo=0.0, ambient=0.0, specular=1.0,
                shininess=50.0)
    np.testing.assert_allclose(out[0, 0], np.cos(np.radians(10)) ** 50, rtol=1e-5)


def test_invalid_pixels_are_black():
    normals = np.zeros((2, 2, 3), np.float32)
    normals[0] = (0, 0, 1)
    normals[1, 0] = (0, 0, 1)
    mask = np.array([[True, False], [True, True]])
    out = shade(normals, Light((0, 0, 1)), mask=mask, ambient=0.5)
    np.testing.assert_allclose(out[0, 0], 1.5)  # ambient + cos 0, unclipped
    np.testing.assert_allclose(out[1, 0], 1.5)
    assert not out[0, 1].any()  # outside the mask
    assert not out[1, 1].any()  # zero normal


def test_lights_add_linearly():
    normals = orthographic_sphere(32).normals
    a = Light(at_angle(40), color=(1.0, 0.2, 0.2), intensity=0.7)
    b = Light(at_angle(-25, "y"), intensity=1.3)
    kw = dict(albedo=0.8, specular=0.3, shininess=10.0)
    both = shade(normals, [a, b], ambient=0.1, **kw)
    separate = shade(normals, a, ambient=0.1, **kw) + shade(normals, b, ambient=0.0, **kw)
    np.testing.assert_allclose(both, separate, atol=1e-6)


def test_albedo_image():
    albedo = np.random.default_rng(0).uniform(size=(2, 3, 3))
    out = shade(FRONT, Light((0, 0, 1)), albedo=albedo, ambient=0.0)
    np.testing.assert_allclose(out, albedo, rtol=1e-6)
    with pytest.raises(InputError, match="albedo"):
        shade(FRONT, Light((0, 0, 1)), albedo=np.ones((3, 2, 3)))


def test_relight_views_symmetry_on_sphere():
    sphere = orthographic_sphere(64)
    views = relight_views(sphere.normals, sphere.mask, n=4, elevation_deg=30.0, specular=0.2)
    assert len(views) == 4 and all(v.shape == (64, 64, 3) for v in views)
    right, top, left, bottom = views
    # The sphere is mirror-symmetric about its centre lines, so opposite lights mirror
    # the shading: right <-> left across columns, top <-> bottom across rows.
    np.testing.assert_allclose(left, right[:, ::-1], atol=1e-6)
    np.testing.assert_allclose(bottom, top[::-1], atol=1e-6)
    # Light 0 comes from image right, light 1 from image top (row 0).
    row, col = 32, 32
    assert right[row, col + 20, 0] > right[row, col - 20, 0]
    assert top[row - 20, col, 0] > top[row + 20, col, 0]
    # The brightest diffuse point faces the light: 30 degrees above the image plane.
    lambert = relight_views(sphere.normals, sphere.mask, n=1, elevation_deg=30.0,
                            ambient=0.0)[0][..., 0]
    v, u = np.unravel_index(np.argmax(lambert), lambert.shape)
    np.testing.assert_allclose(sphere.normals[v, u], [np.cos(np.radians(30)), 0,
                                                      np.sin(np.radians(30))], atol=0.03)


def test_relight_views_bad_n():
    with pytest.raises(InputError, match="at least one light"):
        relight_views(FRONT, n=0)


# Real spherical harmonics, orthonormal on the sphere, in sh_irradiance's order.
def sh_basis(d: np.ndarray) -> np.ndarray:
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    return np.stack([np.full_like(x, 0.282095), 0.488603 * y, 0.488603 * z, 0.488603 * x,
                     1.092548 * x * y, 1.092548 * y * z, 0.315392 * (3 * z * z - 1),
                     1.092548 * x * z, 0.546274 * (x * x - y * y)], axis=-1)


def test_constant_environment_gives_pi_times_its_radiance():
    radiance = np.array([0.2, 0.5, 1.0])
    coefficients = np.zeros((9, 3))
    coefficients[0] = radiance * np.sqrt(4 * np.pi)
    normals = np.random.default_rng(0).normal(size=(50, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    np.testing.assert_allclose(sh_irradiance(normals, coefficients),
                               np.broadcast_to(np.pi * radiance, (50, 3)), rtol=1e-5)


def test_sh_irradiance_is_the_cosine_integral_of_the_environment():
    # E(n) = integral of L(w) max(n.w, 0) dw, by quadrature on a fine sphere grid, for a
    # random band-limited environment that stays positive.
    rng = np.random.default_rng(1)
    coefficients = rng.normal(0, 0.2, (9, 3))
    coefficients[0] = 3.0
    theta = (np.arange(400) + 0.5) * np.pi / 400
    phi = (np.arange(800) + 0.5) * 2 * np.pi / 800
    t, p = np.meshgrid(theta, phi, indexing="ij")
    w = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1)
    dw = (np.sin(t) * (np.pi / 400) * (2 * np.pi / 800))[..., None]
    radiance = sh_basis(w) @ coefficients
    for n in ([0, 0, 1], [0.6, 0, 0.8], [-0.36, 0.48, -0.8]):
        n = np.asarray(n) / np.linalg.norm(n)
        expected = (radiance * np.maximum(w @ n, 0)[..., None] * dw).sum((0, 1))
        np.testing.assert_allclose(sh_irradiance(n[None], coefficients)[0], expected,
                                   rtol=2e-3)


def test_shade_adds_albedo_times_irradiance_over_pi():
    coefficients = np.zeros((9, 3))
    coefficients[0] = np.sqrt(4 * np.pi)  # unit radiance: E = pi, reflected 0.5 * 1
    coefficients[2] = 0.5  # brighter from +z
    normals = np.broadcast_to(np.float32(at_angle(30)), (2, 2, 3))
    out = shade(normals, [], albedo=0.5, ambient=0.1, environment=coefficients)
    expected = 0.1 * 0.5 + 0.5 * sh_irradiance(normals, coefficients) / np.pi
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    with pytest.raises(InputError, match=r"\(9, 3\)"):
        shade(normals, [], environment=np.zeros(9))


def test_fresnel_is_one_at_normal_incidence_and_brightens_grazing_highlights():
    head_on = Light((0, 0, 1))
    normals = np.broadcast_to(np.float32([0, 0, 1]), (1, 1, 3))
    plain = shade(normals, head_on, albedo=0.0, ambient=0.0, specular=0.2)
    np.testing.assert_allclose(shade(normals, head_on, albedo=0.0, ambient=0.0, specular=0.2,
                                     fresnel=0.028), plain)
    # Light at 80 degrees, normal on the half vector: h.v = cos 40 degrees.
    grazing = Light(at_angle(80))
    half = np.broadcast_to(np.float32(at_angle(40)), (1, 1, 3))
    base = shade(half, grazing, albedo=0.0, ambient=0.0, specular=0.2)
    boosted = shade(half, grazing, albedo=0.0, ambient=0.0, specular=0.2, fresnel=0.028)
    factor = 1 + (1 / 0.028 - 1) * (1 - np.cos(np.radians(40))) ** 5
    np.testing.assert_allclose(boosted, base * factor, rtol=1e-5)
    assert factor > 1.01
    with pytest.raises(InputError, match="F0"):
        shade(half, grazing, fresnel=0.0)
