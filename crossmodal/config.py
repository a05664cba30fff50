"""Experiment configuration: a typed schema, YAML files with ``_base_:`` inheritance and
command-line ``key=value`` overrides (dinov2-style configs, detectron2-style bases).

The schema below is the single source of defaults; an experiment YAML lists only what it
changes. A config is built in layers, each merged on top of the previous one (mappings
merge key by key, lists and scalars replace):

1. the schema's defaults;
2. the ``_base_`` files of the experiment, recursively, depth first. A ``_base_`` path (or
   list of paths) is relative to the file that names it, never to the current directory
   or to ``experiments/``, so a chain of files can be moved together;
3. the experiment file's own keys;
4. the command-line overrides, in order (``train.max_steps=100``; values are YAML).

Interpolations such as ``run_dir: runs/${name}`` are resolved after the last layer, so an
override of ``name`` moves the run directory too. Every mistake is a one-line
:class:`ConfigError` naming the file (and override) and the fix.

Each layer is applied leaf by leaf (a leaf is a field that is not itself a section) so
that a type error names the exact key and the layer it came from; OmegaConf's own
messages lose the key for list elements.

About ``ModelConfig``'s ``tuple[int, ...]`` widths: OmegaConf (>= 2.3) accepts tuple
annotations in structured configs and stores them as lists, so the schema is used as is;
``ModelConfig.__post_init__`` turns them back into tuples when :func:`OmegaConf.to_object`
builds the dataclasses, and :func:`config_to_dict` turns them into lists again.
"""

from __future__ import annotations

import math
import os
import typing
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .data.augment import AugmentConfig
from .data.format import KIND_ENTRIES, KINDS
from .errors import CrossmodalError, InputError
from .fileutil import atomic_write, read_text
from .image_size import check_image_size
from .models.losses import CRITIC_TERMS, LOSS_TERMS
from .models.net import ROUTE_INPUTS, ROUTE_OUTPUTS, ROUTES, ModelConfig
from .provenance import git_state

__all__ = ["AMP_MODES", "DATA_ROOT_VARIABLE", "LR_SCHEDULES", "ConfigError", "DataConfig",
           "ExperimentConfig", "OptimConfig", "ScheduleConfig", "TrainConfig",
           "config_from_dict", "config_to_dict", "default_data_root", "load_config",
           "save_run_config"]

#: Values of :attr:`TrainConfig.amp`.
AMP_MODES = ("auto", "bf16", "fp16", "off")
#: Values of :attr:`OptimConfig.schedule`.
LR_SCHEDULES = ("constant", "cosine")
#: The environment variable giving the data root of configs that do not set ``data.root``.
DATA_ROOT_VARIABLE = "CROSSMODAL_DATA"
_BASE_KEY = "_base_"
_OVERRIDE_FORM = "key=value with a dotted key, e.g. train.max_steps=100 or data.paired=[a,b]"


class ConfigError(CrossmodalError):
    """An experiment file, an override or a stored config is wrong; the message says where."""


def default_data_root() -> str:
    """``data.root`` when no file or override sets it: ``$CROSSMODAL_DATA`` when set and
    not empty, else ``data``, so one variable points every experiment at the folder holding
    the prepared datasets (``crossmodal prepare NAME --out $CROSSMODAL_DATA/NAME``)."""
    return os.environ.get(DATA_ROOT_VARIABLE) or "data"


@dataclass
class DataConfig:
    """Where batches come from (paper §3.3, §4.1).

    Attributes:
        root: data root; relative dataset paths below are resolved against it. Default:
            :func:`default_data_root` (``$CROSSMODAL_DATA``, else ``data``).
            :func:`load_config` makes it absolute (a relative one is taken from the current
            directory), so a run's ``config.yaml`` records the folder it read.
        paired, image, normal: dataset folders (docs/design.md §3) providing each data type:
            a folder listed under ``paired`` contributes its paired rows, under ``image``
            its image-only rows, under ``normal`` its normal-only rows.
        val: dataset folders whose ``val_split`` rows (paired) are used for validation.
        val_split: the split validated on.
        proportions: share of batches of each type, ``{paired, image, normal}``;
            normalised, and a type with no data or no route in the model variant is
            dropped (with a warning).
        image_size: training resolution; samples of another size are resized.
        batch_size: samples per batch per process.
        num_workers: DataLoader worker processes.
        augment: normal-aware augmentation (:class:`crossmodal.data.augment.AugmentConfig`
            fields); ``{}`` for the defaults, ``null`` for none.
    """

    root: str = field(default_factory=default_data_root)
    paired: list[str] = field(default_factory=list)
    image: list[str] = field(default_factory=list)
    normal: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    val_split: str = "val"
    proportions: dict[str, float] = field(
        default_factory=lambda: {"paired": 0.5, "image": 0.25, "normal": 0.25})
    image_size: int = 256
    batch_size: int = 8
    num_workers: int = 2
    augment: dict | None = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Checked here rather than in the trainer so that a typo fails when the config is
        # loaded, not after the data loaders have started.
        for name in ("paired", "image", "normal", "val"):
            folders = getattr(self, name)
            if not all(isinstance(f, str) and f for f in folders):
                raise InputError(f"data.{name} must list dataset folder names, got {folders!r}")
        unknown = sorted(set(self.proportions) - set(KINDS))
        if unknown:
            raise InputError(f"unknown key 'data.proportions.{unknown[0]}'; valid keys in "
                             f"data.proportions: {', '.join(KINDS)}")
        shares = list(self.proportions.values())
        if not all(math.isfinite(s) and s >= 0 for s in shares) or not sum(shares) > 0:
            raise InputError(f"data.proportions must be non-negative numbers, at least one "
                             f"positive, got {dict(self.proportions)}")
        check_image_size(self.image_size, "data.image_size", "set it to")
        if self.batch_size < 1 or self.num_workers < 0:
            raise InputError(f"data.batch_size must be >= 1 and data.num_workers >= 0, got "
                             f"{self.batch_size} and {self.num_workers}")
        if self.augment is not None:
            AugmentConfig.from_dict(self.augment)  # raises on an unknown or invalid option


@dataclass
class ScheduleConfig:
    """The mixed-batch schedule of paper §3.3 as data: the passes a batch of each data type
    runs, and the weight of each loss term.

    Attributes:
        paired, image, normal: the routes (model passes, :data:`~crossmodal.models.ROUTES`)
            a batch of that type runs, in order, each its own optimizer step (zero_grad,
            forward, backward, step). §3.3: a paired batch runs normal->normal (skips off)
            and then image->normal, an image-only batch image->image, a normal-only batch
            normal->normal. A route must find its input and its loss targets in the type's
            samples.
        loss_weights: ``{route: {term: weight}}``: the loss terms each pass sums, weighted
            (:data:`~crossmodal.models.losses.LOSS_TERMS`). The paper's: ``normal``, eq. 1,
            the masked cosine loss on the normals, and ``image``, eq. 2, the masked L2 loss
            on the decoded image, weighed equally. The Pix2Pix baseline's ("Normal Map
            Estimation in the Wild", ``experiments/pix2pix.yaml``), on the normals:
            ``normal_mse`` (L_rec), ``perceptual`` (L_vgg, VGG16 features; needs
            ``train.vgg16_weights``) and ``adversarial`` (L_adv: a PatchGAN discriminator,
            conditioned on the image, judges the prediction; the trainer then alternates a
            discriminator step with each such pass). A weight of 0 leaves the term out, so
            parameters only it reaches get no gradient, and a network only it needs is not
            built; a pass left without terms is not run, and a data type left without
            passes gets no batches.

    A schedule ablation is a diff, e.g. ``schedule.loss_weights.image_to_image.image=0``.
    """

    paired: list[str] = field(default_factory=lambda: ["normal_to_normal", "image_to_normal"])
    image: list[str] = field(default_factory=lambda: ["image_to_image"])
    normal: list[str] = field(default_factory=lambda: ["normal_to_normal"])
    loss_weights: dict[str, dict[str, float]] = field(default_factory=lambda: {
        "normal_to_normal": {"normal": 1.0},
        "image_to_normal": {"normal": 1.0, "image": 1.0},
        "image_to_image": {"image": 1.0}})

    def __post_init__(self) -> None:
        for route, terms in self.loss_weights.items():
            if route not in ROUTES:
                raise InputError(f"unknown route 'schedule.loss_weights.{route}'; valid: "
                                 f"{', '.join(ROUTES)}")
            valid = [t for t, (output, _) in LOSS_TERMS.items()
                     if output in ROUTE_OUTPUTS[route]]
            for term, weight in terms.items():
                if term not in valid:
                    raise InputError(f"unknown loss term 'schedule.loss_weights.{route}.{term}';"
                                     f" the {route} pass has {', '.join(valid)}")
                if not (math.isfinite(weight) and weight >= 0):
                    raise InputError(f"schedule.loss_weights.{route}.{term} must be a "
                                     f"non-negative number, got {weight}")
        for kind in KINDS:
            for route in getattr(self, kind):
                if route not in ROUTES:
                    raise InputError(f"schedule.{kind}: unknown route {route!r}; valid: "
                                     f"{', '.join(ROUTES)}")
                weighted = [t for t, w in self.loss_weights.get(route, {}).items() if w]
                needs = {ROUTE_INPUTS[route], *(LOSS_TERMS[t][0] for t in weighted),
                         *(e for t in weighted for e in CRITIC_TERMS.get(t, ()))}
                missing = sorted(needs - set(KIND_ENTRIES[kind]))
                if missing:
                    raise InputError(f"schedule.{kind}: the {route} pass needs "
                                     f"{' and '.join(missing)}, which {kind} samples do not "
                                     f"have")
                if route not in self.loss_weights:
                    raise InputError(f"schedule.{kind} runs {route}, but "
                                     f"schedule.loss_weights has no {route} entry")


@dataclass
class OptimConfig:
    """Adam, as in the paper (§4.1: learning rate 1e-4), and its learning-rate schedule.

    Attributes:
        lr: the learning rate; with a schedule, its peak.
        betas, weight_decay: Adam's.
        schedule: one of :data:`LR_SCHEDULES`: ``constant`` (the paper: ``lr`` throughout)
            or ``cosine`` (half a cosine from ``lr`` down to ``min_lr`` at the last step).
        warmup_steps: the first steps rise linearly from ``lr / warmup_steps`` to ``lr``
            (either schedule); 0 for none.
        min_lr: where ``cosine`` ends.
        discriminator_lr: the rate of the discriminator's own Adam (same betas and weight
            decay), built when a pass weighs the ``adversarial`` term; it follows the
            generator's warm-up and schedule, scaled by ``discriminator_lr / lr``. None
            (the default) is ``lr``, as in Pix2Pix.

    The rate of every step is a function of the step alone
    (:func:`crossmodal.engine.lr_schedule.learning_rate`), so a resumed run follows the
    same curve with nothing saved.
    """

    lr: float = 1.0e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr: float = 0.0
    discriminator_lr: float | None = None

    def __post_init__(self) -> None:
        if self.schedule not in LR_SCHEDULES:
            raise InputError(f"optim.schedule {self.schedule!r} is not one of "
                             f"{', '.join(LR_SCHEDULES)}")
        if self.warmup_steps < 0:
            raise InputError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr <= self.lr:
            raise InputError(f"optim.min_lr must be in [0, optim.lr={self.lr:g}], got "
                             f"{self.min_lr:g}")
        if self.discriminator_lr is not None and not (self.discriminator_lr >= 0
                                                      and self.lr > 0):
            raise InputError(f"optim.discriminator_lr must be >= 0 and scales a positive "
                             f"optim.lr, got {self.discriminator_lr:g} with optim.lr "
                             f"{self.lr:g}")

    @property
    def discriminator_scale(self) -> float:
        """The discriminator's rate over the generator's, at every step."""
        return 1.0 if self.discriminator_lr is None else self.discriminator_lr / self.lr


@dataclass
class TrainConfig:
    """The step loop.

    Attributes:
        epochs: passes over the training data (all types together); converted to steps
            as ``ceil(n_train_samples / (batch_size * world_size))`` per epoch.
        max_steps: if set, overrides ``epochs``: the number of batches to train on.
        seed: model initialisation, the batch sequence and augmentation derive from it.
        device: 'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'.
        amp: mixed precision: 'auto' (on CUDA bf16 where supported, else fp16; on the CPU
            off), 'bf16' (CUDA or CPU: fast on CPUs with native bf16), 'fp16' (CUDA only)
            or 'off'.
        channels_last: memory format of activations and weights (faster on CPU and GPU).
        log_every, val_every, checkpoint_every: in steps; 0 disables (validation and a
            checkpoint still happen at the end).
        val_batches: cap on validation batches (0 = the whole validation set).
        image_every: TensorBoard image panels every this many steps (0 = at validation).
        init_from: a checkpoint whose model weights initialise training; optimizer and
            step start fresh (e.g. fine-tuning, ``photoface_finetune.yaml``). None trains
            from scratch.
        ema_decay: validate, and keep as ``best.pt``, an exponential moving average of the
            weights with this decay (:mod:`crossmodal.engine.ema`; e.g. 0.999); 0 (the
            default, the paper's) scores the trained weights themselves.
        vgg16_weights: a local copy of torchvision's ImageNet ``vgg16`` state dict
            (``vgg16-397923af.pth``), read only when a pass weighs the ``perceptual`` term,
            and then required: training stops before its first step without it. A loss
            input, not part of the model: checkpoints and inference never need it.
    """

    epochs: int = 40
    max_steps: int | None = None
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
    log_every: int = 20
    val_every: int = 1000
    checkpoint_every: int = 500
    val_batches: int = 0
    image_every: int = 0
    init_from: str | None = None
    ema_decay: float = 0.0
    vgg16_weights: str | None = None

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise InputError(f"train.amp {self.amp!r} is not one of {', '.join(AMP_MODES)}")
        if self.epochs < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise InputError(f"train.epochs and train.max_steps must be >= 1, got "
                             f"{self.epochs} and {self.max_steps}")
        counts = {name: getattr(self, name) for name in (
            "log_every", "val_every", "checkpoint_every", "val_batches", "image_every")}
        negative = [f"train.{name}={n}" for name, n in counts.items() if n < 0]
        if negative:
            raise InputError(f"{', '.join(negative)} must be >= 0 (0 disables)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise InputError(f"train.ema_decay must be in [0, 1) (0 disables), got "
                             f"{self.ema_decay}")


@dataclass
class ExperimentConfig:
    """One experiment: a name, the run directory, and the five sections."""

    name: str = "experiment"
    run_dir: str = "runs/${name}"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class _Layer(NamedTuple):
    """Nested keys to merge, and where they come from (the prefix of error messages)."""

    source: str
    data: dict


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load an experiment YAML with its ``_base_`` chain and command-line overrides.

    Args:
        path: the experiment file.
        overrides: ``key=value`` strings, dotted keys, values parsed as YAML
            (``train.max_steps=100``, ``data.paired=[a,b]``); merged last, in order.

    Returns:
        The validated, fully resolved config; ``data.root`` absolute (``~`` expanded, a
        relative root taken from the current directory).

    Raises:
        ConfigError: unreadable or invalid YAML, a ``_base_`` cycle or missing base, an
            unknown key, a value of the wrong type, a malformed override, or a value the
            schema's validation rejects.
    """
    path = Path(path)
    layers = _file_layers(path, ())
    layers += [_override_layer(item, path) for item in overrides]
    where = f"{path} with overrides {' '.join(overrides)}" if overrides else str(path)
    config = _build(layers, where)
    # The folder actually read, whatever directory a later command (eval, resume) runs in.
    config.data.root = os.path.abspath(os.path.expanduser(config.data.root))
    return config


def config_to_dict(config: ExperimentConfig) -> dict:
    """``config`` as plain containers (dicts, lists, str, int, float, bool, None): safe for
    JSON, YAML and ``torch.load(weights_only=True)``; :func:`config_from_dict` inverts it."""
    return _plain(asdict(config))


def config_from_dict(d: dict, *, source: str = "stored config") -> ExperimentConfig:
    """Rebuild a config from :func:`config_to_dict`'s output (e.g. ``checkpoint["config"]``).

    Validated like a file: unknown keys and wrong types raise :class:`ConfigError`, missing
    keys take the schema's defaults. Strings are taken literally (a ``${`` is not an
    interpolation), since a stored config is already resolved.

    Args:
        d: the nested dict.
        source: names the dict in error messages (e.g. the checkpoint's path).
    """
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: a config must be a mapping, got {type(d).__name__}")
    return _build([_Layer(source, _literal(d))], source)


def save_run_config(config: ExperimentConfig, run_dir: str | Path, overrides: Sequence[str],
                    source: Path | None) -> None:
    """Record how a run was configured, next to its checkpoints.

    Writes ``run_dir/config.yaml`` (the fully resolved config; :func:`load_config` reads it
    back to an equal config), ``run_dir/overrides.txt`` (the overrides, one per line) and
    ``run_dir/git.txt`` (the package's commit, followed by ``dirty`` when the work tree
    has changes, or ``unknown`` without git). Never fails because of git.

    Args:
        config: the config the run uses.
        run_dir: the run directory (created if needed).
        overrides: the command-line overrides applied to ``source``.
        source: the experiment file, or None for a config built in code.
    """
    run_dir = Path(run_dir)
    header = (f"# Fully resolved config of this run, from {source or 'code (no file)'}; "
              f"the overrides are in overrides.txt.\n")
    text = header + yaml.safe_dump(_literal(config_to_dict(config)), sort_keys=False)
    _write_text(run_dir / "config.yaml", text)
    _write_text(run_dir / "overrides.txt", "".join(f"{item}\n" for item in overrides))
    _write_text(run_dir / "git.txt", f"{git_state()}\n")


def _file_layers(path: Path, chain: tuple[Path, ...]) -> list[_Layer]:
    """The layers of ``path``: its bases' (recursively, in order), then its own keys.

    ``chain`` holds the files that led here, outermost first, to detect cycles. A file
    reached twice through different bases (a diamond) is fine and simply merged twice.
    """
    data = _read_yaml(path, chain[-1] if chain else None)
    bases = data.pop(_BASE_KEY, None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{path}: {_BASE_KEY} must be a path or a list of paths relative "
                          f"to this file, got {bases!r}")
    visited = [p.resolve() for p in (*chain, path)]
    layers = []
    for base in bases:
        base_path = path.parent / base
        if base_path.resolve() in visited:
            cycle = [*chain, path][visited.index(base_path.resolve()):] + [base_path]
            raise ConfigError(f"{path}: {_BASE_KEY} cycle {' -> '.join(map(str, cycle))}; "
                              f"remove one of these {_BASE_KEY} references")
        layers += _file_layers(base_path, (*chain, path))
    layers.append(_Layer(str(path), data))
    return layers


def _read_yaml(path: Path, referenced_by: Path | None) -> dict:
    """The mapping in ``path``, read with ``yaml.safe_load`` (no tags that build objects)."""
    try:
        if referenced_by is None:
            text = read_text(path, "experiment file",
                             "pass a YAML file such as experiments/quickstart.yaml")
        else:
            text = read_text(path, f"{_BASE_KEY} file",
                             f"{_BASE_KEY} paths are relative to the file that names them")
    except InputError as e:  # missing, a folder, unreadable, not UTF-8
        raise ConfigError(f"{referenced_by}: {e}" if referenced_by else str(e)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        fix = ("only plain YAML is accepted (no !!python or other object tags)"
               if isinstance(e, yaml.constructor.ConstructorError) else "fix the YAML syntax")
        raise ConfigError(f"{path}:{line} invalid YAML: {problem}; {fix}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: an experiment file must be a mapping of config keys, "
                          f"got a {type(data).__name__}")
    return data


def _override_layer(item: str, path: Path) -> _Layer:
    """``key=value`` as a nested one-leaf layer."""
    source = f"{path}: override {item!r}"
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise ConfigError(f"{source} is not of the form {_OVERRIDE_FORM}")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{source}: the value is not valid YAML ({problem}); expected "
                          f"{_OVERRIDE_FORM}") from None
    for part in reversed(parts):
        value = {part.strip(): value}
    return _Layer(source, value)


def _build(layers: list[_Layer], where: str) -> ExperimentConfig:
    """Merge ``layers`` onto the schema, resolve interpolations, build the dataclasses."""
    config = OmegaConf.structured(ExperimentConfig)
    for layer in layers:
        for key, value, expected in _leaves(ExperimentConfig, layer.data, "", layer.source):
            try:
                OmegaConf.update(config, key, value, merge=True)
            except OmegaConfBaseException:
                raise ConfigError(f"{layer.source}: {key} must be {expected}, got "
                                  f"{value!r}") from None
    try:
        return OmegaConf.to_object(config)
    except InputError as e:  # the dataclasses' __post_init__ validation
        raise ConfigError(f"{where}: {e}") from None
    except OmegaConfBaseException as e:  # an interpolation that does not resolve or fit
        message = str(getattr(e, "msg", None) or e).splitlines()[0]
        raise ConfigError(f"{where}: {getattr(e, 'full_key', None) or 'config'}: {message}; "
                          f"fix the ${{...}} interpolation") from None


def _leaves(schema: type, data: dict, prefix: str,
            source: str) -> Iterator[tuple[str, Any, str]]:
    """``(dotted key, value, expected type)`` of each leaf of ``data``; unknown keys and
    sections given a non-mapping are errors listing the valid keys."""
    hints = typing.get_type_hints(schema)
    names = [f.name for f in fields(schema)]
    section = prefix[:-1]
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            where = f"in {section}" if section else "at the top level"
            raise ConfigError(f"{source}: unknown key {full!r}; valid keys {where}: "
                              f"{', '.join(names)}")
        if is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {full} is a section, a mapping of "
                                  f"{', '.join(f.name for f in fields(hints[key]))}; "
                                  f"got {value!r}")
            yield from _leaves(hints[key], value, f"{full}.", source)
        else:
            yield full, value, _type_name(schema, key)


def _type_name(schema: type, key: str) -> str:
    """The annotation of ``schema.key`` as written (a string, with postponed annotations)."""
    annotation = next(f.type for f in fields(schema) if f.name == key)
    return annotation if isinstance(annotation, str) else getattr(
        annotation, "__name__", repr(annotation))


def _plain(value: Any) -> Any:
    """Tuples (``ModelConfig``'s widths) become lists, recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _literal(value: Any) -> Any:
    """Escape ``${`` in strings (OmegaConf reads ``\\${`` as a literal ``${``), so that a
    resolved config is read back as is rather than interpolated again."""
    if isinstance(value, str):
        return value.replace("${", "\\${")
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_literal(v) for v in value]
    return value


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
