"""Ray-cast rendering of triangle meshes (trimesh + Embree): shaded images, normal maps,
depth, masks and projected landmarks, in the package's camera frame
(:mod:`crossmodal.render.camera`, :mod:`crossmodal.render.raycast`)."""

from importlib import import_module

from .camera import Camera, Intrinsics

# The ray caster loads on first use, so the geometry modules can use the camera's
# Intrinsics without importing trimesh and Embree (nor the shading module raycast needs).
_LAZY = {"RenderResult": "raycast", "render": "raycast"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Camera", "Intrinsics", "RenderResult", "render"]
