"""Every crash window between a persisted state and its side effect, made deterministic:
the first service instance 'dies' at the chosen point, a second one starts on the same
database and node, and its reconciler must finish the job correctly."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from PIL import Image

from payments.backend import InvoiceState
from payments.dev import DevNode
from service.checkout import Created
from service.config import Settings
from service.intake import JobOptions
from service.jobs import InvoiceStatus, JobState
from service.store import SqliteJobStore
from service.worker import JobService

from .helpers import natural_image


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs, no handler catches it."""


def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(natural_image(20, 24)).save(buffer, "PNG")
    return buffer.getvalue()


OPTIONS = JobOptions("realesr-animevideov3", 2, "png")


async def create_job(service: JobService, data: bytes) -> Created:
    """What a door does: admit the upload, then check it out (job row, invoice, token)."""
    return await service.checkout.create(await service.intake.admit(data, OPTIONS))


@pytest.fixture
async def world(tmp_path: Path, registry) -> AsyncIterator[Callable[[], JobService]]:
    settings = Settings(data_dir=tmp_path / "data")
    store = SqliteJobStore(settings.database_path)
    services: list[JobService] = []

    def boot() -> JobService:
        service = JobService(settings, store, DevNode(settings.data_dir / "dev.sqlite3"), registry)
        services.append(service)
        return service

    yield boot
    for service in services:
        if service in killed:
            await service.backend.close()
        else:
            await service.stop()
    store.close()


killed: list[JobService] = []


def kill(service: JobService) -> None:
    """The process dies: its tasks stop where they are, nothing is cleaned up."""
    tasks = [service.queue._task, service.watcher._timer, *service.watcher._watchers.values()]
    for task in tasks:
        if task is not None:
            task.cancel()
    killed.append(service)


async def until(predicate: Callable[[], bool], timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_crash_before_the_node_issued_the_invoice(world, monkeypatch: pytest.MonkeyPatch) -> None:
    first = world()
    await first.start()

    async def die(*args, **kwargs):
        raise Crash

    monkeypatch.setattr(first.backend, "add_hold_invoice", die)
    with pytest.raises(Crash):
        await create_job(first, png())
    (job,) = first.store.unfinished()
    assert job.invoice_status is InvoiceStatus.NONE
    second = world()
    await second.start()
    job = second.store.get(job.id)
    assert job.state is JobState.EXPIRED and job.invoice_status is InvoiceStatus.CANCELED


async def test_crash_after_the_node_issued_the_invoice(world, monkeypatch: pytest.MonkeyPatch) -> None:
    first = world()
    await first.start()
    real = first.backend.add_hold_invoice

    async def issue_then_die(*args, **kwargs):
        await real(*args, **kwargs)
        raise Crash

    monkeypatch.setattr(first.backend, "add_hold_invoice", issue_then_die)
    with pytest.raises(Crash):
        await create_job(first, png())
    (job,) = first.store.unfinished()
    second = world()
    await second.start()
    job = second.store.get(job.id)
    assert job.invoice_status is InvoiceStatus.OPEN and job.payment_request and job.macaroon
    await second.backend.pay(job.payment_request)  # the invoice is payable: the job completes
    await until(lambda: second.store.get(job.id).invoice_status is InvoiceStatus.SETTLED)
    assert second.store.get(job.id).state is JobState.SUCCEEDED


async def test_crash_between_success_and_settlement(world, monkeypatch: pytest.MonkeyPatch) -> None:
    first = world()
    await first.start()

    async def die(job):
        raise Crash

    monkeypatch.setattr(first.settlement, "settle", die)
    challenge = await create_job(first, png())
    await first.backend.pay(challenge.job.payment_request)
    await until(lambda: first.store.get(challenge.job.id).state is JobState.SUCCEEDED)
    assert first.store.get(challenge.job.id).invoice_status is InvoiceStatus.ACCEPTED  # held, not yet taken
    kill(first)
    second = world()
    await second.start()
    job = second.store.get(challenge.job.id)
    assert job.invoice_status is InvoiceStatus.SETTLED
    assert (await second.backend.lookup(bytes.fromhex(job.payment_hash))).state is InvoiceState.SETTLED


async def test_crash_between_failure_and_cancellation(world, monkeypatch: pytest.MonkeyPatch) -> None:
    first = world()
    await first.start()

    def broken(job, stop):
        raise RuntimeError("engine exploded")

    async def die(job):
        raise Crash

    monkeypatch.setattr(first.runner, "_run_engine", broken)
    monkeypatch.setattr(first.settlement, "cancel", die)
    challenge = await create_job(first, png())
    await first.backend.pay(challenge.job.payment_request)
    await until(lambda: first.store.get(challenge.job.id).state is JobState.FAILED)
    kill(first)
    second = world()
    await second.start()
    job = second.store.get(challenge.job.id)
    assert job.invoice_status is InvoiceStatus.CANCELED
    payments = {p.payment_hash: p for p in await second.backend.payments()}
    assert payments[job.payment_hash].charged_msat == 0


async def test_crash_in_the_middle_of_the_engine_run(world, monkeypatch: pytest.MonkeyPatch) -> None:
    first = world()
    await first.start()
    started = threading.Event()
    release = threading.Event()

    def hang(job, stop):
        started.set()
        release.wait(60)
        raise Crash

    monkeypatch.setattr(first.runner, "_run_engine", hang)
    challenge = await create_job(first, png())
    await first.backend.pay(challenge.job.payment_request)
    await until(started.is_set)
    assert first.store.get(challenge.job.id).state is JobState.PROCESSING
    kill(first)
    second = world()
    await second.start()
    await until(lambda: second.store.get(challenge.job.id).invoice_status is InvoiceStatus.SETTLED)
    job = second.store.get(challenge.job.id)
    assert job.state is JobState.SUCCEEDED and job.attempts == 2 and Path(job.output_path).is_file()
    release.set()
