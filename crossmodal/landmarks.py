"""68-point facial landmarks for photos: one interface over two detector backends.

Every face in a photo needs the 68 iBUG 300-W landmarks before it can be cropped by the
protocol (docs/design.md §4, :func:`crossmodal.crop.crop_from_landmarks`). Two backends
find faces and their landmarks:

- ``"dlib"`` (default): dlib's HOG frontal-face detector and its 68-point shape predictor
  (``shape_predictor_68_face_landmarks.dat`` from the ``face-recognition-models`` package).
  CPU only, fully offline, ~0.1 s for a 512 x 512 photo. Frontal and near-frontal faces.
- ``"face_alignment"``: the ``face-alignment`` package (Bulat & Tzimiropoulos, ICCV 2017):
  the S3FD face detector and the 2D-FAN landmark network, in PyTorch (CPU or CUDA). More
  robust to pose and occlusion; its two weight files are placed by the user in torch.hub's
  checkpoint folder (nothing is downloaded at run time, docs/design.md §9).

Coordinates are OpenCV pixel coordinates (x = column, y = row, pixel centres at integers),
as in :mod:`crossmodal.crop`. Both backends pass through one selection step
(:meth:`LandmarkDetector.__call__`): too small or too unsure faces are dropped and the rest
sorted largest first.

Heavy libraries (dlib, torch, face_alignment) are imported by the backend constructors, so
importing this module is cheap.

Licences: the dlib 68-point model was trained on the iBUG 300-W dataset, whose licence
excludes commercial use (the dlib-models README); check the terms before shipping it.
"""

from __future__ import annotations

import abc
import importlib.util
import logging
import math
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import cv2
import numpy as np

from .errors import CrossmodalError, InputError
from .io import quantize

__all__ = [
    "BACKENDS",
    "FACE_SELECTIONS",
    "Face",
    "LandmarkBackendError",
    "LandmarkDetector",
    "make_detector",
]

logger = logging.getLogger(__name__)

BACKENDS = ("dlib", "face_alignment")
#: ``faces=`` values of :func:`make_detector`.
FACE_SELECTIONS = ("all", "largest")

NUM_LANDMARKS = 68

_DLIB_FIX = "pip install dlib-bin face-recognition-models"
_DLIB_MODEL = "shape_predictor_68_face_landmarks.dat"
#: dlib's HOG detector scans an 80 x 80 window, so it misses faces much smaller than 80
#: pixels; one upsampling (the image doubled) brings that down to ~40, the default min_face.
_DLIB_UPSAMPLE = 1
#: Photos with more pixels than this once doubled are not upsampled (faces below ~80 pixels
#: are then missed): doubling costs 4x the time and memory, for faces so small against such
#: a photo that they are rarely the subject. 2048 x 2048 is still upsampled.
_DLIB_MAX_UPSAMPLED_PIXELS = 4096 * 4096


class LandmarkBackendError(CrossmodalError):
    """A landmark backend cannot run here: its package or model file is missing or
    unreadable. The message names what is missing and how to get it."""


def _one_line(err: BaseException, limit: int = 200) -> str:
    """``err`` for a one-line message: its type and the first line of its text, cut at
    ``limit`` characters (torch.load's refusals run to several paragraphs)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --------------------------------------------------------------------------- faces


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face.

    Attributes:
        landmarks: float64 ``(68, 2)`` read-only array of ``(x, y)`` in the photo's pixel
            coordinates (OpenCV convention: x = column, y = row, pixel centres at
            integers), in iBUG 300-W order (0-16 jaw, 17-26 brows, 27-35 nose, 36-47 eyes,
            48-67 mouth; "left"/"right" as seen in the image, e.g. 36-41 is the eye on the
            image's left).
        box: ``(x0, y0, x1, y1)``, the detector's face box in the same coordinates.
        score: the detector's confidence; its scale depends on the backend: dlib's HOG SVM
            margin (unbounded, 0 is dlib's own threshold, ~1 and above is a clear face),
            S3FD's face probability in [0, 1] for face_alignment.

    Compared by identity (``eq=False``): arrays have no single truth value.
    """

    landmarks: np.ndarray
    box: tuple[float, float, float, float]
    score: float

    def __post_init__(self) -> None:
        landmarks = np.array(self.landmarks, dtype=np.float64)
        if landmarks.shape != (NUM_LANDMARKS, 2):
            raise InputError(f"a face needs ({NUM_LANDMARKS}, 2) landmarks, got shape "
                             f"{landmarks.shape}")
        landmarks.setflags(write=False)
        object.__setattr__(self, "landmarks", landmarks)
        box = tuple(float(v) for v in self.box)
        if len(box) != 4:
            raise InputError(f"a face box is (x0, y0, x1, y1), got {self.box!r}")
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "score", float(self.score))

    @property
    def size(self) -> float:
        """The longer side of the landmarks' bounding box, in pixels (the ``l`` of the crop
        protocol, docs/design.md §4)."""
        extent = self.landmarks.max(axis=0) - self.landmarks.min(axis=0)
        return float(extent.max())


# --------------------------------------------------------------------------- interface


def _as_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """float ``(H, W, 3)`` RGB in [0, 1] (clipped, NaN -> 0), uint8 or uint16 ``(H, W, 3)``
    -> C-contiguous uint8 ``(H, W, 3)``, what both backends' detectors take."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise InputError(f"landmark detection needs an (H, W, 3) RGB image, got shape "
                         f"{image.shape}")
    return np.ascontiguousarray(quantize(image, 8))


class LandmarkDetector(abc.ABC):
    """Finds faces and their 68 landmarks in a photo (build one with :func:`make_detector`).

    Subclasses implement :meth:`_detect`; the selection (size, score, order, ``faces``) is
    done here, the same for every backend.

    Attributes:
        name: the backend, one of :data:`BACKENDS`.
        default_min_score: the score threshold used when ``min_score`` is None.
        faces: 'all' or 'largest'.
        min_face: the smallest :attr:`Face.size` kept, in pixels.
        min_score: the smallest :attr:`Face.score` kept.
    """

    name: str
    default_min_score: float

    def __init__(self, *, faces: str = "all", min_face: float = 40.0,
                 min_score: float | None = None) -> None:
        if faces not in FACE_SELECTIONS:
            raise CrossmodalError(f"unknown faces selection {faces!r}; valid: "
                                  f"{', '.join(FACE_SELECTIONS)}")
        if not (isinstance(min_face, (int, float)) and math.isfinite(min_face)
                and min_face >= 0):
            raise CrossmodalError(f"min_face must be a number of pixels >= 0, got "
                                  f"{min_face!r}")
        if min_score is None:
            min_score = self.default_min_score
        if not (isinstance(min_score, (int, float)) and math.isfinite(min_score)):
            raise CrossmodalError(f"min_score must be a finite number, got {min_score!r}")
        self.faces = faces
        self.min_face = float(min_face)
        self.min_score = float(min_score)

    def __call__(self, image: np.ndarray) -> list[Face]:
        """The faces of ``image``, largest first.

        Args:
            image: float32 ``(H, W, 3)`` RGB in [0, 1] (what :func:`crossmodal.io.read_image`
                returns) or uint8 ``(H, W, 3)`` RGB.

        Returns:
            The faces with ``size >= min_face`` and ``score >= min_score``, sorted by
            :attr:`Face.size` (largest first, ties by score); only the first with
            ``faces='largest'``; empty when there is none.
        """
        found = self._detect(_as_uint8_rgb(image))
        kept = [f for f in found if f.size >= self.min_face and f.score >= self.min_score]
        kept.sort(key=lambda f: (-f.size, -f.score))
        logger.debug("%s: %d face(s) found, %d kept", self.name, len(found), len(kept))
        return kept[:1] if self.faces == "largest" else kept

    @abc.abstractmethod
    def _detect(self, image: np.ndarray) -> list[Face]:
        """Every face the backend finds in a C-contiguous uint8 ``(H, W, 3)`` RGB image, in
        any order. Backends may already drop faces below :attr:`min_score` (their detectors
        take a threshold), never anything :meth:`__call__` would keep."""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(faces={self.faces!r}, min_face={self.min_face}, "
                f"min_score={self.min_score})")


def make_detector(backend: str = "dlib", *, faces: str = "all", min_face: float = 40.0,
                  min_score: float | None = None, device: str = "cpu") -> LandmarkDetector:
    """A landmark detector: call it on an image to get its :class:`Face` list.

    Args:
        backend: 'dlib' (default; CPU, offline, model shipped by face-recognition-models)
            or 'face_alignment' (S3FD + 2D-FAN; weights in torch.hub's checkpoint folder).
        faces: 'all' faces, or only the 'largest'.
        min_face: drop faces whose landmarks' bounding box has a longer side below this many
            pixels (too few pixels to give a useful 256 x 256 crop). dlib upsamples photos
            up to 2048 x 2048 once, so it finds faces down to ~40 pixels (~80 in larger
            photos).
        min_score: drop detections below this score; None: the backend's default (dlib:
            0.0, its own threshold on the SVM margin; face_alignment: 0.5, S3FD's default
            threshold on the face probability).
        device: where face_alignment runs ('cpu', 'cuda', 'cuda:N', 'auto'); dlib always
            runs on the CPU and ignores it.

    Raises:
        CrossmodalError: unknown backend or ``faces`` value, bad ``min_face``/``min_score``.
        LandmarkBackendError: the backend's package or model files are missing.
    """
    if backend == "dlib":
        return DlibDetector(faces=faces, min_face=min_face, min_score=min_score,
                            device=device)
    if backend == "face_alignment":
        return FaceAlignmentDetector(faces=faces, min_face=min_face, min_score=min_score,
                                     device=device)
    raise CrossmodalError(f"unknown landmark backend {backend!r}; valid: {', '.join(BACKENDS)}")


# --------------------------------------------------------------------------- dlib


def _dlib_model_path() -> Path:
    """Where the face-recognition-models package keeps dlib's 68-point model.

    Found without importing the package: its ``__init__`` imports ``pkg_resources``, which
    recent setuptools no longer provide.

    Raises:
        LandmarkBackendError: the package is not installed.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise LandmarkBackendError(f"the dlib landmark backend needs the face-recognition-models "
                                   f"package (dlib's {_DLIB_MODEL}), which is not installed; "
                                   f"{_DLIB_FIX}")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / _DLIB_MODEL


def _dlib_upsample(height: int, width: int) -> int:
    """How many times dlib doubles an ``height x width`` photo before detecting faces:
    :data:`_DLIB_UPSAMPLE`, or 0 above :data:`_DLIB_MAX_UPSAMPLED_PIXELS`."""
    if height * width * 4 ** _DLIB_UPSAMPLE <= _DLIB_MAX_UPSAMPLED_PIXELS:
        return _DLIB_UPSAMPLE
    logger.debug("dlib: %dx%d photo not upsampled (too large), so faces below ~80 pixels may "
                 "be missed", width, height)
    return 0


class DlibDetector(LandmarkDetector):
    """dlib's HOG frontal-face detector + its 68-point shape predictor (Kazemi & Sullivan,
    CVPR 2014) trained on iBUG 300-W; the model file is loaded once, here.

    Scores are the HOG detector's SVM margins (unbounded; dlib's own threshold is 0, ~1 and
    above is a clear frontal face). Boxes are dlib's rectangles as the centres of their
    corner pixels (``right``/``bottom`` inclusive). Landmarks are integer pixel positions
    (dlib rounds them). Detection and landmarks both run on the grey image, which is what
    the shape predictor reads anyway. Photos up to 2048 x 2048 are upsampled once before
    detection, so faces down to ~40 pixels are found (~80 in larger photos).
    """

    name = "dlib"
    default_min_score = 0.0

    def __init__(self, *, faces: str = "all", min_face: float = 40.0,
                 min_score: float | None = None, device: str = "cpu") -> None:
        super().__init__(faces=faces, min_face=min_face, min_score=min_score)
        try:
            import dlib
        except ImportError:
            raise LandmarkBackendError(f"the dlib landmark backend needs the dlib package, "
                                       f"which is not installed; {_DLIB_FIX}") from None
        path = _dlib_model_path()
        if not path.is_file():
            raise LandmarkBackendError(f"dlib's 68-point landmark model {path} not found; "
                                       f"{_DLIB_FIX}")
        try:
            self._predictor = dlib.shape_predictor(str(path))
        except RuntimeError as err:
            raise LandmarkBackendError(f"cannot read dlib's 68-point landmark model {path} "
                                       f"({_one_line(err)}); reinstall it: pip install "
                                       f"--force-reinstall face-recognition-models") from None
        self._detector = dlib.get_frontal_face_detector()
        self.model_path = path
        if str(device) not in ("cpu", "auto"):
            logger.info("the dlib landmark backend runs on the CPU; device %r is not used",
                        device)

    def _detect(self, image: np.ndarray) -> list[Face]:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        upsample = _dlib_upsample(*gray.shape)
        # adjust_threshold: dlib drops detections below it, so a min_score below dlib's own
        # threshold of 0 can still bring back weak faces.
        rects, scores, _ = self._detector.run(gray, upsample, self.min_score)
        faces = []
        for rect, score in zip(rects, scores):
            shape = self._predictor(gray, rect)
            points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
            box = (rect.left(), rect.top(), rect.right(), rect.bottom())
            faces.append(Face(points, box, score))
        return faces


# --------------------------------------------------------------------------- face_alignment


def _file_name(url: str) -> str:
    """The file name torch.hub stores a download under: the URL path's last part."""
    return os.path.basename(urlparse(url).path)


class FaceAlignmentDetector(LandmarkDetector):
    """The face-alignment package: S3FD face detector + 2D-FAN (4 hourglass stacks).

    Its two weight files must already be in torch.hub's checkpoint folder
    (``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME/hub/checkpoints``, by default
    ``~/.cache/torch/hub/checkpoints``) under the names face-alignment downloads them to;
    they are checked before the model is built, so nothing is ever downloaded. The model is
    run without ``torch.compile`` (a one-time compilation that also writes a cache under
    ``~/.cache``) and without flip averaging (``flip_input=False``).

    Scores are S3FD's face probabilities in [0, 1] (default threshold 0.5, S3FD's own).
    Boxes are S3FD's ``(x0, y0, x1, y1)``. Landmarks are 2D-FAN's heatmap maxima mapped
    back to the photo as integer pixel positions (face-alignment rounds them), so expect
    about a pixel of quantisation.

    Time on two CPU cores: ~1.3 s to build, ~0.4 s per 256 x 256 photo with one face (S3FD
    grows with the photo's pixels, 2D-FAN with the number of faces), plus ~7 s once per
    process on the first face: face-alignment compiles its heatmap decoding with numba.
    """

    name = "face_alignment"
    default_min_score = 0.5

    def __init__(self, *, faces: str = "all", min_face: float = 40.0,
                 min_score: float | None = None, device: str = "cpu") -> None:
        super().__init__(faces=faces, min_face=min_face, min_score=min_score)
        try:
            import face_alignment
            from face_alignment.api import models_urls as fan_urls
            from face_alignment.detection.sfd.sfd_detector import models_urls as sfd_urls
        except ImportError as err:
            raise LandmarkBackendError(f"the face_alignment landmark backend needs the "
                                       f"face-alignment package, which is not installed or "
                                       f"broken ({_one_line(err)}); pip install face-alignment"
                                       ) from None
        import torch

        from .device import resolve_device

        torch_device = resolve_device(device)
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        # face-alignment fetches both through torch.hub, which keeps the URL's file name.
        urls = {"2D-FAN": fan_urls["2DFAN-4"], "S3FD": sfd_urls["s3fd"]}
        paths = {what: folder / _file_name(url) for what, url in urls.items()}
        missing = [what for what, path in paths.items() if not path.is_file()]
        if missing:
            listed = ", ".join(f"{paths[w].name} ({w}, {urls[w]})" for w in missing)
            raise LandmarkBackendError(
                f"face_alignment weights not found in {folder}: missing {listed}; download "
                f"them into that folder (torch.hub's checkpoint folder; set TORCH_HOME to use "
                f"another)")
        self.weight_paths = paths
        try:
            self._model = face_alignment.FaceAlignment(
                face_alignment.LandmarksType.TWO_D, device=str(torch_device),
                flip_input=False, face_detector="sfd", compile=False,
                # An explicit path: loaded with weights_only=True, never through a download.
                # The threshold: S3FD drops boxes below it before 2D-FAN sees them.
                face_detector_kwargs={"path_to_detector": str(paths["S3FD"]),
                                      "filter_threshold": self.min_score})
        except (RuntimeError, OSError, EOFError, ValueError, KeyError,
                pickle.UnpicklingError) as err:
            names = ", ".join(path.name for path in paths.values())
            raise LandmarkBackendError(
                f"cannot load face_alignment weights {names} from {folder} "
                f"({_one_line(err)}); download them again: {', '.join(urls.values())}"
            ) from None
        self.device = str(torch_device)

    def _detect(self, image: np.ndarray) -> list[Face]:
        with warnings.catch_warnings():
            # Its "No faces were detected." is our empty list, not a warning.
            warnings.filterwarnings("ignore", message="No faces were detected")
            landmarks, _, boxes = self._model.get_landmarks_from_image(
                image, return_bboxes=True, return_landmark_score=True)
        if landmarks is None:
            return []
        faces = []
        for points, box in zip(landmarks, boxes):
            box = np.asarray(box, dtype=np.float64)
            faces.append(Face(np.asarray(points, dtype=np.float64)[:, :2], tuple(box[:4]),
                              box[4]))
        return faces
