"""Synthetic faces: the packaged ICT-FaceKit Light model (:class:`FaceModel`)."""

from .face_model import FaceModel

__all__ = ["FaceModel"]
