"""Ray-cast rendering of triangle meshes: image, normals, depth, mask and landmarks.

One ray per pixel (:meth:`Camera.rays`) is cast with Embree through trimesh
(``trimesh.ray.ray_pyembree.RayMeshIntersector``); Embree only reports which triangle each
ray hits first, and the hit is then solved exactly in float64 against that triangle
(Möller-Trumbore), which gives the ray parameter and the barycentric coordinates in one
vectorised pass. Everything after the cast works on the hit pixels only.

Conventions (:mod:`crossmodal.normals`, :mod:`crossmodal.render.camera`): vertices are in
camera space, +x right, +y up, +z towards the viewer, the scene at negative z; depth is the
z-depth ``-z``; a triangle whose vertices run counter-clockwise as seen by the viewer faces
the viewer (its normal ``(b - a) x (c - a)`` points towards the camera).

Decisions worth knowing:

- **Back faces are flipped.** A ray that hits the back of a triangle (open meshes: the
  inside of the mouth socket seen through the lips) gets that triangle's normal negated,
  so every normal in the map faces the viewer, ``n . (-ray) >= 0``. Smooth normals that
  still lean away from the viewer (grazing pixels at a silhouette, where the interpolated
  vertex normals overshoot) lose their back-facing component: they become perpendicular
  to the ray, the true normal at a silhouette.
- **Specular view vector.** :func:`crossmodal.geometry.shade` takes one view direction
  for the whole image; the renderer passes (0, 0, 1). That is exact for an orthographic
  camera; for a perspective one the true view vector of a pixel is off the axis by the
  angle of its ray (at most half the diagonal field of view, ~14 degrees at 20 degrees),
  which moves the Blinn-Phong half vector, and so highlights, by half that angle. Diffuse
  shading does not depend on the view.
- **Shadows** are hard shadows of directional lights: one ray per lit pixel, from the hit
  point lifted off the surface along its geometric normal, towards the light. A pixel in
  the shadow of a light gets neither diffuse nor specular light from it; the ambient
  term is unchanged. Near the terminator of a coarse mesh
  a pixel whose smooth normal faces the light but whose triangle does not is shadowed by
  the triangle's own neighbours (the usual shadow-terminator artefact); it is dark there
  anyway, as ``n . l`` is close to 0.
- **Landmark visibility** is exact rather than read off the pixel grid: a landmark is
  visible when its vertex projects inside the image, lies in front of the camera, and the
  ray from the camera to the vertex hits nothing more than :data:`LANDMARK_TOLERANCE`
  (relative to the mesh size) before it. Comparing the vertex depth with the depth of
  the nearest pixel would need a tolerance growing with the surface slope (half a pixel
  on a surface at 80 degrees from the view changes the depth by ~3 pixel widths), which
  either rejects landmarks on steep sides or accepts shallow occluders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import trimesh
from trimesh.ray.ray_pyembree import RayMeshIntersector

from ..errors import InputError
from ..geometry.shading import Light, shade
from .camera import Camera

__all__ = ["DEFAULT_ALBEDO", "LANDMARK_TOLERANCE", "SHADOW_OFFSET", "RenderResult", "render"]

#: Albedo of a mesh rendered without vertex colours or texture.
DEFAULT_ALBEDO = 0.7
#: A landmark is hidden when the camera ray to its vertex hits the mesh more than this
#: fraction of the mesh's bounding-box diagonal before the vertex: 2.4 mm on the ICT-FaceKit
#: head (48 cm diagonal). Its eye corners sit up to 0.2 mm behind the eyeballs and its
#: inner lip corners 0.8 mm inside the lips (interpenetrating parts), yet read as visible
#: in a photo; a real occluder (the nose, the far cheek) is centimetres in front.
LANDMARK_TOLERANCE = 5e-3
#: Shadow rays start this fraction of the mesh's bounding-box diagonal off the surface, far
#: above Embree's float32 error (~1e-7 of the box) so a surface never shadows itself.
SHADOW_OFFSET = 1e-4


@dataclass
class RenderResult:
    """What :func:`render` draws.

    Attributes:
        image: float32 ``(H, W, 3)`` shaded RGB, clipped to [0, 1].
        normals: float32 ``(H, W, 3)`` unit normals in our convention, facing the camera;
            (0, 0, 0) outside ``mask``.
        mask: bool ``(H, W)``: pixels whose ray hits the mesh.
        depth: float32 ``(H, W)`` z-depth of the hit, 0 outside ``mask``.
        triangle: int32 ``(H, W)`` index of the hit triangle, -1 on the background.
        landmarks: float32 ``(K, 2)`` projected landmark vertices, pixel ``(u, v)``.
        landmarks_visible: bool ``(K,)``: in the image and not occluded.
        landmarks_depth: float32 ``(K,)`` z-depth of the landmark vertices.
    """

    image: np.ndarray
    normals: np.ndarray
    mask: np.ndarray
    depth: np.ndarray
    triangle: np.ndarray
    landmarks: np.ndarray
    landmarks_visible: np.ndarray
    landmarks_depth: np.ndarray


def render(
    vertices: np.ndarray,
    triangles: np.ndarray,
    camera: Camera,
    *,
    lights: Light | Sequence[Light] = (),
    vertex_colors: np.ndarray | None = None,
    texture: np.ndarray | None = None,
    uvs: np.ndarray | None = None,
    triangle_uvs: np.ndarray | None = None,
    ambient: float = 0.3,
    specular: float = 0.1,
    shininess: float = 20.0,
    environment: np.ndarray | None = None,
    fresnel: float | None = None,
    shadows: bool = False,
    background: np.ndarray | None = None,
    landmarks: np.ndarray | None = None,
    smooth: bool = True,
) -> RenderResult:
    """Ray-cast a triangle mesh: shaded image, normal map, depth, mask and landmarks.

    Args:
        vertices: ``(V, 3)`` camera-space positions (scene at negative z).
        triangles: ``(T, 3)`` vertex indices, counter-clockwise = front.
        camera: the :class:`Camera`; an orthographic one sees the whole mesh, whatever
            its z.
        lights: directional :class:`~crossmodal.geometry.Light` s (none: ambient only).
        vertex_colors: ``(V, 3)`` albedo per vertex, interpolated barycentrically.
        texture: ``(Ht, Wt, 3)`` albedo image, sampled bilinearly (clamped at the border)
            at the interpolated UVs. Colours are floats in [0, 1] or uint8.
        uvs: ``(U, 2)`` texture coordinates in [0, 1], v upwards (OBJ): (0, 0) is the
            bottom-left corner of ``texture``.
        triangle_uvs: ``(T, 3)`` indices into ``uvs``; None when ``uvs`` is per vertex.
        ambient, specular, shininess, environment, fresnel: as for
            :func:`~crossmodal.geometry.shade`. The environment is not shadowed (it
            lights every pixel as an unoccluded sky would).
        shadows: cast a shadow ray per lit pixel and light.
        background: ``(H, W, 3)`` image shown outside the mask (None: black).
        landmarks: ``(K,)`` vertex indices to project; visible when inside the image and
            not hidden by more than :data:`LANDMARK_TOLERANCE` (module docstring).
        smooth: interpolate area-weighted vertex normals (True) or use flat triangle
            normals (False).

    Returns:
        A :class:`RenderResult`. Without vertex colours or texture the albedo is
        :data:`DEFAULT_ALBEDO` grey.

    Raises:
        InputError: arrays of the wrong shape, indices out of range, both vertex colours
            and a texture, or a texture without UVs.
    """
    vertices = _array(vertices, np.float64, (None, 3), "vertices")
    triangles = _array(triangles, np.int64, (None, 3), "triangles")
    if len(triangles) and not (0 <= triangles.min() and triangles.max() < len(vertices)):
        raise InputError(f"triangles index vertices 0..{len(vertices) - 1}, got "
                         f"{triangles.min()}..{triangles.max()}")
    if vertex_colors is not None and texture is not None:
        raise InputError("pass vertex_colors or texture, not both")
    h, w = camera.height, camera.width

    mesh = trimesh.Trimesh(vertices, triangles, process=False)
    intersector = RayMeshIntersector(mesh)
    # trimesh caches the bounding box (Embree's set-up needs it too); its diagonal scales
    # the tolerances, 1 for an empty mesh.
    size = mesh.scale
    # Orthographic rays start just in front of the mesh: Embree works in float32, and a
    # far start would cost it the precision that orders nearby surfaces.
    start_z = 0.0 if mesh.bounds is None else float(mesh.bounds[1, 2]) + 0.01 * size
    origins, directions = camera.rays(start_z=start_z)
    hit_tri = _first_hits(intersector, origins, directions)

    # From here on per-hit vectors are stored as (3, N) rows: numpy is several times
    # faster on three contiguous rows than on N short (3,) rows.
    pixels = np.flatnonzero(hit_tri >= 0)
    tri = hit_tri[pixels]
    o = np.take(origins.T, pixels, axis=1)
    d = np.take(directions.T, pixels, axis=1)
    vt = np.ascontiguousarray(vertices.T)
    corner_ids = np.take(triangles.T, tri, axis=1)
    t, bary, face_n = _solve_hits(o, d, *(np.take(vt, ids, axis=1) for ids in corner_ids))
    ok = np.isfinite(t)
    if not ok.all():
        # A ray grazing its triangle's plane has no well-defined hit: drop it.
        pixels, tri, o, d, t = pixels[ok], tri[ok], o[:, ok], d[:, ok], t[ok]
        corner_ids, bary, face_n = corner_ids[:, ok], bary[:, ok], face_n[:, ok]
    points = o + t * d

    view = -d / _norm(d)
    back = _dot(face_n, view) < 0
    face_n[:, back] *= -1
    face_n /= _norm(face_n)
    if smooth:
        normals = _interpolate(_vertex_normals(vt, triangles), corner_ids, bary)
        normals[:, back] *= -1
        normals -= np.minimum(_dot(normals, view), 0.0) * view
        length = _norm(normals)
        # Vertex normals that cancel (a fin, a crease seen edge-on) leave no direction.
        normals = np.where(length > 1e-9, normals / np.maximum(length, 1e-300), face_n)
    else:
        normals = face_n

    albedo = np.broadcast_to(
        _albedo(vertex_colors, texture, uvs, triangle_uvs, len(vertices), triangles, tri,
                corner_ids, bary), (3, len(tri)))
    lights = [lights] if isinstance(lights, Light) else list(lights)
    radiance = _shade(intersector, points, face_n, normals, albedo, lights, ambient=ambient,
                      environment=environment, specular=specular, shininess=shininess,
                      fresnel=fresnel, shadows=shadows, offset=SHADOW_OFFSET * size)

    image = np.zeros((h * w, 3), np.float32)
    if background is not None:
        image[:] = _colors(background, (h, w, 3), "background").reshape(-1, 3)
    image[pixels] = radiance
    normal_map = np.zeros((h * w, 3), np.float32)
    normal_map[pixels] = normals.T
    depth = np.zeros(h * w, np.float32)
    depth[pixels] = -points[2]
    mask = np.zeros(h * w, bool)
    mask[pixels] = True
    triangle = np.full(h * w, -1, np.int32)
    triangle[pixels] = tri

    lm_uv, lm_visible, lm_depth = _landmarks(intersector, vt, triangles, camera, landmarks,
                                             start_z, LANDMARK_TOLERANCE * size)
    return RenderResult(
        image=np.clip(image, 0.0, 1.0).reshape(h, w, 3),
        normals=normal_map.reshape(h, w, 3),
        mask=mask.reshape(h, w),
        depth=depth.reshape(h, w),
        triangle=triangle.reshape(h, w),
        landmarks=lm_uv.astype(np.float32),
        landmarks_visible=lm_visible,
        landmarks_depth=lm_depth.astype(np.float32),
    )


def _array(values, dtype, shape: tuple[int | None, ...], what: str) -> np.ndarray:
    """``values`` as a ``dtype`` array of ``shape`` (None: any length)."""
    arr = np.asarray(values)
    if arr.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, arr.shape)):
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise InputError(f"{what} must have shape {want}, got {arr.shape}")
    return arr.astype(dtype, copy=False)


def _colors(values, shape: tuple[int | None, ...], what: str) -> np.ndarray:
    """Colours as float64 in [0, 1] (uint8 is scaled by 1/255), checked against
    ``shape`` (None entries: any)."""
    arr = np.asarray(values)
    scale = 1.0 / 255.0 if arr.dtype == np.uint8 else 1.0
    return _array(arr, np.float64, shape, what) * scale


def _first_hits(intersector: RayMeshIntersector, origins: np.ndarray,
                directions: np.ndarray) -> np.ndarray:
    """Index of the first triangle each of the ``(N, 3)`` rays hits, -1 for a miss:
    int64 ``(N,)``."""
    if len(intersector.mesh.faces) == 0 or len(origins) == 0:
        return np.full(len(origins), -1, np.int64)
    return intersector.intersects_first(origins, directions).astype(np.int64)


def _solve_hits(origins: np.ndarray, directions: np.ndarray, a: np.ndarray, b: np.ndarray,
                c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersect each ray with the plane of its triangle (Möller-Trumbore, float64).

    Args:
        origins, directions: ``(3, N)`` rays (directions need not be unit).
        a, b, c: ``(3, N)`` triangle corners.

    Returns:
        ``(t, bary, face_normal)``: ``(N,)`` ray parameters of the hits
        ``origin + t * direction``, ``(3, N)`` barycentric weights of ``a, b, c``, and the
        unnormalised ``(3, N)`` normals ``(b - a) x (c - a)``. Rays parallel to their
        triangle's plane get a non-finite ``t``.
    """
    e1, e2 = b - a, c - a
    p = _cross(directions, e2)
    s = origins - a
    q = _cross(s, e1)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_det = 1.0 / _dot(e1, p)
        b1 = _dot(s, p) * inv_det
        b2 = _dot(directions, q) * inv_det
        t = _dot(e2, q) * inv_det
    return t, np.stack([1.0 - b1 - b2, b1, b2]), _cross(e1, e2)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cross products of the columns of two ``(3, N)`` arrays."""
    return np.stack([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2],
                     a[0] * b[1] - a[1] * b[0]])


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot products of the columns of two ``(3, N)`` arrays: ``(N,)``."""
    return np.einsum("ij,ij->j", a, b)


def _norm(a: np.ndarray) -> np.ndarray:
    """Column lengths of a ``(3, N)`` array, as ``(1, N)``."""
    return np.sqrt(_dot(a, a))[None]


def _vertex_normals(vt: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals ``(3, V)`` of vertices ``vt`` ``(3, V)``; zero
    where no triangle contributes."""
    a, b, c = (np.take(vt, ids, axis=1) for ids in triangles.T)
    # The cross product's length is twice the triangle's area: summing it area-weights.
    face = _cross(b - a, c - a)
    corners = triangles.T.ravel()  # all first corners, then all second, then all third
    summed = np.stack([np.bincount(corners, np.tile(f, 3), minlength=vt.shape[1])
                       for f in face])
    length = _norm(summed)
    return np.divide(summed, length, out=np.zeros_like(summed), where=length > 0)


def _interpolate(values: np.ndarray, corner_ids: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Barycentric interpolation of per-vertex ``values`` ``(C, V)`` at the hits with
    corners ``corner_ids`` ``(3, N)`` and weights ``bary`` ``(3, N)``: ``(C, N)``."""
    return sum(np.take(values, ids, axis=1) * weight for ids, weight in zip(corner_ids, bary))


def _albedo(vertex_colors, texture, uvs, triangle_uvs, n_vertices: int, triangles: np.ndarray,
            tri: np.ndarray, corner_ids: np.ndarray, bary: np.ndarray) -> np.ndarray | float:
    """Albedo at the hits: ``(3, N)`` from colours or texture, else the default grey."""
    if vertex_colors is not None:
        colors = _colors(vertex_colors, (n_vertices, 3), "vertex_colors")
        return _interpolate(colors.T, corner_ids, bary)
    if texture is None:
        return DEFAULT_ALBEDO
    if uvs is None:
        raise InputError("a texture needs uvs (and triangle_uvs unless uvs are per vertex)")
    tex = _colors(texture, (None, None, 3), "texture")
    uvs = _array(uvs, np.float64, (None, 2), "uvs")
    if triangle_uvs is None:
        uv_ids = triangles
    else:
        uv_ids = _array(triangle_uvs, np.int64, (len(triangles), 3), "triangle_uvs")
    if uv_ids.size and not (0 <= uv_ids.min() and uv_ids.max() < len(uvs)):
        raise InputError(f"UV indices must lie in 0..{len(uvs) - 1}, got "
                         f"{uv_ids.min()}..{uv_ids.max()}")
    return _bilinear(tex, _interpolate(uvs.T, uv_ids[tri].T, bary))


def _bilinear(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Sample ``(Ht, Wt, 3)`` at ``(2, N)`` UVs (v up, texel centres at (i + 0.5) / size),
    clamped at the border. Returns ``(3, N)``."""
    ht, wt = texture.shape[:2]
    x = np.clip(uv[0] * wt - 0.5, 0.0, wt - 1)
    y = np.clip((1.0 - uv[1]) * ht - 0.5, 0.0, ht - 1)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, wt - 1), np.minimum(y0 + 1, ht - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = texture[y0, x0] * (1 - fx) + texture[y0, x1] * fx
    bottom = texture[y1, x0] * (1 - fx) + texture[y1, x1] * fx
    return (top * (1 - fy) + bottom * fy).T


def _shade(intersector: RayMeshIntersector, points: np.ndarray, face_n: np.ndarray,
           normals: np.ndarray, albedo: np.ndarray, lights: list[Light], *,
           ambient: float, environment: np.ndarray | None, specular: float,
           shininess: float, fresnel: float | None, shadows: bool,
           offset: float) -> np.ndarray:
    """Radiance ``(N, 3)`` of the hits (``(3, N)`` points, normals and albedo); with
    ``shadows``, each light only reaches the hits that see it (a shadow ray from ``points``
    lifted by ``offset`` along the geometric normals ``face_n``)."""
    # shade() works on images: the hits form a 1 x N one.
    n_img, rho = normals.T[None], albedo.T[None]
    kw = dict(specular=specular, shininess=shininess, fresnel=fresnel)
    if not (shadows and lights):
        return shade(n_img, lights, albedo=rho, ambient=ambient, environment=environment,
                     **kw)[0]
    out = shade(n_img, [], albedo=rho, ambient=ambient, environment=environment, **kw)[0]
    lifted = (points + offset * face_n).T
    for light in lights:
        direction = np.asarray(light.direction)
        # Only hits facing the light can be lit, so only they need a shadow ray.
        facing = np.flatnonzero(direction @ normals > 0)
        rays = np.broadcast_to(direction, (len(facing), 3))
        lit = facing[_first_hits(intersector, lifted[facing], rays) < 0]
        out[lit] += shade(n_img[:, lit], light, albedo=rho[:, lit], ambient=0.0, **kw)[0]
    return out


def _landmarks(intersector: RayMeshIntersector, vt: np.ndarray, triangles: np.ndarray,
               camera: Camera, landmarks: np.ndarray | None, start_z: float,
               tolerance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project landmark vertices (of ``vt``, ``(3, V)``) and test their visibility (module
    docstring).

    Returns:
        ``(uv (K, 2), visible (K,), depth (K,))``.
    """
    if landmarks is None:
        return np.zeros((0, 2)), np.zeros(0, bool), np.zeros(0)
    ids = _array(landmarks, np.int64, (None,), "landmarks")
    if ids.size and not (0 <= ids.min() and ids.max() < vt.shape[1]):
        raise InputError(f"landmarks index vertices 0..{vt.shape[1] - 1}, got "
                         f"{ids.min()}..{ids.max()}")
    uv, depth = camera.project(vt[:, ids].T)
    with np.errstate(invalid="ignore"):
        # The nearest pixel centre, floor(u + 0.5), must be in the image.
        size = np.array([camera.width, camera.height])
        candidates = np.flatnonzero(((uv >= -0.5) & (uv < size - 0.5)).all(axis=1))
    points = vt[:, ids[candidates]]
    if camera.is_perspective:
        # The ray from the pinhole along the point reaches it at t = 1.
        origins, directions = np.zeros_like(points), points
        t_vertex = np.ones(points.shape[1])
    else:
        origins = np.stack([points[0], points[1], np.full(points.shape[1], start_z)])
        directions = np.zeros_like(points)
        directions[2] = -1.0
        t_vertex = start_z - points[2]
    hit = _first_hits(intersector, origins.T, directions.T)
    t_hit = np.full(points.shape[1], np.inf)
    found = np.flatnonzero(hit >= 0)
    corners = (vt[:, triangles[hit[found], k]] for k in range(3))
    t_hit[found] = _solve_hits(origins[:, found], directions[:, found], *corners)[0]
    # A ray grazing the occluder's plane (t_hit nan) does not hide the landmark.
    gap = (t_vertex - t_hit) * _norm(directions)[0]
    visible = np.zeros(len(ids), bool)
    visible[candidates] = ~(gap > tolerance)
    return uv, visible, depth
