"""Which paid job runs when, and where: the `JobQueue` interface and its embedded implementation.

    hold      awaiting_payment -> payment_held, and the job's run queued, atomically
    enqueue   make sure a held job's run is queued (after a restart; a collection batch's tokens)
    orphaned  whether a job marked processing has nobody running it any more

`EmbeddedQueue` is one process's asyncio queue (the default, one box): nothing survives a crash
but nothing needs to, since the reconciler queues every held job again at the next start.
`ProcrastinateQueue` (service.cluster.queue) is the PostgreSQL one several workers pull from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

from .jobs import Job, JobState
from .runner import JobRunner
from .store import JobStore

log = logging.getLogger("satscale.queue")


class JobQueue(Protocol):
    def hold(self, job_id: str, **changes: Any) -> Job | None:
        """The payment is held: move the job to payment_held (with `changes`) and queue its run,
        in one step. None if the job was not awaiting payment (someone else moved it first)."""
        ...

    def enqueue(self, job_id: str) -> None:
        """Make sure a job already held has its run queued (a second call queues nothing more)."""
        ...

    def orphaned(self, job: Job) -> bool:
        """A job in processing that nobody runs any more (its run died with its process)."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class EmbeddedQueue:
    """The queue of one process: its jobs run here, one at a time, in the order they were paid."""

    def __init__(self, store: JobStore, runner: JobRunner) -> None:
        self.store = store
        self.runner = runner
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._task: asyncio.Task | None = None

    def hold(self, job_id: str, **changes: Any) -> Job | None:
        held = self.store.transition(job_id, [JobState.AWAITING_PAYMENT], JobState.PAYMENT_HELD, **changes)
        if held is not None:
            self.enqueue(job_id)
        return held

    def enqueue(self, job_id: str) -> None:
        if job_id not in self._queued:
            self._queued.add(job_id)
            self._queue.put_nowait(job_id)

    def orphaned(self, job: Job) -> bool:
        # one process: a job marked processing that this process does not run died with an earlier one
        return job.state is JobState.PROCESSING and not self.runner.running(job.id)

    async def start(self) -> None:
        self.runner.start(sole=True)
        self._task = asyncio.create_task(self._loop(), name="satscale-worker")

    async def stop(self) -> None:
        await self.runner.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _loop(self) -> None:
        while True:
            job_id = await self._queue.get()
            self._queued.discard(job_id)
            try:
                await self.runner.run(job_id)
            except Exception:  # the run could not even record its failure (the store locked): the next start does
                log.exception("running %s failed", job_id)
