"""ONNX export of a checkpoint's image->normal pass, and running the export through
onnxruntime behind the one inference path (docs/design.md §5, §6).

What is exported is the pass that inference runs, nothing else: E_I and D_N with the skips
(``CrossModalNet.forward(x, "image_to_normal", outputs=("normals",))``), without E_N and
D_I. The graph has one input and one output:

- ``image``: float32 ``(B, 3, S, S)``, RGB in [0, 1], no mean/std normalisation;
- ``normals``: float32 ``(B, 3, S, S)``, unit vectors in the checkpoint's output
  convention (``opengl``, ours, for trained models; ``official`` for imported weights,
  docs/design.md §2, §8),

with a dynamic batch ``B`` and a fixed side ``S``: the resolution the checkpoint was trained
at (docs/design.md §6), which other crop sizes are resized to by :class:`NormalPredictor`,
exactly as for the torch model. The file's ``metadata_props`` record
:data:`METADATA_KEYS`, which :func:`onnx_metadata` reads back and without which a file is
refused as not exported by crossmodal.

:class:`OnnxImageToNormal` wraps an ``onnxruntime`` session in the calling convention of
:class:`~crossmodal.models.CrossModalNet`, so ``NormalPredictor`` runs it unchanged
(resizing, batching, resizing back); :func:`load_onnx_predictor` builds that predictor.

``onnx``, ``onnxscript`` and ``onnxruntime`` (the ``export`` extra) are imported inside the
functions, so that ``import crossmodal`` does not need them.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from . import __version__
from .checkpoint import build_model, load_checkpoint, output_convention
from .errors import CrossmodalError, InputError
from .fileutil import atomic_write, require_file
from .image_size import check_image_size
from .inference import NormalPredictor, trained_image_size

__all__ = ["INPUT_NAME", "METADATA_KEYS", "MIN_OPSET", "OUTPUT_NAME", "OnnxImageToNormal",
           "check_opset", "export_onnx", "load_onnx_predictor", "onnx_metadata",
           "require_onnx", "verify_onnx"]

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "normals"
#: The metadata_props an export carries; ``git_commit`` only when the checkpoint has one.
METADATA_KEYS = ("crossmodal_version", "image_size", "variant", "convention", "source",
                 "git_commit")
#: What :func:`onnx_metadata` needs to accept a file as a crossmodal export.
_REQUIRED_METADATA = ("crossmodal_version", "image_size", "variant", "convention", "source")
#: torch's dynamo exporter writes opset 18 and later; it would silently keep 18 for a lower
#: request, because onnx's version converter cannot move this graph's reduction axes (inputs
#: since opset 18) back into attributes.
MIN_OPSET = 18
_INSTALL = "pip install 'crossmodal[export]'"
_HOW_TO_EXPORT = "export one with `crossmodal export --checkpoint CKPT --onnx FILE.onnx`"


def require_onnx(*names: str) -> list[ModuleType]:
    """Import the optional ONNX packages ``names`` (default: onnx, onnxscript, onnxruntime).

    Raises:
        CrossmodalError: one line naming those missing and the install command.
    """
    names = names or ("onnx", "onnxscript", "onnxruntime")
    modules, missing = [], []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            missing.append(name)
    if missing:
        raise CrossmodalError(f"ONNX export and inference need {', '.join(missing)}, which "
                              f"{'is' if len(missing) == 1 else 'are'} not installed: "
                              f"{_INSTALL}")
    return modules


def check_opset(opset: int | None, what: str = "opset") -> None:
    """Refuse an ONNX opset the exporter cannot write: below :data:`MIN_OPSET` or above the
    newest the installed ``onnx`` knows. None (the exporter's default) passes."""
    if opset is None:
        return
    (onnx,) = require_onnx("onnx")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise InputError(f"{what} {opset} is not one the exporter can write: use {MIN_OPSET} "
                         f"to {newest} (the installed onnx's newest), or leave it out")


class _ImageToNormal(nn.Module):
    """The image->normal pass as a one-tensor function, the form an ONNX graph takes:
    ``(B, 3, S, S)`` images -> ``(B, 3, S, S)`` unit normals."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image, "image_to_normal", outputs=("normals",))["normals"]


#: Loggers of the exporter's stack -> the least level shown during an export. onnxscript's
#: optimiser logs each rewrite at INFO (a hundred lines), and torch warns that torchvision,
#: whose detection ops this graph does not use, is not installed.
_EXPORTER_LOGGERS = {"onnxscript": logging.WARNING, "onnx_ir": logging.WARNING,
                     "torch.onnx._internal.exporter._registration": logging.ERROR}


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence what torch's exporter says that does not concern a crossmodal user (see
    :data:`_EXPORTER_LOGGERS`, and a FutureWarning from torch's own pytree code)."""
    loggers = {logging.getLogger(name): level for name, level in _EXPORTER_LOGGERS.items()}
    before = {logger: logger.level for logger in loggers}
    try:
        for logger, level in loggers.items():
            logger.setLevel(max(level, logger.getEffectiveLevel()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for logger, level in before.items():
            logger.setLevel(level)


def export_onnx(checkpoint: str | os.PathLike | Mapping[str, Any], out: str | os.PathLike,
                *, image_size: int | None = None, opset: int | None = None) -> Path:
    """Write the image->normal pass of a checkpoint as an ONNX model (module docstring).

    Exported with torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``, torch
    2.13's default), with a dynamic batch dimension from ``dynamic_shapes`` and onnxscript's
    graph optimisation (BatchNorm folded into the convolutions). It works for every variant
    and is fast enough not to need the older TorchScript exporter: on two cores about 3 s
    for the smoke model and 7 s for the full one at 256 px (a 78 MB file: E_I and D_N only),
    whose onnxruntime normals are within 5e-7 of torch's. The example batch has 2 images
    because ``torch.export`` specialises a dimension of size 1.

    Args:
        checkpoint: a checkpoint file, or one loaded by
            :func:`~crossmodal.checkpoint.load_checkpoint`.
        out: the ``.onnx`` file to write, atomically; its folder is created. The caller
            checks it is not an input (``crossmodal export`` does).
        image_size: the side ``S`` of the exported input; default the checkpoint's
            training resolution (``config["data"]["image_size"]``). A multiple of 32.
        opset: the ONNX opset (:data:`MIN_OPSET` or later); default the exporter's.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        CrossmodalError: the ONNX packages are missing (the install command); the
            checkpoint cannot be read; no image size is known, or it is not a multiple of
            32; the opset cannot be written.
    """
    onnx, _ = require_onnx("onnx", "onnxscript")
    check_opset(opset)
    if isinstance(checkpoint, Mapping):
        source = "in-memory"
    else:
        source = Path(checkpoint).name
        checkpoint = load_checkpoint(checkpoint)
    size = image_size if image_size is not None else trained_image_size(checkpoint)
    if size is None:
        named = "the checkpoint" if source == "in-memory" else f"checkpoint {source}"
        raise CrossmodalError(f"{named} does not record the resolution it was "
                              f"trained at (config data.image_size); give the export's "
                              f"image size (--image-size S, a multiple of 32)")
    check_image_size(size, "image size", "export at")
    network = build_model(checkpoint)
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    log.info("exporting the image->normal pass of %s (%s, %d px) to ONNX", source,
             network.config.variant, size)
    with _quiet_exporter():
        program = torch.onnx.export(
            _ImageToNormal(network).eval(), (example,), dynamo=True,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
            opset_version=opset, verbose=False)
    proto = program.model_proto
    written = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset is not None and written != opset:
        raise CrossmodalError(f"the exporter wrote opset {written}, not the {opset} asked "
                              f"for; leave the opset out or use {written}")
    metadata = {"crossmodal_version": __version__, "image_size": str(size),
                "variant": network.config.variant, "convention": output_convention(checkpoint),
                "source": source}
    if checkpoint.get("git_commit"):
        metadata["git_commit"] = str(checkpoint["git_commit"])
    onnx.helper.set_model_props(proto, metadata)
    proto.doc_string = (f"crossmodal image->normal pass ({metadata['variant']}): {INPUT_NAME} "
                        f"(B, 3, {size}, {size}) RGB in [0, 1] -> {OUTPUT_NAME} (B, 3, {size}, "
                        f"{size}) unit vectors, convention {metadata['convention']}")
    onnx.checker.check_model(proto, full_check=True)
    return atomic_write(out, lambda tmp: onnx.save_model(proto, tmp))


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def _checked_metadata(props: Mapping[str, str], path: Path) -> dict[str, Any]:
    """The crossmodal metadata of an ONNX file, ``image_size`` as an int, or a refusal."""
    missing = [key for key in _REQUIRED_METADATA if key not in props]
    if missing:
        raise CrossmodalError(f"{path} is an ONNX model that crossmodal did not export (no "
                              f"{', '.join(missing)} in its metadata); {_HOW_TO_EXPORT}")
    metadata: dict[str, Any] = {key: props[key] for key in METADATA_KEYS if key in props}
    size = props["image_size"]
    if not size.isdigit() or int(size) < 32 or int(size) % 32:
        raise CrossmodalError(f"{path} has a damaged image_size {size!r} in its metadata; "
                              f"{_HOW_TO_EXPORT}")
    metadata["image_size"] = int(size)
    return metadata


def onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The crossmodal metadata of an exported ONNX file (:data:`METADATA_KEYS`): strings,
    but ``image_size``, an int; ``git_commit`` only when the checkpoint had one.

    Raises:
        CrossmodalError: one line naming the file: the ``onnx`` package is missing; the
            file is missing, not a file, not ONNX (corrupt, truncated, empty), or an ONNX
            model without crossmodal's metadata.
    """
    (onnx,) = require_onnx("onnx")
    path = require_file(path, "ONNX model", _HOW_TO_EXPORT)
    try:
        # Weights kept out of memory: only the header is wanted.
        model = onnx.load(path, load_external_data=False)
    except Exception as err:  # protobuf decode errors, OSError alike: the file is unusable
        raise CrossmodalError(f"cannot read ONNX model {path} (truncated, or not an ONNX "
                              f"file?): {_first_line(err)}; {_HOW_TO_EXPORT}") from None
    # Protobuf parses an empty file, and some other bytes, as an empty message.
    if not model.ir_version or not model.HasField("graph"):
        raise CrossmodalError(f"{path} is not an ONNX model (empty, or another kind of "
                              f"file); {_HOW_TO_EXPORT}")
    return _checked_metadata({p.key: p.value for p in model.metadata_props}, path)


def _available_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class OnnxImageToNormal(nn.Module):
    """An exported image->normal pass run by onnxruntime on the CPU, with the calling
    convention of :class:`~crossmodal.models.CrossModalNet` for that pass, so that
    :class:`~crossmodal.inference.NormalPredictor` runs it as it runs the torch model.

    It has no parameters: ``eval()``/``train()`` change nothing, and it stays on the CPU
    (inputs on another device are copied, outputs go back there).

    Args:
        path: an ONNX file written by :func:`export_onnx`.
        threads: onnxruntime's intra-op threads; default the cores this process may use.

    Attributes:
        path: the file.
        metadata: its :func:`onnx_metadata`.
        image_size: the side ``S`` its input must have.

    Raises:
        CrossmodalError: as :func:`onnx_metadata` (read here through onnxruntime), or the
            file does not load, or its graph is not an ``image -> normals`` pass.
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None) -> None:
        super().__init__()
        (ort,) = require_onnx("onnxruntime")
        self.path = require_file(path, "ONNX model", _HOW_TO_EXPORT)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or _available_cores()
        options.inter_op_num_threads = 1  # one chain of convolutions: nothing to overlap
        options.log_severity_level = 3  # errors only: its warnings are not the user's to fix
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as err:  # InvalidProtobuf, InvalidGraph, Fail: the file is unusable
            raise CrossmodalError(f"cannot load ONNX model {self.path} (truncated, or not an "
                                  f"ONNX file?): {_first_line(err)}; {_HOW_TO_EXPORT}") from None
        self.metadata = _checked_metadata(
            self.session.get_modelmeta().custom_metadata_map, self.path)
        self.image_size: int = self.metadata["image_size"]
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = [3, self.image_size, self.image_size]
        if ([i.name for i in inputs] != [INPUT_NAME] or list(inputs[0].shape[1:]) != shape
                or [o.name for o in outputs] != [OUTPUT_NAME]):
            raise CrossmodalError(f"{self.path} is not an image->normal export (expected "
                                  f"{INPUT_NAME} (B, {', '.join(map(str, shape))}) -> "
                                  f"{OUTPUT_NAME}); {_HOW_TO_EXPORT}")

    def forward(self, x: torch.Tensor, route: str = "image_to_normal",
                outputs: tuple[str, ...] | None = ("normals",)) -> dict[str, torch.Tensor]:
        """Run the exported pass.

        Args:
            x: images ``(B, 3, S, S)`` in [0, 1], ``S`` = :attr:`image_size`.
            route: ``"image_to_normal"``, the only pass exported.
            outputs: ``("normals",)`` (or None, all there is).

        Returns:
            ``{"normals": (B, 3, S, S) float32 unit vectors}`` on ``x``'s device.

        Raises:
            InputError: another route or output, or another input shape.
        """
        if route != "image_to_normal":
            raise InputError(f"the ONNX model {self.path} runs the image_to_normal pass only, "
                             f"not {route!r}")
        if outputs is not None and set(outputs) != {OUTPUT_NAME}:
            raise InputError(f"the ONNX model {self.path} returns normals only; asked for "
                             f"{', '.join(outputs) or 'nothing'}")
        side = self.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, side, side):
            raise InputError(f"the ONNX model {self.path} takes (B, 3, {side}, {side}) images, "
                             f"got shape {tuple(x.shape)}; NormalPredictor resizes crops of "
                             f"other sizes")
        # onnxruntime reads C-contiguous float32 arrays; the predictor passes channels_last.
        image = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (normals,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: image})
        return {OUTPUT_NAME: torch.from_numpy(normals).to(x.device)}


def load_onnx_predictor(path: str | os.PathLike, *, batch_size: int = 8) -> NormalPredictor:
    """The inference path of docs/design.md §6 running an ONNX export on the CPU: crops of
    any size ``(B, 3, H, W)`` -> normals at their size, as
    ``NormalPredictor.from_checkpoint`` gives for the checkpoint it came from.

    Raises:
        CrossmodalError: as :class:`OnnxImageToNormal`.
    """
    model = OnnxImageToNormal(path)
    return NormalPredictor(model, image_size=model.image_size, device="cpu",
                           batch_size=batch_size)


def verify_onnx(path: str | os.PathLike, checkpoint: str | os.PathLike | Mapping[str, Any], *,
                batch_size: int = 2, seed: int = 0) -> float:
    """The largest absolute difference between the normals of an ONNX export (run by
    onnxruntime) and of the checkpoint's torch model, on ``batch_size`` random images
    ``(B, 3, S, S)`` at the export's side; NaN when either output has a NaN.

    Raises:
        CrossmodalError: as :class:`OnnxImageToNormal` and
            :func:`~crossmodal.checkpoint.load_checkpoint`.
    """
    exported = OnnxImageToNormal(path)
    if not isinstance(checkpoint, Mapping):
        checkpoint = load_checkpoint(checkpoint)
    network = build_model(checkpoint)
    size = exported.image_size
    images = torch.rand(batch_size, 3, size, size,
                        generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        expected = network(images, "image_to_normal", outputs=("normals",))["normals"]
        got = exported(images)["normals"]
    difference = (got - expected).abs()
    return float("nan") if difference.isnan().any() else float(difference.max())
