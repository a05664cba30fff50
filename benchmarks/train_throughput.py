"""Training throughput of the full model: images/s per step type, FLOPs and % of peak.

For every resolution in ``--sizes`` and every data type of the paper's schedule (§3.3),
this times the trainer's own step, :meth:`crossmodal.engine.trainer.Trainer.run_iterations`:
the iterations the experiment's ``schedule`` gives that data type, each a ``zero_grad``,
forward, weighted losses, ``backward`` and fused Adam step (lr 1e-4), with the finite-loss
guard's snapshot before a multi-iteration step, exactly as training runs them. The model is
``CrossModalNet(ModelConfig())`` (the authors' graph, 35.3M parameters); with the default
schedule:

==========  ============================================  ===============================
step type   iterations (routes)                           losses
==========  ============================================  ===============================
``paired``  ``normal_to_normal``, then ``image_to_normal``  normal; then normal + image
``image``   ``image_to_image``                            image
``normal``  ``normal_to_normal``                          normal
==========  ============================================  ===============================

``--schedule KEY=VALUE`` times another schedule (e.g. ``schedule.paired=[image_to_normal]``).
Inputs are random (images uniform in [0, 1], unit normals facing the camera, full masks);
the trainer is built on a few synthetic faces rendered into a temporary folder, which only
its set-up reads. Each variant (memory format x dtype) gets a fresh trainer, ``--warmup``
untimed steps, then ``--iters`` timed ones (synchronised on CUDA); the table reports the
median.

FLOPs are counted exactly with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions
and matrix products, forward and backward; the optimizer step, normalisations and
element-wise ops are not counted) over one step of one image in fp32, outside the timings;
the count depends only on shapes, not on the memory format or dtype. Achieved GFLOP/s =
FLOPs of one step / median seconds per step, compared with dense matmul peaks measured in
the same run, before and after the benchmark (the better of the two is used): on CPU,
with the same thread count, a 4096³ fp32 ``torch.matmul`` (MKL) and the same product as
a channels_last 1x1 convolution (oneDNN, which runs the model's convolutions and is ~2x
faster than MKL's sgemm on AMD CPUs); on CUDA 8192³ in fp32, TF32, bf16 and fp16.

The table also gives the fastest timed step and, for each row, the CPU other processes
took meanwhile (cores, from /proc/stat minus this process's CPU time): on a shared 2-core
machine one busy neighbour slows this benchmark several times over, and the load average
cannot show it because it counts the benchmark's own threads.

Variants: contiguous vs ``channels_last`` (``--memory-format``, the trainer's
``train.channels_last``) and, on CUDA, fp32 vs bf16 autocast (``--dtype``, the trainer's
``train.amp``). On CUDA, fp32 convolutions run in TF32 when
``torch.backends.cudnn.allow_tf32`` is on (PyTorch's default), so fp32 rows are then
compared with the TF32 peak; ``--tf32 on|off`` sets both matmul and cuDNN flags.

Defaults keep the CPU run well under 10 minutes on 2 cores when the machine is otherwise
idle: batch 8 at 128 px and batch 4 at 256 px (``--batch-size`` overrides both), 2 warm-up
and 5 timed steps; on CUDA batch 32 and 20 timed steps.

Usage::

    python benchmarks/train_throughput.py [--sizes 128 256] [--batch-size N]
        [--warmup 2] [--iters 5] [--memory-format contiguous channels_last]
        [--dtype fp32 bf16] [--threads N] [--device cpu|cuda] [--tf32 default|on|off]
        [--types paired image normal] [--schedule KEY=VALUE ...] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import yaml

from crossmodal.config import (
    DataConfig, ExperimentConfig, TrainConfig, config_to_dict, load_config)
from crossmodal.data.format import KINDS
from crossmodal.engine.trainer import Trainer
from crossmodal.models import CrossModalNet, ModelConfig
from crossmodal.synth.generate import generate
from crossmodal.synth.sampler import SynthConfig

ROOT = Path(__file__).resolve().parents[1]
#: --dtype -> train.amp
DTYPES = {"fp32": "off", "bf16": "bf16", "fp16": "fp16"}
MEMORY_FORMATS = ("contiguous", "channels_last")


# --------------------------------------------------------------------------- the trainer


def make_data(root: Path) -> Path:
    """A few synthetic faces with train rows of every data type (only the trainer's
    set-up reads them)."""
    generate(root / "synth", 12, seed=0, progress=False,
             config=SynthConfig(size=64, samples_per_subject=1))
    return root


def build_trainer(data_root: Path, run_dir: Path, *, size: int, batch_size: int,
                  memory_format: str, dtype_name: str, device: torch.device,
                  overrides: list[str]) -> Trainer:
    """A trainer of the default model as an experiment file would build it, with
    ``overrides`` (``key=value``, e.g. a schedule) merged last."""
    config = ExperimentConfig(
        name="train_throughput", run_dir=str(run_dir), model=ModelConfig(),
        data=DataConfig(root=str(data_root), paired=["synth"], image=["synth"],
                        normal=["synth"], image_size=size, batch_size=batch_size,
                        num_workers=0),
        train=TrainConfig(max_steps=1, device=str(device), amp=DTYPES[dtype_name],
                          channels_last=memory_format == "channels_last"))
    path = run_dir.with_suffix(".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(config)))
    return Trainer(load_config(path, overrides))


def make_batch(batch: int, size: int, device: torch.device,
               generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random images in [0, 1], unit normals with z >= 0, full masks."""
    image = torch.rand(batch, 3, size, size, generator=generator)
    normals = torch.randn(batch, 3, size, size, generator=generator)
    normals[:, 2].abs_()
    normals = torch.nn.functional.normalize(normals, dim=1)
    mask = torch.ones(batch, size, size, dtype=torch.bool)
    return {"image": image.to(device), "normals": normals.to(device), "mask": mask.to(device)}


# --------------------------------------------------------------------------- FLOPs


def count_flops(trainer: Trainer, kind: str, size: int) -> dict[str, float]:
    """Exact FLOPs per image of one step of ``kind`` (forward + backward of every
    iteration) and of its forwards alone, counted on one image in fp32."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = make_batch(1, size, trainer.device, torch.Generator().manual_seed(2))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        for iteration in trainer.plan[kind]:
            trainer.net(batch[iteration.input], iteration.route, iteration.outputs)
    forward = counter.get_total_flops()
    with counter:
        trainer.run_iterations(kind, batch)
    return {"train_flops": float(counter.get_total_flops()), "forward_flops": float(forward)}


def image_to_normal_path_gmac(size: int) -> dict[str, float]:
    """Forward GMAC per image of the inference path (E_I + D_N with skips, no D_I:
    :class:`crossmodal.inference.NormalPredictor`) and of the training pass of the same
    route, which also decodes the image (D_I), as the authors' released forward does."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = CrossModalNet(ModelConfig()).eval()
    x = torch.empty(1, 3, size, size, device="meta")
    counter = FlopCounterMode(display=False)
    gmac = {}
    for name, outputs in (("inference_path", ("normals",)),
                          ("training_image_pass", ("normals", "image"))):
        with counter, torch.no_grad():
            model(x, "image_to_normal", outputs)
        gmac[name] = counter.get_total_flops() / 2e9
    return gmac


# --------------------------------------------------------------------------- peak


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_gflops(fn, flops: float, device: torch.device, reps: int) -> float:
    """Best GFLOP/s of ``fn()`` over ``reps`` timed calls (after one warm-up)."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, reps: int) -> float:
    """Best GFLOP/s of an n x n x n ``torch.matmul`` (MKL on CPU, cuBLAS on CUDA)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    return best_gflops(lambda: torch.matmul(a, b, out=c), 2 * n**3, device, reps)


def onednn_matmul_peak(n: int, reps: int) -> float:
    """Best GFLOP/s of the same n x n x n product as a channels_last 1x1 convolution,
    which runs in oneDNN, the library that runs the model's convolutions on CPU (MKL's
    sgemm is markedly slower on AMD CPUs)."""
    side = int(round(n ** 0.5))
    x = torch.randn(1, n, side, n // side).contiguous(memory_format=torch.channels_last)
    w = torch.randn(n, n, 1, 1).contiguous(memory_format=torch.channels_last)
    flops = 2 * n * n * side * (n // side)
    with torch.no_grad():
        return best_gflops(lambda: torch.nn.functional.conv2d(x, w), flops,
                           torch.device("cpu"), reps)


def measure_peaks(device: torch.device, dtypes: list[str]) -> dict[str, float]:
    """Matmul peaks, GFLOP/s: on CPU 'fp32 MKL' (torch.matmul) and 'fp32 oneDNN' (1x1
    conv), plus the other dtypes asked for; on CUDA 'fp32' (TF32 off), 'tf32', 'bf16',
    'fp16' (cuBLAS)."""
    if device.type == "cpu":
        peaks = {"fp32 MKL": matmul_peak(device, torch.float32, 4096, 5),
                 "fp32 oneDNN": onednn_matmul_peak(4096, 5)}
        for name in dtypes:
            if name != "fp32":
                peaks[name] = matmul_peak(device, DTYPES[name], 4096, 5)
        return peaks
    peaks = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = torch.backends.cuda.matmul.allow_tf32
        for name, tf32 in (("fp32", False), ("tf32", True)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            peaks[name] = matmul_peak(device, torch.float32, 8192, 20)
        torch.backends.cuda.matmul.allow_tf32 = saved
    for name in ("bf16", "fp16"):
        peaks[name] = matmul_peak(device, DTYPES[name], 8192, 20)
    return peaks


def peak_keys(device: torch.device, dtype_name: str) -> list[str]:
    """Which measured peaks a row is compared with."""
    if device.type == "cpu":
        return ["fp32 MKL", "fp32 oneDNN"] if dtype_name == "fp32" else [dtype_name]
    if dtype_name != "fp32":
        return [dtype_name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # With cuDNN's TF32 on, the convolutions (nearly all the FLOPs) run in TF32.
        return ["tf32"] if torch.backends.cudnn.allow_tf32 else ["fp32"]


# --------------------------------------------------------------------------- timing


def cpu_counters() -> tuple[float, float] | None:
    """(busy seconds of the whole machine, CPU seconds of this process) so far, or None
    where /proc/stat is unavailable. Their difference over a timed run is the CPU time
    other processes took meanwhile: the load average cannot tell, as it counts this
    benchmark's own threads too."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
    own = os.times()
    return ((user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK"),
            own.user + own.system)


def time_variant(trainer: Trainer, kind: str, size: int, batch_size: int, warmup: int,
                 iters: int) -> tuple[list[float], float | None]:
    """Seconds of each timed step of ``kind`` by a fresh ``trainer``, and the CPU cores
    other processes used meanwhile on average (None if unknown)."""
    device = trainer.device
    batch = make_batch(batch_size, size, device, torch.Generator().manual_seed(1))
    times = []
    counters = None
    for i in range(warmup + iters):
        if i == warmup:
            counters, wall = cpu_counters(), time.perf_counter()
        sync(device)
        start = time.perf_counter()
        losses = trainer.run_iterations(kind, batch)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    other_cores = None
    end = cpu_counters()
    if counters and end:
        other_cores = max(0.0, (end[0] - counters[0]) - (end[1] - counters[1])) / (
            time.perf_counter() - wall)
    del batch
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return times, other_cores, losses


# --------------------------------------------------------------------------- report


def hardware(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores_available": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info.update(cuda_device=torch.cuda.get_device_name(device),
                        cuda=torch.version.cuda,
                        matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
                        cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    return info


def _cores(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def markdown_table(rows: list[dict]) -> str:
    head = ("| size | batch | step type (routes) | memory format | dtype | ms/step | images/s | "
            "fwd GMAC/img | train GFLOP/img | GFLOP/s | % of peak | best ms/step | "
            "others' CPU |")
    lines = [head, "|---:|---:|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['batch_size']} | {r['step_type']} "
            f"({', '.join(r['routes'])}) | "
            f"{r['memory_format']} | {r['dtype']} | {r['ms_per_step']:.0f} | "
            f"{r['images_per_s']:.2f} | {r['forward_gmac_per_image']:.1f} | "
            f"{r['train_gflop_per_image']:.1f} | {r['achieved_gflops']:.0f} | "
            + ", ".join(f"{100 * v:.0f}% {k}" for k, v in r["ratio_to_peak"].items())
            + f" | {r['ms_per_step_min']:.0f} | {_cores(r['other_processes_cores'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--types", nargs="+", choices=list(KINDS), default=list(KINDS),
                        help="data types whose step to time (default: all)")
    parser.add_argument("--schedule", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides for the trainer, e.g. "
                        "schedule.paired=[image_to_normal]")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: CUDA 32; CPU 8 up to 128 px, 4 above")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=None, help="default: 5 on CPU, 20 on CUDA")
    parser.add_argument("--memory-format", nargs="+", choices=list(MEMORY_FORMATS),
                        default=list(MEMORY_FORMATS))
    parser.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=None,
                        help="default: fp32 on CPU, fp32 and bf16 (autocast) on CUDA")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when available")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's, the cores available)")
    parser.add_argument("--tf32", choices=("default", "on", "off"), default="default",
                        help="CUDA: set matmul and cuDNN TF32 flags (default: PyTorch's)")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "train_throughput.json")
    args = parser.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this torch build sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and args.tf32 != "default":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cuda.matmul.allow_tf32 = args.tf32 == "on"
            torch.backends.cudnn.allow_tf32 = args.tf32 == "on"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    iters = args.iters or (20 if device.type == "cuda" else 5)
    dtypes = args.dtype or (["fp32", "bf16"] if device.type == "cuda" else ["fp32"])

    def batch_for(size: int) -> int:
        if args.batch_size:
            return args.batch_size
        return 32 if device.type == "cuda" else (8 if size <= 128 else 4)

    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    hw = hardware(device)
    print(f"# {hw.get('cuda_device', hw['cpu'])}, torch {hw['torch']}, "
          f"{hw['torch_threads']} threads, load average {load_before[0]:.2f} "
          f"{load_before[1]:.2f} {load_before[2]:.2f}", flush=True)
    peaks_before = measure_peaks(device, dtypes)
    print("# matmul peak (GFLOP/s): "
          + ", ".join(f"{k} {v:.0f}" for k, v in peaks_before.items()), flush=True)
    path_gmac = {s: image_to_normal_path_gmac(s) for s in args.sizes}
    for s, g in path_gmac.items():
        print(f"# forward GMAC/image at {s}px: image->normal inference path (E_I + D_N, "
              f"no D_I) {g['inference_path']:.2f}; the training pass of that route, which "
              f"also decodes the image (D_I), {g['training_image_pass']:.2f}", flush=True)

    logging.basicConfig(level=logging.WARNING)
    workdir = tempfile.TemporaryDirectory(prefix="train_throughput_")
    data_root = make_data(Path(workdir.name))

    def trainer_for(size: int, batch_size: int, memory_format: str, dtype_name: str) -> Trainer:
        run = Path(workdir.name) / f"run_{size}_{memory_format}_{dtype_name}"
        return build_trainer(data_root, run, size=size, batch_size=batch_size,
                             memory_format=memory_format, dtype_name=dtype_name, device=device,
                             overrides=args.schedule)

    rows = []
    for size in args.sizes:
        batch_size = batch_for(size)
        counting = trainer_for(size, 1, "contiguous", "fp32")
        kinds = [k for k in args.types if counting.plan[k]]
        flops = {k: count_flops(counting, k, size) for k in kinds}
        routes = {k: [it.route for it in counting.plan[k]] for k in kinds}
        del counting
        for kind in kinds:
            for memory_format in args.memory_format:
                for dtype_name in dtypes:
                    trainer = trainer_for(size, batch_size, memory_format, dtype_name)
                    times, other_cores, losses = time_variant(trainer, kind, size, batch_size,
                                                              args.warmup, iters)
                    del trainer
                    if not all(torch.isfinite(torch.tensor(v["total"])) for v in losses.values()):
                        raise RuntimeError(f"{kind} at {size}px gave a non-finite loss")
                    median = statistics.median(times)
                    row = {
                        "size": size, "batch_size": batch_size, "step_type": kind,
                        "routes": routes[kind], "memory_format": memory_format,
                        "dtype": dtype_name if dtype_name == "fp32" else
                        f"{dtype_name} autocast",
                        "times_s": [round(t, 5) for t in times],
                        "ms_per_step": 1e3 * median, "ms_per_step_mean":
                        1e3 * statistics.fmean(times), "ms_per_step_min": 1e3 * min(times),
                        "images_per_s": batch_size / median,
                        "forward_gmac_per_image": flops[kind]["forward_flops"] / 2e9,
                        "train_gflop_per_image": flops[kind]["train_flops"] / 1e9,
                        "train_flops_per_step": flops[kind]["train_flops"] * batch_size,
                        "achieved_gflops":
                        flops[kind]["train_flops"] * batch_size / median / 1e9,
                        "peaks": peak_keys(device, dtype_name),
                        "load_average_1min": os.getloadavg()[0],
                        "other_processes_cores": other_cores,
                    }
                    rows.append(row)
                    print(f"# {size}px {kind} {memory_format} {row['dtype']}: "
                          f"{row['ms_per_step']:.0f} ms/step, {row['images_per_s']:.2f} img/s, "
                          f"{row['achieved_gflops']:.0f} GFLOP/s, load "
                          f"{row['load_average_1min']:.2f}, other processes "
                          f"{_cores(other_cores)} cores", flush=True)

    peaks_after = measure_peaks(device, dtypes)
    load_after = os.getloadavg()
    # The peak is the best of the two measurements: another process on a shared machine
    # can only lower a measurement.
    peaks = {k: max(peaks_before[k], peaks_after[k]) for k in peaks_before}
    for row in rows:
        row["ratio_to_peak"] = {k: row["achieved_gflops"] / peaks[k] for k in row["peaks"]}
    seconds = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    print("# matmul peak after (GFLOP/s): "
          + ", ".join(f"{k} {v:.0f}" for k, v in peaks_after.items()))
    print(f"# load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; "
          f"{seconds:.0f} s in all; % of peak uses the better of the two peak measurements\n")
    print(markdown_table(rows))

    report = {
        "benchmark": "train_throughput", "date": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "hardware": hw, "load_average_before": load_before, "load_average_after": load_after,
        "seconds": seconds, "model": "CrossModalNet(ModelConfig())",
        "parameters": sum(p.numel() for p in CrossModalNet(ModelConfig()).parameters()),
        "optimizer": "fused Adam(lr=1e-4), the trainer's", "schedule_overrides": args.schedule,
        "warmup": args.warmup, "iters": iters,
        "matmul_peak_gflops_before": peaks_before, "matmul_peak_gflops_after": peaks_after,
        "matmul_peak_gflops": peaks,
        "image_to_normal_path_forward_gmac_per_image": {str(k): v for k, v in path_gmac.items()},
        "flop_counting": "torch.utils.flop_counter.FlopCounterMode over one step of one "
                         "image in fp32: convolutions and matmuls, forward + backward; "
                         "optimizer step not counted",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
