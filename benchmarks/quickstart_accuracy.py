"""Held-out accuracy of the quickstart: the full model beside its ablations (paper Fig. 6),
same budget, on synthetic faces and on a real scan.

    python benchmarks/quickstart_accuracy.py [--variants full plain_unet] [KEY=VALUE ...]
    python benchmarks/quickstart_accuracy.py --variants full no_skips no_normal_encoder \
        plain_unet                                            # the table of issue 14
    python benchmarks/quickstart_accuracy.py --variants ... --seeds 0 1   # and its spread

For each variant, runs the main job (``crossmodal.demo``: synthetic data, training with
``experiments/quickstart.yaml``, evaluation on the held-out test identities and on the
real-scan set) with the same steps, batch size, data and seed, into ``runs/quickstart``
(full) or ``runs/quickstart_<variant>``; then prints the ``crossmodal report`` table (a
row per variant and test set) and writes it with the per-variant metrics to ``--out``
(JSON) and beside it (markdown). Uses CUDA when available (the trainer's ``device:
auto``).

``--seeds``: each variant is trained once per ``train.seed`` (initialisation, batch order
and augmentation; the data stay the same), seed s > 0 into ``<run>_seed<s>``, and a second
table gives each variant's mean over the seeds with every seed's figure: how far apart
two trainings of one recipe land, against the differences between variants.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from crossmodal.cli import main as cli
from crossmodal.demo import EXPERIMENT, run
from crossmodal.models import VARIANTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["full", "plain_unet"],
                        choices=VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="training seeds (train.seed) of every variant")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "quickstart_accuracy.json")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides applied to every variant")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    results, run_dirs = {}, []
    for variant in args.variants:
        for seed in args.seeds:
            overrides = list(args.overrides)
            name = "quickstart" if variant == "full" else f"quickstart_{variant}"
            if variant != "full":
                overrides.append(f"model.variant={variant}")
            if seed:
                name += f"_seed{seed}"
                overrides.append(f"train.seed={seed}")
            if name != "quickstart":
                overrides.append(f"name={name}")
            start = time.perf_counter()
            run_dir = run(EXPERIMENT, tuple(overrides))
            results.setdefault(variant, {})[seed] = {
                **json.loads((run_dir / "eval.json").read_text()),
                "real": json.loads((run_dir / "eval_real.json").read_text()),
                "run_dir": str(run_dir), "minutes": round((time.perf_counter() - start) / 60, 1)}
            run_dirs += [str(run_dir), str(run_dir / "eval_real.json")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cli(["report", *run_dirs, "--out", str(args.out.with_suffix(".md")),
         "--title", "Quickstart: held-out synthetic identities and a real scan's renders, "
         "same training budget"])
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    if len(args.seeds) > 1:
        text = seed_table(results)
        with args.out.with_suffix(".md").open("a") as md:
            md.write("\n" + text + "\n")
        print(text)


def seed_table(results: dict[str, dict[int, dict]]) -> str:
    """Markdown: per variant, the mean over seeds of the synthetic and the real-scan
    figure (each the mean over images), with every seed's figure in seed order."""
    lines = ["| variant | seeds | synthetic: mean over seeds | each seed | real-scan: mean "
             "over seeds | each seed |", "|:--|--:|--:|:--|--:|:--|"]
    for variant, by_seed in results.items():
        synthetic = [r["mean"] for r in by_seed.values()]
        real = [r["real"]["mean"] for r in by_seed.values()]
        lines.append(f"| {variant} | {len(by_seed)} | {sum(synthetic) / len(synthetic):.2f} | "
                     f"{' / '.join(f'{m:.2f}' for m in synthetic)} | "
                     f"{sum(real) / len(real):.2f} | {' / '.join(f'{m:.2f}' for m in real)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
