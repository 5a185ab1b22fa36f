"""Past one machine, measured side by side in one run:

1. scheduling: one API node with 1 worker, then with 2 workers (`satscale worker`), on a fresh
   PostgreSQL database and anvil: the same stream of paid jobs (the light model, small images),
   jobs per minute and p50/p95 time from payment to result. Each worker computes on one thread
   (OMP_NUM_THREADS=1, VIPS_CONCURRENCY=1), standing for one GPU each, so that on a 2-core
   machine the ratio shows how the queue spreads work rather than two workers fighting over the
   same cores (part 1 also runs with the threads unlimited, for comparison);
2. the PostgreSQL path's overhead per job: the single-box server on SQLite beside a one-process
   server on PostgreSQL (`--role all`: the store, the procrastinate ticket, the coordinator),
   jobs one at a time, p50 time from payment to result, and the difference;
3. the store alone: one job's store calls (insert, held with its ticket, processing, progress,
   succeeded with its outbox record, sent, confirmed, settled) on SQLite and on PostgreSQL.

    .venv/bin/python benchmarks/scale_out.py [--jobs 24] [--single 12]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.jobs import InvoiceStatus, JobState  # noqa: E402
from service.store import OutboxEntry, SqliteJobStore, SqlJobStore  # noqa: E402
from tests.anvil import running_anvil  # noqa: E402
from tests.cluster_world import Cluster, Node, create, pay, photo  # noqa: E402
from tests.postgres import fresh_database  # noqa: E402
from tests.servers import free_port  # noqa: E402

#: payers paying the stream's invoices at once
PAYERS = 8


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def await_results(node: Node, paid: dict[str, float], timeout: float = 600) -> dict[str, float]:
    """Seconds from each job's payment to its result, polling the node's status answers."""
    done: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=30) as client:
        while len(done) < len(paid) and time.monotonic() < deadline:
            for job_id, at in paid.items():
                if job_id in done:
                    continue
                body = client.get(f"{node.url}/v1/upscales/{job_id}").json()
                if body["status"] == "succeeded":
                    done[job_id] = time.monotonic() - at
                elif body["status"] in ("failed", "expired"):
                    raise SystemExit(f"{job_id} {body['status']}: {body.get('error')}")
            time.sleep(0.01)
    if len(done) < len(paid):
        raise SystemExit(f"only {len(done)} of {len(paid)} jobs finished")
    return done


def stream(cluster: Cluster, node: Node, count: int, seed: int) -> tuple[float, list[float], list[float]]:
    """Create `count` jobs, pay them all, wait: (jobs per minute, seconds to each result, seconds
    each run took on its worker: the engine, hashing and pinning, started to finished). The
    results are read off the job store (each job's finished_at, the worker's clock: this machine's),
    so no status polling competes with the workers for the cores."""
    jobs = [create(node, photo(seed + index, 64, 96)) for index in range(count)]
    paid: dict[str, float] = {}

    def paying(job: dict) -> None:
        pay(node, job)
        paid[job["job_id"]] = time.time()

    start = time.time()
    with ThreadPoolExecutor(PAYERS) as payers:  # a burst: the queue fills faster than workers drain it
        list(payers.map(paying, jobs))
    deadline = time.monotonic() + 600
    while True:
        rows = cluster.query("SELECT id, state, finished_at, started_at FROM jobs WHERE id = ANY(%s)", list(paid))
        if any(state in ("failed", "expired") for _, state, _, _ in rows):
            raise SystemExit(f"a job failed: {rows}")
        if all(state == "succeeded" for _, state, _, _ in rows) and len(rows) == count:
            break
        if time.monotonic() > deadline:
            raise SystemExit("the stream did not finish")
        time.sleep(0.1)
    times = [finished - paid[job_id] for job_id, _, finished, _ in rows]
    runs = [finished - started for _, _, finished, started in rows]
    elapsed = max(finished for _, _, finished, _ in rows) - start
    return count / elapsed * 60, times, runs


def one_at_a_time(node: Node, count: int, seed: int) -> list[float]:
    times = []
    for index in range(count):
        job = create(node, photo(seed + index, 64, 96))
        pay(node, job)
        times.extend(await_results(node, {job["job_id"]: time.monotonic()}).values())
    return times


def scheduling(
    root: Path, weights: Path, jobs: int, one_thread: bool
) -> dict[int, tuple[float, list[float], list[float]]]:
    results = {}
    for workers in (1, 2):
        with fresh_database() as url, running_anvil() as (_, chain_port):
            folder = root / f"w{workers}-{'one' if one_thread else 'all'}"
            folder.mkdir()
            cluster = Cluster(folder, url, chain_port, weights)
            if one_thread:
                cluster.env |= {"OMP_NUM_THREADS": "1", "VIPS_CONCURRENCY": "1"}
            try:
                api = cluster.add_api()
                for _ in range(workers):
                    cluster.add_worker()
                cluster.wait_ready()
                stream(cluster, api, 4, 900)  # warm: models loaded, speeds measured, the registry deployed
                results[workers] = stream(cluster, api, jobs, 1000)
            finally:
                cluster.stop()
    return results


def single_box(root: Path, weights: Path, count: int) -> dict[str, list[float]]:
    """The same jobs one at a time on the SQLite single box and on a PostgreSQL `--role all`."""
    results = {}
    for kind in ("sqlite", "postgres"):
        with fresh_database() as url, running_anvil() as (_, chain_port):
            folder = root / kind
            folder.mkdir()
            cluster = Cluster(folder, url, chain_port, weights)
            env = dict(cluster.env)
            if kind == "sqlite":
                env.pop("SATSCALE_STORE_URL")
            args = ["serve"] if kind == "sqlite" else ["serve", "--role", "all"]
            node = Node(kind, args, env, folder / f"{kind}.log", free_port())
            cluster.apis.append(node)
            node.start()
            try:
                cluster.wait_ready()
                one_at_a_time(node, 4, 2000)  # warm
                results[kind] = one_at_a_time(node, count, 3000)
            finally:
                cluster.stop()
    return results


def store_calls(store: SqlJobStore, count: int, ticket) -> float:
    """Milliseconds of store calls per job, for one job's whole life."""
    from tests.test_job_stores import new_job

    start = time.perf_counter()
    for number in range(count):
        job = new_job(number)
        store.insert(job)
        store.transition(job.id, [JobState.AWAITING_PAYMENT], JobState.PAYMENT_HELD, also=ticket,
                         invoice_status=InvoiceStatus.ACCEPTED, held_at=time.time())  # fmt: skip
        running = store.transition(job.id, [JobState.PAYMENT_HELD], JobState.PROCESSING, attempts=1)
        assert running is not None
        for fraction in (0.25, 0.5, 0.75):
            store.progress(job.id, 1, fraction)
        entry = OutboxEntry(job.payment_hash, job.id, {"payment_hash": job.payment_hash})
        store.transition(job.id, [JobState.PROCESSING], JobState.SUCCEEDED, outbox=entry, attempt=1, progress=1.0)
        store.outbox_update(job.payment_hash, status="sent", tx_hash="0x01")
        store.outbox_update(job.payment_hash, status="confirmed", block=1)
        store.update(job.id, invoice_status=InvoiceStatus.SETTLED)
    return (time.perf_counter() - start) / count * 1000


def store_only(root: Path, count: int) -> dict[str, float]:
    from service.cluster.queue import ProcrastinateQueue
    from service.cluster.roster import Roster
    from service.postgres_store import PostgresJobStore

    sqlite = SqliteJobStore(root / "bench.sqlite3")
    results = {"sqlite": store_calls(sqlite, count, None)}
    sqlite.close()
    with fresh_database() as url:
        store = PostgresJobStore(url)
        roster = Roster(store)
        roster.advertise("bench", "gpu", ["realesr-animevideov3"], 1, time.time())
        queue = ProcrastinateQueue(store, roster, None, url)  # type: ignore[arg-type]
        results["postgres"] = store_calls(store, count, queue._ticket)
        store.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=32, help="jobs in the stream of part 1")
    parser.add_argument("--single", type=int, default=12, help="jobs one at a time in part 2")
    parser.add_argument("--store-jobs", type=int, default=300, help="simulated jobs in part 3")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="satscale-scale-out-") as folder:
        root = Path(folder)
        weights = ROOT / "weights"
        stores = store_only(root, args.store_jobs)
        single = single_box(root, weights, args.single)
        scaled = {threads: scheduling(root, weights, args.jobs, threads == "one thread per worker")
                  for threads in ("one thread per worker", "threads unlimited")}  # fmt: skip

    print(f"\n1. one API node, {args.jobs} paid jobs at once (light model, 64x96 inputs, x4)")
    for threads, results in scaled.items():
        print(f"{threads}:\n{'workers':>8} {'jobs/min':>9} {'p50 s':>7} {'p95 s':>7} {'run ms':>7} {'busy':>6}")
        for workers, (rate, times, runs) in results.items():
            busy = sum(runs) / (workers * len(runs) / rate * 60)  # the workers' share of the time spent running
            print(f"{workers:>8} {rate:>9.1f} {quantile(times, 0.5):>7.2f} {quantile(times, 0.95):>7.2f} "
                  f"{statistics.mean(runs) * 1000:>7.0f} {busy:>6.0%}")  # fmt: skip
        one, two = results[1], results[2]
        print(f"2 workers / 1 worker: throughput x{two[0] / one[0]:.2f}, "
              f"p50 x{quantile(two[1], 0.5) / quantile(one[1], 0.5):.2f}")  # fmt: skip

    print("\n2. one process, jobs one at a time: payment to result")
    p50 = {kind: statistics.median(times) for kind, times in single.items()}
    for kind, times in single.items():
        print(f"{kind:>9}: p50 {p50[kind] * 1000:7.0f} ms  p95 {quantile(times, 0.95) * 1000:7.0f} ms")
    print(f"postgres - sqlite: {(p50['postgres'] - p50['sqlite']) * 1000:+.0f} ms per job "
          f"(x{p50['postgres'] / p50['sqlite']:.2f})")  # fmt: skip

    print(f"\n3. the store alone: one job's store calls ({args.store_jobs} jobs)")
    for kind, ms in stores.items():
        print(f"{kind:>9}: {ms:6.2f} ms per job")
    print(f"postgres - sqlite: {stores['postgres'] - stores['sqlite']:+.2f} ms per job "
          f"(x{stores['postgres'] / stores['sqlite']:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
