"""``crossmodal eval`` (a checkpoint's metrics on a dataset split, docs/design.md §6) and
``crossmodal report`` (a markdown ablation table of eval results, like the paper's
Table 7)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import CrossmodalError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="angular-error metrics of a checkpoint on a dataset split",
        description="Predict normals for every paired sample of a split of a dataset "
        "folder (docs/design.md §3) and compare them with the ground truth over the facial "
        "mask: mean ± std over images of the per-image mean error, and the median, mean "
        "and % of pixels below 20/25/30 degrees over all pooled pixels. Writes the JSON "
        "of docs/design.md §6 plus experiment, variant, image_size, model_image_size, "
        "n_excluded_pred and n_empty_images. An evaluation in which no pixel could be "
        "scored (every mask empty, or every prediction NaN, inf or zero) is an error, and "
        "a checkpoint with NaN or inf weights is refused. The network runs in float32 at "
        "the resolution it was trained at; its predictions are resized back and scored "
        "against the ground truth at the dataset's own resolution, exactly as validation "
        "during training scores. No output may be the checkpoint or lie inside the "
        "dataset folder.")
    p.add_argument("--checkpoint", type=Path, required=True, metavar="CKPT",
                   help="checkpoint written by crossmodal train or import-official")
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="dataset folder")
    p.add_argument("--split", default="test", choices=("train", "val", "test"),
                   help="split to evaluate (default test)")
    p.add_argument("--out", type=Path, metavar="FILE.json",
                   help="write the metrics JSON here (default: standard output)")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    p.add_argument("--image-size", type=int, metavar="S",
                   help="run the network at S x S pixels (default: the resolution the "
                   "checkpoint was trained at); predictions are resized back and scored "
                   "at the dataset's own resolution either way")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA if available), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--workers", type=int, default=0,
                   help="data-loading processes (default 0: read in this process)")
    p.add_argument("--panel", type=Path, metavar="FILE.png",
                   help="also write a picture: input | prediction | ground truth | error "
                   "(0-45 degrees) for the first samples")
    p.add_argument("--panel-count", type=int, default=6,
                   help="samples in the --panel picture (default 6)")
    p.set_defaults(func=run_eval)

    p = subparsers.add_parser(
        "report", help="markdown ablation table of eval results",
        description="Tabulate eval results like the paper's ablation table (Table 7): one "
        "row per result, columns mean ± std, median, pixel mean, % below 20/25/30 "
        "degrees and the image count, the best value of each column in bold. Rows "
        "evaluated on different datasets or splits get a note saying so. The table goes "
        "to standard output, and to --out if given.")
    p.add_argument("results", nargs="+", type=Path, metavar="RUN_OR_JSON",
                   help="eval JSON files (crossmodal eval --out) or run directories "
                   "holding eval.json")
    p.add_argument("--out", type=Path, metavar="FILE.md", help="also write the table here")
    p.add_argument("--title", help="heading above the table")
    p.set_defaults(func=run_report)


def run_eval(args: argparse.Namespace) -> int:
    # Imported here so that the CLI starts without torch for the commands not needing it.
    from ..evaluate import evaluate_checkpoint, metrics_json
    from ..fileutil import atomic_write, check_output
    from ..image_size import check_image_size
    from ..io import IMAGE_SUFFIXES, write_image

    for option, value, least in (("--batch-size", args.batch_size, 1),
                                 ("--workers", args.workers, 0),
                                 ("--panel-count", args.panel_count, 0)):
        if value < least:
            raise CrossmodalError(f"{option} must be at least {least}, got {value}")
    if args.image_size is not None:
        check_image_size(args.image_size, "--image-size", "use")
    # Outputs are checked before the (long) evaluation rather than when they are written.
    inputs = {"the checkpoint": args.checkpoint, "the dataset": args.data}
    if args.out is not None:
        check_output(args.out, inputs=inputs, what="--out")
    if args.panel is not None:
        if args.panel.suffix.lower() not in IMAGE_SUFFIXES:
            raise CrossmodalError(f"--panel {args.panel}: name a picture file ending in "
                                  f"{' or '.join(IMAGE_SUFFIXES)}")
        if args.panel_count < 1:
            raise CrossmodalError(f"--panel-count must be at least 1, got {args.panel_count}")
        check_output(args.panel, inputs={**inputs, "the --out file": args.out},
                     what="--panel")
    metrics, panel = evaluate_checkpoint(
        args.checkpoint, args.data, split=args.split, batch_size=args.batch_size,
        device=args.device, image_size=args.image_size, num_workers=args.workers,
        progress=not args.quiet,
        panel_count=args.panel_count if args.panel is not None else 0)
    text = metrics_json(metrics)
    if args.out is None:
        sys.stdout.write(text)  # the command's product when no file is named
    else:
        atomic_write(args.out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    if panel is not None:
        write_image(args.panel, panel)
    below = metrics["below"]
    log.info("%s on %s/%s (%d images, %d pixels): mean %.2f ± %.2f, median %.2f, "
             "pixel mean %.2f deg; < 20/25/30 deg: %.1f/%.1f/%.1f%%%s",
             args.checkpoint, metrics["dataset"], metrics["split"], metrics["n_images"],
             metrics["n_pixels"], metrics["mean"], metrics["std"], metrics["median"],
             metrics["pixel_mean"], below["20"], below["25"], below["30"],
             "".join(f"; wrote {p}" for p in (args.out, args.panel) if p is not None))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from ..evaluate import load_results, report_table, result_file
    from ..fileutil import atomic_write, check_output

    if args.out is not None:
        check_output(args.out, what="--out",
                     inputs={"the eval result": [result_file(p) for p in args.results]})
    table = report_table(load_results(args.results), title=args.title)
    sys.stdout.write(table)  # the command's product
    if args.out is not None:
        atomic_write(args.out, lambda tmp: tmp.write_text(table, encoding="utf-8"))
        log.info("wrote %s", args.out)
    return 0
