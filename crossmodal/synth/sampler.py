"""Random synthetic faces rendered the way the paper rendered ICT-3DRFE (§4.2).

A dataset of ``count`` samples is *planned* first: sample ``i`` belongs to subject
``i // samples_per_subject``; subjects are split train/val/test (subject-disjoint) and
train subjects are given one data type each, paired, image-only or normal-only, so the
unpaired identities are disjoint from the paired ones (as CelebA-HQ and BJUT-3D are in the
paper). Val and test subjects are paired: they are for evaluation.

Every random choice of sample ``i`` comes from a generator seeded by ``(seed, i)`` and
every choice of a subject from ``(seed, subject)``, so a sample is the same whichever
worker renders it, in whatever order.

Per sample: identity weights N(0, identity_scale²) for all modes; a sparse expression (a few
blendshapes); a rotation about a random axis by an angle in [-45°, 45°]; one or two
directional lights with positive z and intensities in [0, 2]; a camera distance and
focal jitter; then the crop protocol of docs/design.md §4 applied with the projected
landmarks, realised by rendering straight into the crop (the crop is a similarity, so it
folds into the intrinsics: no resampling of the rendered maps).

The realism levers of :mod:`crossmodal.synth.realism` (skin detail, Fresnel, an
environment light, photo backgrounds, occluders, camera effects, crop jitter) are fields
of :class:`SynthConfig`, off by default unless ``benchmarks/sim2real.py`` found them to
help; each draws from its own generator, so switching one leaves the rest of a dataset as
it was.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass, field, fields, replace

import numpy as np
import yaml

from ..crop import Crop, crop_from_landmarks, landmark_mask
from ..data.format import KINDS
from ..errors import InputError
from ..geometry import Light
from ..render import Camera, Intrinsics, render
from .appearance import background, sample_look, vertex_colors
from .face_model import FaceModel
from .realism import (camera_effects, jitter_box, lever_rng, occlude, photo_background,
                      random_environment)

__all__ = ["LEVERS_OFF", "PlannedSample", "SynthConfig", "SynthSample", "plan_dataset",
           "render_sample"]

#: The realism levers among :class:`SynthConfig`'s fields (issue 14, benchmarks/sim2real.py),
#: each with the value that renders as synth did before it existed (off). Folders made
#: then are completed by a synth that leaves the levers at these values.
LEVERS_OFF = {"specular": (0.03, 0.25), "fresnel": None, "skin_detail": 0.0,
              "environment_probability": 0.0, "photo_background_probability": 0.0,
              "occluder_probability": 0.0, "camera_effects": 0.0, "crop_jitter": 0.0,
              "identity_scale": 1.0}


@dataclass(frozen=True)
class SynthConfig:
    """How synthetic faces are drawn; every field is a documented knob of ``crossmodal
    synth``.

    Attributes:
        size: output image side (pixels).
        samples_per_subject: renders per identity (different pose, expression, light).
        val_fraction, test_fraction: of subjects, held out (paired only).
        kind_weights: proportions of paired / image-only / normal-only train subjects.
        identity_scale: standard deviation of the identity weights, in the face model's
            sigmas (1: ICT-FaceKit's own spread of face shapes; more gives rarer shapes).
        max_rotation_deg: head rotation about a random axis, uniform in [-max, max].
        distance_cm: camera distance range to the head centre.
        expression_active: mean number of active blendshapes (Poisson).
        expression_max: largest blendshape weight.
        intensity: light intensity range; ``ambient``: ambient term range.
        two_light_probability, shadow_probability: chances of a second light and of
            cast shadows.
        crop_scale: the crop square is ``crop_scale`` x the landmarks' box (§4: 1.2).

    Realism levers (:mod:`crossmodal.synth.realism`; 0 or None is off):
        specular: range of a person's specular weight.
        fresnel: Schlick's F0 of the highlights (skin: ~0.028), None for none.
        skin_detail: amplitude of pores, mottling, freckles, moles, stubble and
            make-up-like tones (1 is the designed strength).
        environment_probability: chance of a soft coloured environment light
            (spherical harmonics) on top of the point lights.
        photo_background_probability: chance of a real photo behind the face.
        occluder_probability: chance of hair, glasses or a hand over part of the face
            (those pixels leave the facial mask).
        camera_effects: chance of each camera effect (white balance, exposure,
            vignetting, blur, sensor noise, JPEG).
        crop_jitter: standard deviation of the crop box's shift (x side) and log-scale,
            as a face detector's landmarks would move it.
    """

    size: int = 256
    samples_per_subject: int = 4
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    kind_weights: tuple[float, float, float] = (0.6, 0.2, 0.2)
    identity_scale: float = 1.0
    max_rotation_deg: float = 45.0
    distance_cm: tuple[float, float] = (45.0, 150.0)
    expression_active: float = 2.0
    expression_max: float = 0.8
    intensity: tuple[float, float] = (0.0, 2.0)
    ambient: tuple[float, float] = (0.08, 0.35)
    two_light_probability: float = 0.5
    shadow_probability: float = 0.5
    crop_scale: float = 1.2
    specular: tuple[float, float] = (0.03, 0.25)
    fresnel: float | None = None
    skin_detail: float = 0.0
    environment_probability: float = 0.0
    photo_background_probability: float = 0.0
    occluder_probability: float = 0.0
    camera_effects: float = 0.0
    crop_jitter: float = 0.0

    def __post_init__(self) -> None:
        for name in ("two_light_probability", "shadow_probability", "environment_probability",
                     "photo_background_probability", "occluder_probability",
                     "camera_effects"):
            if not 0 <= getattr(self, name) <= 1:
                raise InputError(f"synth setting {name} is a probability, in [0, 1]; got "
                                 f"{getattr(self, name)}")
        for name in ("distance_cm", "intensity", "ambient", "specular"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise InputError(f"synth setting {name} is a range [low, high] with "
                                 f"0 <= low <= high; got {[low, high]}")
        if not 0 < self.identity_scale <= 3:
            raise InputError(f"synth setting identity_scale is a standard deviation in (0, 3] "
                             f"sigmas (1: the face model's own); got {self.identity_scale}")
        if not 0 <= self.skin_detail <= 3:
            raise InputError(f"synth setting skin_detail is an amplitude in [0, 3] (1: as "
                             f"designed); got {self.skin_detail}")
        if not 0 <= self.crop_jitter <= 0.3:
            raise InputError(f"synth setting crop_jitter is a standard deviation in "
                             f"[0, 0.3] (of the crop's side); got {self.crop_jitter}")
        if self.fresnel is not None and not 0 < self.fresnel <= 1:
            raise InputError(f"synth setting fresnel is Schlick's F0 in (0, 1] (skin: "
                             f"0.028) or null for none; got {self.fresnel}")
        if not (0 <= self.max_rotation_deg <= 180 and self.expression_active >= 0
                and 0 <= self.expression_max <= 1 and self.crop_scale > 0):
            raise InputError(f"synth settings out of range: max_rotation_deg "
                             f"{self.max_rotation_deg} (0-180), expression_active "
                             f"{self.expression_active} (>= 0), expression_max "
                             f"{self.expression_max} (0-1), crop_scale {self.crop_scale} (> 0)")

    def with_settings(self, settings: typing.Sequence[str],
                      options: typing.Mapping[str, str] | None = None) -> SynthConfig:
        """This config with ``KEY=VALUE`` settings applied (values are YAML: ``0.5``,
        ``[0.1, 0.3]``, ``null``), for ``crossmodal synth --set``.

        Args:
            options: fields that have their own command-line option, ``{field: option}``;
                setting one of them names the option instead.

        Raises:
            InputError: a malformed pair, an unknown key (the message lists the valid
                ones) or a value of the wrong type or range.
        """
        options = options or {}
        hints = typing.get_type_hints(SynthConfig)
        settable = [f.name for f in fields(self) if f.name not in options]
        changes = {}
        for pair in settings:
            key, sep, text = pair.partition("=")
            key = key.strip()
            if not sep or not key:
                raise InputError(f"--set takes KEY=VALUE, e.g. --set skin_detail=1; got "
                                 f"{pair!r}")
            if key in options:
                raise InputError(f"{key} has its own option: use {options[key]}")
            if key not in settable:
                raise InputError(f"unknown synth setting {key!r}; valid: {', '.join(settable)}")
            changes[key] = _coerce(key, yaml.safe_load(text), hints[key])
        return replace(self, **changes)


def _coerce(key: str, value, hint) -> typing.Any:
    """``value`` (parsed YAML) as the type of field ``key`` (``hint``), or InputError."""
    nullable = typing.get_origin(hint) in (typing.Union, types.UnionType)
    if nullable and value is None:
        return None
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if nullable else hint
    origin = typing.get_origin(base)
    if origin is tuple:
        items = typing.get_args(base)
        if isinstance(value, list) and len(value) == len(items):
            return tuple(_coerce(key, v, t) for v, t in zip(value, items))
        want = f"a list of {len(items)} numbers, e.g. [{', '.join(['0.1'] * len(items))}]"
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        want = "a number"
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        want = "an integer"
    else:
        return value
    raise InputError(f"synth setting {key} must be {want}{' or null' if nullable else ''}; "
                     f"got {value!r}")


@dataclass(frozen=True)
class PlannedSample:
    index: int
    id: str
    subject: str
    split: str
    kind: str


@dataclass
class SynthSample:
    """A rendered sample: image float32 ``(S, S, 3)``, normals ``(S, S, 3)`` ours (zero
    off the surface), facial mask ``(S, S)`` bool, landmarks ``(68, 2)`` in the crop."""

    planned: PlannedSample
    image: np.ndarray
    normals: np.ndarray
    mask: np.ndarray
    landmarks: np.ndarray
    meta: dict = field(default_factory=dict)


def _allocate(n: int, weights: list[float]) -> list[int]:
    """Split ``n`` items into counts proportional to ``weights`` (largest remainders), so
    a tiny dataset still gets each non-zero share it can."""
    w = np.asarray(weights, float) / max(sum(weights), 1e-12)
    counts = np.floor(w * n).astype(int)
    for i in np.argsort(-(w * n - counts))[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def plan_dataset(count: int, config: SynthConfig) -> list[PlannedSample]:
    """The id, subject, split and data type of every sample; deterministic in ``count``
    and ``config`` (not in the seed, so the layout is the same across seeds)."""
    n_subjects = -(-count // config.samples_per_subject)
    n_train, n_val, n_test = _allocate(n_subjects, [
        1 - config.val_fraction - config.test_fraction, config.val_fraction,
        config.test_fraction])
    if n_subjects >= 3:  # a dataset big enough to evaluate must have something to evaluate
        for _ in range(2):
            if n_test == 0 and n_train > 1:
                n_train, n_test = n_train - 1, 1
            if n_val == 0 and n_train > 1:
                n_train, n_val = n_train - 1, 1
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    kind_counts = _allocate(n_train, list(config.kind_weights))
    # Interleave kinds over train subjects so every prefix of the dataset has all of them.
    order = np.argsort(np.concatenate([(np.arange(c) + 0.5) / c for c in kind_counts]),
                       kind="stable")
    kinds_sorted = [k for k, c in zip(KINDS, kind_counts) for _ in range(c)]
    train_kinds = [kinds_sorted[j] for j in order]
    plans = []
    for i in range(count):
        s = i // config.samples_per_subject
        kind = train_kinds[s] if splits[s] == "train" else "paired"
        plans.append(PlannedSample(i, f"synth_{i:06d}", f"subject_{s:05d}", splits[s], kind))
    return plans


def _random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """Rotation about a uniformly random axis by an angle uniform in [-max, max]."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.radians(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _random_light(rng: np.random.Generator, config: SynthConfig) -> Light:
    """A light from the camera's hemisphere (positive z), intensity in the paper's range."""
    d = rng.normal(size=3)
    d[2] = abs(d[2])
    tint = 1.0 + rng.uniform(-0.1, 0.1, 3)
    return Light(tuple(d), color=tuple(np.clip(tint, 0, None)),
                 intensity=float(rng.uniform(*config.intensity)))


def _expression(rng: np.random.Generator, model: FaceModel, config: SynthConfig) -> np.ndarray:
    weights = np.zeros(model.n_expression, np.float32)
    n_active = min(int(rng.poisson(config.expression_active)), model.n_expression)
    active = rng.choice(model.n_expression, size=n_active, replace=False)
    weights[active] = rng.uniform(0.0, config.expression_max, n_active)
    return weights


def render_sample(planned: PlannedSample, seed: int, config: SynthConfig,
                  model: FaceModel | None = None) -> SynthSample:
    """Render one planned sample; the same ``(planned, seed, config)`` gives the same
    arrays bit for bit."""
    model = model or FaceModel.load()
    subject = int(planned.subject.split("_")[1])
    subject_rng = np.random.default_rng([seed, 1, subject])
    # Scaling one draw keeps each subject's shape direction whatever the spread.
    identity = (config.identity_scale
                * subject_rng.standard_normal(model.n_identity)).astype(np.float32)
    look = sample_look(subject_rng, config.specular, config.skin_detail,
                       int(lever_rng(seed, subject, "skin").integers(2**62)))
    rng = np.random.default_rng([seed, 2, planned.index])

    vertices = model.vertices(identity, _expression(rng, model, config))
    # Rotate about the head's centre (the landmarks' centroid pulled back into the skull).
    pivot = model.landmarks(vertices).mean(0) - np.array([0.0, 0.0, 8.0], np.float32)
    rotation = _random_rotation(rng, config.max_rotation_deg)
    distance = rng.uniform(*config.distance_cm)
    camera_space = (vertices - pivot) @ rotation.T.astype(np.float32)
    camera_space[:, 2] -= distance

    # Project the landmarks with a unit-focal camera, crop as §4 prescribes, and fold the
    # crop (scale s, offset t) into the intrinsics: u' = s * u + t.
    focal = 1.0
    landmarks3d = camera_space[model.landmarks68]
    uv = np.stack([focal * landmarks3d[:, 0] / -landmarks3d[:, 2],
                   -focal * landmarks3d[:, 1] / -landmarks3d[:, 2]], axis=-1)
    crop = crop_from_landmarks(uv, size=config.size, scale=config.crop_scale)
    if config.crop_jitter:
        crop = Crop.from_box(*jitter_box(crop.box, lever_rng(seed, planned.index, "crop"),
                                         config.crop_jitter), config.size)
    (sx, _, tx), (_, sy, ty) = crop.matrix
    camera = Camera(config.size, config.size, Intrinsics(sx * focal, sy * focal, tx, ty))

    lights = [_random_light(rng, config)]
    if rng.random() < config.two_light_probability:
        lights.append(_random_light(rng, config))
    shadows = bool(rng.random() < config.shadow_probability)
    ambient = float(rng.uniform(*config.ambient))
    backdrop = background(config.size, rng)
    meta = {"rotation": rotation.tolist(), "distance_cm": float(distance),
            "lights": [[*light.direction, light.intensity] for light in lights], "shadows": shadows}
    env_rng = lever_rng(seed, planned.index, "environment")
    environment = (random_environment(env_rng)
                   if env_rng.random() < config.environment_probability else None)
    meta["environment"] = environment is not None
    bg_rng = lever_rng(seed, planned.index, "background")
    if bg_rng.random() < config.photo_background_probability:
        backdrop = photo_background(config.size, bg_rng)
        meta["background"] = "photo"
    result = render(
        camera_space, model.triangles, camera, lights=lights,
        vertex_colors=vertex_colors(model, look), ambient=ambient, environment=environment,
        specular=look.specular, shininess=look.shininess, fresnel=config.fresnel,
        shadows=shadows, background=backdrop, landmarks=model.landmarks68)
    image = result.image
    facial = landmark_mask(result.landmarks, result.mask.shape) & result.mask
    if planned.kind != "normal":  # what only changes the image needs an image
        occluder_rng = lever_rng(seed, planned.index, "occluder")
        if occluder_rng.random() < config.occluder_probability:
            image, facial, meta["occluder"] = occlude(
                image, facial, result.landmarks, occluder_rng, hair=look.hair, skin=look.skin)
        if config.camera_effects:
            image, meta["camera_effects"] = camera_effects(
                image, lever_rng(seed, planned.index, "camera"), config.camera_effects)
    return SynthSample(planned, image, result.normals, facial, result.landmarks, meta)
