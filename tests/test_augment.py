"""Tests of crossmodal.data.augment: geometric transforms turn the normals with the pixels.

The reference for "counter-clockwise on screen" is OpenCV (``cv2.rotate`` and
``cv2.getRotationMatrix2D``, whose positive angles turn the displayed picture
counter-clockwise), and the reference normals are those of the turned *surface*:
a plane's depth map is turned as a picture and its normal recomputed from the slopes.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from crossmodal.data.augment import (
    Augment,
    AugmentConfig,
    PhotometricJitter,
    hflip,
    rot90,
    rotate,
)
from crossmodal.errors import InputError
from crossmodal.shapes import orthographic_sphere, plane


def to_sample(surface, image=None):
    """A shapes.Surface as an augmentation sample (channels first)."""
    return {"image": image,
            "normals": torch.from_numpy(surface.normals.transpose(2, 0, 1).copy()),
            "mask": torch.from_numpy(surface.mask.copy()),
            "id": "x"}


def plane_normal_from_depth(depth, valid):
    """Least-squares slopes of ``depth = a + sx u + sy v`` -> shapes.plane's normal."""
    v, u = np.nonzero(valid)
    design = np.stack([np.ones_like(u), u, v], axis=1).astype(np.float64)
    _, sx, sy = np.linalg.lstsq(design, depth[v, u], rcond=None)[0]
    n = np.array([sx, -sy, 1.0])  # as in shapes.plane: height -depth over (u, -v)
    return n / np.linalg.norm(n)


def angles_deg(a, b):
    """Angle between ``(3, ...)`` vector fields, degrees."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sin = np.linalg.norm(np.cross(a, b, axis=0), axis=0)
    return np.degrees(np.arctan2(sin, np.sum(a * b, axis=0)))


def random_image(h, w, seed=0):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- flips


def test_hflip_of_a_sphere_is_the_sphere():
    sample = to_sample(orthographic_sphere(64))
    out = hflip(sample)
    assert torch.equal(out["normals"], sample["normals"])
    assert torch.equal(out["mask"], sample["mask"])
    assert out["image"] is None and out["id"] == "x"


def test_hflip_negates_x_at_the_mirrored_pixel():
    g = torch.Generator().manual_seed(1)
    normals = torch.nn.functional.normalize(torch.randn(3, 5, 7, generator=g), dim=0)
    image = random_image(5, 7)
    mask = torch.rand(5, 7, generator=g) > 0.5
    out = hflip({"image": image, "normals": normals, "mask": mask})
    for i, j in [(0, 0), (2, 3), (4, 6), (1, 5)]:
        jm = 6 - j
        assert torch.equal(out["normals"][:, i, jm],
                           normals[:, i, j] * torch.tensor([-1.0, 1.0, 1.0]))
        assert torch.equal(out["image"][:, i, jm], image[:, i, j])
        assert out["mask"][i, jm] == mask[i, j]
    assert torch.equal(hflip(out)["normals"], normals)  # an involution


def test_hflip_matches_a_mirrored_surface():
    # Mirroring the depth map of a tilted plane is the plane with sx -> -sx.
    surface = plane((20, 30), slope=(0.4, -0.3))
    out = hflip(to_sample(surface))["normals"].numpy()
    mirrored = plane_normal_from_depth(surface.depth[:, ::-1], surface.mask)
    np.testing.assert_allclose(out[:, 10, 10], mirrored, atol=1e-6)


# --------------------------------------------------------------------------- quarter turns


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rot90_of_a_sphere_is_the_sphere(k):
    sample = to_sample(orthographic_sphere(64))
    out = rot90(sample, k)
    torch.testing.assert_close(out["normals"], sample["normals"], atol=1e-6, rtol=0)
    assert torch.equal(out["mask"], sample["mask"])


def test_rot90_turns_the_picture_counter_clockwise_on_screen():
    image = torch.zeros(3, 5, 5)
    image[0, 2, 4] = 1.0  # a red dot right of the centre
    out = rot90({"image": image}, 1)["image"]
    assert out[0, 0, 2] == 1.0  # ... goes to the top: counter-clockwise
    grey = np.arange(12, dtype=np.float32).reshape(3, 4)
    turned = rot90({"mask": torch.from_numpy(grey > 5), "image": torch.from_numpy(
        np.stack([grey] * 3))}, 1)
    reference = cv2.rotate(grey, cv2.ROTATE_90_COUNTERCLOCKWISE)
    np.testing.assert_array_equal(turned["image"][0].numpy(), reference)
    np.testing.assert_array_equal(turned["mask"].numpy(), reference > 5)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rot90_equals_the_face_rendered_from_the_rolled_camera(k):
    """The rotation convention, against the renderer: a face rendered, then turned k
    quarter turns by the augmentation, equals the face rendered by a camera rolled the
    opposite way about its optical axis (the scene turned k quarter turns counter-clockwise
    about the view axis), normals included, within 1 degree."""
    from crossmodal.render import Camera, render
    from crossmodal.synth.face_model import FaceModel

    model = FaceModel.load()
    yaw = np.radians(25.0)  # a turned head, so no symmetry hides a wrong convention
    turn_y = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    head = model.vertices() - model.vertices().mean(axis=0)
    placed = head @ turn_y.T + [0.0, 0.0, -55.0]  # cm, in front of the camera
    camera = Camera.perspective(96, 30.0)  # centred principal point: the grid turns onto itself
    phi = k * np.pi / 2
    roll = np.array([[np.cos(phi), -np.sin(phi), 0], [np.sin(phi), np.cos(phi), 0], [0, 0, 1]])
    upright = render(placed, model.triangles, camera)
    rolled = render(placed @ roll.T, model.triangles, camera)
    turned = rot90({"normals": torch.from_numpy(upright.normals).permute(2, 0, 1).float(),
                    "mask": torch.from_numpy(upright.mask)}, k)
    normals = turned["normals"].permute(1, 2, 0).numpy()
    both = turned["mask"].numpy() & rolled.mask
    assert both.sum() > 0.95 * rolled.mask.sum() > 1000
    cos = np.clip((normals[both] * rolled.normals[both]).sum(-1), -1, 1)
    assert np.degrees(np.arccos(cos)).mean() < 1.0


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5, -1])
def test_rot90_of_a_plane_is_the_turned_plane(k):
    a, b, c = 0.36, -0.48, 0.8  # the plane's unit normal
    slope = (a / c, -b / c)  # shapes.plane: n ~ (sx, -sy, 1)
    surface = plane(12, slope=slope)
    np.testing.assert_allclose(surface.normals[0, 0], [a, b, c], atol=1e-6)
    out = rot90(to_sample(surface), k)["normals"].numpy()
    # Analytically, a quarter turn CCW on screen takes (a, b, c) to (-b, a, c).
    expected = np.array([a, b, c])
    for _ in range(k % 4):
        expected = np.array([-expected[1], expected[0], expected[2]])
    np.testing.assert_allclose(out, np.broadcast_to(expected[:, None, None], out.shape),
                               atol=1e-6)
    # And the same from the turned surface itself.
    depth = surface.depth
    for _ in range(k % 4):
        depth = cv2.rotate(depth, cv2.ROTATE_90_COUNTERCLOCKWISE)
    np.testing.assert_allclose(out[:, 3, 4], plane_normal_from_depth(depth, depth > 0),
                               atol=1e-6)


# --------------------------------------------------------------------------- small turns


@pytest.mark.parametrize("degrees", [10.0, -7.0])
def test_rotate_keeps_a_sphere(degrees):
    sphere = orthographic_sphere(96, radius=36)
    sample = to_sample(sphere)
    out = rotate(sample, degrees)
    n, mask = out["normals"].numpy(), out["mask"].numpy()
    valid = np.any(n != 0, axis=0)
    np.testing.assert_allclose(np.linalg.norm(n[:, valid], axis=0), 1.0, atol=1e-5)
    # A centred sphere turned about its centre is itself (a wrong sign would turn the
    # vectors by twice the angle instead).
    err = angles_deg(n, sample["normals"].numpy())
    rho = np.hypot(*(np.mgrid[0:96, 0:96] - 47.5))
    assert valid[rho < 36 - 1.5].all()  # only the rim ring, next to invalid pixels, is lost
    assert err[valid & mask & (rho < 36 - 2)].max() < 1.0
    assert err[valid & mask].max() < 2.0  # the steep rim, interpolated bilinearly
    assert np.median(err[valid & mask]) < 0.1
    assert not valid[~sphere.mask].any()


def test_rotate_of_a_plane_matches_cv2s_turned_surface():
    degrees = 8.0
    surface = plane((60, 80), slope=(0.5, -0.25))
    out = rotate(to_sample(surface), degrees)
    n, mask = out["normals"].numpy(), out["mask"].numpy()
    # OpenCV's positive angle turns the displayed picture counter-clockwise.
    turn = cv2.getRotationMatrix2D(((80 - 1) / 2, (60 - 1) / 2), degrees, 1.0)
    depth = cv2.warpAffine(surface.depth, turn, (80, 60), flags=cv2.INTER_LINEAR,
                           borderValue=0.0)
    inside = cv2.warpAffine(np.ones((60, 80)), turn, (80, 60), flags=cv2.INTER_LINEAR) > 0.999
    expected = plane_normal_from_depth(depth, inside)
    valid = np.any(n != 0, axis=0)
    assert valid.sum() > 0.8 * valid.size
    err = angles_deg(n[:, valid], expected[:, None])
    assert err.max() < 0.05
    # The corners left the picture: normals invalid, mask False.
    assert not valid[0, 0] and not mask[0, 0] and not valid[-1, -1] and mask[30, 40]


def test_rotate_moves_a_dot_counter_clockwise():
    image = torch.zeros(3, 41, 41)
    image[:, 20, 35] = 1.0  # 15 px right of the centre
    out = rotate({"image": image, "mask": image[0] > 0}, 90.0)
    assert out["image"][0, 5, 20] == pytest.approx(1.0, abs=1e-5)  # now 15 px above
    assert out["mask"][5, 20] and out["mask"].sum() == 1


# --------------------------------------------------------------------------- photometric


def test_photometric_jitter_touches_only_the_image():
    sample = to_sample(orthographic_sphere(32), image=random_image(32, 32))
    jitter = PhotometricJitter()
    for seed in range(5):
        out = jitter(sample, torch.Generator().manual_seed(seed))
        assert out["normals"] is sample["normals"] and out["mask"] is sample["mask"]
        assert out["image"].min() >= 0 and out["image"].max() <= 1
        assert out["image"].shape == (3, 32, 32)
        assert not torch.equal(out["image"], sample["image"])


def test_photometric_identity_and_grey():
    image = random_image(8, 8)
    identity = PhotometricJitter(gamma=(1, 1), brightness=(1, 1), saturation=(1, 1), hue=0.0)
    out = identity({"image": image}, torch.Generator().manual_seed(0))["image"]
    torch.testing.assert_close(out, image, atol=1e-6, rtol=0)
    # Saturation and hue act on chroma only: a grey picture stays grey.
    grey = image[:1].expand(3, -1, -1) * 0.8
    out = PhotometricJitter(gamma=(1, 1), brightness=(1, 1), saturation=(0.5, 0.5), hue=0.3)(
        {"image": grey}, torch.Generator().manual_seed(0))["image"]
    torch.testing.assert_close(out, grey, atol=1e-5, rtol=0)


def test_photometric_gamma_and_brightness_values():
    image = torch.full((3, 2, 2), 0.25)
    out = PhotometricJitter(gamma=(2, 2), brightness=(1.5, 1.5), saturation=(1, 1), hue=0.0)(
        {"image": image}, torch.Generator().manual_seed(0))["image"]
    torch.testing.assert_close(out, torch.full_like(image, 0.25**2 * 1.5))


def test_saturation_zero_gives_luma():
    image = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)  # pure red
    out = PhotometricJitter(gamma=(1, 1), brightness=(1, 1), saturation=(0, 0), hue=0.0)(
        {"image": image}, torch.Generator().manual_seed(0))["image"]
    torch.testing.assert_close(out.flatten(), torch.full((3,), 0.299), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- composed


def test_augment_is_deterministic_given_a_seed():
    sample = to_sample(orthographic_sphere(48), image=random_image(48, 48))
    augment = Augment(AugmentConfig(flip_p=0.5, rot90=True, max_rotation_deg=10.0))
    a = augment(sample, torch.Generator().manual_seed(7))
    b = augment(sample, torch.Generator().manual_seed(7))
    c = augment(sample, torch.Generator().manual_seed(8))
    for key in ("image", "normals", "mask"):
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["image"], c["image"])
    # Missing modalities are skipped and draw the same numbers: the normals of an
    # image-less sample get the same geometric transform.
    d = augment({**sample, "image": None}, torch.Generator().manual_seed(7))
    assert d["image"] is None and torch.equal(d["normals"], a["normals"])


def test_augment_config_from_dict_and_errors():
    augment = Augment({"flip_p": 1.0, "max_rotation_deg": 0.0, "photometric": False,
                       "jitter": {"hue": 0.1, "gamma": [0.9, 1.1]}})
    assert augment.config.jitter.hue == 0.1 and augment.config.jitter.gamma == (0.9, 1.1)
    sample = to_sample(orthographic_sphere(16), image=random_image(16, 16))
    out = augment(sample, torch.Generator().manual_seed(0))
    assert torch.equal(out["image"], sample["image"].flip(-1))  # flip only
    with pytest.raises(InputError, match="flip_prob"):
        Augment({"flip_prob": 0.5})
    with pytest.raises(InputError, match="flip_p"):
        AugmentConfig(flip_p=1.5)
    with pytest.raises(InputError, match="gamma"):
        PhotometricJitter(gamma=(0.0, 1.0))
    with pytest.raises(InputError, match="normals"):
        hflip({"normals": torch.zeros(4, 8, 8)})
