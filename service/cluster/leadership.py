"""One node at a time: a PostgreSQL session-level advisory lock.

The lock lives as long as the connection that took it, so a node that dies lets it go when
PostgreSQL sees the connection close: at once for a killed process, within about 11 s for a
machine that vanished (the session's TCP keepalives), and another node's next try takes it.
The holder checks its connection every poll: a node whose connection broke stops its duties
(another may hold the lock already).
"""

from __future__ import annotations

import contextlib
import logging
import os

import psycopg

from ..postgres_store import CONNECTION_OPTIONS

log = logging.getLogger("satscale.cluster")

#: the advisory lock key of the coordinator (any 64-bit number no other tool of the database uses)
COORDINATOR_LOCK = 0x5A75_C0_0D


class AdvisoryLock:
    def __init__(self, url: str, key: int = COORDINATOR_LOCK, name: str | None = None) -> None:
        """`name`: the lock connection's application_name (what pg_stat_activity shows)."""
        self.url = url
        self.key = key
        self.name = name or f"satscale-coordinator-{os.getpid()}"
        self._conn: psycopg.AsyncConnection | None = None
        self.held = False

    async def hold(self) -> bool:
        """Take the lock if it is free, or confirm this node still holds it."""
        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self.held = False
                self._conn = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, application_name=self.name, **CONNECTION_OPTIONS
                )
            if self.held:
                await self._conn.execute("SELECT 1")
                return True
            cursor = await self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
            row = await cursor.fetchone()
            self.held = bool(row and row[0])
        except psycopg.Error as exc:
            if self.held:
                log.warning("lost the coordinator lock's connection: %s", exc)
            self.held = False
            await self.release()
        return self.held

    async def release(self) -> None:
        self.held = False
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
            self._conn = None
