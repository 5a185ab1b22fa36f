"""How good the admission estimate is: the new meter (single engine calls big enough to time,
upper quantile) beside the previous one (one 64 px run after a warm-up, per input pixel,
then an average over whole jobs), both in fresh processes, and both against the real run.

For each of `--processes` fresh processes: calibrate, estimate the job, run the job, then
(the poisoning attack) fold in `--tiny` finished 1x1 jobs and estimate again. Prints each
estimate, the real engine time, their ratios, and how far estimates spread across processes.

    .venv/bin/python benchmarks/admission_estimates.py [--model realesrgan-x4plus] [--size 400] [--processes 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def one_process(model: str, size: int, scale: int, tiny: int) -> dict:
    import numpy as np

    from service.capacity import OVERHEAD_SECONDS, ThroughputMeter, nominal_image
    from sr_core.registry import ModelRegistry
    from sr_core.upscale import UpscaleOptions, plan_upscale, upscale_array

    engine = ModelRegistry().load_engine(model)
    image = nominal_image(size, size)
    options = UpscaleOptions(scale=scale)
    pixels = np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)

    # the previous meter: one 64 px calibration after a warm-up, then an average over whole jobs
    side = 64
    calibration = pixels[:side, :side]
    upscale_array(engine, calibration, UpscaleOptions(tile=side))
    started = time.perf_counter()
    upscale_array(engine, calibration, UpscaleOptions(tile=side))
    old_rate = (time.perf_counter() - started) / side**2
    old_before = OVERHEAD_SECONDS + old_rate * size * size

    meter = ThroughputMeter()
    started = time.perf_counter()
    new_before = meter.estimate(engine, image, options).seconds
    calibration_seconds = time.perf_counter() - started

    calls: list[tuple[int, float]] = []
    started = time.perf_counter()
    upscale_array(engine, pixels, options, timings=lambda px, s: calls.append((px, s)))
    actual = time.perf_counter() - started
    for pixels_seen, seconds in calls:
        meter.record(engine.info, pixels_seen, seconds)
    old_rate = 0.7 * old_rate + 0.3 * max(0.0, actual - OVERHEAD_SECONDS) / (size * size)
    new_after_job = meter.estimate(engine, image, options).seconds

    # the attack: tiny paid jobs, each a fraction of a second
    one = np.zeros((1, 1, 3), dtype=np.uint8)
    for _ in range(tiny):
        tiny_calls: list[tuple[int, float]] = []
        started = time.perf_counter()
        upscale_array(engine, one, options, timings=lambda px, s, c=tiny_calls: c.append((px, s)))
        duration = time.perf_counter() - started
        for pixels_seen, seconds in tiny_calls:
            meter.record(engine.info, pixels_seen, seconds)
        old_rate = 0.7 * old_rate + 0.3 * max(0.0, duration - OVERHEAD_SECONDS) / 1
    return {
        "work_pixels": plan_upscale(engine.info, image, options).work_pixels,
        "actual": actual,
        "old_before": old_before,
        "old_after_attack": OVERHEAD_SECONDS + old_rate * size * size,
        "new_before": new_before,
        "new_after_job": new_after_job,
        "new_after_attack": meter.estimate(engine, image, options).seconds,
        "calibration_seconds": calibration_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="realesrgan-x4plus")
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--tiny", type=int, default=14)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_process(args.model, args.size, args.scale, args.tiny)))
        return
    runs = []
    for index in range(args.processes):
        child = subprocess.run(
            [sys.executable, __file__, "--child", "--model", args.model, "--size", str(args.size),
             "--scale", str(args.scale), "--tiny", str(args.tiny)],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
        run = runs[-1]
        print(
            f"process {index + 1}: real {run['actual']:.1f} s | previous meter {run['old_before']:.1f} s "
            f"({run['old_before'] / run['actual']:.2f}x), after {args.tiny} tiny jobs {run['old_after_attack']:.1f} s "
            f"({run['old_after_attack'] / run['actual']:.2f}x) | new meter {run['new_before']:.1f} s "
            f"({run['new_before'] / run['actual']:.2f}x, calibrated in {run['calibration_seconds']:.1f} s), "
            f"after the job {run['new_after_job']:.1f} s ({run['new_after_job'] / run['actual']:.2f}x), "
            f"after {args.tiny} tiny jobs {run['new_after_attack']:.1f} s "
            f"({run['new_after_attack'] / run['actual']:.2f}x)"
        )

    def spread(key: str) -> float:
        values = [run[key] for run in runs]
        return max(values) / min(values)

    worst_old = min(r["old_after_attack"] / r["actual"] for r in runs)
    worst_new = min(r["new_after_attack"] / r["actual"] for r in runs)
    print(
        f"\n{args.model} x{args.scale}, {args.size}x{args.size}, {args.processes} fresh processes: spread of the "
        f"first estimate across processes (max/min) previous {spread('old_before'):.2f}x, "
        f"new {spread('new_before'):.2f}x; real runs {spread('actual'):.2f}x. Estimate/real after the attack: "
        f"previous {worst_old:.2f}x at worst, new {worst_new:.2f}x at worst (below 1 sells what cannot be delivered)."
    )


if __name__ == "__main__":
    main()
