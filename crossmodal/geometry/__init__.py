"""Geometry of normal maps: depth <-> normals, relief meshes and relighting.

Everything follows the package conventions: normals in camera space (+x right, +y up,
+z towards the camera, :mod:`crossmodal.normals`), pixels ``(u, v)`` with u right and v
down, and depth growing away from the camera (:mod:`crossmodal.shapes`).
"""

from .depth import depth_to_normals
from .integrate import INTEGRATION_METHODS, integrate_normals
from .mesh import MESH_FORMATS, Mesh, depth_to_mesh, write_mesh
from .photometric import photometric_stereo
from .shading import Light, relight_views, shade

__all__ = [
    "INTEGRATION_METHODS",
    "MESH_FORMATS",
    "Light",
    "Mesh",
    "depth_to_mesh",
    "depth_to_normals",
    "integrate_normals",
    "photometric_stereo",
    "relight_views",
    "shade",
    "write_mesh",
]
