"""Calibrated Lambertian photometric stereo (crossmodal.geometry.photometric) on an analytic
sphere, whose normals are exact."""

import numpy as np
import pytest

from crossmodal.errors import InputError
from crossmodal.geometry import Light, photometric_stereo, shade
from crossmodal.shapes import orthographic_sphere

ALBEDO_RGB = np.array([0.8, 0.55, 0.4])


def angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    return np.degrees(np.arctan2(cross, (a * b).sum(-1)))


def lit(normals: np.ndarray, lights: np.ndarray, albedo=ALBEDO_RGB) -> np.ndarray:
    """``(K, H, W, 3)``: the surface under each light, Lambertian, no ambient."""
    return np.stack([shade(normals, Light(tuple(light)), albedo=albedo, ambient=0.0)
                     for light in lights])


def elevated(elevation_deg: float, azimuths_deg=(0, 90, 180, 270)) -> np.ndarray:
    e, phi = np.radians(elevation_deg), np.radians(azimuths_deg)
    return np.stack([np.cos(e) * np.cos(phi), np.cos(e) * np.sin(phi),
                     np.full_like(phi, np.sin(e))], axis=-1)


def test_a_sphere_under_four_lights_gives_its_normals_and_albedo():
    sphere = orthographic_sphere(96)
    lights = elevated(60)
    images = lit(sphere.normals, lights)
    normals, albedo, valid = photometric_stereo(images, lights, sphere.mask)
    # Every pixel with n_z > cos(60) sees all four lights; the rim sees fewer.
    frontal = sphere.mask & (sphere.normals[..., 2] > 0.6)
    assert valid[frontal].all() and not valid[~sphere.mask].any()
    assert angles_deg(normals[frontal], sphere.normals[frontal]).max() < 0.5
    assert np.abs(albedo[frontal] / ALBEDO_RGB - 1).max() < 0.01
    assert np.allclose(np.linalg.norm(normals[valid], axis=-1), 1, atol=1e-5)
    assert (normals[~valid] == 0).all() and (albedo[~valid] == 0).all()


def test_grey_images_give_a_grey_albedo_and_intensities_scale_the_lights():
    sphere = orthographic_sphere(64)
    lights = elevated(50)
    strength = np.array([1.0, 0.5, 0.8, 1.2])
    images = lit(sphere.normals, lights, albedo=0.6)[..., 0] * strength[:, None, None]
    normals, albedo, valid = photometric_stereo(images, lights, intensities=strength)
    frontal = sphere.mask & (sphere.normals[..., 2] > 0.7)
    assert albedo.shape == (64, 64)
    assert angles_deg(normals[frontal], sphere.normals[frontal]).max() < 0.5
    assert np.abs(albedo[frontal] - 0.6).max() < 0.006


def test_shadowed_measurements_are_dropped_where_three_lights_remain():
    """Grazing lights (elevation 15 degrees): each light leaves part of the sphere in
    attached shadow, where max(n.l, 0) breaks the linear model; a pixel seen by 3 lights
    is solved from those, one seen by fewer is invalid."""
    sphere = orthographic_sphere(96)
    lights = elevated(15)
    images = lit(sphere.normals, lights)
    normals, albedo, valid = photometric_stereo(images, lights, sphere.mask)
    seen = (sphere.normals @ (lights / np.linalg.norm(lights, axis=1, keepdims=True)).T
            > 0.04).sum(-1)
    three = sphere.mask & (seen == 3)
    assert three.sum() > 500 and valid[three].all()
    solved = sphere.mask & (seen >= 3)
    assert angles_deg(normals[solved], sphere.normals[solved]).max() < 2.0
    assert not valid[sphere.mask & (seen < 3) & (sphere.normals[..., 2] > 0.99)].any()


def test_eight_bit_images_stay_within_a_degree_on_average():
    sphere = orthographic_sphere(96)
    lights = elevated(45)
    images = np.rint(np.clip(lit(sphere.normals, lights), 0, 1) * 255).astype(np.uint8)
    normals, _, valid = photometric_stereo(images, lights, sphere.mask)
    assert valid.sum() > 0.8 * sphere.mask.sum()
    assert angles_deg(normals[valid], sphere.normals[valid]).mean() < 1.0


def test_saturated_measurements_are_dropped():
    sphere = orthographic_sphere(64)
    lights = elevated(60)
    images = np.clip(lit(sphere.normals, lights) * 1.5, 0, 1)  # the brightest parts clip
    normals, _, valid = photometric_stereo(images, lights, sphere.mask, intensities=[1.5] * 4)
    assert (images >= 0.98).any()
    assert angles_deg(normals[valid], sphere.normals[valid]).max() < 0.5


@pytest.mark.parametrize("images, lights, mask, message", [
    (np.zeros((2, 8, 8)), np.eye(3)[:2], None, "at least 3 images"),
    (np.zeros((3, 8, 8)), [[1, 0, 1], [2, 0, 2], [-1, 0, -1]], None, "plane through"),
    (np.zeros((3, 8, 8)), [[1, 0, 1], [0, 1, 1], [1, 1, 2]], None, "plane through"),
    (np.zeros((4, 8, 8)), np.eye(3), None, "(4, 3)"),
    (np.zeros((3, 8, 8, 2)), np.eye(3), None, "(K, H, W, 3)"),
    (np.zeros((3, 8, 8)), np.eye(3), np.ones((4, 4), bool), "does not match"),
    (np.zeros((3, 8, 8)), [[0, 0, 0], [0, 1, 0], [0, 0, 1]], None, "non-zero"),
])
def test_bad_inputs_are_one_line_input_errors(images, lights, mask, message):
    with pytest.raises(InputError) as info:
        photometric_stereo(images, lights, mask)
    assert message in str(info.value) and "\n" not in str(info.value)
