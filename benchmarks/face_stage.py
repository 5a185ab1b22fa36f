"""The face stage on images of growing size: peak memory and time of a run that restores the
faces, beside a run of the same stage with weight=1 (detection and the streamed copy only, no
face model) and the bare cost of one restore per face architecture, side by side.

The images are the astronaut (scikit-image) enlarged, so there is one real face whose size grows
with the image: the stage's memory should stay flat (it reads bands and each face's region
area-averaged to about the crop's size), while a whole-image stage would grow with the pixels.
Face models come from weights/ when there; otherwise random-weight files in the official layouts
(tests/face_weights.py) are written to a temporary folder: the time and memory of a network do
not depend on its weights' values.

    .venv/bin/python benchmarks/face_stage.py [--sides 1024,4096,8192]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
folder, model, source, target = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
weight = float(sys.argv[5])
started = time.perf_counter()
from sr_core.registry import ModelRegistry
from sr_core.pipeline import Stage, run_pipeline
from sr_core.plans import UpscaleOptions
from sr_core.imageio import ImageLimits
engine = ModelRegistry(folder).load_engine(model)
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
stages = [Stage(engine, UpscaleOptions(scale=1, engine_options={"weight": weight}))]
result = run_pipeline(stages, source, target, limits=ImageLimits(max_pixels=2**31), fidelity=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
faces = len(result.stages[0].outcome["faces_restored"])
seconds = time.perf_counter() - started
# what the intake would have estimated for this stage (the faces found bound into it), calibrated here
from service.capacity import ThroughputMeter
from sr_core.imageio import ImageReader
info = ImageReader(source, ImageLimits(max_pixels=2**31)).info
bound = UpscaleOptions(scale=1, engine_options={"weight": weight, "max_faces": faces if weight < 1 else 10})
estimate = ThroughputMeter().estimate(engine, info, bound).stage_seconds[0]
print(json.dumps({"peak": peak, "loaded": loaded, "seconds": seconds, "faces": faces,
                  "stage_seconds": result.stages[0].seconds, "estimate": estimate}))
"""

TIME_ONE = r"""
import json, sys, time, torch
from pathlib import Path
from sr_core.faces.face_models import load_face_model
restorer = load_face_model(Path(sys.argv[1]), "cpu")
crop = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
restorer.restore(crop)
runs = []
for _ in range(3):
    started = time.perf_counter()
    restorer.restore(crop)
    runs.append(time.perf_counter() - started)
print(json.dumps({"arch": restorer.arch.title, "seconds": sorted(runs)[1]}))
"""


def child(code: str, *argv: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["killed"])[-1][:90]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def face_folder(work: Path) -> tuple[Path, list[Path]]:
    """weights/ if it holds face models, else random-weight files in the official layouts."""
    from sr_core.faces.face_models import detect_face_arch, read_state_dict
    from sr_core.weights import discover_user_weights, weights_dir

    found = [p for p in discover_user_weights(weights_dir()) if _is_face(p, detect_face_arch, read_state_dict)]
    if found:
        return weights_dir(), found
    from tests.face_weights import write_codeformer, write_gfpgan, write_restoreformer, write_restoreformer_pp

    folder = work / "weights"
    folder.mkdir()
    return folder, [write(folder) for write in (write_gfpgan, write_restoreformer, write_restoreformer_pp,
                                                 write_codeformer)]  # fmt: skip


def _is_face(path: Path, detect, read) -> bool:
    try:
        return detect(read(path)) is not None
    except Exception:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", default="1024,4096,8192")
    args = parser.parse_args()
    import pyvips
    import skimage.data

    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        folder, files = face_folder(work)
        print(f"{os.cpu_count()} CPUs, fp32; one restore of a 512 face (median of 3), per architecture:")
        for path in files:
            timed = child(TIME_ONE, str(path))
            print(
                f"  {path.name:>28}: "
                + (f"{timed['arch']} {timed['seconds']:.2f} s" if "arch" in timed else timed["error"])
            )
        model = files[0].relative_to(folder).with_suffix("").as_posix()
        portrait = pyvips.Image.new_from_array(skimage.data.astronaut()).copy(interpretation="srgb")
        print(f"\nthe face stage ({model}) on the astronaut enlarged; peak RSS of a fresh process per run;")
        print("estimate: the intake's calibrated estimate of the stage / the stage's own time (want >= 1,")
        print("          about the 1.5 calibration margin)")
        print(
            f"{'image':>11} {'MP':>5} | {'restoring (weight 0)':>42} | {'detect + copy (weight 1)':>42} | restore adds"
        )
        peaks = []
        for side in (int(s) for s in args.sides.split(",")):
            source = work / f"portrait_{side}.png"
            portrait.resize(side / 512, kernel="linear").pngsave(str(source), compression=1)
            restoring = child(CHILD, str(folder), model, str(source), str(work / "out.png"), "0")
            copying = child(CHILD, str(folder), model, str(source), str(work / "copy.png"), "1")

            def shown(run: dict) -> str:
                if "peak" not in run:
                    return run["error"]
                text = f"{run['peak'] / 2**30:5.2f} GiB {run['seconds']:6.1f} s ({run['faces']} face)"
                return text + (f", estimate {run['estimate'] / run['stage_seconds']:.2f}x" if run["faces"] else "")

            added = "-"
            if "peak" in restoring and "peak" in copying:
                time_ratio = restoring["seconds"] / copying["seconds"]
                added = f"{time_ratio:.1f}x time, {restoring['peak'] / copying['peak']:.2f}x memory"
                peaks.append(restoring["peak"])
            print(
                f"{side}x{side:<6} {side * side / 1e6:5.0f} | {shown(restoring):>42} | {shown(copying):>42} | {added}"
            )
            time.sleep(0.5)
        if len(peaks) > 1:
            pixels = (int(args.sides.split(",")[-1]) / int(args.sides.split(",")[0])) ** 2
            print(f"\nlargest / smallest image: {pixels:.0f}x the pixels, {peaks[-1] / peaks[0]:.2f}x the peak memory")


if __name__ == "__main__":
    main()
