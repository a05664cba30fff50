"""Photos -> faces -> normals (crossmodal.photos): the protocol crop of real photos, the
batched inference and paste-back, checked against a network whose output is a known
function of the crop's pixel coordinates."""

import numpy as np
import pytest
import torch
from torch import nn

from crossmodal import io
from crossmodal.crop import crop_from_landmarks, landmark_mask
from crossmodal.inference import NormalPredictor
from crossmodal.landmarks import make_detector
from crossmodal.checkpoint import output_convention
from crossmodal.photos import BUNDLED_PHOTOS, Predictor

CROP = 256


class CoordinateField(nn.Module):
    """A stand-in network whose normal at crop pixel (u, v) of an S x S crop is
    ``normalise((u - c) / S, -(v - c) / S, 0.6)``, c = (S - 1) / 2: pasted back, each photo
    pixel must carry the normal of the crop pixel it maps to. Counts its forward passes."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x, route="image_to_normal", outputs=None):
        b, _, h, w = x.shape
        self.batches.append(b)
        return {"normals": field(torch.arange(w, dtype=torch.float32)[None, :].expand(h, w),
                                 torch.arange(h, dtype=torch.float32)[:, None].expand(h, w),
                                 w).expand(b, 3, h, w)}


def field(u, v, size):
    """The normals of :class:`CoordinateField` at crop coordinates ``u``, ``v`` (arrays of
    any one shape) -> ``(3, ...)``."""
    c = (size - 1) / 2
    lib = torch if isinstance(u, torch.Tensor) else np
    n = lib.stack([(u - c) / size, -(v - c) / size, 0.6 + 0 * u])
    return n / (n ** 2).sum(0) ** 0.5


@pytest.fixture(scope="module")
def detector():
    return make_detector("dlib")


@pytest.fixture(scope="module")
def photos():
    return {name: io.read_photo(path)[0] for name, path in BUNDLED_PHOTOS.items()}


def make_predictor(detector, **kw):
    model = CoordinateField()
    return Predictor(NormalPredictor(model, image_size=None), detector, **kw), model


@pytest.mark.parametrize("name", sorted(BUNDLED_PHOTOS))
def test_each_bundled_photo_gives_one_face_cropped_by_the_protocol(detector, photos, name):
    photo = photos[name]
    predictor, _ = make_predictor(detector)
    [face] = predictor(photo)
    points = face.landmarks
    assert points.shape == (68, 2)
    lo, hi = points.min(0), points.max(0)
    x0, y0, side = face.crop.box
    # The protocol (docs/design.md §4): square of 1.2x the landmarks' longer side, centred.
    assert side == pytest.approx(1.2 * (hi - lo).max(), rel=1e-12)
    np.testing.assert_allclose([x0 + side / 2, y0 + side / 2], (lo + hi) / 2, atol=1e-9)
    assert face.crop.size == CROP and face.normals.shape == (CROP, CROP, 3)
    np.testing.assert_array_equal(face.image, face.crop.warp_image(photo, "area"))
    np.testing.assert_array_equal(
        face.mask, landmark_mask(face.crop.transform_points(points), (CROP, CROP)))
    # The network's output, in our convention, inside the mask and nowhere else.
    u, v = np.meshgrid(np.arange(CROP), np.arange(CROP))
    expected = np.moveaxis(field(u, v, CROP), 0, -1)
    np.testing.assert_allclose(face.normals[face.mask], expected[face.mask], atol=1e-5)
    assert not face.normals[~face.mask].any()
    assert 0.1 < face.mask.mean() < 0.7


@pytest.mark.parametrize("name", sorted(BUNDLED_PHOTOS))
def test_paste_back_inverts_the_crop_and_covers_the_face(detector, photos, name):
    photo = photos[name]
    predictor, _ = make_predictor(detector)
    [face] = predictor(photo)
    crop = face.crop
    # The transform inverts exactly (well within a pixel).
    inverse = crop.inverse()
    points = face.landmarks
    there = crop.transform_points(points)
    back = there @ inverse[:, :2].T + inverse[:, 2]
    np.testing.assert_allclose(back, points, atol=1e-9)

    normals, mask = face.paste_back(photo.shape)
    assert normals.shape == photo.shape and mask.shape == photo.shape[:2]
    # Every photo pixel carries the normal of the crop point it maps to.
    ys, xs = np.nonzero(mask)
    u, v = crop.transform_points(np.stack([xs, ys], 1).astype(float)).T
    expected = np.moveaxis(field(u, v, CROP), 0, -1)
    cos = np.clip((normals[ys, xs] * expected).sum(-1), -1, 1)
    assert np.degrees(np.arccos(cos)).max() < 0.5
    assert not normals[~mask].any()
    # The pasted mask is the landmarks' hull in the photo, to within a pixel at its rim.
    hull = landmark_mask(points, photo.shape)
    assert (mask & hull).sum() / (mask | hull).sum() > 0.97
    inner = cv2_erode(hull)
    assert mask[inner].all()


def cv2_erode(mask):
    import cv2

    return cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def test_a_face_at_the_photo_edge_is_padded_not_shifted(detector, photos):
    photo = photos["astronaut"]
    [face] = detector(photo)
    left = int(face.landmarks[:, 0].min()) + 10  # cut through the face's left side
    cut = np.ascontiguousarray(photo[:, left:])
    predictor, _ = make_predictor(detector)
    [edge] = predictor(cut)
    x0, _, side = edge.crop.box
    assert x0 < 0  # the square reaches out of the photo: kept there, not moved inside
    expected = crop_from_landmarks(edge.landmarks, CROP)
    np.testing.assert_allclose(edge.crop.matrix, expected.matrix)
    # Crop columns that sample nothing within a pixel of the photo (bilinear reach) are
    # black padding; the next ones hold the photo.
    outside = int(np.floor((-1.5 - x0) * CROP / side))
    assert outside > 0 and not edge.image[:, :outside].any()
    assert edge.image[:, outside + 3].any()


def test_faces_of_several_photos_share_forward_passes(detector, photos):
    predictor, model = make_predictor(detector)
    together = predictor.predict_many([photos["astronaut"], photos["grace_hopper"],
                                       np.full((300, 300, 3), 0.5, np.float32)])
    assert model.batches == [2] and [len(r) for r in together] == [1, 1, 0]
    alone = predictor(photos["grace_hopper"])
    np.testing.assert_array_equal(alone[0].normals, together[1][0].normals)
    np.testing.assert_array_equal(alone[0].landmarks, together[1][0].landmarks)
    # uint8 photos are the same photos
    as_uint8 = (photos["astronaut"] * 255).round().astype(np.uint8)
    np.testing.assert_allclose(predictor(as_uint8)[0].landmarks, together[0][0].landmarks)


def test_the_model_convention_is_converted_to_ours(detector, photos):
    assert output_convention({"config": {"model": {}}}) == "opengl"
    assert output_convention({"config": {"source": {"output_convention": "official"}}}) == \
        "official"
    ours, _ = make_predictor(detector)
    theirs, _ = make_predictor(detector, convention="opencv")  # +y down, +z away
    a, b = ours(photos["astronaut"])[0], theirs(photos["astronaut"])[0]
    np.testing.assert_allclose(b.normals, a.normals * np.float32([1, -1, -1]), atol=1e-6)


def test_a_trained_checkpoint_predicts_through_the_shared_path(detector, photos, tmp_path):
    """``Predictor.from_checkpoint`` runs the checkpoint's network at its training size
    (64 px here) on 256 px crops: unit normals inside the mask, finite everywhere."""
    from crossmodal.checkpoint import save_checkpoint
    from crossmodal.models import CrossModalNet

    from conftest import smoke_model

    torch.manual_seed(0)
    config = smoke_model()
    path = save_checkpoint(tmp_path / "tiny.pt", model=CrossModalNet(config),
                           config={"name": "tiny", "model": config.to_dict(),
                                   "data": {"image_size": 64}})
    predictor = Predictor.from_checkpoint(path, device="cpu", faces="largest")
    assert predictor.normal_predictor.image_size == 64
    [face] = predictor(photos["grace_hopper"])
    lengths = np.linalg.norm(face.normals, axis=-1)
    np.testing.assert_allclose(lengths[face.mask], 1, atol=1e-5)
    assert np.isfinite(face.normals).all()
