"""The cluster's job queue on procrastinate (PostgreSQL: FOR UPDATE SKIP LOCKED, async workers).

A ticket is a procrastinate job naming one Satscale job. It is written in the same transaction
as the job's move to payment_held (`hold`), so there is no second write to lose between the
store and a broker. Its `lock` is the job id (procrastinate lets no two tickets with one lock
run at once) and so is its `queueing_lock` (no two wait at once). A ticket only says "look at
this job": the run itself is fenced by the job's state and attempt (service.runner), so a
ticket that runs twice, late, or after the job ended does nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

import procrastinate
import psycopg
from procrastinate.schema import SchemaManager

from ..jobs import Job, JobState
from ..postgres_store import CONNECTION_OPTIONS, SCHEMA_LOCK, PostgresJobStore
from ..runner import JobRunner
from .roster import Roster

log = logging.getLogger("satscale.cluster")

TASK = "satscale.run_job"


def procrastinate_app(url: str) -> procrastinate.App:
    return procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=url, kwargs=dict(CONNECTION_OPTIONS), min_size=1, max_size=4),
    )


def install_schema(store: PostgresJobStore) -> None:
    """procrastinate's tables and functions, once (several nodes may start at the same moment)."""
    with store.transaction() as db:
        db.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
        if db.execute("SELECT to_regclass('procrastinate_jobs') AS t").fetchone()["t"] is None:
            db.raw.execute(SchemaManager.get_schema())


class ProcrastinateQueue:
    """The queue as API nodes and workers share it. A worker (service.cluster.worker) also runs
    tickets; an API node only writes them."""

    def __init__(self, store: PostgresJobStore, roster: Roster, runner: JobRunner, url: str) -> None:
        self.store = store
        self.roster = roster
        self.runner = runner
        install_schema(store)
        self.app = procrastinate_app(url)
        self.app.task(name=TASK, pass_context=True)(self._run)

    # ------------------------------------------------------------ JobQueue

    def hold(self, job_id: str, **changes: Any) -> Job | None:
        return self.store.transition(
            job_id, [JobState.AWAITING_PAYMENT], JobState.PAYMENT_HELD, also=self._ticket, **changes
        )

    def enqueue(self, job_id: str) -> None:
        with self.store.transaction() as db:
            job = self.store.get(job_id)  # read in the transaction: it holds the store's connection
            if job is not None and job.state is JobState.PAYMENT_HELD:
                self._ticket(db, job)

    def orphaned(self, job: Job) -> bool:
        # a run that died with its worker is found by its ticket's stalled heartbeat (the coordinator)
        return False

    async def start(self) -> None:
        self.runner.start(sole=False)
        await self.app.open_async()

    async def stop(self) -> None:
        await self.runner.stop()
        await self.app.close_async()

    # ------------------------------------------------------------ tickets

    def _ticket(self, db: Any, job: Job) -> None:
        """Write the job's ticket in the caller's transaction (nothing if one is already waiting).
        It calls procrastinate's own versioned SQL function, as its `defer` does: the library's
        Python defer runs on its own connection (or, in an event loop, cannot take ours)."""
        # a savepoint: a ticket already waiting (its queueing lock) is not an error
        with contextlib.suppress(psycopg.errors.UniqueViolation), db.raw.transaction():
            db.execute(
                "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW(?, ?, 0, ?, ?, ?::jsonb, NULL)"
                "::procrastinate_job_to_defer_v1])) AS id",
                (self.roster.route(db, job), TASK, job.id, job.id, json.dumps({"job_id": job.id})),
            )

    async def _run(self, context: procrastinate.JobContext, job_id: str) -> None:
        worker = f"{context.worker_name}/{context.job.id}"
        await self.runner.run(job_id, worker=worker)
