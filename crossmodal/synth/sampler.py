"""Random synthetic faces rendered the way the paper rendered ICT-3DRFE (§4.2).

A dataset of ``count`` samples is *planned* first: sample ``i`` belongs to subject
``i // samples_per_subject``; subjects are split train/val/test (subject-disjoint) and
train subjects are given one data type each, paired, image-only or normal-only, so the
unpaired identities are disjoint from the paired ones (as CelebA-HQ and BJUT-3D are in the
paper). Val and test subjects are paired: they are for evaluation.

Every random choice of sample ``i`` comes from a generator seeded by ``(seed, i)`` and
every choice of a subject from ``(seed, subject)``, so a sample is the same whichever
worker renders it, in whatever order.

Per sample: identity weights N(0, 1) for all modes; a sparse expression (a few
blendshapes); a rotation about a random axis by an angle in [-45°, 45°]; one or two
directional lights with positive z and intensities in [0, 2]; a camera distance and
focal jitter; then the crop protocol of docs/design.md §4 applied with the projected
landmarks, realised by rendering straight into the crop (the crop is a similarity, so it
folds into the intrinsics: no resampling of the rendered maps).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..crop import crop_from_landmarks, landmark_mask
from ..data.format import KINDS
from ..geometry import Light
from ..render import Camera, Intrinsics, render
from .appearance import background, sample_look, vertex_colors
from .face_model import FaceModel

__all__ = ["PlannedSample", "SynthConfig", "SynthSample", "plan_dataset", "render_sample"]


@dataclass(frozen=True)
class SynthConfig:
    """How synthetic faces are drawn; every field is a documented knob of ``crossmodal
    synth``.

    Attributes:
        size: output image side (pixels).
        samples_per_subject: renders per identity (different pose, expression, light).
        val_fraction, test_fraction: of subjects, held out (paired only).
        kind_weights: proportions of paired / image-only / normal-only train subjects.
        max_rotation_deg: head rotation about a random axis, uniform in [-max, max].
        distance_cm: camera distance range to the head centre.
        expression_active: mean number of active blendshapes (Poisson).
        expression_max: largest blendshape weight.
        intensity: light intensity range; ``ambient``: ambient term range.
        two_light_probability, shadow_probability: chances of a second light and of
            cast shadows.
        crop_scale: the crop square is ``crop_scale`` x the landmarks' box (§4: 1.2).
    """

    size: int = 256
    samples_per_subject: int = 4
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    kind_weights: tuple[float, float, float] = (0.6, 0.2, 0.2)
    max_rotation_deg: float = 45.0
    distance_cm: tuple[float, float] = (45.0, 150.0)
    expression_active: float = 2.0
    expression_max: float = 0.8
    intensity: tuple[float, float] = (0.0, 2.0)
    ambient: tuple[float, float] = (0.08, 0.35)
    two_light_probability: float = 0.5
    shadow_probability: float = 0.5
    crop_scale: float = 1.2


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
    subject_rng = np.random.default_rng([seed, 1, int(planned.subject.split("_")[1])])
    identity = subject_rng.standard_normal(model.n_identity).astype(np.float32)
    look = sample_look(subject_rng)
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
    (sx, _, tx), (_, sy, ty) = crop.matrix
    camera = Camera(config.size, config.size, Intrinsics(sx * focal, sy * focal, tx, ty))

    lights = [_random_light(rng, config)]
    if rng.random() < config.two_light_probability:
        lights.append(_random_light(rng, config))
    shadows = bool(rng.random() < config.shadow_probability)
    result = render(
        camera_space, model.triangles, camera, lights=lights,
        vertex_colors=vertex_colors(model, look), ambient=float(rng.uniform(*config.ambient)),
        specular=look.specular, shininess=look.shininess, shadows=shadows,
        background=background(config.size, rng), landmarks=model.landmarks68)
    facial = landmark_mask(result.landmarks, result.mask.shape) & result.mask
    meta = {"rotation": rotation.tolist(), "distance_cm": float(distance),
            "lights": [[*light.direction, light.intensity] for light in lights], "shadows": shadows}
    return SynthSample(planned, result.image, result.normals, facial, result.landmarks, meta)
