"""The job store on PostgreSQL (psycopg 3): the same statements and state machine as the
embedded SQLite store (service.store.SqlJobStore), shared by every API node and worker.

Transitions stay conditional updates (`... WHERE id = ? AND state IN (...)`): under READ
COMMITTED a second node's concurrent update re-reads the row after the first commits and finds
it moved on, so exactly one of them wins. The outbox entry and the queue's ticket are written in
the same transaction as the transition that makes them due.

The schema is the SQLite one, translated (types widened; an identity column named `rowid` so
the same `ORDER BY rowid` means insertion order here too). Several processes may start at once:
creating it takes a transaction-level advisory lock.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row

from .store import _ADDED_COLUMNS, SCHEMA, SqlJobStore

#: advisory lock keys: creating or migrating the schema; connecting to (or deploying) the registry
SCHEMA_LOCK = 0x5A7_5CA1E
REGISTRY_LOCK = 0x5A7_5CA1F
#: how every connection to the database is made: an unreachable server fails in seconds instead
#: of hanging (connect timeout, TCP keepalives and a user timeout on our side), and the server
#: notices a client that vanished (a power cut: its keepalives, set for the session), which
#: frees the advisory locks that client held
CONNECTION_OPTIONS: dict[str, object] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 15_000,
    "options": "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3 "
    "-c tcp_user_timeout=15000",
}


@functools.lru_cache(maxsize=512)
def placeholders(query: str) -> str:
    """SQLite's `?` placeholders as psycopg's `%s` (a literal `%` doubled first)."""
    return query.replace("%", "%%").replace("?", "%s")


_TYPES = ((re.compile(r"\bINTEGER\b"), "BIGINT"), (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
          (re.compile(r"\bBLOB\b"), "BYTEA"))  # fmt: skip
_CREATE_TABLE = re.compile(r"(CREATE TABLE IF NOT EXISTS \w+ \()", re.IGNORECASE)


def postgres_ddl(sqlite_schema: str) -> list[str]:
    """SQLite DDL as PostgreSQL statements: wider types, and a `rowid` identity column per table."""
    statements = []
    for statement in sqlite_schema.split(";"):
        if not statement.strip():
            continue
        for pattern, replacement in _TYPES:
            statement = pattern.sub(replacement, statement)
        statement = _CREATE_TABLE.sub(r"\1\n    rowid BIGINT GENERATED ALWAYS AS IDENTITY,", statement)
        statements.append(statement.strip())
    return statements


class _Connection:
    """A psycopg connection that takes the shared statements' `?` placeholders."""

    def __init__(self, raw: psycopg.Connection) -> None:
        self.raw = raw

    def execute(self, query: str, args: Sequence[Any] = ()) -> psycopg.Cursor:
        return self.raw.execute(placeholders(query), list(args))


class PostgresJobStore(SqlJobStore):
    """`url`: a libpq connection string (postgresql://user@host:port/db). One connection per
    process, used by one statement or transaction at a time, reopened if the server dropped it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.RLock()
        self._raw: psycopg.Connection | None = None
        added = [  # a database made by an older release
            f"ALTER TABLE jobs ADD COLUMN IF NOT EXISTS {name} {postgres_ddl(definition)[0]}"
            for name, definition in _ADDED_COLUMNS
        ]
        self._create([*postgres_ddl(SCHEMA), *added])

    def _connection(self) -> _Connection:
        if self._raw is None or self._raw.closed or self._raw.broken:
            self._raw = psycopg.connect(self.url, autocommit=True, row_factory=dict_row, **CONNECTION_OPTIONS)
        return _Connection(self._raw)

    def close(self) -> None:
        with self._lock:
            if self._raw is not None:
                self._raw.close()

    def _execute(self, query: str, args: Sequence[Any] = ()) -> psycopg.Cursor:
        return self._connection().execute(query, args)

    @contextmanager
    def _transaction(self) -> Iterator[_Connection]:
        with self._lock:
            db = self._connection()
            with db.raw.transaction():
                yield db

    @contextmanager
    def exclusive(self, key: int) -> Iterator[None]:
        """Hold a cluster-wide lock while the block runs (a session advisory lock on a connection
        of its own, so this process's other store calls go on meanwhile)."""
        with psycopg.connect(self.url, autocommit=True, **CONNECTION_OPTIONS) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            try:
                yield
            finally:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def create_tables(self, schema: str) -> None:
        self._create(postgres_ddl(schema))

    def _create(self, statements: list[str]) -> None:
        """DDL under the schema lock: several processes may start at the same moment."""
        with self._transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
            for statement in statements:
                db.execute(statement)
