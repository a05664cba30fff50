"""The normal-map convention, its RGB encoding and the converters (docs/design.md §2)."""

import numpy as np
import pytest

from crossmodal import normals as N
from crossmodal.errors import InputError
from crossmodal.shapes import orthographic_sphere

RIGHT, UP, TOWARDS = np.eye(3, dtype=np.float32)

# Each convention's components of our +x (right), +y (up) and +z (towards the camera),
# written out by hand from the convention's definition.
EXPECTED = {
    "opengl": (RIGHT, UP, TOWARDS),
    "opencv": ((1, 0, 0), (0, -1, 0), (0, 0, -1)),  # y down, z forward
    "datagen": ((1, 0, 0), (0, 1, 0), (0, 0, -1)),  # z along the viewing direction
    "sfsnet": ((1, 0, 0), (0, -1, 0), (0, 0, 1)),  # image axes, z towards the viewer
    "official": (RIGHT, UP, TOWARDS),
}


def test_every_convention_is_listed_by_hand():
    assert set(EXPECTED) == set(N.CONVENTIONS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_converter_maps_the_basis_as_defined(name):
    got = N.to_convention(np.stack([RIGHT, UP, TOWARDS]), name)
    np.testing.assert_array_equal(got, np.asarray(EXPECTED[name], np.float32))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_converter_maps_the_sphere(name):
    sphere = orthographic_sphere(65, radius=30)
    c = 32
    # Rim points of the sphere's silhouette face right / up; the centre faces the camera.
    right = sphere.normals[c, c + 29]
    top = sphere.normals[c - 29, c]
    centre = sphere.normals[c, c]
    rim = np.sqrt(1 - (29 / 30) ** 2)
    np.testing.assert_allclose(right, [29 / 30, 0, rim], atol=1e-6)
    np.testing.assert_allclose(top, [0, 29 / 30, rim], atol=1e-6)
    np.testing.assert_array_equal(centre, TOWARDS)
    theirs = N.to_convention(sphere.normals, name)
    for ours_dir, pixel in ((RIGHT, (c, c + 29)), (UP, (c - 29, c)), (TOWARDS, (c, c))):
        expected = np.asarray(EXPECTED[name], np.float32)[int(np.argmax(ours_dir))]
        assert np.dot(theirs[pixel], expected) > 0.96
    # Converting the whole sphere back is exact, invalid pixels stay zero.
    back = N.from_convention(theirs, name)
    np.testing.assert_array_equal(back, sphere.normals)
    assert not back[~sphere.mask].any()


@pytest.mark.parametrize("src", sorted(EXPECTED))
@pytest.mark.parametrize("dst", sorted(EXPECTED))
def test_convert_round_trips_exactly(src, dst):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(7, 5, 3)).astype(np.float32)
    there = N.convert(v, src, dst)
    np.testing.assert_array_equal(N.convert(there, dst, src), v)
    np.testing.assert_array_equal(
        there, N.to_convention(N.from_convention(v, src), dst))


def test_handedness_is_as_documented():
    dets = {name: round(float(np.linalg.det(c.matrix))) for name, c in N.CONVENTIONS.items()}
    # Ours and OpenCV are right-handed frames (a rotation apart); flipping one axis, as the
    # Datagen's files and SfSNet's image axes do, gives a left-handed frame.
    assert dets == {"opengl": 1, "opencv": 1, "datagen": -1, "sfsnet": -1, "official": 1}


def test_unverified_conventions_say_so():
    for conv in N.CONVENTIONS.values():
        assert conv.verified == ("nverified" not in conv.description)


def test_encode_frontal_and_axes():
    rgb = N.encode_rgb(np.stack([TOWARDS, RIGHT, -UP]))
    np.testing.assert_array_equal(rgb, [[0.5, 0.5, 1.0], [1.0, 0.5, 0.5], [0.5, 0.0, 0.5]])


def test_encode_datagen_matches_datagen_formula():
    # Datagen (docs/design.md §10): x = 2R - 1, y = 2G - 1, z = 1 - 2B, z along the view.
    sphere = orthographic_sphere(33)
    rgb = N.encode_rgb(sphere.normals, "datagen")
    m = sphere.mask
    theirs = N.to_convention(sphere.normals, "datagen")
    np.testing.assert_allclose(2 * rgb[m, 0] - 1, theirs[m, 0], atol=1e-6)
    np.testing.assert_allclose(2 * rgb[m, 1] - 1, theirs[m, 1], atol=1e-6)
    np.testing.assert_allclose(1 - 2 * rgb[m, 2], theirs[m, 2], atol=1e-6)
    # A camera-facing pixel is blue, as in the seed's picture.
    np.testing.assert_allclose(rgb[16, 16], [0.5, 0.5, 1.0])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_decode_inverts_encode_and_marks_black_invalid(name):
    sphere = orthographic_sphere(48)
    rgb = N.encode_rgb(sphere.normals, name)
    assert not rgb[~sphere.mask].any()
    decoded, valid = N.decode_rgb(rgb, name)
    np.testing.assert_array_equal(valid, sphere.mask)
    np.testing.assert_allclose(decoded, sphere.normals, atol=1e-6)


def test_decode_8bit_quantisation_is_within_half_a_degree():
    sphere = orthographic_sphere(64)
    q = np.round(N.encode_rgb(sphere.normals) * 255) / 255
    decoded, valid = N.decode_rgb(q)
    cos = np.clip((decoded[valid] * sphere.normals[valid]).sum(-1), -1, 1)
    assert np.degrees(np.arccos(cos)).max() < 0.5


def test_decode_with_mask():
    rgb = np.full((2, 2, 3), 0.5, np.float32)
    rgb[..., 2] = 1.0
    normals, valid = N.decode_rgb(rgb, mask=np.array([[1, 0], [0, 255]], np.uint8))
    np.testing.assert_array_equal(valid, [[True, False], [False, True]])
    np.testing.assert_array_equal(normals[0, 1], [0, 0, 0])


def test_normalize_marks_invalid_and_scales():
    n = np.array([[[0, 0, 3], [0, 0, 0]], [[np.nan, 0, 1], [3, 4, 0]]], np.float32)
    unit, valid = N.normalize(n)
    np.testing.assert_array_equal(valid, [[True, False], [False, True]])
    np.testing.assert_allclose(unit[0, 0], [0, 0, 1])
    np.testing.assert_allclose(unit[1, 1], [0.6, 0.8, 0])
    np.testing.assert_array_equal(unit[1, 0], [0, 0, 0])
    _, valid = N.normalize(n, mask=np.array([[0, 1], [1, 1]], bool))
    np.testing.assert_array_equal(valid, [[False, False], [False, True]])


def test_check_normals_accepts_unit_and_zero_invalid():
    sphere = orthographic_sphere(32)
    valid = N.check_normals(sphere.normals)
    np.testing.assert_array_equal(valid, sphere.mask)


def test_check_normals_rejects_non_unit():
    n = orthographic_sphere(32).normals * 1.1
    with pytest.raises(InputError, match=r"face\.exr: 0 non-finite and \d+ non-unit.*renormal"):
        N.check_normals(n, source="face.exr")


def test_check_normals_rejects_nan_inside_mask_only():
    sphere = orthographic_sphere(32)
    n = sphere.normals.copy()
    n[0, 0] = np.nan  # outside the sphere
    N.check_normals(n, mask=sphere.mask)
    with pytest.raises(InputError, match="1 non-finite and 0 non-unit"):
        N.check_normals(n)


def test_mask_of_another_size_is_an_error():
    n = orthographic_sphere(32).normals
    with pytest.raises(InputError, match=r"mask of shape \(16, 16\).*\(32, 32\).*resize"):
        N.normalize(n, mask=np.ones((16, 16)))


def test_wrong_channel_count_is_an_error():
    with pytest.raises(InputError, match="3 components"):
        N.encode_rgb(np.zeros((4, 4, 4)))


def test_unknown_convention_lists_valid_ones():
    with pytest.raises(InputError, match="unknown normal convention 'directx'.*opencv"):
        N.to_convention(np.zeros((1, 3)), "directx")
