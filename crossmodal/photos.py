"""Normals for faces in photos: landmarks -> protocol crop -> the one inference path.

A :class:`Predictor` finds the faces of a photo (:mod:`crossmodal.landmarks`, 68 iBUG
points), crops each by the protocol of docs/design.md §4 (square of 1.2x the landmarks'
longer side, centred, padded outside the photo, :func:`~crossmodal.crop.crop_from_landmarks`)
and predicts its normals through :class:`~crossmodal.inference.NormalPredictor` (a
checkpoint's network, or an ONNX export run by onnxruntime), in batches across photos.
Each face comes back as a :class:`FacePrediction`: the normal map of the crop, the facial
mask (the landmarks' convex hull), the crop transform and the landmarks; its
:meth:`~FacePrediction.paste_back` maps the prediction into the photo.

Paste-back leaves the vectors as they are: the crop is a uniform scale plus a translation of
the photo, so the crop and the photo share the camera's axes and a normal in one is the same
vector in the other. What is approximate is the network's view of an off-centre face: it
was trained on crops centred on the optical axis, so for a face seen at an angle ``a`` off
the camera's axis (``a`` ~ 10-20 deg at the edge of a phone photo, ~ 0 for a portrait) its
normals are relative to a view ray tilted by ``a`` from the camera's z axis; they are not
rotated by ``a`` here (docs/design.md §4).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .crop import Crop, crop_from_landmarks, landmark_mask
from .errors import InputError
from .inference import NormalPredictor
from .landmarks import Face, LandmarkDetector, make_detector
from .normals import from_convention, normalize

__all__ = ["BUNDLED_PHOTOS", "FacePrediction", "Predictor"]

log = logging.getLogger(__name__)

#: Two public-domain face photos shipped with the package (assets/photos/ATTRIBUTION.md):
#: the tests, the demo and the notebooks predict them.
BUNDLED_PHOTOS = {name: Path(__file__).parent / "assets" / "photos" / f"{name}.jpg"
                  for name in ("astronaut", "grace_hopper")}

#: The crop side of the protocol (paper §4.1, docs/design.md §4).
CROP_SIZE = 256


@dataclass(frozen=True, eq=False)
class FacePrediction:
    """One face of a photo and its predicted normals.

    Attributes:
        normals: float32 ``(S, S, 3)`` unit normals of the crop in our convention
            (docs/design.md §2), zero outside ``mask``.
        mask: bool ``(S, S)``: the facial mask, the filled convex hull of the landmarks
            in the crop (docs/design.md §4).
        image: float32 ``(S, S, 3)`` RGB in [0, 1]: the crop the network saw (padded
            with black outside the photo).
        crop: the crop transform, photo pixels -> crop pixels.
        face: the detection: landmarks ``(68, 2)`` in photo pixels, box and score.
    """

    normals: np.ndarray
    mask: np.ndarray
    image: np.ndarray
    crop: Crop
    face: Face

    @property
    def landmarks(self) -> np.ndarray:
        """float64 ``(68, 2)`` (x, y) landmarks in photo pixels."""
        return self.face.landmarks

    def paste_back(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """The prediction in the photo's frame (module docstring: the vectors are unchanged).

        Args:
            shape: the photo's ``(H, W, ...)``.

        Returns:
            ``(normals, mask)``: float32 ``(H, W, 3)`` unit normals (zero outside the
            mask) and bool ``(H, W)``: photo pixels whose centre maps inside the facial
            mask. Normals are resampled bilinearly and renormalised; a photo pixel is in
            the mask when it maps onto a mask pixel of the crop (nearest).
        """
        pasted, _ = self.crop.paste_back(self.normals, shape, interpolation="linear")
        inside, covered = self.crop.paste_back(self.mask.astype(np.uint8), shape,
                                               interpolation="nearest")
        mask = inside.astype(bool) & covered
        normals, valid = normalize(pasted, mask=mask)
        return normals.astype(np.float32, copy=False), mask & valid


class Predictor:
    """Photos -> :class:`FacePrediction` per face (module docstring).

    Args:
        normal_predictor: the network's inference path (crops ``(B, 3, S, S)`` ->
            normals ``(B, 3, S, S)``).
        detector: finds faces and their 68 landmarks.
        convention: the convention the network outputs (converted to ours).
        crop_size: side of the crops, in pixels (the protocol's 256). The network runs
            at its own resolution; :class:`~crossmodal.inference.NormalPredictor`
            resizes the crops to it and the predictions back.
    """

    def __init__(self, normal_predictor: NormalPredictor, detector: LandmarkDetector, *,
                 convention: str = "opengl", crop_size: int = CROP_SIZE) -> None:
        if crop_size < 32:
            raise InputError(f"crop size must be at least 32 pixels, got {crop_size}")
        self.normal_predictor = normal_predictor
        self.detector = detector
        self.convention = convention
        self.crop_size = int(crop_size)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike | dict[str, Any], *,
                        device: str | torch.device = "auto", landmarks: str = "dlib",
                        faces: str = "all", min_face: float = 40.0,
                        min_score: float | None = None, batch_size: int = 8,
                        crop_size: int = CROP_SIZE, image_size: int | None = None) -> Predictor:
        """A predictor for a checkpoint (a path or a loaded dict; a ``.onnx`` file written
        by ``crossmodal export`` runs through onnxruntime on the CPU).

        Args:
            device: where the network runs ('auto': CUDA when available); torch only.
            landmarks: the landmark backend (:data:`crossmodal.landmarks.BACKENDS`).
            faces: 'all' faces of a photo, or only the 'largest'.
            min_face: faces whose landmarks span fewer pixels are dropped.
            min_score: detections scoring lower are dropped (None: the backend's default;
                :func:`crossmodal.landmarks.make_detector` gives each backend's scale).
            batch_size: face crops per forward pass.
            crop_size: side of the crops and of the predicted normal maps.
            image_size: the network's resolution (default: the one it was trained at).
        """
        if not isinstance(checkpoint, dict) and Path(checkpoint).suffix.lower() == ".onnx":
            from .onnx_export import load_onnx_predictor, onnx_metadata

            normal_predictor = load_onnx_predictor(checkpoint, batch_size=batch_size)
            convention = onnx_metadata(checkpoint).get("convention", "opengl")
        else:
            from .checkpoint import load_checkpoint, output_convention

            if not isinstance(checkpoint, dict):
                checkpoint = load_checkpoint(checkpoint)
            normal_predictor = NormalPredictor.from_checkpoint(
                checkpoint, device=device, image_size=image_size, batch_size=batch_size)
            convention = output_convention(checkpoint)
        detector = make_detector(landmarks, faces=faces, min_face=min_face,
                                 min_score=min_score, device=str(normal_predictor.device))
        return cls(normal_predictor, detector, convention=convention, crop_size=crop_size)

    def __call__(self, image: np.ndarray) -> list[FacePrediction]:
        """The faces of one photo: float32 ``(H, W, 3)`` RGB in [0, 1] (or uint8), as
        :func:`crossmodal.io.read_photo` returns it; largest face first, [] for none."""
        return self.predict_many([image])[0]

    def predict_many(self, images: Sequence[np.ndarray]) -> list[list[FacePrediction]]:
        """The faces of several photos, their crops run through the network together (in
        batches of the predictor's ``batch_size``)."""
        images = [_as_rgb_float(image) for image in images]
        found = [self.detector(image) for image in images]
        crops = [(i, face, crop_from_landmarks(face.landmarks, self.crop_size))
                 for i, faces in enumerate(found) for face in faces]
        results: list[list[FacePrediction]] = [[] for _ in images]
        if not crops:
            return results
        pixels = np.stack([crop.warp_image(images[i], "area") for i, _, crop in crops])
        batch = torch.from_numpy(pixels).permute(0, 3, 1, 2)
        normals = self.normal_predictor(batch).permute(0, 2, 3, 1).cpu().numpy()
        for (i, face, crop), image, predicted in zip(crops, pixels, normals):
            mask = landmark_mask(crop.transform_points(face.landmarks), predicted.shape)
            ours, valid = normalize(from_convention(predicted, self.convention), mask=mask)
            results[i].append(FacePrediction(normals=ours.astype(np.float32, copy=False),
                                             mask=mask & valid, image=image, crop=crop,
                                             face=face))
        return results


def _as_rgb_float(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise InputError(f"a photo must be an (H, W, 3) RGB array, got shape {image.shape}; "
                         f"read files with crossmodal.io.read_photo")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return image.astype(np.float32, copy=False)
