"""The ``crossmodal`` command line (docs/design.md §5).

Each command lives in a module of :mod:`crossmodal.commands` exposing
``register(subparsers)``, which adds its parser(s) and sets ``func`` to a callable taking
the parsed arguments and returning an exit status. User mistakes
(:class:`~crossmodal.errors.CrossmodalError`, and ``OSError`` about a path: missing,
unreadable, unwritable) end in one line on stderr and exit status 2; ``-v`` also prints
their traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from . import __version__
from .errors import CrossmodalError, loader_worker_death

#: Command modules, in the order ``--help`` lists them.
COMMAND_MODULES = (
    "crossmodal.commands.synth",
    "crossmodal.commands.prepare",
    "crossmodal.commands.train",
    "crossmodal.commands.normal_tools",
    "crossmodal.commands.checkpoints",
    "crossmodal.commands.export",
    "crossmodal.commands.evaluate",
    "crossmodal.commands.predict",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossmodal",
        description="Face surface normals from single images (Cross-modal Deep Face "
        "Normals, CVPR 2020): tools for normal maps, training, evaluation and inference.",
    )
    parser.add_argument("--version", action="version", version=f"crossmodal {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, except that ``KEY=VALUE`` overrides may also follow the
    options (``crossmodal train EXP.yaml --resume train.max_steps=2600``): argparse ends a
    ``nargs="*"`` positional at the first option, and its ``parse_intermixed_args`` does
    not support subcommands."""
    args, extras = parser.parse_known_args(argv)
    if extras and isinstance(getattr(args, "overrides", None), list) and all(
            "=" in item and not item.startswith("-") for item in extras):
        args.overrides += extras
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    setup_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args) or 0)
    except CrossmodalError as exc:
        return _user_error(str(exc), args.verbose)
    except OSError as exc:
        if exc.filename is None:
            raise  # not about a path the user gave: a bug, with its traceback
        # A path that cannot be read or written (missing folder, permissions, a file where
        # a folder is meant, a full disk) is the user's to fix, whichever call met it.
        return _user_error(f"{exc.filename}: {exc.strerror or exc}; check the path, its "
                           f"folder and their permissions", args.verbose)
    except RuntimeError as exc:
        death = loader_worker_death(exc)
        if death is None:
            raise  # a bug, with its traceback
        return _user_error(str(death), args.verbose)
    except KeyboardInterrupt:
        print("crossmodal: interrupted", file=sys.stderr)
        return 130


def _user_error(message: str, verbose: int) -> int:
    """Report a user mistake in one line on stderr (with ``-v``, after the traceback of
    where it was raised, for a bug report) and return exit status 2."""
    if verbose:
        traceback.print_exc()
    print("crossmodal: error: " + " ".join(message.split()), file=sys.stderr)
    return 2
