"""Past one machine, for real: two API nodes (`satscale serve --role api`) and two workers
(`satscale worker`) on one PostgreSQL database and one anvil chain, as separate processes.

One stream of paid jobs, then the kills an operator fears: a worker SIGKILLed in the middle
of a job, an API node SIGKILLed between issuing an invoice and its payment, and the
coordinator (the one chain sender) SIGKILLed while records wait. Every job must succeed once,
be charged once, and be recorded on chain once, with its output intact."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from provenance.chain import ProvenanceChain

from .anvil import ANVIL_KEY_0, running_anvil
from .cluster_world import Cluster, Node, create, pay, photo, status
from .postgres import fresh_database

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.chain]


@pytest.fixture
def cluster(tmp_path: Path, weights_folder: Path) -> Iterator[Cluster]:
    with fresh_database() as url, running_anvil() as (_, chain_port):
        world = Cluster(tmp_path, url, chain_port, weights_folder)
        world.chain_port = chain_port  # type: ignore[attr-defined]
        try:
            yield world
        finally:
            world.stop()


def job_rows(cluster: Cluster, job_ids: list[str]) -> dict[str, dict]:
    names = ("id", "state", "invoice_status", "chain_status", "attempts", "worker", "output_path", "output_sha256",
             "output_width", "output_height", "payment_hash")  # fmt: skip
    rows = cluster.query(f"SELECT {', '.join(names)} FROM jobs WHERE id = ANY(%s)", job_ids)
    return {row[0]: dict(zip(names, row, strict=True)) for row in rows}


def wait_all(cluster: Cluster, job_ids: list[str], timeout: float = 300) -> dict[str, dict]:
    """Until every job succeeded, was settled and is confirmed on chain (or one failed: stop)."""
    deadline = time.monotonic() + timeout
    rows: dict[str, dict] = {}
    while time.monotonic() < deadline:
        rows = job_rows(cluster, job_ids)
        failed = [row for row in rows.values() if row["state"] in ("failed", "expired")]
        assert not failed, failed
        if len(rows) == len(job_ids) and all(
            row["state"] == "succeeded" and row["invoice_status"] == "settled" and row["chain_status"] == "confirmed"
            for row in rows.values()
        ):
            return rows
        time.sleep(0.25)
    logs = "\n".join(f"--- {node.name}\n{node.tail()}" for node in [*cluster.apis, *cluster.workers])
    raise AssertionError(f"not every job got through: {rows}\n{logs}")


def wait_state(cluster: Cluster, job_id: str, state: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = job_rows(cluster, [job_id]).get(job_id)
        if row is not None and row["state"] == state:
            return row
        time.sleep(0.02)
    raise AssertionError(f"{job_id} never reached {state}")


def chain_records(cluster: Cluster) -> Counter:
    """How many times each payment hash is recorded in the registry, read off anvil's logs."""
    address = cluster.query("SELECT value FROM meta WHERE key LIKE 'registry_address:%%'")[0][0]
    chain = ProvenanceChain.connect(
        f"http://127.0.0.1:{cluster.chain_port}",
        ANVIL_KEY_0,
        registry_address=address,  # type: ignore[attr-defined]
    )
    logs = chain.registry.events.ProvenanceRecorded().get_logs(from_block=0)
    return Counter(log.args.paymentHash.hex().removeprefix("0x") for log in logs)


def paid_once(node: Node, jobs: list[dict]) -> None:
    """The dev node's own books: one payment per job, settled, for the job's price."""
    history = httpx.get(f"{node.url}/v1/dev/payments", timeout=30).json()
    by_hash = Counter(payment["payment_hash"] for payment in history)
    states = {payment["payment_hash"]: payment for payment in history}
    for job in jobs:
        assert by_hash[job["payment_hash"]] == 1, "a payment hash was paid twice"
        payment = states[job["payment_hash"]]
        assert payment["state"] == "settled" and payment["charged_msat"] == job["amount_msat"]


def intact(row: dict, scale: int = 4) -> None:
    path = Path(row["output_path"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == row["output_sha256"]
    with Image.open(path) as image:
        assert image.size == (row["output_width"], row["output_height"])


def test_a_cluster_serves_paid_jobs_once_through_kills(cluster: Cluster) -> None:
    api = [cluster.add_api(), cluster.add_api()]
    workers = [cluster.add_worker(), cluster.add_worker()]
    cluster.wait_ready()

    # 1. one stream of paid jobs, made and paid on both nodes: each succeeds once, on either worker
    stream = []
    for index in range(8):
        job = create(api[index % 2], photo(index, 64, 96))
        pay(api[(index + 1) % 2], job)
        stream.append(job)
    rows = wait_all(cluster, [job["job_id"] for job in stream])
    assert all(row["attempts"] == 1 for row in rows.values())
    ran_on = {row["worker"].split("/")[0] for row in rows.values()}
    assert len(ran_on) == 2, f"one worker ran every job: {ran_on}"
    for row in rows.values():
        intact(row)

    # 2. a worker SIGKILLed in the middle of a job: the other one runs it again, and it is still
    #    charged once and recorded once
    long_job = create(api[0], photo(100, 360, 400))  # a few seconds of engine time
    pay(api[1], long_job)
    running = wait_state(cluster, long_job["job_id"], "processing")
    deadline = time.monotonic() + 60
    while (job_rows(cluster, [long_job["job_id"]])[long_job["job_id"]]["state"] == "processing"
           and time.monotonic() < deadline):  # fmt: skip
        progress = cluster.query("SELECT progress FROM jobs WHERE id = %s", long_job["job_id"])[0][0]
        if progress > 0:  # its engine is under way (and other nodes can see how far)
            break
        time.sleep(0.02)
    victim = next(
        w for w in workers if running["worker"].startswith(f"vm-{w.pid}/") or f"-{w.pid}/" in running["worker"]
    )
    victim.kill()
    rows = wait_all(cluster, [long_job["job_id"]])
    redone = rows[long_job["job_id"]]
    assert redone["attempts"] == 2 and redone["worker"] != running["worker"]
    intact(redone)
    with Image.open(redone["output_path"]) as image:
        assert image.size == (1600, 1440)
    victim.start()  # back to two workers

    # 3. an API node SIGKILLed after issuing an invoice, before it is paid: the other node
    #    completes the flow (watching the invoice, queueing the job, answering for it)
    coordinator = cluster.coordinator()
    other = next(node for node in api if node is not coordinator)
    orphan = create(other, photo(200, 64, 96))
    other.kill()
    pay(coordinator, orphan)
    wait_all(cluster, [orphan["job_id"]])
    assert status(coordinator, orphan["job_id"])["status"] == "succeeded"
    other.start()
    cluster.wait_ready()

    # 4. the coordinator (the chain sender) SIGKILLed while records wait: the other node takes over,
    #    and no record is written twice
    late = [create(api[index % 2], photo(300 + index, 64, 96)) for index in range(4)]
    for index, job in enumerate(late):
        pay(api[(index + 1) % 2], job)
    holder = cluster.coordinator()
    late_ids = [job["job_id"] for job in late]
    deadline = time.monotonic() + 120
    while not cluster.query(
        "SELECT 1 FROM provenance_outbox WHERE job_id = ANY(%s) AND status IN ('pending', 'sent')", late_ids
    ):  # a record waits for the sender: kill the sender then
        assert time.monotonic() < deadline, "no record of the late jobs ever waited"
        time.sleep(0.005)
    holder.kill()
    successor = cluster.coordinator()
    assert successor is not holder
    wait_all(cluster, [job["job_id"] for job in late])

    everything = [*stream, long_job, orphan, *late]
    recorded = chain_records(cluster)
    for job in everything:
        assert recorded[job["payment_hash"]] == 1, f"{job['job_id']} recorded {recorded[job['payment_hash']]} times"
    paid_once(successor, everything)
    leftovers = [p.name for p in (cluster.root / "data" / "outputs").glob(".*")]
    assert not leftovers, leftovers
