"""Tests of crossmodal.crop: the face crop protocol of docs/design.md §4."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from crossmodal.crop import Crop, crop_from_landmarks, landmark_mask
from crossmodal.errors import InputError
from crossmodal.shapes import orthographic_sphere


def ellipse_landmarks(cx, cy, ax, ay, n=68):
    """``n`` points on an axis-aligned ellipse: box centre (cx, cy), half-sides (ax, ay)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], axis=1)


def blob_centroid(image, xy, radius):
    """Intensity centroid of a single-channel ``image`` in a window around ``xy``."""
    x0, y0 = int(round(xy[0])), int(round(xy[1]))
    win = image[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1].astype(np.float64)
    ys, xs = np.mgrid[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
    return np.array([(win * xs).sum(), (win * ys).sum()]) / win.sum()


def angles_deg(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    sin = np.linalg.norm(np.cross(a, b), axis=-1)
    return np.degrees(np.arctan2(sin, np.sum(a * b, axis=-1)))


# --------------------------------------------------------------------------- geometry


def test_box_side_centre_and_scale_by_hand():
    # Points 0 and 34 are the extremes in x (100 +- 60), 17 and 51 in y (80 +- 90): the
    # box is 120 x 180, so l = 180, the square 216, centred on (100, 80).
    lm = ellipse_landmarks(100.0, 80.0, 60.0, 90.0)
    crop = crop_from_landmarks(lm, size=256, scale=1.2)
    x0, y0, side = crop.box
    assert side == pytest.approx(216.0)
    assert (x0, y0) == pytest.approx((100.0 - 108.0, 80.0 - 108.0))
    assert crop.scale == pytest.approx(256 / 216)
    assert crop.size == 256
    # Box centre -> crop centre; the square's edges -> the crop's outer pixel edges.
    corners = crop.transform_points([[100.0, 80.0], [x0, y0], [x0 + side, y0 + side]])
    np.testing.assert_allclose(corners, [[127.5, 127.5], [-0.5, -0.5], [255.5, 255.5]],
                               atol=1e-9)
    np.testing.assert_allclose(crop.matrix, [[256 / 216, 0, -256 / 216 * x0 - 0.5],
                                             [0, 256 / 216, -256 / 216 * y0 - 0.5]])
    # The inverse undoes it.
    back = crop.transform_points(lm) @ crop.inverse()[:, :2].T + crop.inverse()[:, 2]
    np.testing.assert_allclose(back, lm, atol=1e-9)


def test_other_scale_and_size():
    lm = ellipse_landmarks(50.0, 50.0, 40.0, 20.0)  # box 80 x 40 -> l = 80
    crop = crop_from_landmarks(lm, size=128, scale=1.5)
    assert crop.box == pytest.approx((-10.0, -10.0, 120.0))
    assert crop.scale == pytest.approx(128 / 120)


def test_crop_matrix_is_read_only():
    crop = crop_from_landmarks(ellipse_landmarks(50, 50, 20, 20))
    with pytest.raises(ValueError):
        crop.matrix[0, 0] = 2.0


@pytest.mark.parametrize("bad, needle", [
    (np.zeros((68, 3)), "(K, 2)"),
    (np.zeros(68), "(K, 2)"),
    (np.zeros((1, 2)), "(K, 2)"),
    (np.full((68, 2), 5.0), "zero-size"),
    (np.where(np.arange(136).reshape(68, 2) == 7, np.nan, 1.0 * np.arange(136).reshape(68, 2)),
     "NaN"),
])
def test_bad_landmarks_are_input_errors(bad, needle):
    with pytest.raises(InputError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        crop_from_landmarks(bad)


def test_bad_interpolation_and_scale():
    lm = ellipse_landmarks(50, 50, 20, 20)
    with pytest.raises(InputError, match="interpolation"):
        crop_from_landmarks(lm).warp_image(np.zeros((100, 100, 3)), interpolation="cubic")
    with pytest.raises(InputError, match="scale"):
        crop_from_landmarks(lm, scale=0.0)


# --------------------------------------------------------------------------- images


def test_drawn_landmarks_land_where_transformed():
    lm = ellipse_landmarks(300.0, 220.0, 110.0, 150.0)
    marked = [0, 17, 34, 51]
    image = np.zeros((480, 640), np.uint8)
    for i in marked:  # anti-aliased discs with 1/16-pixel centres
        centre = tuple(int(v) for v in np.rint(lm[i] * 16))
        cv2.circle(image, centre, 8 * 16, 255, -1, cv2.LINE_AA, shift=4)
    crop = crop_from_landmarks(lm)
    out = crop.warp_image(image.astype(np.float32))
    assert out.shape == (256, 256)
    expected = crop.transform_points(lm[marked])
    for xy in expected:
        assert out[int(round(xy[1])), int(round(xy[0]))] > 200  # disc centre is bright
        np.testing.assert_allclose(blob_centroid(out, xy, 8), xy, atol=0.1)


def test_same_face_at_two_resolutions_gives_the_same_crop():
    # One scene drawn at 4x, area-downsampled to 2x and 1x: the same face at two
    # resolutions. Pixel i of an f-times smaller image covers f pixels of the 4x one, so
    # coordinates map as x = (x_4 + 0.5) / f - 0.5.
    big = 4
    lm4 = ellipse_landmarks(160 * big, 130 * big, 70 * big, 90 * big)
    marked = np.arange(0, 68, 4)  # isolated discs, so each centroid is its own
    img4 = np.zeros((260 * big, 320 * big, 3), np.uint8)
    for i in marked:
        x, y = lm4[i]
        colour = (255 * int(i % 3 == 0), 255, 4 * int(i))
        cv2.circle(img4, (int(x * 16), int(y * 16)), 3 * big * 16, colour, -1, cv2.LINE_AA,
                   shift=4)
    cv2.line(img4, (100 * big, 60 * big), (220 * big, 200 * big), (255, 0, 255), 2 * big,
             cv2.LINE_AA)

    crops, points = [], []
    for scale in (1, 2):
        f = big // scale
        image = cv2.resize(img4, (img4.shape[1] // f, img4.shape[0] // f),
                           interpolation=cv2.INTER_AREA)
        lm = (lm4 + 0.5) / f - 0.5
        crop = crop_from_landmarks(lm)
        crops.append(crop.warp_image(image.astype(np.float32) / 255))
        points.append(crop.transform_points(lm))
    # Scale 1 enlarges the face (x1.19), scale 2 shrinks it (x0.59, area filter).
    np.testing.assert_allclose(points[0], points[1], atol=1e-9)
    diff = np.abs(crops[0] - crops[1])
    assert diff.mean() < 0.005
    assert np.percentile(diff, 99) < 0.2
    grey = [cv2.cvtColor(c, cv2.COLOR_RGB2GRAY).astype(np.float64) for c in crops]
    (dx, dy), _ = cv2.phaseCorrelate(grey[0], grey[1])
    assert abs(dx) < 0.1 and abs(dy) < 0.1  # image content aligned well within a pixel
    for i in marked:  # each disc is drawn where its landmark maps, in both crops
        for g, p in zip(grey, points):
            np.testing.assert_allclose(blob_centroid(g, p[i], 6), p[i], atol=0.25)


def test_area_interpolation_does_not_alias():
    # A 1-pixel checkerboard shrunk 4x must come out uniform grey with 'area'; plain
    # bilinear sampling picks individual squares and keeps a strong pattern.
    checker = (np.indices((800, 800)).sum(axis=0) % 2).astype(np.float32)
    # Crop pixel j is centred on source 4 j + 2 + 100: always an even pixel centre.
    crop = Crop.from_box(100.0, 100.0, 512.0, size=128)
    area = crop.warp_image(checker, interpolation="area")
    linear = crop.warp_image(checker, interpolation="linear")
    np.testing.assert_allclose(area, 0.5, atol=1e-6)
    np.testing.assert_array_equal(linear, 0.0)  # fully aliased: every sample on a black square


def test_outside_the_photo_is_padded_not_shifted():
    # Face near the top-left corner: the square reaches 60 px beyond both photo edges.
    image = np.ones((300, 400, 3), np.float32)
    lm = ellipse_landmarks(40.0, 40.0, 80.0, 80.0)  # box [-40, 120]^2, square side 192
    crop = crop_from_landmarks(lm, size=192)
    assert crop.box == pytest.approx((-56.0, -56.0, 192.0))
    assert crop.scale == pytest.approx(1.0)
    out = crop.warp_image(image, interpolation="linear", border_value=0.25)
    # Photo pixel 0 (spanning [-0.5, 0.5]) lands at crop pixel 56: the photo edge at -0.5
    # maps to crop 55.5, so columns/rows < 55 are padding and >= 57 photo.
    assert crop.transform_points([[0.0, 0.0]]) == pytest.approx(np.array([[55.5, 55.5]]))
    np.testing.assert_array_equal(out[:55, :], 0.25)
    np.testing.assert_array_equal(out[:, :55], 0.25)
    np.testing.assert_array_equal(out[57:, 57:], 1.0)
    # The box centre is still the crop centre: nothing was shifted inside the photo.
    np.testing.assert_allclose(crop.transform_points([[40.0, 40.0]]), [[95.5, 95.5]])
    mask = crop.warp_mask(np.ones((300, 400), bool))
    assert mask.dtype == bool and not mask[:55].any() and mask[57:, 57:].all()
    # uint8 photos stay uint8, with a per-channel padding colour.
    out8 = crop.warp_image(np.full((300, 400, 3), 200, np.uint8), border_value=(1, 2, 3))
    assert out8.dtype == np.uint8
    np.testing.assert_array_equal(out8[10, 10], [1, 2, 3])
    np.testing.assert_array_equal(out8[100, 100], [200, 200, 200])


def test_paste_back_round_trip():
    # A smooth photo; crop it (shrinking 0.8x) and paste the crop back.
    h, w = 300, 360
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    photo = np.stack([np.sin(xs / 23.0), np.cos(ys / 17.0), np.sin((xs + ys) / 31.0)], -1)
    photo = (photo + 1) / 2
    lm = ellipse_landmarks(200.0, 150.0, 100.0, 100.0)  # square [80, 320] x [30, 270]
    crop = crop_from_landmarks(lm, size=192)
    pasted, coverage = crop.paste_back(crop.warp_image(photo), photo.shape, border_value=0.0)
    assert pasted.shape == photo.shape and coverage.shape == (h, w)
    # Pixels whose centres fall in [80, 320) x [30, 270) (the square; edges -> crop edges).
    expected = np.zeros((h, w), bool)
    expected[30:270, 80:320] = True
    np.testing.assert_array_equal(coverage, expected)
    err = np.abs(pasted - photo).max(axis=-1)
    assert err[32:268, 82:318].max() < 0.002
    assert err[coverage].max() < 0.03  # the outermost ring extrapolates the crop's edge
    np.testing.assert_array_equal(pasted[~coverage], 0.0)


def test_landmark_mask_of_a_square():
    # 68 points around the square [10, 50] x [20, 60] (17 per side).
    t = np.linspace(0, 1, 17, endpoint=False)
    side = [np.stack([10 + 40 * t, np.full_like(t, 20)], 1),
            np.stack([np.full_like(t, 50), 20 + 40 * t], 1),
            np.stack([50 - 40 * t, np.full_like(t, 60)], 1),
            np.stack([np.full_like(t, 10), 60 - 40 * t], 1)]
    lm = np.concatenate(side)
    assert lm.shape == (68, 2)
    mask = landmark_mask(lm, (80, 70))
    assert mask.shape == (80, 70) and mask.dtype == bool
    # Area 40 x 40 = 1600; pixel centres on the boundary count, so 41 x 41 are in.
    assert abs(int(mask.sum()) - 1600) <= 4 * 40 + 1
    assert int(mask.sum()) == 41 * 41
    assert mask[20:61, 10:51].all() and not mask[:20].any() and not mask[:, 51:].any()


def test_landmark_mask_is_the_convex_hull():
    lm = ellipse_landmarks(50.0, 50.0, 30.0, 20.0, n=68)
    lm[5] = (50.0, 50.0)  # an interior point does not dent the hull
    mask = landmark_mask(lm, (100, 100))
    area = np.pi * 30 * 20
    assert abs(int(mask.sum()) - area) < 2 * np.pi * 25  # within ~a perimeter of pixels
    assert mask[50, 50] and mask[50, 22] and not mask[50, 18]


# --------------------------------------------------------------------------- normals


@pytest.mark.parametrize("radius, size", [(150, 400), (60, 200)])
def test_warp_normals_of_a_sphere_is_the_scaled_sphere(radius, size):
    sphere = orthographic_sphere(size, radius=radius)
    c = (size - 1) / 2
    crop = crop_from_landmarks(ellipse_landmarks(c, c, radius, radius))
    normals, valid = crop.warp_normals(sphere.normals, sphere.mask)
    assert normals.dtype == np.float32 and normals.shape == (256, 256, 3)
    # The crop of a sphere is the sphere of the scaled radius about the mapped centre.
    centre = crop.transform_points([[c, c]])[0]
    r = radius * crop.scale
    truth = orthographic_sphere(256, radius=r, center=tuple(centre))
    assert not (valid & ~truth.mask).any()  # never valid off the sphere
    rho = np.hypot(*(np.mgrid[0:256, 0:256][::-1] - centre[:, None, None]))
    # Only the rim is lost: crop pixels whose source neighbours (up to ~1.5 source pixels
    # away) leave the sphere.
    assert valid[rho < r - 1.5 * max(crop.scale, 1.0) - 0.5].all()
    np.testing.assert_allclose(np.linalg.norm(normals[valid], axis=-1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(normals[~valid], 0.0)
    err = angles_deg(normals, truth.normals)
    assert err[valid & (rho < r - 4)].max() < 0.5
    assert err[valid].max() < 1.5  # the steep rim, interpolated linearly


def test_warp_normals_invalid_pixels_do_not_leak():
    normals = np.zeros((100, 100, 3), np.float32)
    normals[..., 2] = 1.0
    normals[40:60, 40:60] = 0.0  # a hole
    crop = Crop.from_box(0.0, 0.0, 100.0, size=200)  # 2x enlargement
    out, valid = crop.warp_normals(normals)
    # Crop pixel j samples source (j + 0.5) / 2; its bilinear neighbours touch the hole
    # [40, 59] when that lies in (39, 60), i.e. for j in [78, 119].
    assert not valid[78:120, 78:120].any()
    assert valid[:78, :198].all() and valid[120:198, :198].all()
    assert valid[78:120, :78].all() and valid[78:120, 120:198].all()
    # Pixels 198 and 199 sample beyond the last source pixel centre (99), partly outside
    # the map: invalid, as off-photo pixels are.
    assert not valid[198:].any() and not valid[:, 198:].any()
    assert (out[valid] == np.array([0, 0, 1], np.float32)).all()
    assert (out[~valid] == 0).all()
