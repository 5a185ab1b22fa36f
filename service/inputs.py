"""Uploaded images, stored by sha256 while a job may still need them.

An upload is stored when it is admitted, before anyone paid: so the bytes waiting for payment
are capped (a busy answer past the cap, nothing stored), and the file goes again once no job
that could run or did run needs it (every job made from it expired unpaid or failed).
Storing and releasing take one lock, so a release never removes a file a new job just chose.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from .intake import Admission, ServerBusy
from .jobs import Job, JobState
from .store import JobStore

#: job states that no longer need their input
DONE_WITHOUT_RESULT = (JobState.EXPIRED, JobState.FAILED)


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file so that it either appears complete or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    try:
        with temp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


class Inputs:
    def __init__(self, folder: Path, store: JobStore, max_pending_bytes: int) -> None:
        self.folder = folder
        self.store = store
        self.max_pending_bytes = max_pending_bytes
        self._lock = asyncio.Lock()

    def start(self, sole: bool = True) -> None:
        """`sole`: no other node writes to this folder, so a half-written file is a killed upload's."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if sole:
            for leftover in self.folder.glob(".*.partial"):
                leftover.unlink(missing_ok=True)

    def path_for(self, admission: Admission) -> Path:
        return self.folder / f"{admission.input_sha256}.{admission.image.format}"

    def pending_bytes(self) -> int:
        """Bytes of stored inputs whose jobs all still wait for payment."""
        waiting = {job.input_path for job in self.store.unfinished() if job.state is JobState.AWAITING_PAYMENT}
        return sum(os.path.getsize(path) for path in waiting if os.path.exists(path))

    async def store_for(self, admission: Admission, insert: Callable[[], None]) -> None:
        """Check the cap, run `insert()` (the job row), then write the file (again: a replace of
        the same bytes is harmless and restores a file a release removed a moment before)."""
        async with self._lock:
            path = self.path_for(admission)
            if not path.exists():
                pending = await asyncio.to_thread(self.pending_bytes)
                if pending + len(admission.data) > self.max_pending_bytes:
                    raise ServerBusy(
                        f"{pending / 1e6:.0f} MB of uploads are waiting for payment, the most this server holds; "
                        "nothing was stored or charged, try again when some invoices are paid or expired",
                        retry_after=60,
                    )
            insert()
            await asyncio.to_thread(atomic_write, path, admission.data)

    async def release(self, job: Job) -> None:
        """Remove a finished job's input if no job made from it can still run or has a result."""
        if job.state not in DONE_WITHOUT_RESULT or Path(job.input_path).parent != self.folder:
            return  # another folder's file (a collection run keeps its tokens' images itself)
        async with self._lock:
            others = await asyncio.to_thread(self.store.by_input, job.input_sha256)
            if all(other.state in DONE_WITHOUT_RESULT for other in others):
                Path(job.input_path).unlink(missing_ok=True)
