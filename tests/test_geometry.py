"""Depth -> normals, normals -> depth and relief meshes against analytic surfaces."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from crossmodal.errors import InputError
from crossmodal.geometry import (
    Mesh,
    depth_to_mesh,
    depth_to_normals,
    integrate_normals,
    write_mesh,
)
from crossmodal.render.camera import Intrinsics
from crossmodal.shapes import orthographic_sphere, perspective_sphere, plane

#: Pixels closer than this to the silhouette are excluded from the angular checks: the
#: Sobel footprint there sees the steep rim of the sphere (up to 1.2 degrees at 3 px).
RIM = 5


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle between ``(..., 3)`` vectors; atan2 stays accurate for tiny angles."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), (a * b).sum(-1)))


def relative_depth_error(recovered, true, mask):
    """(RMS, max) of the depth error after removing the mean offset, over the true span."""
    diff = recovered[mask] - true[mask]
    diff -= diff.mean()
    span = np.ptp(true[mask])
    return np.sqrt(np.mean(diff**2)) / span, np.abs(diff).max() / span


# ------------------------------------------------------------------ depth -> normals


@pytest.mark.parametrize("ksize", [3, 5])
def test_ramp_slope_is_per_pixel(ksize):
    # D = 2 u - 0.5 v with pixel size 0.25: n ∝ (D_u, -D_v, s) = (2, 0.5, 0.25). An
    # unnormalised Sobel (gain 8 or 128) would tilt it almost into the image plane.
    h, w = 20, 30
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    normals, valid = depth_to_normals(2 * u - 0.5 * v, pixel_size=0.25, ksize=ksize)
    expected = np.array([2.0, 0.5, 0.25]) / np.linalg.norm([2.0, 0.5, 0.25])
    np.testing.assert_allclose(normals[valid], np.broadcast_to(expected, (valid.sum(), 3)),
                               atol=1e-6)
    # Only the Sobel footprint's half width at the image border is lost.
    r = ksize // 2
    assert valid[r:-r, r:-r].all() and valid.sum() == (h - 2 * r) * (w - 2 * r)


@pytest.mark.parametrize("ksize", [3, 5])
def test_plane_normals(ksize):
    surface = plane(64)
    normals, valid = depth_to_normals(surface.depth, ksize=ksize)
    assert valid.sum() == (64 - 2 * (ksize // 2)) ** 2
    assert angle_deg(normals, surface.normals)[valid].max() < 0.5
    assert normals.dtype == np.float32 and normals.shape == (64, 64, 3)
    assert not normals[~valid].any()


@pytest.mark.parametrize("ksize", [3, 5])
def test_orthographic_sphere_normals(ksize):
    surface = orthographic_sphere(128)
    normals, valid = depth_to_normals(surface.depth, surface.mask, ksize=ksize)
    inside = ndimage.distance_transform_edt(surface.mask)
    # The whole footprint must be on the sphere: no valid pixel within ksize // 2 of the
    # background, and every pixel farther in is valid.
    assert not (valid & (inside <= ksize // 2)).any()
    assert valid[inside > ksize // 2 * np.sqrt(2) + 1].all()
    away = valid & (inside > RIM)
    assert angle_deg(normals, surface.normals)[away].max() < 0.5


@pytest.mark.parametrize("ksize", [3, 5])
def test_perspective_sphere_normals(ksize):
    intrinsics = Intrinsics.centred(128, 40)
    surface = perspective_sphere(128, intrinsics, radius=1, distance=4)
    normals, valid = depth_to_normals(surface.depth, surface.mask, intrinsics=intrinsics,
                                      ksize=ksize)
    inside = ndimage.distance_transform_edt(surface.mask)
    assert not (valid & (inside <= ksize // 2)).any()
    away = valid & (inside > RIM)
    assert angle_deg(normals, surface.normals)[away].max() < 0.5
    assert (normals[valid, 2] > 0).all()  # facing the camera


def test_depth_to_normals_ignores_background_values():
    surface = orthographic_sphere(64)
    depth = surface.depth.copy()
    depth[~surface.mask] = np.nan
    with_nan, valid_nan = depth_to_normals(depth, surface.mask)
    clean, valid = depth_to_normals(surface.depth, surface.mask)
    np.testing.assert_array_equal(valid_nan, valid)
    np.testing.assert_array_equal(with_nan, clean)
    assert np.isfinite(with_nan).all()


def test_depth_to_normals_bad_inputs():
    depth = np.ones((8, 8))
    with pytest.raises(InputError, match="2-D"):
        depth_to_normals(np.ones((8, 8, 3)))
    with pytest.raises(InputError, match="ksize"):
        depth_to_normals(depth, ksize=7)
    with pytest.raises(InputError, match="mask"):
        depth_to_normals(depth, np.ones((4, 4), bool))
    with pytest.raises(InputError, match="pixel_size"):
        depth_to_normals(depth, pixel_size=0)


# ------------------------------------------------------------------ normals -> depth


def test_poisson_recovers_sphere():
    surface = orthographic_sphere(128)
    depth = integrate_normals(surface.normals, surface.mask)
    assert depth.dtype == np.float64
    assert np.isnan(depth[~surface.mask]).all() and np.isfinite(depth[surface.mask]).all()
    assert abs(depth[surface.mask].mean()) < 1e-9  # the documented constant
    rms, worst = relative_depth_error(depth, surface.depth, surface.mask)
    # Measured: RMS 0.23%, max 2.4% of the 51-pixel depth span, at the rim where the
    # true slope is unbounded.
    assert rms < 0.01
    assert worst < 0.03


def test_poisson_is_exact_on_a_plane():
    surface = plane(64, slope=(0.3, -0.2))
    expected = surface.depth - surface.depth.mean()
    # The trapezoidal edge equations hold exactly for a constant gradient; the float32
    # normals of plane() are off by their rounding (measured 4e-7 over a 31-pixel span).
    depth = integrate_normals(surface.normals, surface.mask)
    np.testing.assert_allclose(depth, expected, atol=1e-6)
    exact = np.array([0.3, 0.2, 1.0]) * 5  # float64 and not unit length
    depth = integrate_normals(np.broadcast_to(exact, (64, 64, 3)), surface.mask)
    np.testing.assert_allclose(depth, expected, atol=1e-9)


def test_pixel_size_scales_depth():
    surface = plane(32, slope=(0.3, -0.2))
    unit = integrate_normals(surface.normals, surface.mask)
    scaled = integrate_normals(surface.normals, surface.mask, pixel_size=0.5)
    np.testing.assert_allclose(scaled, 0.5 * unit, atol=1e-9)


def test_frankot_chellappa_on_sphere_and_plane():
    # FC smooths the rim and assumes a flat surface outside the mask, so its bound is
    # looser than Poisson's: measured RMS 0.52%, max 4.6% on the sphere; on the plane
    # the mirrored box keeps it at 0.03% RMS.
    surface = orthographic_sphere(128)
    depth = integrate_normals(surface.normals, surface.mask, method="fc")
    rms, worst = relative_depth_error(depth, surface.depth, surface.mask)
    assert rms < 0.01 and worst < 0.06
    assert abs(depth[surface.mask].mean()) < 1e-9
    flat = plane(64)
    rms, _ = relative_depth_error(integrate_normals(flat.normals, flat.mask, method="fc"),
                                  flat.depth, flat.mask)
    assert rms < 0.002


def test_round_trip_depth_normals_depth():
    surface = orthographic_sphere(128)
    normals, valid = depth_to_normals(surface.depth, surface.mask)
    depth = integrate_normals(normals, valid)
    rms, worst = relative_depth_error(depth, surface.depth, valid)
    assert rms < 0.005 and worst < 0.02


def test_each_component_gets_its_own_constant():
    # Two planes of different offsets and slopes side by side, separated by a gap: each
    # is recovered exactly, each with mean 0.
    v, u = np.mgrid[0:16, 0:40].astype(np.float64)
    left, right = u < 18, u > 21
    depth = np.where(left, 5 + 0.2 * u, 50 - 0.4 * v)
    normals = np.where(left[..., None], [0.2, 0.0, 1.0], [0.0, 0.4, 1.0])
    recovered = integrate_normals(normals, left | right)
    for part in (left, right):
        np.testing.assert_allclose(recovered[part], depth[part] - depth[part].mean(),
                                   atol=1e-9)
    assert np.isnan(recovered[~(left | right)]).all()


def test_integrate_bad_inputs():
    normals = np.broadcast_to(np.float32([0, 0, 1]), (8, 8, 3))
    with pytest.raises(InputError, match="mask"):
        integrate_normals(normals, np.ones((8, 9), bool))
    with pytest.raises(InputError, match="empty"):
        integrate_normals(normals, np.zeros((8, 8), bool))
    with pytest.raises(InputError, match="poisson, fc"):
        integrate_normals(normals, np.ones((8, 8), bool), method="multigrid")


# ------------------------------------------------------------------ meshes


def face_normals(mesh: Mesh) -> np.ndarray:
    a, b, c = (mesh.vertices[mesh.faces[:, i]].astype(np.float64) for i in range(3))
    n = np.cross(b - a, c - a)
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def test_mesh_of_a_frontal_3x3_plane():
    mesh = depth_to_mesh(np.full((3, 3), 7.0), np.ones((3, 3), bool), pixel_size=2.0)
    assert mesh.vertices.shape == (9, 3) and mesh.vertices.dtype == np.float32
    assert mesh.faces.shape == (8, 3) and mesh.faces.dtype == np.int64
    # Row-major vertices at (u s, -v s, -D).
    np.testing.assert_array_equal(mesh.vertices[5], [4.0, -2.0, -7.0])
    # Counter-clockwise seen from the camera: every face points to +z.
    np.testing.assert_allclose(face_normals(mesh), np.tile([0.0, 0.0, 1.0], (8, 1)),
                               atol=1e-7)
    assert mesh.normals is None and mesh.colors is None


def test_mesh_of_a_tilted_plane_matches_its_normal():
    surface = plane(6)
    mesh = depth_to_mesh(surface.depth, surface.mask)
    assert len(mesh.faces) == 2 * 5 * 5
    np.testing.assert_allclose(face_normals(mesh), np.tile(surface.normals[0, 0], (50, 1)),
                               atol=1e-5)


def test_mesh_perspective_faces_face_the_camera():
    intrinsics = Intrinsics.centred(32, 40)
    surface = perspective_sphere(32, intrinsics, radius=1, distance=4)
    mesh = depth_to_mesh(surface.depth, surface.mask, intrinsics=intrinsics)
    centres = mesh.vertices[mesh.faces].mean(axis=1)
    assert ((face_normals(mesh) * centres).sum(-1) < 0).all()  # towards the pinhole
    v, u = np.nonzero(surface.mask)
    np.testing.assert_allclose(-mesh.vertices[:, 2], surface.depth[v, u], rtol=1e-6)


def test_mesh_skips_background_and_partial_blocks():
    mask = np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]], bool)
    mesh = depth_to_mesh(np.ones((3, 3)), mask)
    assert len(mesh.vertices) == 7 and len(mesh.faces) == 4


def test_mesh_colours_and_normals():
    surface = plane(4)
    rgb = np.zeros((4, 4, 3))
    rgb[..., 0] = 1.0
    rgb[1, 2] = (0.2, 0.4, 0.6)
    mesh = depth_to_mesh(surface.depth, surface.mask, colors=rgb, normals=surface.normals)
    assert mesh.colors.dtype == np.uint8
    np.testing.assert_array_equal(mesh.colors[1 * 4 + 2], [51, 102, 153])
    np.testing.assert_array_equal(mesh.colors[0], [255, 0, 0])
    np.testing.assert_array_equal(mesh.normals, surface.normals.reshape(-1, 3))
    as_bytes = depth_to_mesh(surface.depth, None, colors=(rgb * 255).round().astype(np.uint8))
    np.testing.assert_array_equal(as_bytes.colors, mesh.colors)


def test_mesh_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="mask"):
        depth_to_mesh(np.ones((3, 3)), np.ones((2, 3), bool))
    with pytest.raises(InputError, match="nothing to mesh"):
        depth_to_mesh(np.ones((3, 3)), np.zeros((3, 3), bool))
    with pytest.raises(InputError, match="colour image"):
        depth_to_mesh(np.ones((3, 3)), None, colors=np.zeros((3, 3)))
    mesh = depth_to_mesh(np.ones((2, 2)), None)
    with pytest.raises(InputError, match=r"\.obj, \.ply"):
        write_mesh(tmp_path / "mesh.stl", mesh)
    # Like every writer, it creates the folder and leaves no temporary file behind.
    path = write_mesh(tmp_path / "new" / "mesh.obj", mesh)
    assert [p.name for p in path.parent.iterdir()] == ["mesh.obj"]


def read_obj(path):
    vertices, normals, faces = [], [], []
    for line in path.read_text().splitlines():
        kind, *values = line.split()
        if kind == "v":
            vertices.append([float(x) for x in values])
        elif kind == "vn":
            normals.append([float(x) for x in values])
        elif kind == "f":
            faces.append([[int(i) for i in corner.split("//")] for corner in values])
    return np.array(vertices), np.array(normals), np.array(faces)


def read_ply(path):
    data = path.read_bytes()
    head, body = data.split(b"end_header\n", 1)
    lines = head.decode("ascii").splitlines()
    assert lines[:2] == ["ply", "format binary_little_endian 1.0"]
    counts = {ln.split()[1]: int(ln.split()[2]) for ln in lines if ln.startswith("element")}
    types = {"float": "<f4", "uchar": "u1"}
    fields = [(ln.split()[2], types[ln.split()[1]]) for ln in lines
              if ln.startswith("property") and "list" not in ln]
    vertices = np.frombuffer(body, dtype=fields, count=counts["vertex"])
    faces = np.frombuffer(body, dtype=[("n", "u1"), ("i", "<i4", (3,))],
                          offset=vertices.nbytes, count=counts["face"])
    assert len(body) == vertices.nbytes + faces.nbytes
    return vertices, faces


@pytest.fixture
def coloured_mesh():
    surface = plane(3)
    rgb = np.linspace(0, 1, 27).reshape(3, 3, 3)
    return depth_to_mesh(surface.depth, surface.mask, colors=rgb, normals=surface.normals)


def test_write_obj(tmp_path, coloured_mesh):
    path = write_mesh(tmp_path / "relief.obj", coloured_mesh)
    vertices, normals, faces = read_obj(path)
    assert vertices.shape == (9, 6) and normals.shape == (9, 3) and faces.shape == (8, 3, 2)
    np.testing.assert_allclose(vertices[:, :3], coloured_mesh.vertices, rtol=1e-6)
    np.testing.assert_allclose(vertices[:, 3:] * 255, coloured_mesh.colors, atol=1e-4)
    np.testing.assert_allclose(normals, coloured_mesh.normals, atol=1e-6)
    np.testing.assert_array_equal(faces[..., 0], coloured_mesh.faces + 1)  # 1-based
    np.testing.assert_array_equal(faces[..., 1], faces[..., 0])
    assert [p.name for p in tmp_path.iterdir()] == ["relief.obj"]  # no temporary left

    bare = Mesh(coloured_mesh.vertices, coloured_mesh.faces)
    vertices, normals, faces = read_obj(write_mesh(tmp_path / "bare.OBJ", bare))
    assert vertices.shape == (9, 3) and len(normals) == 0
    np.testing.assert_array_equal(faces[..., 0], bare.faces + 1)


def test_write_ply(tmp_path, coloured_mesh):
    vertices, faces = read_ply(write_mesh(tmp_path / "relief.ply", coloured_mesh))
    assert vertices.dtype.names == ("x", "y", "z", "nx", "ny", "nz", "red", "green", "blue")
    assert len(vertices) == 9 and len(faces) == 8
    xyz = np.stack([vertices[k] for k in "xyz"], -1)
    np.testing.assert_array_equal(xyz, coloured_mesh.vertices)
    rgb = np.stack([vertices[k] for k in ("red", "green", "blue")], -1)
    np.testing.assert_array_equal(rgb, coloured_mesh.colors)
    assert (faces["n"] == 3).all()
    np.testing.assert_array_equal(faces["i"], coloured_mesh.faces)

    bare = Mesh(coloured_mesh.vertices, coloured_mesh.faces)
    vertices, faces = read_ply(write_mesh(tmp_path / "bare.ply", bare))
    assert vertices.dtype.names == ("x", "y", "z") and len(faces) == 8
