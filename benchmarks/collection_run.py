"""What a paid collection run costs beside the same images sent as single paid jobs, on the same
server in one process, one after the other: a 20-token third-party collection on anvil (16 tokens
upgradeable; pixel-art detection off, so every token gets the same model as the single jobs).

The run's time includes what single jobs do not: planning (the chain reads and every fetch), the
batch's invoice, publishing the new folder and its CAR, and the collection's update on chain.
Single jobs are all created, then all paid, then awaited (the queue full, as the run's is), and
timed twice: until their results, and until their chain records are mined (a run's tokens are
upgraded only after that, since the collection's update names the records).

    .venv/bin/python benchmarks/collection_run.py [--model realesr-animevideov3] [--scale 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class _Folders:
    """What `served_world` asks of pytest's tmp_path_factory: new folders."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0

    def mktemp(self, name: str) -> Path:
        self.count += 1
        path = self.root / f"{name}{self.count}"
        path.mkdir()
        return path


def _wait(client: Any, path: str, done: Callable[[dict], bool], timeout: float = 1800) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(path).json()
        if done(body):
            return body
        time.sleep(0.1)
    raise RuntimeError(f"{path} did not finish")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="realesr-animevideov3")
    parser.add_argument("--scale", type=int, default=2)
    args = parser.parse_args()

    from sr_core.registry import ModelRegistry
    from tests.collection_world import PIXEL_ART, SKIPPED, TOKENS, photo, png, served_world, sprite

    with (
        tempfile.TemporaryDirectory() as tmp,
        served_world(_Folders(Path(tmp)), ModelRegistry(), server_chain=True) as s,
    ):
        client, world = s.client, s.world
        body = {"rpc_url": s.rpc, "contract": world.third_party.address, "model": args.model, "scale": args.scale,
                "pixel_art": "off", "setter": "setBaseURI(string)"}  # fmt: skip
        started = time.monotonic()
        run = client.post("/v1/collections", json=body, timeout=600).json()
        plan_seconds = time.monotonic() - started
        client.post("/v1/dev/pay", json={"payment_request": run["invoice"]["payment_request"]})
        done = _wait(client, f"/v1/collections/{run['id']}", lambda b: b["state"] == "done")
        run_seconds = time.monotonic() - started
        upgraded = sum(t["status"] == "upgraded" for t in done["tokens"])

        images = [png(sprite()) if i == PIXEL_ART else photo(i) for i in range(1, TOKENS + 1) if i not in SKIPPED]
        started = time.monotonic()
        jobs = []
        for index, data in enumerate(images):
            response = client.post("/v1/upscales", files={"image": (f"{index}.png", data, "image/png")},
                                   data={"model": args.model, "scale": str(args.scale)}, timeout=120)  # fmt: skip
            jobs.append(response.json())
        for job in jobs:
            client.post("/v1/dev/pay", json={"payment_request": job["payment_request"]})
        for job in jobs:
            _wait(client, f"/v1/upscales/{job['job_id']}", lambda b: b["status"] in ("succeeded", "failed"))
        jobs_seconds = time.monotonic() - started
        store = client.app.state.service.store  # (a job's chain status is shown to its holder only)
        while any(store.get(job["job_id"]).chain_status.value not in ("confirmed", "failed") for job in jobs):
            time.sleep(0.1)  # a run's tokens are upgraded only once their records are mined: so, here too
        recorded_seconds = time.monotonic() - started

    print(f"model {args.model} x{args.scale}, {len(images)} images of 64x72 (one 24x24 sprite)")
    print(f"collection run: {upgraded} tokens upgraded in {run_seconds:.1f} s ({run_seconds / upgraded:.2f} s/token; "
          f"{plan_seconds:.1f} s of it planning, in the POST)")  # fmt: skip
    print(f"single jobs:    {len(images)} jobs in {jobs_seconds:.1f} s ({jobs_seconds / len(images):.2f} s/job), "
          f"their records mined after {recorded_seconds:.1f} s")  # fmt: skip
    print(f"ratio run / jobs: {run_seconds / jobs_seconds:.2f}; run / jobs with their records mined: "
          f"{run_seconds / recorded_seconds:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
