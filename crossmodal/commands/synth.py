"""``crossmodal synth``: render synthetic faces into the dataset format."""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

from ..errors import CrossmodalError
from ..image_size import check_image_size

log = logging.getLogger(__name__)


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0 or sum(values) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected three non-negative numbers PAIRED,IMAGE,NORMAL, got {text!r}")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth", help="render synthetic faces (ICT-FaceKit Light) in the dataset format",
        description="Render random faces (identity, expression, pose, lights, skin and "
        "background) the way the paper rendered ICT-3DRFE, cropped by the landmark "
        "protocol, into DIR in the dataset format. Deterministic for a seed whatever "
        "--workers is; re-running completes a partial folder.")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    p.add_argument("--count", type=int, required=True, help="number of samples")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=int,
                   help="rendering processes (default: the cores available; more are capped)")
    p.add_argument("--per-subject", type=int, default=4,
                   help="renders per identity (default 4)")
    p.add_argument("--kinds", type=_fractions, default=(0.6, 0.2, 0.2),
                   metavar="PAIRED,IMAGE,NORMAL",
                   help="proportions of paired, image-only and normal-only training "
                   "identities (default 0.6,0.2,0.2); val/test identities are paired")
    p.add_argument("--val", type=float, default=0.1, help="fraction of identities for val")
    p.add_argument("--test", type=float, default=0.1, help="fraction of identities for test")
    p.add_argument("--set", dest="settings", action="append", default=[],
                   metavar="KEY=VALUE",
                   help="a synthesis setting (a field of crossmodal.synth.SynthConfig; "
                   "values are YAML), repeatable: e.g. --set skin_detail=1 --set "
                   "camera_effects=0.3 for realism levers, --set max_rotation_deg=60 for "
                   "the pose range. An unknown key lists the valid ones")
    p.add_argument("--preview", action="store_true",
                   help="also write preview.png: image | normals | mask for 12 samples")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..synth.generate import CONFIG_OPTIONS, generate
    from ..synth.sampler import SynthConfig

    check_image_size(args.size, "--size", "use")
    if not 0 <= args.val + args.test < 1 or min(args.val, args.test) < 0:
        raise CrossmodalError(f"--val {args.val} and --test {args.test} must be non-negative "
                              f"and leave identities for training")
    # --count, --seed and --workers are checked by generate, for callers of the API too.
    if args.per_subject < 1:
        raise CrossmodalError(f"--per-subject must be at least 1, got {args.per_subject}")
    config = replace(SynthConfig().with_settings(args.settings, CONFIG_OPTIONS), size=args.size,
                     samples_per_subject=args.per_subject, kind_weights=args.kinds,
                     val_fraction=args.val, test_fraction=args.test)
    out = generate(args.out, args.count, seed=args.seed, config=config, workers=args.workers,
                   preview=args.preview, progress=not args.quiet)
    log.info("wrote %d samples to %s%s", args.count, out,
             " (and preview.png)" if args.preview else "")
    return 0
