"""Which workers are alive, and which models each can run: a job goes only to a worker pool
that has every model its stages name.

Each worker writes its row every few seconds (its pool's name, its models, when it was last
seen) and listens on its capability queue: the pool name with a digest of its model set, so
workers with the same models share one queue and any of them may take its tickets.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..jobs import Job
from ..store import SqlJobStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS cluster_workers (
    name TEXT PRIMARY KEY,
    pool TEXT NOT NULL,
    queue TEXT NOT NULL,
    models TEXT NOT NULL,
    concurrency INTEGER NOT NULL,
    started_at REAL NOT NULL,
    seen_at REAL NOT NULL
);
"""

#: how often a worker says it is alive, and after how long without a word it counts as gone
HEARTBEAT_SECONDS = 2.0
ALIVE_SECONDS = 10.0
#: the queue of a job no worker ever advertised the models of (it waits for one to come)
UNROUTABLE = "satscale:unroutable"


def capability_queue(pool: str, models: Iterable[str]) -> str:
    digest = hashlib.sha256(json.dumps(sorted(set(models))).encode()).hexdigest()[:12]
    return f"{pool}:{digest}"


def needed_models(job: Job) -> set[str]:
    return {stage.model for stage in job.stages}


@dataclass(frozen=True)
class WorkerRow:
    name: str
    pool: str
    queue: str
    models: frozenset[str]
    concurrency: int
    started_at: float
    seen_at: float

    def alive(self, now: float) -> bool:
        return now - self.seen_at <= ALIVE_SECONDS

    def to_dict(self, now: float) -> dict[str, Any]:
        return {"name": self.name, "pool": self.pool, "models": sorted(self.models),
                "concurrency": self.concurrency, "alive": self.alive(now),
                "seen_seconds_ago": round(now - self.seen_at, 1)}  # fmt: skip


def _row(row: Any) -> WorkerRow:
    return WorkerRow(row["name"], row["pool"], row["queue"], frozenset(json.loads(row["models"])),
                     row["concurrency"], row["started_at"], row["seen_at"])  # fmt: skip


class Roster:
    def __init__(self, store: SqlJobStore) -> None:
        self.store = store
        store.create_tables(SCHEMA)

    def advertise(self, name: str, pool: str, models: Iterable[str], concurrency: int, started_at: float) -> str:
        """A worker's heartbeat: it is alive and runs these models. Returns its queue."""
        models = sorted(set(models))
        queue = capability_queue(pool, models)
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO cluster_workers (name, pool, queue, models, concurrency, started_at, seen_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET pool = excluded.pool, "
                "queue = excluded.queue, models = excluded.models, concurrency = excluded.concurrency, "
                "seen_at = excluded.seen_at",
                (name, pool, queue, json.dumps(models), concurrency, started_at, time.time()),
            )
        return queue

    def leave(self, name: str) -> None:
        with self.store.transaction() as db:
            db.execute("DELETE FROM cluster_workers WHERE name = ?", (name,))

    def workers(self, db: Any | None = None) -> list[WorkerRow]:
        query = "SELECT * FROM cluster_workers ORDER BY name"
        rows = db.execute(query).fetchall() if db is not None else self.store.read(query)
        return [_row(row) for row in rows]

    def capacity(self, models: set[str]) -> int:
        """How many jobs needing these models the live workers can run at once (0: the API
        refuses such a job before it is paid)."""
        now = time.time()
        return sum(max(1, w.concurrency) for w in self.workers() if w.alive(now) and models <= w.models)

    def route(self, db: Any, job: Job) -> str:
        """The queue for a job's run, read in the caller's transaction: a live pool that has all its
        models, the one with the fewest tickets waiting per worker; else a pool that had them (the
        ticket waits for it, and the coordinator moves it if another one comes); else UNROUTABLE."""
        needed = needed_models(job)
        now = time.time()
        capable = [w for w in self.workers(db) if needed <= w.models]
        live: dict[str, int] = {}
        for worker in capable:
            if worker.alive(now):
                live[worker.queue] = live.get(worker.queue, 0) + max(1, worker.concurrency)
        if live:
            waiting = {
                row["queue_name"]: row["n"]
                for row in db.execute(
                    "SELECT queue_name, COUNT(*) AS n FROM procrastinate_jobs WHERE status = 'todo' GROUP BY queue_name"
                ).fetchall()
            }
            return min(sorted(live), key=lambda queue: waiting.get(queue, 0) / live[queue])
        if capable:
            return max(capable, key=lambda w: w.seen_at).queue
        return UNROUTABLE
