"""``crossmodal predict``: normals for the faces in photos (docs/design.md §5).

Every input (a photo, a folder of photos, a glob) is read, its faces found and cropped by
the protocol, and their normals predicted in batches; one bad input (unreadable, corrupt,
not an image, no face) is reported and skipped, never the end of the run. Per face K of
photo NAME, in ``--out``:

- ``NAME_faceK_normal.exr``: float32 normals of the crop, our convention (recorded in the
  file); ``NAME_faceK_normal.png``: the picture of them; ``NAME_faceK_mask.png``: the facial
  mask; ``NAME_faceK_crop.json``: landmarks, crop transform, checkpoint, convention,
  landmark backend;
- with ``--relight``: ``NAME_faceK_relit.png`` (crop | normals | four lights);
  ``--depth``: ``NAME_faceK_depth.npy`` (and a picture); ``--mesh``: ``NAME_faceK_mesh.obj``;
- with ``--paste-back``: ``NAME_normal.exr``, ``NAME_normal.png`` and ``NAME_mask.png``,
  every face in the photo's frame (a larger face wins where two overlap).

``predictions.json`` lists every input with its faces and outputs, or why it was skipped.
The exit status is 0 when at least one face was predicted.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CrossmodalError

log = logging.getLogger(__name__)

SUMMARY_FILE = "predictions.json"
_GLOB_CHARS = frozenset("*?[")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="predict normals for the faces in photos",
        description="Find the faces of each photo (68 landmarks), crop them by the protocol "
        "(square of 1.2x the landmarks' box, 256 px) and predict their normals. INPUT: "
        "photos (PNG, JPEG), folders of them (not recursive) or quoted globs "
        "('shots/**/*.jpg'). Bad inputs are reported and skipped; predictions.json in "
        "--out lists what happened to each.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="photo, folder or glob")
    p.add_argument("--checkpoint", type=Path, required=True, metavar="CKPT",
                   help="a checkpoint (.pt: a trained run's, or `crossmodal import-official`'s)"
                   " or an ONNX export (.onnx: `crossmodal export`)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--backend", choices=("torch", "onnx"),
                   help="run the network with torch or onnxruntime (default: onnx for a "
                   ".onnx checkpoint, else torch)")
    p.add_argument("--landmarks", default="dlib", choices=("dlib", "face_alignment"),
                   help="landmark backend (default dlib, offline; face_alignment needs its "
                   "weight files in $TORCH_HOME/hub/checkpoints)")
    p.add_argument("--faces", default="all", choices=("all", "largest"),
                   help="predict every face of a photo, or only the largest (default all)")
    p.add_argument("--min-face", type=float, default=40.0, metavar="PX",
                   help="ignore faces whose landmarks span fewer pixels (default 40)")
    p.add_argument("--min-score", type=float, metavar="S",
                   help="ignore detections scoring lower (default: the backend's own "
                   "threshold; dlib's is 0 on its SVM margin, where clear faces score ~1; "
                   "face_alignment's 0.5 on a probability)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (torch)")
    p.add_argument("--batch-size", type=int, default=8, help="faces per forward pass")
    p.add_argument("--crop-size", type=int, default=256, metavar="S",
                   help="side of the crops and of the per-face maps (default 256)")
    p.add_argument("--paste-back", action="store_true",
                   help="also write the normals and mask in the photo's frame")
    p.add_argument("--relight", action="store_true", help="also write relit previews")
    p.add_argument("--depth", action="store_true",
                   help="also integrate the normals to a depth map (.npy)")
    p.add_argument("--mesh", action="store_true",
                   help="also write a relief mesh (.obj) of the integrated depth")
    p.set_defaults(func=run)


@dataclass
class _Input:
    """One photo to predict, or an input that gave none (``reason``)."""

    given: str
    path: Path | None = None
    name: str = ""
    reason: str | None = None
    decoded_at: float = 1.0  # the photo's scale as decoded (a huge JPEG: 1/2, 1/4, 1/8)
    faces: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        record = {"input": self.given, "path": None if self.path is None else str(self.path)}
        if self.reason is not None:
            return {**record, "status": "skipped", "reason": self.reason}
        return {**record, "status": "ok", "name": self.name, "faces": self.faces,
                "outputs": self.outputs}


def expand_inputs(given: list[str]) -> list[_Input]:
    """Files as given, folders as their photos (sorted, not recursive), globs as their
    matches; what names nothing becomes an input with a ``reason``."""
    from ..io import IMAGE_SUFFIXES

    inputs = []
    for item in given:
        path = Path(item).expanduser()
        if path.is_dir():
            photos = sorted(p for p in path.iterdir()
                            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
            inputs += [_Input(item, p) for p in photos] or [
                _Input(item, path, reason=f"folder {path} holds no PNG or JPEG file")]
        elif path.exists() or path.is_symlink() or not _GLOB_CHARS & set(item):
            inputs.append(_Input(item, path))  # a missing one is reported when read
        else:
            matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True)
                             if Path(m).is_file())
            inputs += [_Input(item, p) for p in matches] or [
                _Input(item, reason=f"the pattern {item!r} matches no file")]
    return inputs


def _unique_names(inputs: list[_Input]) -> None:
    """Output names from the file names; a repeated one gets -2, -3, ... in input order, so
    two photos called face.jpg in two folders never write over each other."""
    seen: dict[str, int] = {}
    for item in inputs:
        if item.path is None or item.reason is not None:
            continue
        stem = item.path.stem
        seen[stem] = seen.get(stem, 0) + 1
        item.name = stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"


def _check_arguments(args: argparse.Namespace, inputs: list[_Input]) -> str:
    """Validate the options and outputs before any work; returns the backend."""
    from ..fileutil import check_output

    for option, value, least in (("--batch-size", args.batch_size, 1),
                                 ("--crop-size", args.crop_size, 32),
                                 ("--min-face", args.min_face, 0)):
        if value < least:
            raise CrossmodalError(f"{option} must be at least {least}, got {value:g}")
    is_onnx = args.checkpoint.suffix.lower() == ".onnx"
    backend = args.backend or ("onnx" if is_onnx else "torch")
    if backend == "onnx" and not is_onnx:
        raise CrossmodalError(f"--backend onnx runs an ONNX export, and {args.checkpoint} is "
                              f"not one (.onnx); make one with `crossmodal export "
                              f"--checkpoint {args.checkpoint} --onnx MODEL.onnx`")
    if backend == "torch" and is_onnx:
        raise CrossmodalError(f"{args.checkpoint} is an ONNX export: use --backend onnx, or "
                              f"pass the .pt checkpoint it was exported from")
    folders = [Path(i.given).expanduser() for i in inputs if Path(i.given).is_dir()]
    files = [i.path for i in inputs if i.path is not None and i.path.is_file()]
    check_output(args.out, what="--out", kind="folder",
                 inputs={"the checkpoint": args.checkpoint, "an input folder": folders,
                         "an input photo": files})
    out = args.out.resolve()
    for path in files:
        if out in path.resolve().parents:
            raise CrossmodalError(f"input {path} lies in --out {args.out}, where predict "
                                  f"writes its files; choose another --out")
    return backend


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..photos import Predictor

    inputs = expand_inputs(args.inputs)
    for item in inputs:
        if item.reason is not None:
            log.warning("skipped %s: %s", item.given, item.reason)
    backend = _check_arguments(args, inputs)
    _unique_names(inputs)
    predictor = Predictor.from_checkpoint(
        args.checkpoint, device="cpu" if backend == "onnx" else args.device,
        landmarks=args.landmarks, faces=args.faces, min_face=args.min_face,
        min_score=args.min_score, batch_size=args.batch_size, crop_size=args.crop_size)
    writer = _Writer(args, predictor)
    todo = [item for item in inputs if item.reason is None]
    # Warnings go through the bar, so that they stay whole lines on the terminal.
    with logging_redirect_tqdm(), tqdm(total=len(todo), desc="predict", unit="photo",
                                       disable=args.quiet) as bar:
        # Photos are read and predicted a batch at a time: their crops share forward
        # passes, and at most a batch of photos is in memory.
        for start in range(0, len(todo), args.batch_size):
            group = [(item, _read(item)) for item in todo[start:start + args.batch_size]]
            readable = [(item, photo) for item, photo in group if photo is not None]
            found = predictor.predict_many([photo for _, photo in readable])
            for (item, photo), faces in zip(readable, found):
                if not faces:
                    score = ("" if args.min_score is None
                             else f", scoring at least {args.min_score:g}")
                    item.reason = (f"no face found ({args.landmarks} landmarks, faces of at "
                                   f"least {args.min_face:g} px{score})")
                    log.warning("skipped %s: %s", item.path, item.reason)
                else:
                    writer.write(item, photo, faces)
            bar.update(len(group))
    return _summarise(args, inputs, backend)


def _read(item: _Input):
    """The photo of ``item``, or None with ``item.reason`` set (reported, then skipped)."""
    from ..io import read_photo

    try:
        photo, factor = read_photo(item.path)
    except (CrossmodalError, OSError) as err:
        item.reason = " ".join(str(err).split())
        log.warning("skipped %s: %s", item.given if item.path is None else item.path,
                    item.reason)
        return None
    item.decoded_at = 1 / factor
    return photo


class _Writer:
    """Writes the files of one photo's faces (module docstring)."""

    def __init__(self, args: argparse.Namespace, predictor) -> None:
        self.args = args
        self.predictor = predictor

    def write(self, item: _Input, photo, faces) -> None:
        from .. import geometry, io, viz

        args, out = self.args, self.args.out
        for k, face in enumerate(faces):
            stem = out / f"{item.name}_face{k}"
            files = [io.write_normals(f"{stem}_normal.exr", face.normals, mask=face.mask),
                     io.write_image(f"{stem}_normal.png",
                                    viz.normals_to_rgb(face.normals, face.mask)),
                     io.write_mask(f"{stem}_mask.png", face.mask)]
            if args.relight:
                views = geometry.relight_views(face.normals, face.mask, n=4,
                                               albedo=face.image)
                tiles = [face.image, viz.normals_to_rgb(face.normals, face.mask),
                         *(viz.to_uint8(v) for v in views)]
                files.append(io.write_image(f"{stem}_relit.png", viz.panel(
                    tiles, ["photo", "normals", "light right", "light top", "light left",
                            "light bottom"])))
            if args.depth or args.mesh:
                files += _write_depth(stem, face, depth=args.depth, mesh=args.mesh)
            files.append(self._write_crop_json(f"{stem}_crop.json", item, face, k))
            item.faces.append({"face": k, "score": face.face.score,
                               "size_px": round(face.face.size, 1)})
            item.outputs += [p.name for p in files]
        if args.paste_back:
            item.outputs += [p.name for p in _write_paste_back(out / item.name, photo, faces)]

    def _write_crop_json(self, path: str, item: _Input, face, k: int):
        from ..fileutil import atomic_write

        crop = face.crop
        record = {
            "photo": str(item.path), "face": k, "image_size": list(face.normals.shape[:2]),
            "photo_decoded_at": item.decoded_at,
            "crop": {"matrix": crop.matrix.tolist(), "box_x0_y0_side": list(crop.box),
                     "size": crop.size, "protocol": "landmarks-1.2"},
            "landmarks": {"backend": self.args.landmarks, "points": "iBUG 300-W 68",
                          "xy": face.landmarks.round(3).tolist(),
                          "box_x0_y0_x1_y1": list(face.face.box), "score": face.face.score},
            "checkpoint": str(self.args.checkpoint),
            "model_convention": self.predictor.convention,
            "convention": "opengl",
        }
        return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(record, indent=1)))


def _write_depth(stem: Path, face, *, depth: bool, mesh: bool) -> list[Path]:
    import numpy as np

    from .. import geometry, io, viz
    from ..fileutil import atomic_write

    z = geometry.integrate_normals(face.normals, face.mask)
    files = []
    if depth:
        files.append(atomic_write(f"{stem}_depth.npy", lambda tmp: np.save(tmp, z)))
        near = np.nan_to_num(z.max() - z, nan=0.0) if np.isfinite(z).any() else z * 0
        span = float(near.max()) or 1.0
        picture = viz.to_uint8(np.where(face.mask, near / span, 1.0))
        files.append(io.write_image(f"{stem}_depth.png", picture))
    if mesh:
        relief = geometry.depth_to_mesh(z, face.mask, colors=face.image, normals=face.normals)
        files.append(geometry.write_mesh(f"{stem}_mesh.obj", relief))
    return files


def _write_paste_back(stem: Path, photo, faces) -> list[Path]:
    import numpy as np

    from .. import io, viz

    normals = np.zeros(photo.shape, np.float32)
    mask = np.zeros(photo.shape[:2], bool)
    for face in reversed(faces):  # largest last: it wins where faces overlap
        pasted, inside = face.paste_back(photo.shape)
        normals[inside] = pasted[inside]
        mask |= inside
    picture = np.where(mask[..., None], viz.normals_to_rgb(normals, mask) / 255.0,
                       0.35 * photo)
    return [io.write_normals(f"{stem}_normal.exr", normals, mask=mask),
            io.write_image(f"{stem}_normal.png", picture),
            io.write_mask(f"{stem}_mask.png", mask)]


def _summarise(args: argparse.Namespace, inputs: list[_Input], backend: str) -> int:
    from .. import __version__
    from ..fileutil import atomic_write

    done = [i for i in inputs if i.reason is None]
    skipped = [i for i in inputs if i.reason is not None]
    summary = {"crossmodal_version": __version__, "checkpoint": str(args.checkpoint),
               "backend": backend, "landmarks": args.landmarks, "faces": args.faces,
               "min_face": args.min_face, "min_score": args.min_score,
               "crop_size": args.crop_size,
               "photos": len(done), "faces_predicted": sum(len(i.faces) for i in done),
               "skipped": len(skipped), "inputs": [i.record() for i in inputs]}
    path = args.out / SUMMARY_FILE
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(summary, indent=1) + "\n"))
    log.info("predicted %d face(s) in %d photo(s); wrote %s", summary["faces_predicted"],
             len(done), args.out)
    if skipped:
        log.warning("skipped %d input(s) (reasons above and in %s): %s", len(skipped), path,
                    ", ".join(i.given if i.path is None else str(i.path) for i in skipped))
    if not done:
        raise CrossmodalError(f"no face was predicted: all {len(inputs)} input(s) were "
                              f"skipped (reasons above and in {path})")
    return 0
