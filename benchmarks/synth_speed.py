"""How fast ``crossmodal synth`` writes a dataset: samples per second, end to end.

    python benchmarks/synth_speed.py [--count 1000] [--size 256] [--workers 2] [--out FILE]

Renders ``--count`` faces into a temporary folder exactly as ``crossmodal synth`` does
(rendering, cropping, background, PNG/EXR writing, samples.csv), prints a table and writes
JSON (default ``benchmarks/results/synth_speed.json``). Target (issue 4): 1,000 samples at
256² in at most 60 s on the project's 2-core machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from crossmodal.synth.face_model import FaceModel
from crossmodal.synth.generate import generate
from crossmodal.synth.sampler import SynthConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "synth_speed.json")
    args = parser.parse_args()

    FaceModel.load()  # loaded once before forking, as `crossmodal synth` does
    config = replace(SynthConfig(), size=args.size)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generate(Path(tmp) / "synth", args.count, seed=args.seed, config=config,
                 workers=args.workers, progress=False)
        seconds = time.perf_counter() - start
        n_bytes = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
    result = {
        "count": args.count, "size": args.size, "workers": args.workers,
        "seconds": round(seconds, 2), "samples_per_second": round(args.count / seconds, 2),
        "ms_per_sample": round(1000 * seconds / args.count, 2),
        "dataset_mb": round(n_bytes / 2**20, 1), "target_seconds_per_1000": 60,
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg()[0],
        "machine": platform.machine(), "python": platform.python_version(),
    }
    print(f"| samples | size | workers | seconds | samples/s | ms/sample | MB |\n"
          f"|---|---|---|---|---|---|---|\n"
          f"| {args.count} | {args.size} | {args.workers} | {seconds:.1f} | "
          f"{result['samples_per_second']:.1f} | {result['ms_per_sample']:.1f} | "
          f"{result['dataset_mb']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
