"""Memory and time of signing Content Credentials (C2PA) into a finished output, side by side
with the file's size and with decoding the image fully.

Signing reads the encoded file and writes a signed copy beside it: c2pa-rs hashes and copies the
encoded bytes and never decodes the pixels (thumbnails are off). So its peak memory is a small
multiple of the *encoded file size*, the same multiple at any size, and does not follow the
decoded pixels, which are what a decode (pyvips, the whole image into memory) costs: against the
decoded size it is as small as the format compresses well (JPEG, WebP, a less noisy image with
--noise). This prints both, per format.

For each format (png, jpeg, webp, tiff, saved as sr_core.imageio saves outputs) a noisy
photo-like image of --megapixels is written with pyvips; then each measurement runs in a fresh
child process, and its memory is the child's peak RSS (ru_maxrss) minus its baseline after the
imports (and, for signing, after one warm-up signing of a 64x48 file, so that c2pa's one-time
set-up is not counted). The ingredient (the job's input) is a 64x48 PNG. Each signed file is read
back and must be "valid" (intact, signed by the local, untrusted CA).

On Linux a child's ru_maxrss starts at its parent's peak (it is kept across fork and exec), so
this process stays small: it imports neither pyvips nor c2pa, and the images, the signing
identity and the ingredient are made in a child too.

    .venv/bin/python benchmarks/content_credentials.py [--megapixels 24] [--formats png,jpeg,webp,tiff] [--noise 10]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FORMATS = ("png", "jpeg", "webp", "tiff")
SUFFIXES = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "tiff": ".tif"}
WEBP_MAX_SIDE = 16383
MB = 1e6


def dimensions(megapixels: float, fmt: str) -> tuple[int, int]:
    """3:2, as a camera makes it; WebP's sides stop at 16383."""
    width = round(math.sqrt(megapixels * 1e6 * 1.5))
    height = round(width / 1.5)
    if fmt == "webp" and width > WEBP_MAX_SIDE:
        width, height = WEBP_MAX_SIDE, min(height, WEBP_MAX_SIDE)
    return width, height


def make_photo(path: Path, fmt: str, width: int, height: int, noise_sigma: float = 10.0) -> None:
    """A noisy photo-like image (shading, edges, sensor noise) built by libvips without holding it in Python."""
    import pyvips

    x = pyvips.Image.xyz(width, height)
    xs, ys = x[0], x[1]
    shading = (xs / 97.0).sin() * (ys / 131.0).cos() * 60 + 128
    stripes = (((xs + ys * 2) / 7).cast("int") % 2) * 30
    noise = [pyvips.Image.gaussnoise(width, height, sigma=noise_sigma) - 128 for _ in range(3)]
    rgb = (shading + noise[0]).bandjoin([shading * 0.8 + stripes + noise[1], 255 - shading + noise[2]])
    image = rgb.cast("uchar").copy(interpretation="srgb")
    # as sr_core.imageio saves outputs (its default options)
    if fmt == "png":
        image.pngsave(str(path), compression=6)
    elif fmt == "jpeg":
        image.jpegsave(str(path), Q=95, optimize_coding=True)
    elif fmt == "webp":
        image.webpsave(str(path), Q=95)
    else:
        image.tiffsave(str(path), compression="deflate", level=6, predictor="horizontal")


def prepare(work: Path, fmt: str, megapixels: float, noise_sigma: float) -> dict:
    """(in a child) The output to sign, a 64x48 warm-up file of its format, and, once, the signing
    identity and the ingredient."""
    import pyvips

    from provenance.signing_identity import make_local_identity

    if not (work / "identity").exists():
        make_local_identity(work / "identity")
    ingredient = work / "input.png"
    if not ingredient.exists():
        noise = [pyvips.Image.gaussnoise(64, 48, sigma=40) for _ in range(3)]
        noise[0].bandjoin(noise[1:]).cast("uchar").copy(interpretation="srgb").pngsave(str(ingredient))
    width, height = dimensions(megapixels, fmt)
    make_photo(work / f"output{SUFFIXES[fmt]}", fmt, width, height, noise_sigma)
    make_photo(work / f"warmup{SUFFIXES[fmt]}", fmt, 64, 48)
    return {"width": width, "height": height}


PREPARE_CHILD = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from content_credentials import prepare
print(json.dumps(prepare(Path(sys.argv[2]), sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))))
"""

SIGN_CHILD = r"""
import hashlib, json, resource, sys, time
from pathlib import Path
identity_dir, path, fmt, ingredient, warmup = (sys.argv[1], Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]),
                                               Path(sys.argv[5]))
from provenance.content_credentials import Claim, ContentCredentialsSigner, RecordKey, StageAction, read_credentials
from provenance.signing_identity import local_identity

def claim(title):
    record = RecordKey(
        payment_hash="ab" * 32,
        input_cid="bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
        input_sha256=hashlib.sha256(ingredient.read_bytes()).hexdigest(),
        registry="0x" + "12" * 20,
        chain_id=8453,
        job_id="bench",
    )
    stages = (StageAction("realesrgan-x4plus", "cd" * 32, 4),)
    return Claim("Satscale benchmark", "0", title, ingredient.name, stages, record)

signer = ContentCredentialsSigner(local_identity(Path(identity_dir)))
signer.sign(warmup, fmt, claim(warmup.name), ingredient, "png")  # c2pa's one-time set-up, outside the measurement
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
started = time.perf_counter()
signer.sign(path, fmt, claim(path.name), ingredient, "png")
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
state = read_credentials(path, fmt).state
print(json.dumps({"extra": peak - baseline, "baseline": baseline, "seconds": seconds, "state": state}))
"""

DECODE_CHILD = r"""
import json, resource, sys, time
import pyvips
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
started = time.perf_counter()
pixels = pyvips.Image.new_from_file(sys.argv[1], access="sequential").write_to_memory()
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"extra": peak - baseline, "baseline": baseline, "seconds": seconds, "decoded": len(pixels)}))
"""


def own_peak() -> int:
    """This process's peak RSS in bytes (a child's ru_maxrss never starts below it)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(code: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["killed"])[-1]
        raise SystemExit(f"child failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megapixels", type=float, default=24.0)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument(
        "--noise", type=float, default=10.0, help="sensor noise (gaussnoise sigma); less: smaller files"
    )
    args = parser.parse_args()
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        parser.error(f"unknown formats: {', '.join(unknown)} (known: {', '.join(FORMATS)})")

    print(
        f"{args.megapixels:g} MP photo-like image, noise sigma {args.noise:g}, {os.cpu_count()} CPUs; "
        "memory: a fresh process's peak RSS above its baseline; MB = 10^6 bytes\n"
    )
    header = (
        f"{'format':>6} {'size':>11} {'file MB':>8} {'decoded MB':>10} | {'signing peak MB':>15} {'signing s':>9} | "
        f"{'decode peak MB':>14} {'decode s':>8} | {'sign peak / file':>16} {'sign peak / decoded':>19}"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="satscale-c2pa-bench-") as work_dir:
        work = Path(work_dir)
        for fmt in formats:
            here = str(Path(__file__).resolve().parent)
            made = run_child(PREPARE_CHILD, here, str(work), fmt, str(args.megapixels), str(args.noise))
            path, warmup = work / f"output{SUFFIXES[fmt]}", work / f"warmup{SUFFIXES[fmt]}"
            size, file_size = f"{made['width']}x{made['height']}", path.stat().st_size
            decoded = run_child(DECODE_CHILD, str(path))
            signed = run_child(SIGN_CHILD, str(work / "identity"), str(path), fmt, str(work / "input.png"), str(warmup))
            if min(signed["baseline"], decoded["baseline"]) <= own_peak():
                print(f"(warning: a child's baseline is at this process's peak; {fmt}'s figures may be low)")
            if signed["state"] != "valid":
                raise SystemExit(f"{fmt}: the signed file reads back as {signed['state']!r}, not 'valid'")
            print(
                f"{fmt:>6} {size:>11} {file_size / MB:8.1f} "
                f"{decoded['decoded'] / MB:10.1f} | {signed['extra'] / MB:15.1f} {signed['seconds']:9.2f} | "
                f"{decoded['extra'] / MB:14.1f} {decoded['seconds']:8.2f} | "
                f"{signed['extra'] / file_size:15.2f}x {signed['extra'] / decoded['decoded']:18.3f}x"
            )
            path.unlink()
            warmup.unlink()


if __name__ == "__main__":
    main()
