"""Relief meshes from a depth map, written as OBJ or PLY.

One vertex per mask pixel, two triangles per 2x2 block of mask pixels: the surface a
depth map (measured, or integrated from normals by
:func:`crossmodal.geometry.integrate_normals`) describes, ready for a mesh viewer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import InputError
from ..fileutil import atomic_write
from ..io import quantize
from ..normals import _as_mask
from ..render.camera import Intrinsics

__all__ = ["MESH_FORMATS", "Mesh", "depth_to_mesh", "write_mesh"]

MESH_FORMATS = (".obj", ".ply")


@dataclass
class Mesh:
    """A triangle mesh in our camera frame (+x right, +y up, +z towards the camera).

    Attributes:
        vertices: float32 ``(N, 3)`` positions.
        faces: int64 ``(M, 3)`` 0-based vertex indices, counter-clockwise seen from the
            side the face normal points to.
        normals: float32 ``(N, 3)`` per-vertex unit normals, or None.
        colors: uint8 ``(N, 3)`` per-vertex RGB, or None.
    """

    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray | None = None
    colors: np.ndarray | None = None


def depth_to_mesh(
    depth: np.ndarray,
    mask: np.ndarray | None,
    *,
    intrinsics: Intrinsics | None = None,
    pixel_size: float = 1.0,
    colors: np.ndarray | None = None,
    normals: np.ndarray | None = None,
) -> Mesh:
    """Relief mesh of a depth map.

    Args:
        depth: ``(H, W)`` depth growing away from the camera (:mod:`crossmodal.shapes`).
        mask: ``(H, W)`` surface mask, ``None`` for all pixels. Mask pixels with
            non-finite depth (or non-positive depth with ``intrinsics``) are left out.
        intrinsics: pinhole camera of a z-depth map: vertex ``(u, v)`` is the
            back-projected point ``D ((u - cx) / fx, -(v - cy) / fy, -1)``. ``None``:
            orthographic, vertex ``(u s, -v s, -D)`` with ``s = pixel_size``.
        pixel_size: orthographic pixel spacing in the units of ``depth``.
        colors: optional ``(H, W, 3)`` RGB image, uint8 or float in [0, 1] (clipped).
        normals: optional ``(H, W, 3)`` normal map in our frame, stored per vertex as
            given (zero where it is invalid).

    Returns:
        A :class:`Mesh` with one vertex per kept pixel (row-major order) and two
        triangles per 2x2 block of kept pixels, wound counter-clockwise seen from the
        camera so that a frontal plane's faces point to +z.

    Raises:
        InputError: a depth that is not 2-D, a mask, colour image or normal map of
            another size, a non-positive pixel size, or nothing left to mesh.
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise InputError(f"depth map must be 2-D (H, W), got shape {depth.shape}")
    if not pixel_size > 0:
        raise InputError(f"pixel_size must be positive, got {pixel_size}")
    keep = np.isfinite(depth)
    if intrinsics is not None:
        keep &= depth > 0  # a visible point lies in front of a pinhole camera
    user_mask = _as_mask(mask, depth.shape, "depth map")
    if user_mask is not None:
        keep &= user_mask
    if not keep.any():
        raise InputError("nothing to mesh: the mask is empty or has no finite depth; pass "
                         "the mask of the surface")

    v, u = np.nonzero(keep)  # row-major, the vertex order
    d = depth[keep]
    if intrinsics is None:
        vertices = np.stack([u * pixel_size, -v * pixel_size, -d], axis=-1)
    else:
        vertices = d[:, None] * np.stack(
            [(u - intrinsics.cx) / intrinsics.fx, -(v - intrinsics.cy) / intrinsics.fy,
             -np.ones_like(d)], axis=-1)

    index = np.full(depth.shape, -1, dtype=np.int64)
    index[keep] = np.arange(len(d))
    # Block corners a (v, u), b (v, u+1), c (v+1, u), d (v+1, u+1). With x right and y up
    # (v down), a-c-b and b-c-d run counter-clockwise seen from +z: their normal
    # (c - a) x (b - a) is P_v x P_u, the orientation depth_to_normals uses.
    a, b = index[:-1, :-1], index[:-1, 1:]
    c, dd = index[1:, :-1], index[1:, 1:]
    block = (a >= 0) & (b >= 0) & (c >= 0) & (dd >= 0)
    a, b, c, dd = a[block], b[block], c[block], dd[block]
    faces = np.concatenate([np.stack([a, c, b], -1), np.stack([b, c, dd], -1)])

    if normals is not None:
        normals = _per_pixel(normals, keep, "normal map").astype(np.float32)
    if colors is not None:
        colors = quantize(_per_pixel(colors, keep, "colour image"))
    return Mesh(vertices.astype(np.float32), faces.astype(np.int64), normals, colors)


def _per_pixel(image: np.ndarray, keep: np.ndarray, what: str) -> np.ndarray:
    """The ``(N, 3)`` values of an ``(H, W, 3)`` image at the kept pixels."""
    image = np.asarray(image)
    if image.shape != keep.shape + (3,):
        raise InputError(f"{what} of shape {image.shape} does not match the depth map: "
                         f"expected {keep.shape + (3,)}; resize it to the depth map")
    return image[keep]


def write_mesh(path: str | os.PathLike, mesh: Mesh) -> Path:
    """Write ``mesh`` as ``.obj`` (text) or ``.ply`` (binary little endian).

    OBJ: ``v x y z`` lines (``v x y z r g b`` with colours as floats in [0, 1], the common
    vertex-colour extension), ``vn`` lines when the mesh has normals, and faces with
    1-based indices (``f a//a b//b c//c`` with normals). PLY: vertex properties
    ``x y z`` (float), then ``nx ny nz`` (float) and ``red green blue`` (uchar) when
    present, and faces as ``list uchar int vertex_indices``.

    The file is written to a temporary name beside it and renamed into place, so a
    reader never sees half a mesh.

    Returns:
        The path written.

    Raises:
        InputError: a suffix other than .obj/.ply.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_FORMATS:
        raise InputError(f"unknown mesh format {path.suffix!r} for {path}; use one of "
                         f"{', '.join(MESH_FORMATS)}")
    write = _write_obj if suffix == ".obj" else _write_ply

    def write_file(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f, mesh)

    atomic_write(path, write_file)
    return path


def _write_obj(f: BinaryIO, mesh: Mesh) -> None:
    f.write(b"# crossmodal relief mesh\n")
    vertices = mesh.vertices.astype(np.float64)
    if mesh.colors is not None:
        vertices = np.hstack([vertices, mesh.colors / 255.0])
    np.savetxt(f, vertices, fmt="v" + " %.7g" * vertices.shape[1])
    faces = mesh.faces + 1
    if mesh.normals is not None:
        np.savetxt(f, mesh.normals, fmt="vn %.6g %.6g %.6g")
        faces = np.repeat(faces, 2, axis=1)  # a//a: the vertex's own normal
        np.savetxt(f, faces, fmt="f %d//%d %d//%d %d//%d")
    else:
        np.savetxt(f, faces, fmt="f %d %d %d")


def _write_ply(f: BinaryIO, mesh: Mesh) -> None:
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if mesh.normals is not None:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if mesh.colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertices = np.empty(len(mesh.vertices), dtype=fields)  # packed, as PLY wants
    for i, name in enumerate("xyz"):
        vertices[name] = mesh.vertices[:, i]
    if mesh.normals is not None:
        for i, name in enumerate(("nx", "ny", "nz")):
            vertices[name] = mesh.normals[:, i]
    if mesh.colors is not None:
        for i, name in enumerate(("red", "green", "blue")):
            vertices[name] = mesh.colors[:, i]
    faces = np.empty(len(mesh.faces), dtype=[("n", "u1"), ("index", "<i4", (3,))])
    faces["n"] = 3
    faces["index"] = mesh.faces

    ply_type = {"<f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", "comment crossmodal relief mesh",
              f"element vertex {len(vertices)}"]
    header += [f"property {ply_type[t]} {name}" for name, t in fields]
    header += [f"element face {len(faces)}", "property list uchar int vertex_indices",
               "end_header"]
    f.write(("\n".join(header) + "\n").encode("ascii"))
    f.write(vertices.tobytes())
    f.write(faces.tobytes())
