"""A worker of a cluster: it pulls tickets of its pool's capability queue and runs their jobs.

It says every few seconds that it is alive and which models it has (service.cluster.roster),
and procrastinate beats for its tickets: a worker killed mid-job stops beating, and the
coordinator hands that job to another worker (service.cluster.coordinator). A worker serves no
HTTP; it needs the store, the Lightning backend (it settles what it finished), the weights, and
the folder (or Kubo node) where inputs and outputs live for every node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time

from .coordinator import STALLED_SECONDS
from .queue import ProcrastinateQueue
from .roster import HEARTBEAT_SECONDS, Roster

log = logging.getLogger("satscale.cluster")

#: seconds before a worker whose queue loop ended with an error starts it again
RESTART_SECONDS = 2.0


def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ClusterWorker:
    def __init__(
        self, queue: ProcrastinateQueue, roster: Roster, models: list[str], pool: str, concurrency: int
    ) -> None:
        self.queue = queue
        self.roster = roster
        self.models = sorted(models)
        self.pool = pool
        self.concurrency = concurrency
        self.name = worker_name()
        self.started_at = time.time()

    def advertise(self) -> str:
        return self.roster.advertise(self.name, self.pool, self.models, self.concurrency, self.started_at)

    async def run(self) -> None:
        """Run tickets until cancelled: then the job in hand is cancelled at once, its engine stops
        at its next tile, and the job goes back to held for another worker (service.runner)."""
        beating = asyncio.create_task(self._beat(), name="satscale-worker-beat")
        try:
            while True:
                try:
                    queue_name = await asyncio.to_thread(self.advertise)
                    log.info("worker %s: pool %s, models %s, queue %s", self.name, self.pool,
                             ", ".join(self.models), queue_name)  # fmt: skip
                    await self.queue.app.run_worker_async(  # the queue opened the app (JobService.start)
                        queues=[queue_name],
                        name=self.name,
                        concurrency=self.concurrency,
                        install_signal_handlers=False,
                        update_heartbeat_interval=1.0,
                        stalled_worker_timeout=STALLED_SECONDS,
                        fetch_job_polling_interval=1.0,
                        shutdown_graceful_timeout=0,
                    )
                    log.warning("worker %s: the queue's worker returned; starting it again", self.name)
                except Exception:
                    # e.g. this worker was pruned after a late heartbeat, or the database is down:
                    # start again (as a new procrastinate worker) rather than serve nothing
                    log.exception("worker %s: the queue's worker stopped; starting it again", self.name)
                await asyncio.sleep(RESTART_SECONDS)
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await beating
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.roster.leave, self.name)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await asyncio.to_thread(self.advertise)
            except Exception:
                log.exception("worker %s: could not say it is alive", self.name)
