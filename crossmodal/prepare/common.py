"""What every ``crossmodal prepare`` recipe shares: its command-line arguments, the checks
of ``--raw`` and ``--out`` before any work, the options recorded in the output folder (a
re-run with other options is refused, naming them), the list of raw items skipped and why,
and the closing table of counts beside the paper's.

A recipe's flow::

    check_paths(args)
    claim_folder(args.out, "photoface", options)       # writes prepare.json
    with DatasetWriter(args.out, info) as writer:      # resumable: skip writer.existing_ids()
        ... writer.add(...) / skipped.append(Skipped(item, reason)) ...
    finish(args.out, "photoface", counts, PAPER_COUNTS, skipped)
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..data.format import claim_folder as claim_dataset_folder
from ..errors import CrossmodalError
from ..fileutil import atomic_write, check_output

__all__ = ["OPTIONS_FILE", "REPORT_FILE", "Skipped", "add_common_arguments", "check_paths",
           "claim_folder", "finish"]

log = logging.getLogger(__name__)

#: The recipe and options a folder was prepared with (a re-run must match them).
OPTIONS_FILE = "prepare.json"
#: What the last run produced: counts, the paper's counts, the raw items skipped and why.
REPORT_FILE = "prepare_report.json"


@dataclass(frozen=True)
class Skipped:
    """A raw item a recipe could not use: listed in the report, never a dataset row."""

    item: str
    reason: str


def add_common_arguments(parser: argparse.ArgumentParser, *, size: bool = True,
                         landmarks: bool = True) -> None:
    """``--raw``, ``--out``, ``--workers`` and ``--seed``; ``--size`` (crop side) and
    ``--landmarks`` (backend) for recipes that crop by the protocol."""
    parser.add_argument("--raw", type=Path, required=True, metavar="RAW",
                        help="the folder of the raw download (layout: datasets/README.md)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="dataset folder to write (e.g. data/NAME)")
    parser.add_argument("--workers", type=int,
                        help="processes (default: the cores available; more are capped)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed of every random choice (default 0)")
    if size:
        parser.add_argument("--size", type=int, default=256,
                            help="side of the crops in pixels (default 256, the paper's)")
    if landmarks:
        parser.add_argument("--landmarks", default="dlib", choices=("dlib", "face_alignment"),
                            help="landmark backend for the protocol crop (default dlib)")


def check_paths(args: argparse.Namespace) -> None:
    """Before any work: ``--raw`` is an existing folder, ``--out`` a folder that can be
    written and is neither inside ``--raw`` nor holds it; the common numbers in range.

    Raises:
        CrossmodalError: one line naming the option and the fix.
    """
    from ..image_size import check_image_size
    from ..parallel import check_workers

    raw: Path = args.raw
    if not raw.is_dir():
        state = "does not exist" if not raw.exists() else "is not a folder"
        raise CrossmodalError(f"--raw {raw} {state}; give the folder of the raw download "
                              f"(its layout: datasets/README.md)")
    check_output(args.out, what="--out", kind="folder", inputs={"the raw folder": raw})
    if args.out.resolve() in raw.resolve().parents:
        raise CrossmodalError(f"--raw {raw} lies inside --out {args.out}; write the dataset "
                              f"elsewhere")
    check_workers(args.workers)
    if args.seed < 0:
        raise CrossmodalError(f"--seed must be a non-negative integer, got {args.seed}")
    if getattr(args, "size", None) is not None:
        check_image_size(args.size, "--size", "use")


def claim_folder(out: Path, recipe: str, options: Mapping[str, Any]) -> None:
    """Record ``recipe`` and its ``options`` (by ``--option`` name) in
    ``out/prepare.json``, or check that a re-run's match them:
    :func:`crossmodal.data.format.claim_folder`.

    Raises:
        CrossmodalError: ``out`` holds a dataset another tool wrote, or one prepared by
            another recipe or with other options (each named) that has finished rows.
    """
    record = {"recipe": recipe, **options}
    claim_dataset_folder(out, record, record_file=OPTIONS_FILE,
                         producer=f"`crossmodal prepare {recipe}`",
                         names={k: "--" + k.replace("_", "-") for k in options})


def finish(out: Path, recipe: str, counts: Mapping[str, int], paper: Mapping[str, int],
           skipped: list[Skipped]) -> dict[str, Any]:
    """End a recipe: write ``out/prepare_report.json`` (counts, the paper's, the skipped
    items and why) and log the counts beside the paper's, and the skipped items.

    Args:
        counts: what this run's folder holds, by name (e.g. ``{"paired": 8625}``).
        paper: what the paper reports for the same names (missing names are shown as -).
    """
    report = {"recipe": recipe, "crossmodal_version": __version__, "counts": dict(counts),
              "paper": dict(paper), "skipped": [asdict(s) for s in skipped]}
    atomic_write(out / REPORT_FILE,
                 lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))
    width = max(map(len, [*counts, *paper, "what"]))
    lines = [f"{'what':<{width}}  {'here':>8}  {'paper':>8}"]
    lines += [f"{name:<{width}}  {counts.get(name, '-'):>8}  {paper.get(name, '-'):>8}"
              for name in dict.fromkeys([*counts, *paper])]
    log.info("%s -> %s:\n%s", recipe, out, "\n".join(lines))
    if skipped:
        log.warning("%s: %d raw item(s) skipped (listed in %s): %s", recipe, len(skipped),
                    out / REPORT_FILE, "; ".join(f"{s.item}: {s.reason}" for s in skipped[:5])
                    + (" ..." if len(skipped) > 5 else ""))
    return report
