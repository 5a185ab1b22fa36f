"""Copies each finished job's content to the configured remote IPFS.

The local store is the source of truth (the gateway serves it, the chain record names
it). When a Kubo node is configured, the bytes are uploaded to it and the CIDs it
reports must equal ours; when a pinning service is configured, it is asked to pin each
CID. Failures are retried with backoff and shown on the job; they never undo a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import httpx

from provenance.cid import Cid
from provenance.errors import IpfsError
from provenance.ipfs import LocalIpfsStore
from provenance.kubo import KuboRpcClient
from provenance.pinning import PinningServiceClient

from .jobs import Job
from .store import JobStore

log = logging.getLogger("satscale.ipfs")
BACKOFF = (2, 5, 15, 30, 60, 300)
IDLE_POLL = 2.0


class RemotePinner:
    def __init__(
        self,
        store: JobStore,
        ipfs: LocalIpfsStore,
        kubo: KuboRpcClient | None = None,
        pinning: PinningServiceClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.ipfs = ipfs
        self.kubo = kubo
        self.pinning = pinning
        self.clock = clock
        self._wake = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return self.kubo is not None or self.pinning is not None

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            jobs = self.store.remote_pins_due(self.clock())
            for job in jobs:
                await self.push(job)
            if not jobs:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL)

    async def close(self) -> None:
        for client in (self.kubo, self.pinning):
            if client is not None:
                await client.aclose()

    async def push(self, job: Job) -> None:
        """Copy the job's input, output and metadata to the remotes (one attempt)."""
        try:
            for role, cid in (("input", job.input_cid), ("output", job.output_cid), ("metadata", job.metadata_cid)):
                if cid is None:
                    continue
                if self.kubo is not None:
                    data = await asyncio.to_thread(lambda cid=cid: b"".join(self.ipfs.cat(cid)))
                    # the client computes the CID first and refuses a node that reports another one
                    await self.kubo.add(data, cid_version=Cid.parse(cid).version, pin=True, filename=f"{role}")
                if self.pinning is not None:
                    await self.pinning.add_pin(cid, name=f"{job.id}-{role}", meta={"job": job.id, "role": role})
        except (IpfsError, httpx.HTTPError, OSError) as exc:
            delay = BACKOFF[min(job.ipfs_remote_attempts, len(BACKOFF) - 1)]
            log.warning("remote pinning of %s failed (retry in %s s): %s", job.id, delay, exc)
            self.store.update(
                job.id,
                ipfs_remote_error=str(exc),
                ipfs_remote_attempts=job.ipfs_remote_attempts + 1,
                ipfs_remote_next_at=self.clock() + delay,
            )
            return
        self.store.update(job.id, ipfs_remote_status="pinned", ipfs_remote_error=None)
