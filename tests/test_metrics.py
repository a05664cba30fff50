"""Angular-error metrics (docs/design.md §6) on hand-built normal maps with known answers."""

import json
import math
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from crossmodal.errors import InputError
from crossmodal.metrics import AngularErrorMeter, angular_error, summarize

BIN = 0.01  # the meter's default histogram resolution, the median's precision


def flat(summary):
    """A summary with "below" flattened, for pytest.approx (which rejects nested dicts)."""
    out = {k: v for k, v in summary.items() if k != "below"}
    out.update({f"below_{k}": v for k, v in summary["below"].items()})
    return out


def assert_same(got, expected, rel=1e-9, abs=1e-9):
    assert flat(got) == pytest.approx(flat(expected), rel=rel, abs=abs, nan_ok=True)


def pair(angles_deg, shape=None):
    """Target (0, 0, 1) and a prediction tilted by each angle, as (1, 3, 1, N) maps.

    The tilt axis changes from pixel to pixel so the angle is not always in one plane.
    """
    n = len(angles_deg)
    pred = torch.zeros(1, 3, 1, n, dtype=torch.float64)
    for i, a in enumerate(angles_deg):
        r, phi = math.radians(a), 0.7 * i
        pred[0, :, 0, i] = torch.tensor([math.sin(r) * math.cos(phi),
                                         math.sin(r) * math.sin(phi), math.cos(r)])
    target = torch.zeros_like(pred)
    target[:, 2] = 1.0
    pred, target = pred.float(), target.float()
    if shape is not None:
        pred, target = pred.reshape(shape), target.reshape(shape)
    return pred, target


def test_identical_maps_give_zero():
    gen = torch.Generator().manual_seed(0)
    n = torch.randn(2, 3, 5, 7, generator=gen)
    err, valid = angular_error(n, n.clone())
    assert err.shape == (2, 5, 7) and err.dtype == torch.float32
    assert valid.all()
    assert err.abs().max() < 1e-4


def test_right_and_opposite_angles_are_exact():
    target = torch.tensor([[0.0, 0, 1], [0, 0, 1], [0, 1, 0]]).T.reshape(3, 1, 3)
    pred = torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, -1, 0]]).T.reshape(3, 1, 3)
    err, valid = angular_error(pred, target)  # a single (3, H, W) map
    assert err.shape == (1, 1, 3) and valid.all()
    assert err[0, 0].tolist() == pytest.approx([90.0, 180.0, 180.0], abs=1e-4)


@pytest.mark.parametrize("angle", [0.01, 0.5, 10.0, 45.0, 120.0, 179.5])
def test_known_angle(angle):
    pred, target = pair([angle, angle, angle])
    err, valid = angular_error(pred, target)
    assert valid.all()
    assert err.flatten().tolist() == pytest.approx([angle] * 3, abs=1e-4)


def test_unnormalised_prediction_gives_same_errors():
    pred, target = pair([3.0, 17.0, 88.0, 150.0])
    err1, _ = angular_error(pred, target)
    err3, _ = angular_error(3.0 * pred, target)
    err_tiny, _ = angular_error(1e-3 * pred, target)
    torch.testing.assert_close(err3, err1, rtol=0, atol=1e-4)
    torch.testing.assert_close(err_tiny, err1, rtol=0, atol=1e-4)


def test_thresholds_strictly_below():
    # 19.5 < 20; 24.5 < 25; 29.5 < 30; 35 under none. Four pixels, 25% each.
    s = summarize(*pair([19.5, 24.5, 29.5, 35.0]))
    assert s["n_pixels"] == 4
    assert s["below"] == pytest.approx({"20": 25.0, "25": 50.0, "30": 75.0})
    # Custom thresholds are keyed as written with :g.
    s = summarize(*pair([5.0, 11.0, 12.0]), thresholds=(11.25, 7.5))
    assert s["below"] == pytest.approx({"11.25": 200 / 3, "7.5": 100 / 3})


def test_mask_excludes_pixels():
    pred, target = pair([10.0, 179.0, 10.0, 170.0])
    mask = torch.tensor([[[True, False, True, False]]])
    s = summarize(pred, target, mask)
    assert s["n_pixels"] == 2
    assert s["mean"] == pytest.approx(10.0, abs=1e-4)
    assert s["pixel_mean"] == pytest.approx(10.0, abs=1e-4)
    # A float 0/1 mask with a channel axis means the same.
    s_float = summarize(pred, target, mask.float().unsqueeze(1))
    assert_same(s_float, s)


def test_invalid_targets_are_excluded_and_not_counted():
    pred, target = pair([10.0, 20.0, 30.0, 40.0])
    target[0, :, 0, 1] = torch.tensor([float("nan"), 0.0, 1.0])
    target[0, :, 0, 2] = 0.0
    err, valid = angular_error(pred, target)
    assert valid[0, 0].tolist() == [True, False, False, True]
    assert err[0, 0, 1] == 0 and err[0, 0, 2] == 0  # documented value at invalid pixels
    s = summarize(pred, target)
    assert s["n_pixels"] == 2 and s["n_excluded_pred"] == 0
    assert s["pixel_mean"] == pytest.approx(25.0, abs=1e-4)


def test_invalid_predictions_are_excluded_and_counted():
    pred, target = pair([10.0, 20.0, 30.0, 40.0, 50.0])
    pred[0, :, 0, 0] = torch.tensor([float("inf"), 0.0, 1.0])
    pred[0, :, 0, 1] = 0.0
    pred[0, :, 0, 4] = float("nan")
    mask = torch.tensor([[[1, 1, 1, 1, 0]]], dtype=torch.uint8)  # pixel 4 is masked out
    _, valid = angular_error(pred, target, mask)
    assert valid[0, 0].tolist() == [False, False, True, True, False]
    s = summarize(pred, target, mask)
    assert s["n_pixels"] == 2
    assert s["n_excluded_pred"] == 2  # the masked-out NaN is not counted
    assert s["mean"] == pytest.approx(35.0, abs=1e-4)


def test_mean_over_images_versus_pooled():
    # Image 1: one pixel at 10 deg; image 2: three pixels at 30 deg, its fourth masked out.
    pred = torch.zeros(2, 3, 1, 4)
    target = torch.zeros(2, 3, 1, 4)
    p1, t1 = pair([10.0, 0.0, 0.0, 0.0])
    p2, t2 = pair([30.0, 30.0, 30.0, 90.0])
    pred[0], target[0], pred[1], target[1] = p1[0], t1[0], p2[0], t2[0]
    mask = torch.tensor([[[1, 0, 0, 0]], [[1, 1, 1, 0]]], dtype=torch.bool)
    s = summarize(pred, target, mask)
    assert s["n_images"] == 2 and s["n_pixels"] == 4
    assert s["mean"] == pytest.approx((10 + 30) / 2, abs=1e-4)
    assert s["pixel_mean"] == pytest.approx((10 + 3 * 30) / 4, abs=1e-4)
    assert s["std"] == pytest.approx(10.0, abs=1e-4)  # population std of {10, 30}
    assert s["median"] == pytest.approx(30.0, abs=BIN)
    assert s["n_empty_images"] == 0


def test_median_within_bin_width():
    angles = [3.3, 7.77, 12.345, 40.0, 41.0, 90.0, 179.9]  # odd: the middle one, 40
    assert summarize(*pair(angles))["median"] == pytest.approx(40.0, abs=BIN)
    # Even count with a gap: numpy's convention, the mean of the two middle values.
    assert summarize(*pair([1.0, 2.0, 60.0, 70.0]))["median"] == pytest.approx(31.0, abs=BIN)
    # Many values in one bin do not move the estimate out of that bin.
    s = summarize(*pair([5.0] * 9 + [100.0] * 2), bin_width=0.5)
    assert s["median"] == pytest.approx(5.0, abs=0.5)


def test_median_of_a_constant_error_is_exact():
    # The histogram alone would say "somewhere in [0, 0.01)"; the exact pooled extremes
    # pin a perfect prediction's median to 0 and a constant error's to its value.
    target = torch.zeros(2, 3, 4, 4)
    target[:, 2] = 1.0
    assert summarize(target, target.clone())["median"] == 0.0
    pred, target = pair([12.345])
    pred, target = pred.expand(-1, -1, -1, 5), target.expand(-1, -1, -1, 5)
    err, _ = angular_error(pred, target)
    assert err.unique().tolist() == [pytest.approx(12.345, abs=1e-4)]
    assert summarize(pred, target)["median"] == err[0, 0, 0].item()


def random_batch(seed, b=3, h=6, w=5):
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randn(b, 3, h, w, generator=gen)
    target = torch.randn(b, 3, h, w, generator=gen)
    mask = torch.rand(b, h, w, generator=gen) > 0.3
    mask[-1] = False  # an image with no valid pixel
    return pred, target, mask


def test_streaming_equals_single_update():
    pred, target, mask = random_batch(1, b=6)
    once = AngularErrorMeter()
    once.update(pred, target, mask)
    streamed = AngularErrorMeter()
    for i in range(0, 6, 2):
        streamed.update(pred[i:i + 2], target[i:i + 2], mask[i:i + 2])
    # Batch size may change float32 rounding of a pixel's error (vectorised kernels).
    assert_same(streamed.summary(), once.summary(), rel=1e-6, abs=BIN)
    assert once.summary()["n_empty_images"] == 1  # random_batch empties the last image
    assert once.summary()["n_images"] == 5

    # The same numbers computed directly from the per-pixel errors.
    err, valid = angular_error(pred, target, mask)
    e = err[valid].double()
    s = once.summary()
    per_image = [err[i][valid[i]].double().mean().item() for i in range(6) if valid[i].any()]
    assert s["n_pixels"] == e.numel()
    assert s["pixel_mean"] == pytest.approx(e.mean().item())
    assert s["mean"] == pytest.approx(np.mean(per_image))
    assert s["std"] == pytest.approx(np.std(per_image))
    assert s["median"] == pytest.approx(np.median(e.numpy()), abs=BIN)
    assert s["below"]["25"] == pytest.approx(100 * (e < 25).double().mean().item())


def test_merge_equals_one_meter():
    a, b = random_batch(2), random_batch(3)
    whole = AngularErrorMeter()
    whole.update(*a)
    whole.update(*b)
    m1, m2 = AngularErrorMeter(), AngularErrorMeter()
    m1.update(*a)
    m2.update(*b)
    assert_same(m1.merge(m2).summary(), whole.summary(), rel=1e-6, abs=BIN)
    with pytest.raises(ValueError):
        m1.merge(AngularErrorMeter(thresholds=(10.0,)))


def test_state_dict_round_trip_is_plain():
    meter = AngularErrorMeter()
    meter.update(*random_batch(4))
    state = json.loads(json.dumps(meter.state_dict()))  # plain containers only
    restored = AngularErrorMeter()
    restored.load_state_dict(state)
    assert_same(restored.summary(), meter.summary())
    meter.reset()
    assert meter.summary()["n_pixels"] == 0


def test_numpy_channel_last_equals_torch():
    pred, target, mask = random_batch(5)
    ref = summarize(pred, target, mask)
    pred_np = pred.permute(0, 2, 3, 1).numpy()
    target_np = target.permute(0, 2, 3, 1).numpy()
    assert_same(summarize(pred_np, target_np, mask.numpy()), ref)
    assert_same(summarize(pred_np, target_np, mask.numpy()[..., None]), ref)
    # A single (H, W, 3) map with an (H, W) 0/255 mask.
    single = summarize(pred_np[0], target_np[0], mask.numpy()[0].astype(np.uint8) * 255)
    assert_same(single, summarize(pred[:1], target[:1], mask[:1]))


def test_empty_input_gives_nan_without_crashing():
    for args in [(torch.zeros(0, 3, 4, 4), torch.zeros(0, 3, 4, 4)),
                 (torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)),
                 (*pair([10.0, 20.0]), torch.zeros(1, 1, 2, dtype=torch.bool))]:
        s = summarize(*args)
        assert s["n_pixels"] == 0 and s["n_images"] == 0
        for key in ("mean", "std", "median", "pixel_mean"):
            assert math.isnan(s[key])
        assert all(math.isnan(v) for v in s["below"].values())
    assert summarize(torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4))["n_empty_images"] == 2
    assert AngularErrorMeter().summary()["n_pixels"] == 0


def test_bad_shapes_are_input_errors():
    with pytest.raises(InputError):
        angular_error(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))
    with pytest.raises(InputError):
        angular_error(torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 4))
    with pytest.raises(InputError):
        angular_error(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), torch.ones(1, 4, 5))


def test_summary_is_json_with_the_design_keys():
    s = summarize(*pair([10.0, 20.0]))
    assert list(s) == ["n_images", "n_pixels", "mean", "std", "median", "pixel_mean",
                       "below", "n_excluded_pred", "n_empty_images"]
    assert list(s["below"]) == ["20", "25", "30"]
    json.dumps(s)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank, world_size, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world_size)
    try:
        meter = AngularErrorMeter()
        meter.update(*random_batch(10 + rank, b=2 + rank))  # ranks see different images
        meter.all_reduce()
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(meter.summary(), f)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(60)
def test_all_reduce_gloo_two_processes(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    single = AngularErrorMeter()
    for rank in range(2):
        single.update(*random_batch(10 + rank, b=2 + rank))
    expected = single.summary()
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert_same(got, expected)


def test_all_reduce_without_distributed_is_a_no_op():
    meter = AngularErrorMeter()
    meter.update(*random_batch(6))
    before = meter.summary()
    assert_same(meter.all_reduce().summary(), before)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    pred, target, mask = random_batch(7, b=4, h=32, w=32)
    err_cpu, valid_cpu = angular_error(pred, target, mask)
    err_gpu, valid_gpu = angular_error(pred.cuda(), target.cuda(), mask.cuda())
    assert err_gpu.device.type == "cuda"
    assert torch.equal(valid_gpu.cpu(), valid_cpu)
    torch.testing.assert_close(err_gpu.cpu(), err_cpu, rtol=0, atol=1e-3)
    meter = AngularErrorMeter()
    meter.update(pred.cuda(), target.cuda(), mask)  # a CPU mask is moved to the maps
    assert_same(meter.summary(), summarize(pred, target, mask), abs=2 * BIN)
