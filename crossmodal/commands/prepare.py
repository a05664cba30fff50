"""``crossmodal prepare NAME --raw RAW --out DIR``: turn a dataset's raw download into the
dataset format (docs/design.md §3, datasets/README.md)."""

from __future__ import annotations

import argparse
import importlib

from ..prepare import RECIPE_MODULES


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare", help="convert a raw dataset download into the dataset format",
        description="Convert a dataset you downloaded (under its own licence) into the "
        "dataset format: photometric stereo for Photoface, renders of head scans for "
        "Florence, ICT-3DRFE, BJUT-3D or any folder of scans, protocol crops for CelebA-HQ. "
        "Resumable: a re-run completes a partial folder and does no work on a finished one. "
        "datasets/README.md gives each raw layout.")
    recipes = p.add_subparsers(title="datasets", metavar="NAME", required=True)
    for name in RECIPE_MODULES:
        importlib.import_module(name).register(recipes)
