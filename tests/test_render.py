"""Ray-cast renderer: every output checked against an analytic answer."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from scipy.ndimage import distance_transform_edt

from crossmodal.errors import InputError
from crossmodal.geometry import Light
from crossmodal.render import Camera, Intrinsics, render
from crossmodal.render.raycast import LANDMARK_TOLERANCE
from crossmodal.shapes import orthographic_sphere, perspective_sphere

SIZE = 256
SPHERE_Z = -3.0
ORTHO_SCALE = 0.01  # world units per pixel: the unit sphere is 100 px in radius


@pytest.fixture(scope="module")
def icosphere() -> trimesh.Trimesh:
    # 81,920 triangles, edges of at most 0.0207: the inscribed polyhedron is within
    # e^2 / 6 = 7.1e-5 of the unit sphere (checked in test_sphere_tessellation_is_fine).
    return trimesh.creation.icosphere(subdivisions=6)


def sphere_gap(mesh: trimesh.Trimesh) -> float:
    """Largest distance between the unit sphere and its inscribed triangles: 1 minus the
    distance from the centre to the plane of the triangle with the largest circumradius."""
    return float(1.0 - np.abs((mesh.face_normals * mesh.triangles_center).sum(1)).min())


def test_sphere_tessellation_is_fine(icosphere):
    assert len(icosphere.faces) >= 20_000
    assert sphere_gap(icosphere) < 1e-4


def cameras() -> dict[str, Camera]:
    return {"perspective": Camera.perspective(SIZE, 45.0),
            "orthographic": Camera(SIZE, SIZE, None, ORTHO_SCALE)}


def analytic_sphere(kind: str, camera: Camera):
    """Depth (world units), normals and mask of the unit sphere at z = SPHERE_Z."""
    if kind == "perspective":
        return perspective_sphere(SIZE, camera.intrinsics, 1.0, -SPHERE_Z)
    s = orthographic_sphere(SIZE, radius=1.0 / ORTHO_SCALE, distance=-SPHERE_Z / ORTHO_SCALE)
    s.depth *= ORTHO_SCALE
    return s


@pytest.mark.parametrize("kind", ["perspective", "orthographic"])
def test_sphere_normals_depth_and_mask(icosphere, kind):
    camera = cameras()[kind]
    result = render(icosphere.vertices + [0, 0, SPHERE_Z], icosphere.faces, camera)
    truth = analytic_sphere(kind, camera)

    # Mask: pixel centres whose ray meets the sphere (orthographic: the disc pi r^2 / s^2).
    area = np.pi / ORTHO_SCALE**2 if kind == "orthographic" else truth.mask.sum()
    assert abs(result.mask.sum() - area) < 0.01 * area
    assert (result.triangle >= 0).sum() == result.mask.sum()
    assert not result.normals[~result.mask].any() and not result.depth[~result.mask].any()

    inner = distance_transform_edt(truth.mask) > 2  # more than 2 px inside the silhouette
    assert result.mask[inner].all()
    cos = np.clip((result.normals[inner] * truth.normals[inner]).sum(-1), -1, 1)
    assert np.degrees(np.arccos(cos)).max() < 1.0

    # The polyhedron is inscribed: along a ray its surface lies at most gap / cos(incidence)
    # behind the sphere, where cos(incidence) = n . (-ray).
    if kind == "perspective":
        k = camera.intrinsics
        v, u = np.mgrid[0:SIZE, 0:SIZE]
        rays = np.stack([(u - k.cx) / k.fx, -(v - k.cy) / k.fy, -np.ones(u.shape)], -1)
        rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    else:
        rays = np.broadcast_to([0.0, 0.0, -1.0], truth.normals.shape)
    incidence = -(truth.normals * rays).sum(-1)[inner]
    error = np.abs(result.depth[inner] - truth.depth[inner])
    # z-depth error = distance along the ray times |ray_z| <= distance.
    assert np.all(error <= sphere_gap(icosphere) / incidence + 1e-5)
    assert error.max() < 1e-3

    # Every normal is unit and faces the viewer.
    n = result.normals[result.mask]
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)
    view = -rays[result.mask] if kind == "perspective" else np.array([0.0, 0.0, 1.0])
    assert ((n * view).sum(-1) >= -1e-6).all()


def test_flat_normals_are_face_normals(icosphere):
    result = render(icosphere.vertices + [0, 0, SPHERE_Z], icosphere.faces,
                    cameras()["orthographic"], smooth=False)
    tri = result.triangle[result.mask]
    np.testing.assert_allclose(result.normals[result.mask], icosphere.face_normals[tri],
                               atol=1e-6)


def two_spheres(icosphere):
    """A small sphere (r 0.5) in front of a big one (r 1), partly hiding it."""
    front = (np.array([0.0, 0.0, -3.0]), 0.5)
    back = (np.array([0.5, 0.2, -5.0]), 1.0)
    n = len(icosphere.vertices)
    vertices = np.concatenate([icosphere.vertices * r + c for c, r in (front, back)])
    faces = np.concatenate([icosphere.faces, icosphere.faces + n])
    return vertices, faces, [front, back], n


def expected_visibility(points, origins, spheres, margin):
    """Analytic visibility of sphere points seen along rays from ``origins``: True, False,
    or None (within ``margin`` of a visibility boundary: not tested)."""
    out = []
    for p, o in zip(points, origins):
        d = (p - o) / np.linalg.norm(p - o)
        hidden, ambiguous = False, False
        for c, r in spheres:
            # Distance from the centre to the ray, and the ray parameter at the closest point.
            t_c = (c - o) @ d
            miss = np.linalg.norm(o + t_c * d - c) - r
            t_p = (p - o) @ d
            on_it = abs(np.linalg.norm(p - c) - r) < 1e-6
            if on_it:
                # The point's own sphere hides it when the point faces away from the ray.
                facing = -(p - c) @ d / r
                hidden |= facing < -margin
                ambiguous |= abs(facing) <= margin
            elif t_c < t_p:
                hidden |= miss < -margin
                ambiguous |= abs(miss) <= margin
        out.append(None if ambiguous and not hidden else not hidden)
    return out


@pytest.mark.parametrize("kind", ["perspective", "orthographic"])
def test_landmark_visibility(icosphere, kind):
    vertices, faces, spheres, n_front = two_spheres(icosphere)
    camera = (Camera.perspective(SIZE, 40.0) if kind == "perspective"
              else Camera(SIZE, SIZE, None, 0.012))
    rng = np.random.default_rng(0)
    ids = np.concatenate([rng.choice(n_front, 100, replace=False),
                          n_front + rng.choice(len(icosphere.vertices), 400, replace=False)])
    points = vertices[ids]
    origins = (np.zeros_like(points) if kind == "perspective"
               else points * [1, 1, 0] + [0, 0, 10])
    expected = expected_visibility(points, origins, spheres, margin=0.05)
    testable = np.array([e is not None for e in expected])
    expected = np.array([bool(e) for e in expected])

    result = render(vertices, faces, camera, landmarks=ids)
    uv, depth = camera.project(points)
    np.testing.assert_allclose(result.landmarks, uv, atol=1e-4)
    np.testing.assert_allclose(result.landmarks_depth, depth, rtol=1e-6)
    assert testable.sum() > 300 and expected[testable].sum() > 50
    assert (~expected[testable]).sum() > 100  # both self-occluded and hidden by the front
    np.testing.assert_array_equal(result.landmarks_visible[testable], expected[testable])

    # A visible landmark lands on a rendered pixel of its own surface whose depth is the
    # landmark's, up to the depth change over half a pixel diagonal on the local slope.
    # Landmarks within a pixel of a silhouette may round onto the background: only those
    # seen at less than 72 degrees from their normal are checked.
    centres = np.where((ids < n_front)[:, None], spheres[0][0], spheres[1][0])
    normals = points - centres
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    rays = (points - origins) / np.linalg.norm(points - origins, axis=1, keepdims=True)
    cos = -(normals * rays).sum(1)
    vis = np.flatnonzero(result.landmarks_visible & testable & (cos > 0.3))
    assert len(vis) > 50
    col, row = np.floor(result.landmarks[vis] + 0.5).astype(int).T
    assert result.mask[row, col].all()
    on_front = result.triangle[row, col] < len(icosphere.faces)
    np.testing.assert_array_equal(on_front, ids[vis] < n_front)
    footprint = depth[vis] / camera.intrinsics.fx if kind == "perspective" else 0.012
    slope_tol = 0.71 * footprint * np.sqrt(1 - cos[vis]**2) / cos[vis] + 1e-3
    assert np.all(np.abs(result.depth[row, col] - depth[vis]) <= slope_tol)


@pytest.mark.parametrize("factor, visible", [(0.5, True), (2.0, False)])
def test_landmark_tolerance(factor, visible):
    # A landmark at the centre of a plane, under a small square floating `gap` in front.
    plane = np.array([[-2, -2, 0], [2, -2, 0], [2, 2, 0], [-2, 2, 0], [0, 0, 0]], float)
    fan = np.array([[0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]])
    # The gap is `factor` tolerances of the mesh's diagonal sqrt(4^2 + 4^2 + gap^2).
    k = factor * LANDMARK_TOLERANCE
    gap = np.sqrt(32.0) * k / np.sqrt(1 - k**2)
    cover, cover_faces = quad(z=gap, half=0.1)
    vertices = np.concatenate([plane, cover]) + [0, 0, -4.0]
    faces = np.concatenate([fan, cover_faces + 5])
    assert trimesh.Trimesh(vertices, faces).scale * k == pytest.approx(gap)
    for camera in (Camera.perspective(64, 40.0), Camera(64, 64, None, 0.1)):
        result = render(vertices, faces, camera, landmarks=[4])
        assert result.landmarks_visible[0] == visible


def test_landmarks_outside_the_image_are_not_visible(icosphere):
    camera = Camera(64, 64, None, 0.01)  # sees |x|, |y| < 0.32 of the unit sphere
    vertices = icosphere.vertices + [0, 0, -3]
    top = int(np.argmax(vertices[:, 2]))
    side = int(np.argmax(vertices[:, 0] - np.abs(vertices[:, 1])))  # (1, 0, -3): outside
    result = render(vertices, icosphere.faces, camera, landmarks=[top, side])
    np.testing.assert_array_equal(result.landmarks_visible, [True, False])
    assert result.landmarks[1, 0] > 64
    empty = render(vertices, icosphere.faces, camera)
    assert empty.landmarks.shape == (0, 2) and empty.landmarks_visible.shape == (0,)


def quad(z: float = -2.0, half: float = 1.0, x0: float = 0.0, y0: float = 0.0):
    """A square facing the camera (counter-clockwise seen from +z), two triangles."""
    vertices = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], float) * half
    vertices += [x0, y0, z]
    return vertices, np.array([[0, 1, 2], [0, 2, 3]])


@pytest.mark.parametrize("camera", [Camera.perspective(64, 40.0), Camera(64, 64, None, 0.01)],
                         ids=["perspective", "orthographic"])
@pytest.mark.parametrize("winding", ["front", "back"])
def test_frontal_plane_shading_is_exact(camera, winding):
    vertices, faces = quad(z=-2.0, half=5.0)
    if winding == "back":
        faces = faces[:, ::-1]  # seen from behind: the normal is flipped towards the viewer
    albedo = np.array([0.5, 0.25, 0.8])
    light = Light((0.0, 0.0, 1.0), intensity=0.6)
    result = render(vertices, faces, camera, lights=[light],
                    vertex_colors=np.tile(albedo, (4, 1)), ambient=0.2, specular=0.1)
    assert result.mask.all()
    np.testing.assert_allclose(result.normals, np.broadcast_to([0, 0, 1.0], (64, 64, 3)),
                               atol=1e-6)
    np.testing.assert_allclose(result.depth, 2.0, rtol=1e-6)
    # albedo * (ambient + intensity * n.l) + specular * intensity * (n.h)^shininess, n.h = 1
    expected = albedo * (0.2 + 0.6) + 0.1 * 0.6
    np.testing.assert_allclose(result.image, np.broadcast_to(expected, (64, 64, 3)), rtol=1e-5)


def test_cast_shadow_matches_its_projection():
    # Orthographic, 0.02 units per pixel. A unit square at z = -2 over a big plane at
    # z = -4; the light comes from the right at 45 degrees, so the square's shadow is the
    # square moved 2 units to the left (dz * l_x / l_z), clear of the square itself.
    s, size = 0.02, 256
    camera = Camera(size, size, None, s)
    big_v, big_f = quad(z=-4.0, half=4.0)
    small_v, small_f = quad(z=-2.0, half=0.5, x0=0.5013, y0=0.0031)
    vertices = np.concatenate([big_v, small_v])
    faces = np.concatenate([big_f, small_f + 4])
    light = Light((1.0, 0.0, 1.0))
    kw = dict(lights=[light], ambient=0.25, specular=0.0)
    lit = render(vertices, faces, camera, **kw)
    shadowed = render(vertices, faces, camera, shadows=True, **kw)

    grey = 0.7  # default albedo
    on_big = shadowed.triangle < 2
    dark = on_big & np.isclose(shadowed.image[..., 0], grey * 0.25, atol=1e-6)
    v, u = np.mgrid[0:size, 0:size]
    x, y = (u - (size - 1) / 2) * s, -(v - (size - 1) / 2) * s
    expected = (np.abs(x + 2.0 - 0.5013) < 0.5) & (np.abs(y - 0.0031) < 0.5)
    assert expected.sum() == pytest.approx(1 / s**2, rel=0.05)
    assert (dark != expected).sum() <= 0.01 * expected.sum()
    # Outside the shadow nothing changes, and without shadows nothing is dark.
    np.testing.assert_allclose(shadowed.image[~dark], lit.image[~dark], atol=1e-6)
    assert not np.isclose(lit.image[..., 0][on_big], grey * 0.25, atol=1e-6).any()
    # The lit square and plane: albedo * (ambient + cos 45).
    np.testing.assert_allclose(shadowed.image[~dark & shadowed.mask],
                               grey * (0.25 + np.sqrt(0.5)), rtol=1e-5)


def checker() -> tuple[np.ndarray, np.ndarray]:
    """An 8 x 8 uint8 texture of 4 x 4 cells (2 x 2 texels each) of distinct colours, and
    the float colour of cell (row, col) counted from the top-left."""
    rng = np.random.default_rng(3)
    cells = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return np.repeat(np.repeat(cells, 2, axis=0), 2, axis=1), cells / 255.0


@pytest.mark.parametrize("layout", ["per_vertex", "triangle_uvs"])
def test_texture_samples_the_right_cells(layout):
    s, size = 0.01, 256  # the quad [-1, 1]^2 covers 200 x 200 px
    camera = Camera(size, size, None, s)
    vertices, faces = quad(z=-2.0)
    uvs = (vertices[:, :2] + 1) / 2  # (0, 0) bottom-left, v up
    kw = dict(uvs=uvs) if layout == "per_vertex" else dict(
        uvs=uvs[::-1].copy(), triangle_uvs=3 - faces)
    texture, cells = checker()
    result = render(vertices, faces, camera, texture=texture, ambient=1.0, **kw)
    for row in range(4):
        for col in range(4):
            # Cell centre in UV, then in the world, then in pixels.
            x = 2 * (col + 0.5) / 4 - 1
            y = 2 * (1 - (row + 0.5) / 4) - 1
            u, v = np.floor(camera.project(np.array([[x, y, -2.0]]))[0][0] + 0.5).astype(int)
            np.testing.assert_allclose(result.image[v, u], cells[row, col], atol=1e-6)


def test_vertex_colours_interpolate_barycentrically():
    camera = Camera(64, 64, None, 0.035)  # sees |x|, |y| < 1.12
    vertices, faces = quad(z=-2.0, half=1.2)
    # An affine colour of position is reproduced exactly by barycentric interpolation.
    colour = lambda p: np.stack([(p[..., 0] + 1.2) / 2.4, (p[..., 1] + 1.2) / 2.4,  # noqa: E731
                                 np.full(p.shape[:-1], 0.25)], -1)
    result = render(vertices, faces, camera, vertex_colors=colour(vertices), ambient=1.0)
    assert result.mask.all()
    v, u = np.mgrid[0:64, 0:64]
    points = camera.unproject(np.stack([u, v], -1).reshape(-1, 2), np.full(64 * 64, 2.0))
    np.testing.assert_allclose(result.image.reshape(-1, 3), colour(points), atol=1e-6)


def test_background_is_composited_outside_the_mask(icosphere):
    camera = Camera(32, 32, None, 0.05)
    background = np.zeros((32, 32, 3), np.uint8)
    background[..., 1] = 255
    result = render(icosphere.vertices + [0, 0, -3], icosphere.faces, camera,
                    background=background)
    assert (~result.mask).any()
    np.testing.assert_array_equal(result.image[~result.mask], [[0, 1, 0]] * (~result.mask).sum())
    np.testing.assert_allclose(result.image[result.mask], 0.3 * 0.7, rtol=1e-6)  # ambient


@pytest.mark.parametrize("camera", [Camera(40, 30, Intrinsics(50.0, 55.0, 19.0, 16.5)),
                                    Camera(40, 30, None, 0.05)],
                         ids=["perspective", "orthographic"])
def test_project_inverts_the_rays(camera):
    rng = np.random.default_rng(1)
    origins, directions = camera.rays(start_z=4.0)
    assert origins.shape == directions.shape == (40 * 30, 3)
    t = rng.uniform(4.5, 9.0, len(origins))
    points = origins + t[:, None] * directions
    uv, depth = camera.project(points)
    np.testing.assert_allclose(uv, camera.pixel_grid(), atol=1e-9)
    np.testing.assert_allclose(depth, t if camera.is_perspective else t - 4.0, atol=1e-12)

    # Random points: project, then unproject back.
    points = rng.uniform(-3, 3, (500, 3)) + [0, 0, -6]
    uv, depth = camera.project(points)
    np.testing.assert_allclose(camera.unproject(uv, depth), points, atol=1e-9)


def test_camera_checks_and_perspective_constructor():
    camera = Camera.perspective(128, 30.0)
    assert camera.intrinsics == Intrinsics.centred(128, 30.0)
    assert (camera.width, camera.height) == (128, 128)
    uv, _ = camera.project(np.array([[0.0, 0.0, 1.0]]))  # behind the pinhole
    assert np.isnan(uv).all()
    with pytest.raises(InputError, match="ortho_scale"):
        Camera(8, 8, None, 0.0)
    with pytest.raises(InputError, match="size"):
        Camera(0, 8)


def test_bad_inputs_fail_clearly():
    vertices, faces = quad()
    camera = Camera(8, 8, None, 0.3)
    with pytest.raises(InputError, match="not both"):
        render(vertices, faces, camera, vertex_colors=np.ones((4, 3)),
               texture=np.ones((2, 2, 3)), uvs=np.zeros((4, 2)))
    with pytest.raises(InputError, match="index vertices"):
        render(vertices, faces + 2, camera)
    with pytest.raises(InputError, match="needs uvs"):
        render(vertices, faces, camera, texture=np.ones((2, 2, 3)))
    with pytest.raises(InputError, match="vertex_colors"):
        render(vertices, faces, camera, vertex_colors=np.ones((3, 3)))
