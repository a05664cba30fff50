"""Per-face latency of prediction at 256 px: the network alone, and photo to normals.

For batch sizes 1 and 8 and both runtimes (torch: channels_last, inference mode, float32,
through :class:`crossmodal.inference.NormalPredictor`; onnxruntime: the same network
exported by ``crossmodal export``), two measurements:

- **network**: face crops ``(B, 3, 256, 256)`` -> normals, the image->normal path alone;
- **photo**: :class:`crossmodal.photos.Predictor` on B copies of a bundled photo (512 px,
  one face each): dlib landmarks, the protocol crop, the network and the facial mask.

Each row gives the median and best per-face milliseconds over ``--repeats`` timed calls
(after a warm-up) and the ratio of the best to a **floor** computed in the same run: the
network's FLOPs per face (counted exactly with ``FlopCounterMode``) over the best matmul
rate measured just before (MKL sgemm, and oneDNN's channels_last 1x1 convolution, which is
what runs the model's convolutions). The weights are random (a latency does not depend on
their values); the model is the full one, ``ModelConfig()``.

    .venv/bin/python benchmarks/predict_latency.py [--repeats 10] [--batches 1 8]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import (  # noqa: E402  (the shared machine measurements)
    cpu_counters, hardware, image_to_normal_path_gmac, measure_peaks)

from crossmodal import io  # noqa: E402
from crossmodal.inference import NormalPredictor  # noqa: E402
from crossmodal.landmarks import make_detector  # noqa: E402
from crossmodal.models import CrossModalNet, ModelConfig  # noqa: E402
from crossmodal.photos import BUNDLED_PHOTOS, Predictor  # noqa: E402

SIZE = 256


def timed(fn, repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn()``, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def checkpoint_of(model: CrossModalNet) -> dict:
    return {"config": {"name": "latency", "model": model.config.to_dict(),
                       "data": {"image_size": SIZE}},
            "model": model.state_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/predict_latency.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    torch.manual_seed(0)
    model = CrossModalNet(ModelConfig()).eval()
    checkpoint = checkpoint_of(model)
    gflop = 2 * image_to_normal_path_gmac(SIZE)["inference_path"]
    peaks = measure_peaks(torch.device("cpu"), ["fp32"])
    floor_s = gflop / max(peaks.values())
    print(f"# {hardware(torch.device('cpu'))['cpu']}, {len(os.sched_getaffinity(0))} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("# matmul peak (GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
    print(f"# network: {gflop:.1f} GFLOP a face at {SIZE} px -> floor {1e3 * floor_s:.0f} ms "
          f"a face at the best peak")

    from crossmodal.onnx_export import export_onnx, load_onnx_predictor

    detector = make_detector("dlib", faces="largest")
    photo = io.read_photo(BUNDLED_PHOTOS["astronaut"])[0]
    rows = []
    busy_before = cpu_counters()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(checkpoint, Path(tmp) / "model.onnx")
        runtimes = {"torch": NormalPredictor.from_checkpoint(checkpoint, device="cpu"),
                    "onnxruntime": load_onnx_predictor(onnx_path)}
        for runtime, normal_predictor in runtimes.items():
            for batch in args.batches:
                normal_predictor.batch_size = batch
                crops = torch.rand(batch, 3, SIZE, SIZE)
                predictor = Predictor(normal_predictor, detector, crop_size=SIZE)
                for what, fn in (("network", lambda: normal_predictor(crops)),
                                 ("photo", lambda: predictor.predict_many([photo] * batch))):
                    per_face = [t / batch for t in timed(fn, args.repeats)]
                    best = min(per_face)
                    rows.append({"runtime": runtime, "batch": batch, "what": what,
                                 "median_ms": 1e3 * statistics.median(per_face),
                                 "best_ms": 1e3 * best, "ratio_to_floor": best / floor_s})
                    print(f"{runtime:>11}  batch {batch}  {what:<7}  median "
                          f"{rows[-1]['median_ms']:7.1f} ms/face  best {1e3 * best:7.1f}  "
                          f"{best / floor_s:4.2f}x floor", flush=True)
    busy_after = cpu_counters()

    table = ["| runtime | batch | measured | median ms/face | best ms/face | best / floor |",
             "|---|---|---|---|---|---|"]
    table += [f"| {r['runtime']} | {r['batch']} | {r['what']} | {r['median_ms']:.1f} | "
              f"{r['best_ms']:.1f} | {r['ratio_to_floor']:.2f}x |" for r in rows]
    print("\n".join(["", *table]))
    result = {"hardware": hardware(torch.device("cpu")), "load_average": os.getloadavg()[0],
              "size": SIZE, "network_gflop_per_face": gflop, "peaks_gflops": peaks,
              "floor_ms_per_face": 1e3 * floor_s, "rows": rows,
              "numpy": np.__version__}
    if busy_before and busy_after:
        result["other_processes_cpu_s"] = ((busy_after[0] - busy_before[0])
                                           - (busy_after[1] - busy_before[1]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
