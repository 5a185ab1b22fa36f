"""Peak memory of a 4x upscale as the output grows: Satscale's streaming pipeline, the same x4
made as two passes (2x then 2x, through the intermediate file, consistency figures included),
and a naive whole-image pass (decode, one forward pass, encode), side by side.

The classic failure case is 4x of a 4000x3000 photo: a 192-megapixel output. Each run
is a fresh child process; peak RSS is its ru_maxrss. The naive run gets an address-space
cap (default 8 GiB) so that, on a shared machine, it fails cleanly instead of swapping.

    .venv/bin/python benchmarks/big_image_memory.py [--sizes 1000x750,2000x1500,4000x3000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "realesr-animevideov3"
LIMIT_GIB = 1.5  # the bound for 4000x3000 -> 16000x12000


def make_photo(path: Path, width: int, height: int) -> None:
    """A photo-like JPEG (shading, edges, texture, noise) built by libvips without holding it in Python."""
    import pyvips

    x = pyvips.Image.xyz(width, height)
    xs, ys = x[0], x[1]
    shading = ((xs / 37.0).sin() * (ys / 53.0).cos() * 60 + 128).cast("float")
    texture = pyvips.Image.gaussnoise(width, height, sigma=12)
    stripes = (((xs + ys * 2) / 5).cast("int") % 2) * 40
    rgb = (shading + texture).bandjoin([shading * 0.8 + stripes, 255 - shading + texture * 0.5])
    rgb.cast("uchar").copy(interpretation="srgb").jpegsave(str(path), Q=92)


CHILD = rf"""
import json, resource, sys, time
from pathlib import Path
mode, source, target = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
started = time.perf_counter()
from sr_core.registry import ModelRegistry
engine = ModelRegistry().load_engine("{MODEL}", precision="fp32")
if mode == "streaming":
    from sr_core.upscale import upscale_file
    upscale_file(engine, source, target)
elif mode == "pipeline":
    from sr_core.pipeline import Stage, run_pipeline
    from sr_core.upscale import UpscaleOptions
    twice = [Stage(engine, UpscaleOptions(scale=2)), Stage(engine, UpscaleOptions(scale=2))]
    run_pipeline(twice, source, target, fidelity=True)
else:
    import numpy as np, pyvips, torch
    image = pyvips.Image.new_from_file(str(source))
    pixels = torch.from_numpy(image.numpy().astype(np.float32) / 255).permute(2, 0, 1)[None]
    with torch.inference_mode():
        out = engine.model(pixels).clamp_(0, 1)
    array = (out[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    pyvips.Image.new_from_array(array).copy(interpretation="srgb").pngsave(str(target))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"peak": peak, "seconds": time.perf_counter() - started}}))
"""


def run_child(mode: str, source: Path, target: Path, cap_gib: float | None) -> dict:
    def limit() -> None:
        if cap_gib:
            cap = int(cap_gib * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(source), str(target)],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=limit,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["killed"])[-1]
        return {"error": last[:90]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000x750,2000x1500,4000x3000")
    parser.add_argument("--naive-cap-gib", type=float, default=8.0)
    args = parser.parse_args()
    from sr_core.registry import ModelRegistry

    ModelRegistry().load_engine(MODEL)  # import the weights once, outside the measurements
    print(f"model {MODEL}, x4, fp32, {os.cpu_count()} CPUs; peak RSS of a fresh process per run\n")
    print(
        f"{'input':>10} {'output MP':>9} | {'streaming':>16} | {'2x then 2x':>16} | {'naive (whole image)':>30} | ratio"
    )
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for size in args.sizes.split(","):
            width, height = (int(v) for v in size.split("x"))
            source = Path(work) / f"photo_{size}.jpg"
            make_photo(source, width, height)
            ours = run_child("streaming", source, Path(work) / f"ours_{size}.png", None)
            passes = run_child("pipeline", source, Path(work) / f"passes_{size}.png", None)
            (Path(work) / f"passes_{size}.png").unlink(missing_ok=True)
            naive = run_child("naive", source, Path(work) / f"naive_{size}.png", args.naive_cap_gib)
            results[size] = (ours, naive, passes)

            def shown(run: dict) -> str:
                return f"{run['peak'] / 2**30:5.2f} GiB {run['seconds']:6.0f} s" if "peak" in run else run["error"]

            ours_text, passes_text = shown(ours), shown(passes)
            if "peak" in naive:
                naive_text = f"{naive['peak'] / 2**30:5.2f} GiB {naive['seconds']:6.0f} s"
                ratio = f"{naive['peak'] / ours['peak']:.1f}x less" if "peak" in ours else "-"
            else:
                naive_text = f"failed under {args.naive_cap_gib:g} GiB cap"
                ratio = f">{args.naive_cap_gib * 2**30 / ours['peak']:.1f}x less" if "peak" in ours else "-"
            print(
                f"{size:>10} {width * height * 16 / 1e6:9.0f} | {ours_text:>16} | {passes_text:>16} | "
                f"{naive_text:>30} | {ratio}"
            )
            time.sleep(0.5)
    largest, _, twice = results[args.sizes.split(",")[-1]]
    if "peak" in largest:
        verdict = "OK" if largest["peak"] < LIMIT_GIB * 2**30 else "OVER"
        print(f"\nlargest streaming run: {largest['peak'] / 2**30:.2f} GiB peak RSS ({verdict}: bound {LIMIT_GIB} GiB)")
    if "peak" in largest and "peak" in twice:
        print(f"2x then 2x / one 4x, peak RSS: {twice['peak'] / largest['peak']:.2f}x")


if __name__ == "__main__":
    main()
