"""The realism levers of the synthesis (issue 14): each changes what it is for and nothing
else, is set from the command line, and leaves older dataset folders usable."""

import json
from dataclasses import replace

import numpy as np
import pytest

from crossmodal.cli import main
from crossmodal.errors import InputError
from crossmodal.synth.face_model import FaceModel
from crossmodal.synth.generate import generate
from crossmodal.synth.realism import (BACKGROUND_PHOTOS, camera_effects, jitter_box, occlude,
                                      photo_background, random_environment)
from crossmodal.synth.sampler import LEVERS_OFF, SynthConfig, plan_dataset, render_sample

SMALL = replace(SynthConfig(), size=64)


@pytest.fixture(scope="module")
def model():
    return FaceModel.load()


@pytest.fixture(scope="module")
def plans():
    return plan_dataset(40, SMALL)


def test_the_levers_are_off_by_their_legacy_values():
    assert set(LEVERS_OFF) <= {f for f in SynthConfig.__dataclass_fields__}
    assert {name: getattr(SynthConfig(), name) for name in LEVERS_OFF} == LEVERS_OFF


@pytest.mark.parametrize("settings", [
    {"environment_probability": 1.0}, {"photo_background_probability": 1.0},
    {"camera_effects": 1.0}, {"skin_detail": 1.0}, {"fresnel": 0.028},
])
def test_an_image_lever_changes_the_image_and_nothing_else(model, plans, settings):
    plan = next(p for p in plans if p.kind == "paired")
    base = render_sample(plan, 0, SMALL, model)
    lever = render_sample(plan, 0, replace(SMALL, **settings), model)
    np.testing.assert_array_equal(lever.normals, base.normals)
    np.testing.assert_array_equal(lever.mask, base.mask)
    np.testing.assert_array_equal(lever.landmarks, base.landmarks)
    assert np.abs(lever.image - base.image).max() > 0.02 or settings == {"fresnel": 0.028}
    assert lever.image.dtype == np.float32 and 0 <= lever.image.min() <= lever.image.max() <= 1


def test_skin_detail_only_changes_the_face_and_background_photos_only_the_background(
        model, plans):
    plan = next(p for p in plans if p.kind == "paired")
    base = render_sample(plan, 0, SMALL, model)
    skin = render_sample(plan, 0, replace(SMALL, skin_detail=1.0), model)
    surface = np.abs(base.normals).sum(-1) > 0
    changed = np.abs(skin.image - base.image).max(-1) > 1e-6
    assert changed.any() and not (changed & ~surface).any()
    photo = render_sample(plan, 0, replace(SMALL, photo_background_probability=1.0), model)
    changed = np.abs(photo.image - base.image).max(-1) > 1e-6
    assert changed[~surface].mean() > 0.9 and not changed[surface].any()


def test_occluders_cover_part_of_the_face_and_leave_the_mask(model, plans):
    kinds = set()
    for plan in plans[:30]:
        if len(kinds) == 3:
            break
        base = render_sample(plan, 0, SMALL, model)
        lever = render_sample(plan, 0, replace(SMALL, occluder_probability=1.0), model)
        np.testing.assert_array_equal(lever.normals, base.normals)
        if plan.kind == "normal":  # no image, so nothing to paint over
            np.testing.assert_array_equal(lever.mask, base.mask)
            continue
        kinds.add(lever.meta["occluder"])
        assert not (lever.mask & ~base.mask).any()  # only removes pixels
        # Every pixel the occluder painted over the face has left the mask.
        painted = np.abs(lever.image - base.image).max(-1) > 1e-4
        assert not (painted & lever.mask).any()
    assert kinds == {"hair", "glasses", "hand"}


def test_crop_jitter_moves_the_crop_as_a_detector_would(model, plans):
    plan = plans[0]
    base = render_sample(plan, 0, SMALL, model)
    jittered = render_sample(plan, 0, replace(SMALL, crop_jitter=0.05), model)
    shift = jittered.landmarks.mean(0) - base.landmarks.mean(0)
    assert 0 < np.abs(shift).max() < 64 * 0.3
    rng = np.random.default_rng(0)
    boxes = np.array([jitter_box((10.0, 20.0, 100.0), rng, 0.05) for _ in range(4000)])
    centres = boxes[:, :2] + boxes[:, 2:] / 2
    np.testing.assert_allclose(centres.mean(0), [60, 70], atol=0.5)
    np.testing.assert_allclose(centres.std(0), [5, 5], rtol=0.1)
    np.testing.assert_allclose(np.log(boxes[:, 2] / 100).std(), 0.05, rtol=0.1)
    assert jitter_box((10.0, 20.0, 100.0), rng, 0.0) == (10.0, 20.0, 100.0)


def test_the_environment_is_soft_light_of_about_a_point_lights_strength():
    from crossmodal.geometry.shading import sh_irradiance
    rng = np.random.default_rng(0)
    up = np.array([[0.0, 0.6, 0.8]])
    down = np.array([[0.0, -0.6, 0.8]])
    brighter_above = 0
    for _ in range(200):
        env = random_environment(rng)
        e_up, e_down = sh_irradiance(up, env)[0], sh_irradiance(down, env)[0]
        assert (e_up / np.pi < 1.2).all() and (e_up > 0).all()
        brighter_above += e_up.mean() > e_down.mean()
    assert brighter_above > 120  # light comes from above more often


def test_camera_effects_all_or_none():
    image = np.random.default_rng(0).random((64, 64, 3)).astype(np.float32)
    same, applied = camera_effects(image, np.random.default_rng(1), 0.0)
    np.testing.assert_array_equal(same, image)
    assert applied == []
    out, applied = camera_effects(image, np.random.default_rng(1), 1.0)
    assert len(applied) == 6 and applied[-1] == "jpeg"
    assert out.shape == image.shape and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1 and np.abs(out - image).mean() > 0.01


def test_photo_backgrounds_are_bundled_with_their_licence():
    assert len(BACKGROUND_PHOTOS) >= 3
    folder = BACKGROUND_PHOTOS[0].parent
    attribution = (folder / "ATTRIBUTION.md").read_text()
    assert (folder / "LICENSE").is_file()
    for photo in BACKGROUND_PHOTOS:
        assert f"`{photo.name}`" in attribution
    crop = photo_background(96, np.random.default_rng(0))
    assert crop.shape == (96, 96, 3) and crop.dtype == np.float32 and crop.std() > 0.02


def test_occlude_returns_a_subset_of_the_mask():
    rng = np.random.default_rng(3)
    image = np.full((64, 64, 3), 0.5, np.float32)
    mask = np.zeros((64, 64), bool)
    mask[8:60, 6:58] = True  # a face region, not the whole crop
    # Any plausible 68 points will do: a diagonal line with the eyes where eyes are.
    points = np.stack([np.linspace(12, 52, 68), np.linspace(14, 54, 68)], 1)
    points[36:42] = [20, 28]
    points[42:48] = [44, 28]
    for _ in range(6):
        out, kept, kind = occlude(image, mask, points, rng, hair=(0.1, 0.1, 0.1),
                                  skin=(0.8, 0.6, 0.5))
        assert kind in ("hair", "glasses", "hand")
        assert not (kept & ~mask).any() and kept.sum() < mask.sum() and kept.any()
        painted = np.abs(out - image).max(-1) > 1e-4
        assert painted.any() and not (painted & kept).any()


def test_identity_scale_scales_the_subjects_shape_and_only_that(model, plans, monkeypatch):
    """The identity weights are identity_scale times the subject's draw, so the same
    subject gets a face further from the mean face in the same direction; the rest of the
    sample (expression, pose, lights) is the same draw."""
    weights = []
    vertices = model.vertices

    def recording(identity, expression):
        weights.append(np.asarray(identity, dtype=np.float64))
        return vertices(identity, expression)

    monkeypatch.setattr(model, "vertices", recording)
    plan = next(p for p in plans if p.kind == "paired")
    base = render_sample(plan, 0, SMALL, model)
    wide = render_sample(plan, 0, replace(SMALL, identity_scale=1.5), model)
    assert len(weights) == 2 and weights[0].shape == (model.n_identity,)
    np.testing.assert_allclose(weights[1], 1.5 * weights[0], rtol=1e-6)
    assert 0.5 < weights[0].std() < 1.5  # a draw in the face model's sigmas
    assert np.abs(wide.landmarks - base.landmarks).max() > 0.1  # another face shape
    with pytest.raises(InputError, match="identity_scale is a standard deviation in"):
        SynthConfig().with_settings(["identity_scale=0"])


def test_with_settings_parses_yaml_and_names_the_valid_keys():
    config = SynthConfig().with_settings(["skin_detail=1", "specular=[0.1, 0.5]",
                                          "fresnel=0.028"])
    assert (config.skin_detail, config.specular, config.fresnel) == (1.0, (0.1, 0.5), 0.028)
    assert SynthConfig().with_settings(["fresnel=null"]).fresnel is None
    with pytest.raises(InputError, match="valid: .*skin_detail.*crop_jitter"):
        SynthConfig().with_settings(["skin_detial=1"])
    with pytest.raises(InputError, match="use --size"):
        SynthConfig().with_settings(["size=64"], {"size": "--size"})
    with pytest.raises(InputError, match="list of 2 numbers"):
        SynthConfig().with_settings(["specular=0.3"])
    with pytest.raises(InputError, match="probability"):
        SynthConfig().with_settings(["camera_effects=2"])
    with pytest.raises(InputError, match="KEY=VALUE"):
        SynthConfig().with_settings(["skin_detail"])


def test_synth_set_is_recorded_and_a_rerun_with_other_levers_is_refused(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["-q", "synth", "--out", str(out), "--count", "3", "--size", "64",
                 "--workers", "1", "--set", "skin_detail=1", "--set", "crop_jitter=0.05"]) == 0
    config = json.loads((out / "synth.json").read_text())["config"]
    assert config["skin_detail"] == 1.0 and config["crop_jitter"] == 0.05
    assert main(["-q", "synth", "--out", str(out), "--count", "3", "--size", "64",
                 "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "--set skin_detail 1.0 (now 0.0)" in err and len(err.strip().splitlines()) == 1
    assert main(["-q", "synth", "--out", str(tmp_path / "e"), "--count", "3", "--set",
                 "skin_detail=lots"]) == 2
    assert "skin_detail must be a number" in capsys.readouterr().err


def test_a_folder_made_before_the_levers_is_still_completed(tmp_path):
    out = generate(tmp_path / "old", 4, config=SMALL, workers=1, progress=False)
    record = json.loads((out / "synth.json").read_text())
    for name in LEVERS_OFF:  # as synth wrote it before the levers existed
        del record["config"][name]
    (out / "synth.json").write_text(json.dumps(record))
    (out / "masks" / "synth_000003.png").unlink()
    generate(out, 4, config=SMALL, workers=1, progress=False)  # completes, no refusal
    with pytest.raises(Exception, match="other options"):
        generate(out, 4, config=replace(SMALL, skin_detail=1.0), workers=1, progress=False)
