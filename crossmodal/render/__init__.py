"""Ray-cast rendering of triangle meshes (trimesh + Embree): shaded images, normal maps,
depth, masks and projected landmarks, in the package's camera frame
(:mod:`crossmodal.render.camera`, :mod:`crossmodal.render.raycast`)."""

from .camera import Camera
from .raycast import RenderResult, render

__all__ = ["Camera", "RenderResult", "render"]
