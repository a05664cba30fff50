"""Training throughput of the full model: images/s per iteration type, FLOPs and % of peak.

For every resolution in ``--sizes`` and every iteration type of the paper's schedule
(§3.3), this times full training iterations of ``CrossModalNet(ModelConfig())`` (the
authors' graph, 35.3M parameters) with Adam(lr=1e-4):

=========================  =====================  =================================
iteration type             route                  loss
=========================  =====================  =================================
``normal_to_normal``       ``normal_to_normal``   ``normal_loss``
``image_to_normal+image``  ``image_to_normal``    ``normal_loss + image_loss``
``image_to_image``         ``image_to_image``     ``image_loss``
=========================  =====================  =================================

One iteration is ``zero_grad``, forward, loss, ``backward``, ``optimizer.step()`` on
random inputs (images uniform in [0, 1], unit normals facing the camera, full masks).
Each variant (memory format x dtype) gets a fresh model and optimizer, ``--warmup``
untimed iterations, then ``--iters`` timed ones (synchronised on CUDA); the table reports
the median.

FLOPs are counted exactly with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions
and matrix products, forward and backward; the optimizer step, normalisations and
element-wise ops are not counted) in one pass per (size, iteration type) on the ``meta``
device, so counting costs no compute and is kept out of the timings: the count depends
only on shapes, not on the memory format or dtype. Achieved GFLOP/s = FLOPs of one
iteration / median seconds per iteration, compared with dense matmul peaks measured in
the same run, before and after the benchmark (the better of the two is used): on CPU,
with the same thread count, a 4096³ fp32 ``torch.matmul`` (MKL) and the same product as
a channels_last 1x1 convolution (oneDNN, which runs the model's convolutions and is ~2x
faster than MKL's sgemm on AMD CPUs); on CUDA 8192³ in fp32, TF32, bf16 and fp16.

The table also gives the fastest timed iteration and, for each row, the CPU other
processes took meanwhile (cores, from /proc/stat minus this process's CPU time): on a
shared 2-core machine one busy neighbour slows this benchmark several times over, and the
load average cannot show it because it counts the benchmark's own threads.

Variants: contiguous vs ``channels_last`` (``--memory-format``) and, on CUDA, fp32 vs
bf16 autocast (``--dtype``). On CUDA, fp32 convolutions run in TF32 when
``torch.backends.cudnn.allow_tf32`` is on (PyTorch's default), so fp32 rows are then
compared with the TF32 peak; ``--tf32 on|off`` sets both matmul and cuDNN flags.

Defaults keep the CPU run well under 10 minutes on 2 cores (about 4 minutes when the
machine is otherwise idle): batch 8 at 128 px and batch 4 at 256 px (``--batch-size``
overrides both), 2 warm-up and 5 timed iterations; on CUDA batch 32 and 20 timed
iterations.

Usage::

    python benchmarks/train_throughput.py [--sizes 128 256] [--batch-size N]
        [--warmup 2] [--iters 5] [--memory-format contiguous channels_last]
        [--dtype fp32 bf16] [--threads N] [--device cpu|cuda] [--tf32 default|on|off]
        [--types ...] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from crossmodal.models import CrossModalNet, ModelConfig, image_loss, normal_loss

ROOT = Path(__file__).resolve().parents[1]
ITERATION_TYPES = {  # name -> (route, losses)
    "normal_to_normal": ("normal_to_normal", ("normal",)),
    "image_to_normal+image": ("image_to_normal", ("normal", "image")),
    "image_to_image": ("image_to_image", ("image",)),
}
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


# --------------------------------------------------------------------------- inputs


def make_batch(batch: int, size: int, device: torch.device, memory_format,
               generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random images in [0, 1], unit normals with z >= 0, full masks."""
    image = torch.rand(batch, 3, size, size, generator=generator)
    normals = torch.randn(batch, 3, size, size, generator=generator)
    normals[:, 2].abs_()
    normals = torch.nn.functional.normalize(normals, dim=1)
    mask = torch.ones(batch, size, size, dtype=torch.bool)
    return {"image": image.to(device).contiguous(memory_format=memory_format),
            "normals": normals.to(device).contiguous(memory_format=memory_format),
            "mask": mask.to(device)}


def iteration_loss(model: torch.nn.Module, kind: str, batch: dict[str, torch.Tensor],
                   autocast_dtype: torch.dtype | None, device_type: str) -> torch.Tensor:
    """Forward and loss of one iteration type (the losses compute in fp32 themselves)."""
    route, losses = ITERATION_TYPES[kind]
    x = batch["normals"] if route == "normal_to_normal" else batch["image"]
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32,
                        enabled=autocast_dtype is not None):
        out = model(x, route)
    loss = 0.0
    if "normal" in losses:
        loss = loss + normal_loss(out["normals"], batch["normals"], batch["mask"])
    if "image" in losses:
        loss = loss + image_loss(out["image"], batch["image"], batch["mask"])
    return loss


# --------------------------------------------------------------------------- FLOPs


def count_flops(kind: str, batch: int, size: int) -> dict[str, float]:
    """Exact FLOPs of one training iteration (forward + backward) and of the forward
    alone, counted on the meta device (shapes only, no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = CrossModalNet(ModelConfig()).train()
    data = {"image": torch.empty(batch, 3, size, size, device="meta"),
            "normals": torch.empty(batch, 3, size, size, device="meta"),
            "mask": torch.empty(batch, size, size, dtype=torch.bool, device="meta")}
    counter = FlopCounterMode(display=False)
    with counter:
        loss = iteration_loss(model, kind, data, None, "cpu")
    forward = counter.get_total_flops()
    with counter:
        loss = iteration_loss(model, kind, data, None, "cpu")
        loss.backward()
    return {"train_flops": float(counter.get_total_flops()), "forward_flops": float(forward)}


def image_to_normal_path_gmac(size: int) -> dict[str, float]:
    """Forward GMAC per image of the inference path, E_I + D_N with skips (no D_I), and
    of E_N with its full-resolution branch, which the authors' released forward also
    computes on every input (docs/design.md §7: "computed but unused"); the two together are
    docs/design.md §9's ~33 GMAC at 256²."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = CrossModalNet(ModelConfig()).eval()
    model.image_decoder = None  # the inference path does not decode the image
    x = torch.empty(1, 3, size, size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x, "image_to_normal")
    path = counter.get_total_flops() / 2e9
    with counter, torch.no_grad():
        model.normal_encoder(x, with_skips=True)
    normal_encoder = counter.get_total_flops() / 2e9
    return {"inference_path": path, "normal_encoder": normal_encoder,
            "authors_forward": path + normal_encoder}


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


def time_variant(kind: str, size: int, batch_size: int, memory_format: str, dtype_name: str,
                 device: torch.device, warmup: int,
                 iters: int) -> tuple[list[float], float | None]:
    """Seconds of each timed training iteration of a fresh model and optimizer, and the
    CPU cores other processes used meanwhile on average (None if unknown)."""
    torch.manual_seed(0)
    fmt = MEMORY_FORMATS[memory_format]
    model = CrossModalNet(ModelConfig()).to(device).train()
    model = model.to(memory_format=fmt)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    batch = make_batch(batch_size, size, device, fmt, torch.Generator().manual_seed(1))
    times = []
    counters = None
    for i in range(warmup + iters):
        if i == warmup:
            counters, wall = cpu_counters(), time.perf_counter()
        sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = iteration_loss(model, kind, batch, DTYPES[dtype_name], device.type)
        loss.backward()
        optimizer.step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    other_cores = None
    end = cpu_counters()
    if counters and end:
        other_cores = max(0.0, (end[0] - counters[0]) - (end[1] - counters[1])) / (
            time.perf_counter() - wall)
    if not torch.isfinite(loss.detach()).item():
        raise RuntimeError(f"{kind} at {size}px gave a non-finite loss")
    del model, optimizer, batch
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return times, other_cores


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
    head = ("| size | batch | iteration type | memory format | dtype | ms/iter | images/s | "
            "fwd GMAC/img | train GFLOP/img | GFLOP/s | % of peak | best ms/iter | "
            "others' CPU |")
    lines = [head, "|---:|---:|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['batch_size']} | {r['iteration_type']} | "
            f"{r['memory_format']} | {r['dtype']} | {r['ms_per_iter']:.0f} | "
            f"{r['images_per_s']:.2f} | {r['forward_gmac_per_image']:.1f} | "
            f"{r['train_gflop_per_image']:.1f} | {r['achieved_gflops']:.0f} | "
            + ", ".join(f"{100 * v:.0f}% {k}" for k, v in r["ratio_to_peak"].items())
            + f" | {r['ms_per_iter_min']:.0f} | {_cores(r['other_processes_cores'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--types", nargs="+", choices=list(ITERATION_TYPES),
                        default=list(ITERATION_TYPES))
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
              f"no D_I) {g['inference_path']:.2f}; + E_N, which the authors' graph also "
              f"runs, {g['normal_encoder']:.2f} = {g['authors_forward']:.2f}", flush=True)

    rows = []
    for size in args.sizes:
        batch_size = batch_for(size)
        for kind in args.types:
            flops = count_flops(kind, batch_size, size)
            for memory_format in args.memory_format:
                for dtype_name in dtypes:
                    times, other_cores = time_variant(kind, size, batch_size, memory_format,
                                                      dtype_name, device, args.warmup, iters)
                    median = statistics.median(times)
                    row = {
                        "size": size, "batch_size": batch_size, "iteration_type": kind,
                        "route": ITERATION_TYPES[kind][0], "memory_format": memory_format,
                        "dtype": dtype_name if dtype_name == "fp32" else
                        f"{dtype_name} autocast",
                        "times_s": [round(t, 5) for t in times],
                        "ms_per_iter": 1e3 * median, "ms_per_iter_mean":
                        1e3 * statistics.fmean(times), "ms_per_iter_min": 1e3 * min(times),
                        "images_per_s": batch_size / median,
                        "forward_gmac_per_image": flops["forward_flops"] / 2e9 / batch_size,
                        "train_gflop_per_image": flops["train_flops"] / 1e9 / batch_size,
                        "train_flops_per_iter": flops["train_flops"],
                        "achieved_gflops": flops["train_flops"] / median / 1e9,
                        "peaks": peak_keys(device, dtype_name),
                        "load_average_1min": os.getloadavg()[0],
                        "other_processes_cores": other_cores,
                    }
                    rows.append(row)
                    print(f"# {size}px {kind} {memory_format} {row['dtype']}: "
                          f"{row['ms_per_iter']:.0f} ms/iter, {row['images_per_s']:.2f} img/s, "
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
        "optimizer": "Adam(lr=1e-4)", "warmup": args.warmup, "iters": iters,
        "matmul_peak_gflops_before": peaks_before, "matmul_peak_gflops_after": peaks_after,
        "matmul_peak_gflops": peaks,
        "image_to_normal_path_forward_gmac_per_image": {str(k): v for k, v in path_gmac.items()},
        "flop_counting": "torch.utils.flop_counter.FlopCounterMode on the meta device: "
                         "convolutions and matmuls, forward + backward; optimizer step not "
                         "counted",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
