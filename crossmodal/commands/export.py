"""``crossmodal export``: a checkpoint's image->normal pass as an ONNX model, checked against
torch through onnxruntime before it is kept (docs/design.md §5)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import CrossmodalError

log = logging.getLogger(__name__)

#: The largest absolute difference from torch's normals an export may show to be kept.
TOLERANCE = 1e-3


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export a checkpoint's image->normal network to ONNX",
        description="Write the image->normal pass of a checkpoint (the image encoder and "
        "the normal decoder with its skips, the network that predict and eval run) as an "
        "ONNX model: input 'image' (B, 3, S, S) float32 RGB in [0, 1], output 'normals' "
        "(B, 3, S, S) unit vectors in the checkpoint's convention, any batch size B, S "
        "the resolution the checkpoint was trained at. The file's metadata records the "
        "crossmodal version, S, the variant, the convention, the checkpoint and its git "
        "commit. Before the file is kept, onnxruntime runs it on random images and its "
        f"normals must match torch's within {TOLERANCE:g}. Needs the export extra: "
        "pip install 'crossmodal[export]'.")
    p.add_argument("--checkpoint", type=Path, required=True, metavar="CKPT",
                   help="checkpoint written by crossmodal train or import-official")
    p.add_argument("--onnx", type=Path, required=True, metavar="FILE.onnx",
                   help="ONNX file to write")
    p.add_argument("--image-size", type=int, metavar="S",
                   help="the side of the exported input, a multiple of 32 (default: the "
                   "resolution the checkpoint was trained at)")
    p.add_argument("--opset", type=int, metavar="N",
                   help="ONNX opset version, 18 or later (default: the exporter's)")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    # Imported here so that the CLI starts without torch for the commands not needing it.
    from ..fileutil import atomic_write, check_output
    from ..image_size import check_image_size
    from ..onnx_export import check_opset, export_onnx, onnx_metadata, require_onnx, verify_onnx

    # First, so that --onnx naming the checkpoint is said as such whatever its suffix.
    check_output(args.onnx, inputs={"the checkpoint": args.checkpoint}, what="--onnx")
    if args.onnx.suffix.lower() != ".onnx":
        raise CrossmodalError(f"--onnx {args.onnx}: name a file ending in .onnx")
    if args.image_size is not None:
        check_image_size(args.image_size, "--image-size", "use")
    require_onnx()  # all three: onnxruntime checks the export
    check_opset(args.opset, "--opset")

    def export_and_verify(tmp: Path) -> None:
        # Verified before atomic_write renames it: a mismatching export is never kept, and
        # an earlier file at --onnx stays as it was.
        export_onnx(args.checkpoint, tmp, image_size=args.image_size, opset=args.opset)
        difference = verify_onnx(tmp, args.checkpoint)
        if not difference <= TOLERANCE:  # NaN fails too
            raise CrossmodalError(
                f"the ONNX export of {args.checkpoint} does not reproduce its normals: "
                f"onnxruntime differs from torch by {difference:.3g} (max abs, above "
                f"{TOLERANCE:g}); nothing was written; try another --opset, or report it")
        log.info("onnxruntime matches torch within %.2g (max abs over 2 random images)",
                 difference)

    atomic_write(args.onnx, export_and_verify)
    metadata = onnx_metadata(args.onnx)
    log.info("wrote %s (%.1f MB): the image->normal pass of the %s variant, input "
             "(B, 3, %d, %d), normals in the %s convention", args.onnx,
             args.onnx.stat().st_size / 1e6, metadata["variant"], metadata["image_size"],
             metadata["image_size"], metadata["convention"])
    return 0
