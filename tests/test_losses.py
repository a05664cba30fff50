"""Training losses (paper §3.3, eq. 1 and 2) against hand computation on tiny tensors."""

import math

import pytest
import torch

from crossmodal.errors import InputError
from crossmodal.models import image_loss, normal_loss
from crossmodal.vectors import EPS


def vectors(*vs, dtype=torch.float64):
    """Vectors as one row of pixels, ``(1, 3, 1, N)``."""
    return torch.tensor(vs, dtype=dtype).T.reshape(1, 3, 1, len(vs))


def at_angle(deg, length=1.0):
    r = math.radians(deg)
    return (length * math.cos(r), length * math.sin(r), 0.0)


# Target (1, 0, 0); predictions at 0, 60, 90 and 180 degrees: cos = 1, 0.5, 0, -1.
ANGLES = (0.0, 60.0, 90.0, 180.0)
COS = (1.0, 0.5, 0.0, -1.0)


def angles_pair(lengths=(1.0, 1.0, 1.0, 1.0), target_length=1.0, requires_grad=False):
    pred = vectors(*(at_angle(a, n) for a, n in zip(ANGLES, lengths)))
    target = vectors(*[(target_length, 0.0, 0.0)] * len(ANGLES))
    return pred.requires_grad_(requires_grad), target


def ones_mask(pred):
    return torch.ones(pred.shape[0], *pred.shape[2:], dtype=torch.bool)


class TestNormalLoss:
    def test_pairs_of_pixels(self):
        pred, target = angles_pair()
        for i in range(4):
            for j in range(4):
                mask = torch.zeros(1, 1, 4, dtype=torch.bool)
                mask[0, 0, [i, j]] = True
                expected = 1 - (COS[i] if i == j else (COS[i] + COS[j]) / 2)
                got = normal_loss(pred, target, mask)
                assert got.item() == pytest.approx(expected, abs=1e-12), (i, j)

    def test_all_four_angles(self):
        pred, target = angles_pair()
        assert normal_loss(pred, target, ones_mask(pred)).item() == pytest.approx(
            1 - sum(COS) / 4, abs=1e-12)  # 1 - 0.5/4 = 0.875
        assert normal_loss(pred, target).item() == pytest.approx(0.875, abs=1e-12)

    def test_identical_and_opposite(self):
        pred, _ = angles_pair()
        assert normal_loss(pred, pred, ones_mask(pred)).item() == pytest.approx(0, abs=1e-12)
        assert normal_loss(pred, -pred, ones_mask(pred)).item() == pytest.approx(2, abs=1e-12)

    def test_unnormalised_inputs(self):
        pred, target = angles_pair(lengths=(3.0, 0.01, 250.0, 7.0), target_length=0.2)
        assert normal_loss(pred, target, ones_mask(pred)).item() == pytest.approx(
            0.875, abs=1e-12)

    def test_huge_and_tiny_finite_vectors(self):
        pred, target = angles_pair(lengths=(1e30, 1e-5, 1e30, 1e20), target_length=1e30)
        for dtype in (torch.float32, torch.float64):
            got = normal_loss(pred.to(dtype), target.to(dtype), ones_mask(pred))
            assert got.dtype == dtype
            assert got.item() == pytest.approx(0.875, abs=1e-6)

    def test_masks_shapes_and_bool_vs_float(self):
        pred, target = angles_pair()
        mask = torch.tensor([[[True, False, True, False]]])
        expected = 1 - (1.0 + 0.0) / 2
        for m in (mask, mask.unsqueeze(1), mask.float(), mask.to(torch.uint8),
                  mask.double().unsqueeze(1)):
            assert normal_loss(pred, target, m).item() == pytest.approx(expected, abs=1e-12)

    def test_float_mask_weights(self):
        pred, target = angles_pair()
        w = torch.tensor([[[0.5, 1.0, 0.25, 0.0]]])
        # sum w (1 - cos) / sum w = (0.5*0 + 1*0.5 + 0.25*1 + 0*2) / 1.75
        expected = (0.5 * 0.0 + 1.0 * 0.5 + 0.25 * 1.0) / 1.75
        assert normal_loss(pred, target, w).item() == pytest.approx(expected, abs=1e-12)

    def test_batch_pooled_over_mask_pixels(self):
        """Two images, 3 and 1 mask pixels: the pixels of the batch weigh the same (not
        the mean of the per-image losses)."""
        pred = torch.cat([vectors(at_angle(0), at_angle(0), at_angle(0), at_angle(0)),
                          vectors(at_angle(180), at_angle(0), at_angle(0), at_angle(0))])
        target = vectors(*[(1.0, 0.0, 0.0)] * 4).expand(2, -1, -1, -1)
        mask = torch.tensor([[[True, True, True, False]], [[True, False, False, False]]])
        pooled = (0 + 0 + 0 + 2) / 4
        per_image = (0 + 2) / 2
        got = normal_loss(pred, target, mask).item()
        assert got == pytest.approx(pooled, abs=1e-12)
        assert got != pytest.approx(per_image)

    def test_invalid_targets_are_excluded(self):
        pred, target = angles_pair()
        bad = target.clone()
        bad[0, :, 0, 2] = 0.0             # zero-length: no direction
        bad[0, 0, 0, 3] = float("nan")     # non-finite
        got = normal_loss(pred, bad, ones_mask(pred))
        assert got.item() == pytest.approx(1 - (1.0 + 0.5) / 2, abs=1e-12)
        bad[0, :, 0, 1] = torch.tensor([float("inf"), 0.0, 0.0])
        bad[0, :, 0, 0] = EPS / 2
        pred.requires_grad_(True)
        got = normal_loss(pred, bad, ones_mask(pred))
        assert got.item() == 0.0
        got.backward()
        assert torch.equal(pred.grad, torch.zeros_like(pred))

    def test_nan_prediction_outside_mask_does_not_leak(self):
        pred, target = angles_pair()
        pred = pred.clone()
        pred[0, :, 0, 3] = float("nan")
        pred.requires_grad_(True)
        mask = torch.tensor([[[True, True, False, False]]])
        loss = normal_loss(pred, target, mask)
        assert loss.item() == pytest.approx(1 - 1.5 / 2, abs=1e-12)
        loss.backward()
        assert torch.isfinite(pred.grad).all()
        assert torch.equal(pred.grad[..., 2:], torch.zeros_like(pred.grad[..., 2:]))

    def test_nan_prediction_inside_mask_is_not_hidden(self):
        pred, target = angles_pair()
        pred[0, 1, 0, 1] = float("nan")
        assert torch.isnan(normal_loss(pred, target, ones_mask(pred)))

    def test_zero_prediction_counts_as_orthogonal(self):
        pred, target = angles_pair()
        pred = pred.clone()
        pred[0, :, 0, 0] = 0.0  # was cos 1, now no direction: cos 0
        pred.requires_grad_(True)
        loss = normal_loss(pred, target, ones_mask(pred))
        assert loss.item() == pytest.approx(1 - (0 + 0.5 + 0 - 1) / 4, abs=1e-12)
        loss.backward()
        assert torch.isfinite(pred.grad).all()

    @pytest.mark.parametrize("mask_kind", ["bool", "float", "target-invalid"])
    def test_empty_mask_is_zero_with_zero_grads(self, mask_kind):
        torch.manual_seed(0)
        pred = torch.randn(2, 3, 4, 5, requires_grad=True)
        target = torch.randn(2, 3, 4, 5)
        mask = torch.zeros(2, 4, 5, dtype=torch.bool)
        if mask_kind == "float":
            mask = mask.float()
        elif mask_kind == "target-invalid":
            mask = ~mask
            target = torch.zeros_like(target)
        loss = normal_loss(pred, target, mask)
        assert loss.item() == 0.0 and torch.isfinite(loss)
        assert loss.grad_fn is not None and loss.requires_grad
        loss.backward()
        assert torch.equal(pred.grad, torch.zeros_like(pred))

    def test_gradient_step_decreases_loss(self):
        torch.manual_seed(0)
        pred = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
        target = torch.randn(2, 3, 8, 8, dtype=torch.float64)
        mask = torch.rand(2, 8, 8) > 0.3
        loss = normal_loss(pred, target, mask)
        loss.backward()
        assert torch.equal(pred.grad * ~mask.unsqueeze(1), torch.zeros_like(pred))
        with torch.no_grad():
            stepped = pred - 0.05 * pred.grad / pred.grad.abs().max()
            assert normal_loss(stepped, target, mask) < loss

    def test_gradient_matches_finite_differences(self):
        torch.manual_seed(1)
        pred = torch.randn(1, 3, 2, 3, dtype=torch.float64, requires_grad=True)
        target = torch.randn(1, 3, 2, 3, dtype=torch.float64)
        mask = torch.tensor([[[1.0, 0.5, 0.0], [1.0, 1.0, 0.25]]], dtype=torch.float64)
        assert torch.autograd.gradcheck(lambda p: normal_loss(p, target, mask), (pred,))

    def test_half_precision_input(self):
        pred, target = angles_pair()
        got = normal_loss(pred.half(), target.half(), ones_mask(pred))
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(0.875, abs=1e-3)

    @pytest.mark.parametrize("bad", ["pred_channels", "target_shape", "mask_shape",
                                     "not_tensor", "int_pred"])
    def test_bad_shapes(self, bad):
        pred, target = angles_pair()
        mask = ones_mask(pred)
        if bad == "pred_channels":
            pred, target = pred[:, :2], target[:, :2]
        elif bad == "target_shape":
            target = target[..., :3]
        elif bad == "mask_shape":
            mask = mask[..., :3]
        elif bad == "not_tensor":
            pred = pred.tolist()
        elif bad == "int_pred":
            pred, target = pred.long(), target.long()
        with pytest.raises(InputError):
            normal_loss(pred, target, mask)


class TestImageLoss:
    def test_hand_computed(self):
        # Pixel 0: error (1, 2, 2) -> 9; pixel 1: (0, 0, 0) -> 0; pixel 2: (0.5, 0, 0) -> 0.25
        target = vectors((0.0, 0.0, 0.0), (0.3, 0.2, 0.1), (0.5, 0.5, 0.5))
        pred = target + vectors((1.0, -2.0, 2.0), (0.0, 0.0, 0.0), (-0.5, 0.0, 0.0))
        full = torch.ones(1, 1, 3, dtype=torch.bool)
        assert image_loss(pred, target, full).item() == pytest.approx((9 + 0 + 0.25) / 3)
        assert image_loss(pred, target).item() == pytest.approx((9 + 0 + 0.25) / 3)
        mask = torch.tensor([[[True, False, True]]])
        assert image_loss(pred, target, mask).item() == pytest.approx((9 + 0.25) / 2)
        assert image_loss(pred, target, mask.unsqueeze(1)).item() == pytest.approx(4.625)
        w = torch.tensor([[[0.5, 1.0, 1.0]]])
        assert image_loss(pred, target, w).item() == pytest.approx((4.5 + 0 + 0.25) / 2.5)

    def test_summed_over_channels(self):
        """A uniform error d in every channel is 3 d^2 per pixel, not d^2."""
        target = torch.rand(2, 3, 4, 4)
        loss = image_loss(target + 0.1, target, torch.ones(2, 4, 4, dtype=torch.bool))
        assert loss.item() == pytest.approx(3 * 0.01, rel=1e-5)

    def test_non_finite_targets_excluded_zero_targets_kept(self):
        target = vectors((0.0, 0.0, 0.0), (float("nan"), 0.0, 0.0), (1.0, 1.0, float("inf")))
        pred = torch.ones_like(target, requires_grad=True)
        loss = image_loss(pred, target, torch.ones(1, 1, 3, dtype=torch.bool))
        assert loss.item() == pytest.approx(3.0)  # only the black pixel: 1+1+1
        loss.backward()
        assert torch.isfinite(pred.grad).all()
        assert torch.equal(pred.grad[..., 1:], torch.zeros_like(pred.grad[..., 1:]))

    def test_nan_prediction_outside_mask_does_not_leak(self):
        target = torch.zeros(1, 3, 1, 2)
        pred = torch.tensor([[[[1.0, float("nan")]]] * 3]).requires_grad_(True)
        loss = image_loss(pred, target, torch.tensor([[[True, False]]]))
        assert loss.item() == pytest.approx(3.0)
        loss.backward()
        assert torch.equal(pred.grad[..., 1], torch.zeros(1, 3, 1))

    @pytest.mark.parametrize("float_mask", [False, True])
    def test_empty_mask_is_zero_with_zero_grads(self, float_mask):
        torch.manual_seed(0)
        pred = torch.rand(2, 3, 4, 4, requires_grad=True)
        mask = torch.zeros(2, 1, 4, 4, dtype=torch.float32 if float_mask else torch.bool)
        loss = image_loss(pred, torch.rand(2, 3, 4, 4), mask)
        assert loss.item() == 0.0 and loss.grad_fn is not None
        loss.backward()
        assert torch.equal(pred.grad, torch.zeros_like(pred))

    def test_gradient_direction_and_value(self):
        torch.manual_seed(0)
        pred = torch.rand(1, 3, 5, 5, dtype=torch.float64, requires_grad=True)
        target = torch.rand(1, 3, 5, 5, dtype=torch.float64)
        mask = torch.rand(1, 5, 5) > 0.4
        loss = image_loss(pred, target, mask)
        loss.backward()
        n = mask.sum()
        expected = 2 * (pred - target).detach() * mask.unsqueeze(1) / n
        assert torch.allclose(pred.grad, expected)
        with torch.no_grad():
            assert image_loss(pred - 0.1 * pred.grad, target, mask) < loss

    def test_bad_shapes(self):
        with pytest.raises(InputError, match="differ in shape"):
            image_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 3))
        with pytest.raises(InputError, match="mask"):
            image_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2),
                       torch.ones(2, 2, 2, dtype=torch.bool))
        with pytest.raises(InputError):
            image_loss(torch.zeros(3, 2, 2), torch.zeros(3, 2, 2))


def test_exported_from_models_package():
    import crossmodal.models as m
    assert {"normal_loss", "image_loss"} <= set(m.__all__)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("loss_fn", [normal_loss, image_loss])
def test_on_cuda_with_cpu_target_and_mask(loss_fn):
    pred, target = angles_pair()
    mask = torch.tensor([[[True, True, False, True]]])
    expected = loss_fn(pred, target, mask)
    p = pred.cuda().requires_grad_(True)
    got = loss_fn(p, target, mask)
    assert got.device.type == "cuda"
    assert got.item() == pytest.approx(expected.item(), abs=1e-12)
    got.backward()
    assert torch.isfinite(p.grad).all()


def test_normal_angle_loss_is_the_mean_angle_in_radians():
    from crossmodal.models.losses import normal_angle_loss
    target = torch.zeros(1, 3, 2, 2)
    target[:, 2] = 1.0
    pred = torch.zeros(1, 3, 2, 2)
    angles = torch.tensor([[0.0, 30.0], [60.0, 90.0]]) * math.pi / 180
    pred[0, 0], pred[0, 2] = 2 * torch.sin(angles), 2 * torch.cos(angles)  # any length
    mask = torch.tensor([[[True, True], [True, False]]])
    loss = normal_angle_loss(pred.requires_grad_(), target, mask)
    assert loss.item() == pytest.approx((0 + 30 + 60) / 3 * math.pi / 180, abs=1e-3)
    loss.backward()
    assert torch.isfinite(pred.grad).all()  # also at the exact match (clamped)
    assert pred.grad[0, :, 1, 1].abs().max() == 0  # masked out
    # Equal pull at every error: the gradient along the angle is 1/3 rad per rad for
    # each of the three pixels, where 1 - cos would give sin(angle) / 3.
    tangential = -pred.grad[0, 0, 0, 1] * math.cos(angles[0, 1]) \
        + pred.grad[0, 2, 0, 1] * math.sin(angles[0, 1])
    assert (-tangential * 2).item() == pytest.approx(1 / 3, rel=1e-3)


def test_normal_angle_is_a_schedule_loss_term():
    from crossmodal.config import ScheduleConfig
    from crossmodal.models.losses import LOSS_TERMS, normal_angle_loss
    assert LOSS_TERMS["normal_angle"] == ("normals", normal_angle_loss)
    ScheduleConfig(loss_weights={"normal_to_normal": {"normal_angle": 1.0},
                                 "image_to_normal": {"normal_angle": 1.0, "image": 1.0},
                                 "image_to_image": {"image": 1.0}})
