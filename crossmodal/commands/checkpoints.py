"""Commands on checkpoints: ``import-official`` (the authors' released weights)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import-official", help="convert the authors' released model.pth into a checkpoint",
        description="Convert the released weights of 'Cross-modal Deep Face Normals' "
        "(CVPR 2020; model.pth, a state dict of their ResNetUNet) into a crossmodal "
        "checkpoint of the default ('full') model, for predict, eval and export. Every "
        "tensor is checked: names, shapes, and that base_model.* equals what it aliases. "
        "Their output convention is not verified (normal convention 'official').")
    p.add_argument("model", type=Path, metavar="MODEL.pth", help="the authors' model.pth")
    p.add_argument("--out", type=Path, required=True, metavar="CKPT",
                   help="checkpoint to write (e.g. checkpoints/official.pt)")
    p.set_defaults(func=run_import_official)


def run_import_official(args: argparse.Namespace) -> int:
    # Imported here so that the CLI starts without torch for the commands not needing it.
    from ..checkpoint.official import import_official

    report = import_official(args.model, args.out)
    log.info("%s: %s", args.model, report.summary())
    if report.filled_defaults:
        log.info("filled %d BatchNorm counters absent from the file with 0 (unused in eval)",
                 len(report.filled_defaults))
    log.info("wrote %s", args.out)
    return 0
