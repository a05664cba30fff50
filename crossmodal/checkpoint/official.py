"""The authors' released weights (``model.pth`` of their ``ResNetUNet``) -> our model.

Their network is the graph of docs/design.md §7, which ``CrossModalNet(ModelConfig())`` (variant
'full') reproduces module for module, so conversion is a renaming:

==================================  ================================================
theirs                              ours
==================================  ================================================
``layer0.0`` / ``layer0.1``         ``image_encoder.trunk.conv1`` / ``.bn1``
``layer1.1`` (index 0: maxpool)     ``image_encoder.trunk.layer1``
``layer2`` ... ``layer4``           ``image_encoder.trunk.layer2`` ... ``layer4``
``conv_original_size0`` / ``1``     ``image_encoder.full_resolution.0`` / ``.1``
the same with ``_2``                the same under ``normal_encoder``
``layer4_1x1``                      ``normal_decoder.latent_projection``
``layer3_1x1`` ... ``layer0_1x1``   ``normal_decoder.skips.0`` ... ``.3.projection``
``conv_up3`` ... ``conv_up0``       ``normal_decoder.stages.0`` ... ``.3``
``conv_original_size2``             ``normal_decoder.stages.4``
``conv_last``                       ``normal_decoder.head``
``conv_up3_2`` ... ``conv_last_2``  the same under ``image_decoder``
==================================  ================================================

Their ``base_model.*`` tensors are the image-encoder trunk a second time (the same
tensors, registered under the torchvision model they were taken from): they are checked
to be equal to the tensors they alias, not loaded twice. ``base_model.fc`` (the ImageNet
classifier) is unused by their graph and ignored.

The output convention of their network is **unverified**: their ``tester.py`` L2-normalises
the output and writes ``127.5 * (n + 1)`` as RGB, and we assume its frame is ours until the
real weights are run on a face of known geometry. The imported checkpoint records
``config["source"]["output_convention"] = "official"`` (see the 'official' convention in
:mod:`crossmodal.normals`) so that consumers can tell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CrossmodalError
from ..fileutil import check_output, load_torch_file
from ..models import CrossModalNet, ModelConfig
from .format import _first, build_model, check_finite_weights, save_checkpoint

__all__ = ["ALIASES", "IGNORED_PREFIXES", "OFFICIAL_TO_OURS", "TARGET_SHAPES", "ConversionReport",
           "convert_official_state_dict", "import_official"]

_HOW_TO_GET_THEIRS = ("download the authors' model.pth (linked from "
                      "github.com/boukhayma/face_normals) and pass its path")
#: Their unused ImageNet classifier.
IGNORED_PREFIXES = ("base_model.fc.",)
_TRUNK = "image_encoder.trunk."


def _prefixes() -> dict[str, str]:
    """Module-prefix renamings, ours -> theirs; the parameter path after the prefix is the
    same on both sides (their ResNet blocks are torchvision's, as ours are)."""
    prefixes = {}
    for encoder, s in (("image_encoder", ""), ("normal_encoder", "_2")):
        prefixes.update({
            f"{encoder}.trunk.conv1.": f"layer0{s}.0.",
            f"{encoder}.trunk.bn1.": f"layer0{s}.1.",
            # Their layer1 is Sequential(maxpool, resnet.layer1).
            f"{encoder}.trunk.layer1.": f"layer1{s}.1.",
            **{f"{encoder}.trunk.layer{k}.": f"layer{k}{s}." for k in (2, 3, 4)},
            **{f"{encoder}.full_resolution.{i}.": f"conv_original_size{i}{s}." for i in (0, 1)},
        })
    stages = ("conv_up3", "conv_up2", "conv_up1", "conv_up0", "conv_original_size2")
    for decoder, s in (("normal_decoder", ""), ("image_decoder", "_2")):
        prefixes.update({f"{decoder}.stages.{i}.": f"{name}{s}." for i, name in enumerate(stages)})
        prefixes[f"{decoder}.head."] = f"conv_last{s}."
    prefixes["normal_decoder.latent_projection."] = "layer4_1x1."
    # Skips run deep to shallow (layer3, layer2, layer1, stem); the last one, from the
    # full-resolution branch, has no projection.
    prefixes.update({f"normal_decoder.skips.{i}.projection.": f"layer{3 - i}_1x1."
                     for i in range(4)})
    return prefixes


def _official_name(ours: str, prefixes: dict[str, str]) -> str:
    matches = [p for p in prefixes if ours.startswith(p)]
    if len(matches) != 1:
        raise RuntimeError(f"no unique official name for {ours!r} (prefixes {matches}): the "
                           f"model changed without crossmodal.checkpoint.official following")
    return prefixes[matches[0]] + ours[len(matches[0]):]


def _target_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of ``CrossModalNet(ModelConfig())`` and its shape, without allocating."""
    with torch.device("meta"):
        state = CrossModalNet(ModelConfig()).state_dict()
    return {name: tuple(t.shape) for name, t in state.items()}


#: Our tensor name -> shape, for the default ('full') model the authors' weights fill.
TARGET_SHAPES = _target_shapes()
#: Their tensor name -> ours, one entry per tensor of our model.
OFFICIAL_TO_OURS = {_official_name(ours, prefixes): ours
                    for prefixes in [_prefixes()] for ours in TARGET_SHAPES}
#: Their ``base_model.X`` -> their name of the same tensor, which it must equal: X is the
#: torchvision name, as in our trunk.
ALIASES = {"base_model." + ours[len(_TRUNK):]: theirs
           for theirs, ours in OFFICIAL_TO_OURS.items() if ours.startswith(_TRUNK)}


@dataclass
class ConversionReport:
    """What happened to each tensor of a conversion.

    Attributes:
        mapped: their names loaded into our model (one each).
        aliases_checked: their ``base_model.*`` names found equal to the tensor they alias.
        ignored: their names deliberately not used (``base_model.fc.*``).
        filled_defaults: our names absent from their file and set to a default (the BN
            ``num_batches_tracked`` counters old PyTorch did not save; 0, unused in eval).
    """

    mapped: list[str] = field(default_factory=list)
    aliases_checked: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    filled_defaults: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{len(self.mapped)} tensors mapped, {len(self.aliases_checked)} aliases "
                f"checked, {len(self.ignored)} ignored, {len(self.filled_defaults)} filled "
                f"with defaults")


def convert_official_state_dict(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Rename the authors' ``ResNetUNet`` state dict into ours.

    Args:
        state: their tensor name -> tensor (without a ``module.`` prefix).

    Returns:
        A state dict for ``CrossModalNet(ModelConfig())`` holding every one of its tensors
        (the source tensors themselves, not copies), and the report of the conversion.

    Raises:
        CrossmodalError: unknown names, missing tensors or wrong shapes (all listed), or a
            ``base_model.*`` tensor that differs from the tensor it should alias.
    """
    report = ConversionReport()
    out: dict[str, torch.Tensor] = {}
    unknown, wrong_shapes, not_tensors = [], [], []
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            not_tensors.append(f"{name} ({type(tensor).__name__})")
        elif name in OFFICIAL_TO_OURS:
            ours = OFFICIAL_TO_OURS[name]
            if tuple(tensor.shape) != TARGET_SHAPES[ours]:
                wrong_shapes.append(f"{name} {list(tensor.shape)} (expected "
                                    f"{list(TARGET_SHAPES[ours])})")
            out[ours] = tensor
            report.mapped.append(name)
        elif name in ALIASES:
            report.aliases_checked.append(name)  # compared below, once everything is mapped
        elif name.startswith(IGNORED_PREFIXES):
            report.ignored.append(name)
        else:
            unknown.append(name)
    missing = []
    for theirs, ours in OFFICIAL_TO_OURS.items():
        if ours in out:
            continue
        if ours.endswith(".num_batches_tracked"):
            # Saved only since PyTorch 0.4.1; eval-mode BN never reads it.
            out[ours] = torch.tensor(0, dtype=torch.long)
            report.filled_defaults.append(ours)
        else:
            missing.append(theirs)
    problems = [f"{label}: {_first(names)}" for label, names in (
        ("unknown tensors", unknown), ("missing tensors", missing),
        ("wrong shapes", wrong_shapes), ("not tensors", not_tensors)) if names]
    if problems:
        raise CrossmodalError(
            "not the authors' ResNetUNet state dict (" + "; ".join(problems) + "); expected "
            "the model.pth released with 'Cross-modal Deep Face Normals' (CVPR 2020)")
    for alias in report.aliases_checked:
        target = ALIASES[alias]
        # Compared with what we load (a filled counter included), so an alias can never
        # disagree with the model silently.
        if not torch.equal(state[alias], out[OFFICIAL_TO_OURS[target]]):
            raise CrossmodalError(f"not the authors' checkpoint: {alias} differs from "
                                  f"{target}, which it should alias")
    return out, report


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Their file as a flat state dict: unwraps ``{'state_dict': ...}`` and drops the
    ``module.`` prefix of a ``DataParallel`` save."""
    state = load_torch_file(path, what="the authors' weights", fix=_HOW_TO_GET_THEIRS)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise CrossmodalError(f"{path} holds a {type(state).__name__}, not a state dict "
                              f"of tensors; expected the authors' model.pth")
    if all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def import_official(model_path: str | Path, out_path: str | Path) -> ConversionReport:
    """Convert the authors' ``model.pth`` at ``model_path`` into our checkpoint at
    ``out_path`` (docs/design.md §8), loadable with :func:`crossmodal.checkpoint.build_model`.

    The checkpoint's config is the default model, the resolution it was trained at
    (``data.image_size`` 256) and a ``source`` section naming the file and the unverified
    'official' output convention (see the module docstring).

    Raises:
        CrossmodalError: ``out_path`` is ``model_path`` or cannot be written (checked before
            reading), the file is not their state dict, or it holds NaN/inf weights.
    """
    model_path = Path(model_path)
    check_output(out_path, inputs={"the authors' weights": model_path}, what="--out")
    state = _read_state_dict(model_path)
    try:
        converted, report = convert_official_state_dict(state)
    except CrossmodalError as err:
        raise CrossmodalError(f"{model_path}: {err}") from None
    # A damaged download would otherwise become a checkpoint that every consumer refuses.
    check_finite_weights(state, model_path, fix=_HOW_TO_GET_THEIRS)
    # The authors trained on 256 x 256 crops (§4.1): the inference path runs it there.
    config = {"model": ModelConfig().to_dict(), "data": {"image_size": 256},
              "source": {"official_model": str(model_path), "output_convention": "official"}}
    # Loading strictly through the same path inference uses proves the checkpoint works.
    model = build_model({"config": config, "model": converted})
    save_checkpoint(out_path, model=model, config=config, step=0, metrics={})
    return report
