"""``crossmodal train EXPERIMENT.yaml [key=value ...] [--resume | --overwrite]``: train from
an experiment.

Runs as one process, or as one of N under ``torchrun --nproc_per_node=N -m crossmodal
train ...`` (DDP: NCCL on GPUs, gloo on CPUs); only rank 0 logs and writes the run
directory.
"""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a model from an experiment YAML",
        description="Train the cross-modal model (or an ablation) as EXPERIMENT.yaml "
        "describes, with the paper's mixed-batch schedule; the run directory (run_dir) gets "
        "config.yaml, last.pt, best.pt, metrics.jsonl and TensorBoard logs in tb/. "
        "SIGINT/SIGTERM finish the current step and save last.pt. Several processes: "
        "torchrun --nproc_per_node=N -m crossmodal train EXPERIMENT.yaml ...")
    p.add_argument("config", type=Path, metavar="EXPERIMENT.yaml", help="experiment file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides merged last, e.g. train.max_steps=100 "
                   "data.batch_size=4 (values are YAML)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in run_dir from its last.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a run_dir that holds an earlier run, deleting its "
                   "checkpoints (without --resume or --overwrite such a run_dir is refused)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..engine import distributed
    from ..engine.trainer import Trainer

    config = load_config(args.config, args.overrides)
    rank, world_size, _ = distributed.init_distributed(config.train.device)
    if rank != 0:  # one process speaks for the group
        logging.getLogger().setLevel(logging.WARNING)
    try:
        trainer = Trainer(config, overrides=args.overrides, resume=args.resume,
                          source=args.config, overwrite=args.overwrite)
        result = trainer.train()
    finally:
        distributed.cleanup()
    val = result["val"]
    if val:
        log.info("%s: step %d, validation mean %.2f deg, median %.2f deg, %.1f%% < 20, "
                 "%.1f%% < 25, %.1f%% < 30 deg", config.name, result["step"], val["val/mean"],
                 val["val/median"], val["val/below_20"], val["val/below_25"],
                 val["val/below_30"])
    if result["best"]:
        log.info("best validation mean %.2f deg at step %d", result["best"]["val/mean"],
                 result["best"]["step"])
    log.info("run directory: %s (%d processes)", result["run_dir"], world_size)
    if result["stopped_by"]:
        # Not a success: the shell convention for a signal, so schedulers see it.
        return 128 + int(signal.Signals[result["stopped_by"]])
    return 0
