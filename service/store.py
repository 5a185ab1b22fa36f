"""The job store. Every transition is one conditional UPDATE, written before its side effect
takes place, so a kill -9 at any point leaves a state the reconciler can finish from.

`JobStore` is the small interface the service uses. `SqlJobStore` holds the state machine's
SQL once; `SqliteJobStore` (WAL, one box, the default) and `PostgresJobStore`
(service.postgres_store: several API nodes and workers) only say how to connect and how a
transaction begins. The same statements run on both: `?` placeholders, and PostgreSQL's
tables carry a `rowid` identity column, the name SQLite gives its implicit one.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import psycopg

from .jobs import ChainStatus, InvoiceStatus, Job, JobState, check_transition

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    model TEXT NOT NULL,
    scale INTEGER NOT NULL,
    output_format TEXT NOT NULL,
    input_sha256 TEXT NOT NULL,
    input_path TEXT NOT NULL,
    input_width INTEGER NOT NULL,
    input_height INTEGER NOT NULL,
    request_hash TEXT NOT NULL,
    payment_hash TEXT NOT NULL UNIQUE,
    preimage TEXT,
    hold INTEGER NOT NULL,
    payment_request TEXT,
    amount_msat INTEGER NOT NULL,
    invoice_status TEXT NOT NULL,
    invoice_expires_at REAL,
    macaroon TEXT,
    token_valid_until INTEGER NOT NULL,
    idempotency_key TEXT UNIQUE,
    held_at REAL,
    hold_deadline REAL,
    started_at REAL,
    finished_at REAL,
    progress REAL NOT NULL DEFAULT 0,
    output_path TEXT,
    output_sha256 TEXT,
    output_width INTEGER,
    output_height INTEGER,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    input_cid TEXT,
    output_cid TEXT,
    metadata_cid TEXT,
    chain_status TEXT NOT NULL DEFAULT 'none',
    chain_tx TEXT,
    chain_block INTEGER,
    chain_error TEXT,
    ipfs_remote_status TEXT NOT NULL DEFAULT 'none',
    ipfs_remote_error TEXT,
    ipfs_remote_attempts INTEGER NOT NULL DEFAULT 0,
    ipfs_remote_next_at REAL NOT NULL DEFAULT 0,
    tile INTEGER,
    precision TEXT NOT NULL DEFAULT 'auto',
    publish INTEGER NOT NULL DEFAULT 0,
    owner_key_sha256 TEXT,
    estimated_seconds REAL,
    pipeline TEXT,
    fidelity TEXT,
    intermediates TEXT,
    collection_run TEXT,
    worker TEXT,
    credentials TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_input ON jobs(input_sha256);
CREATE INDEX IF NOT EXISTS jobs_collection ON jobs(collection_run);
CREATE TABLE IF NOT EXISTS job_events (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    at REAL NOT NULL,
    event TEXT NOT NULL,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS provenance_outbox (
    payment_hash TEXT PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    payload TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    tx_hash TEXT,
    block INTEGER,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS l402_root_keys (
    key_id BLOB PRIMARY KEY,
    root_key BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS throughput (
    variant TEXT NOT NULL,
    at REAL NOT NULL,
    seconds_per_unit REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS throughput_variant ON throughput(variant);
"""


def store_unavailable(exc: BaseException) -> bool:
    """Whether an error means the database cannot be reached right now (PostgreSQL down or the
    connection dropped; SQLite locked past its timeout), not a mistake in a statement."""
    if isinstance(exc, sqlite3.OperationalError):
        return "locked" in str(exc) or "unable to open" in str(exc)
    return isinstance(exc, psycopg.OperationalError)


#: the oldest SQLite with UPDATE ... RETURNING (Python 3.11's own builds bring newer ones)
MIN_SQLITE = (3, 35, 0)

_COLUMNS = [f.name for f in fields(Job)]
#: columns added after the first release: (name, definition) added to an older database at open.
#: Jobs made before per-job publication was a choice were all published.
_ADDED_COLUMNS = (
    ("tile", "INTEGER"),
    ("precision", "TEXT NOT NULL DEFAULT 'auto'"),
    ("publish", "INTEGER NOT NULL DEFAULT 1"),
    ("owner_key_sha256", "TEXT"),
    ("estimated_seconds", "REAL"),
    ("pipeline", "TEXT"),
    ("fidelity", "TEXT"),
    ("intermediates", "TEXT"),
    ("collection_run", "TEXT"),
    ("worker", "TEXT"),
    ("credentials", "TEXT"),
)
#: an outbox entry's status as the job shows it (held: a collection token's record, waiting for
#: its batch to be paid before it may go on chain)
_CHAIN_STATUS = {"held": "none", "pending": "pending", "sent": "pending", "confirmed": "confirmed", "failed": "failed"}


@dataclass(frozen=True)
class OutboxEntry:
    """A provenance record waiting for (or done with) the chain."""

    payment_hash: str
    job_id: str
    payload: dict[str, Any]
    status: str = "pending"  # held | pending | sent | confirmed | failed
    attempts: int = 0
    next_attempt_at: float = 0.0
    tx_hash: str | None = None
    block: int | None = None
    last_error: str | None = None


def _outbox_from_row(row: Any) -> OutboxEntry:
    return OutboxEntry(
        payment_hash=row["payment_hash"],
        job_id=row["job_id"],
        payload=json.loads(row["payload"]),
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        tx_hash=row["tx_hash"],
        block=row["block"],
        last_error=row["last_error"],
    )


#: more writes inside a transition's transaction, given it and the job as it now is (the queue's
#: ticket for a job whose payment is held)
Also = Callable[[Any, Job], None]


class JobStore(Protocol):
    def insert(self, job: Job) -> None: ...
    def get(self, job_id: str) -> Job | None: ...
    def by_payment_hash(self, payment_hash: str) -> Job | None: ...
    def by_idempotency_key(self, key: str) -> Job | None: ...
    def by_input(self, input_sha256: str) -> list[Job]: ...
    def transition(
        self,
        job_id: str,
        source: Iterable[JobState],
        target: JobState,
        outbox: OutboxEntry | None = None,
        attempt: int | None = None,
        also: Also | None = None,
        **changes: Any,
    ) -> Job | None: ...
    def update(self, job_id: str, **changes: Any) -> Job: ...
    def progress(self, job_id: str, attempt: int, fraction: float) -> bool: ...
    def add_sample(self, variant: str, seconds_per_unit: float, keep: int) -> None: ...
    def samples(self, variant: str, limit: int) -> list[float]: ...
    def unfinished(self) -> list[Job]: ...
    def count(self) -> int: ...
    def recent(self, limit: int = 20) -> list[Job]: ...
    def events(self, job_id: str) -> list[tuple[float, str, str | None]]: ...
    def put_root_key(self, key_id: bytes, root_key: bytes) -> None: ...
    def get_root_key(self, key_id: bytes) -> bytes | None: ...
    def outbox_due(self, now: float, limit: int = 20) -> list[OutboxEntry]: ...
    def outbox_entry(self, payment_hash: str) -> OutboxEntry | None: ...
    def outbox_update(self, payment_hash: str, **changes: Any) -> None: ...
    def outbox_replay(self) -> int: ...
    def outbox_release(self, payment_hashes: Iterable[str]) -> int: ...
    def get_meta(self, key: str) -> str | None: ...
    def remote_pins_due(self, now: float, limit: int = 20) -> list[Job]: ...
    def set_meta(self, key: str, value: str) -> None: ...


def _from_row(row: Any) -> Job:
    values = dict(row)
    values["state"] = JobState(values["state"])
    values["invoice_status"] = InvoiceStatus(values["invoice_status"])
    values["chain_status"] = ChainStatus(values["chain_status"])
    values["hold"] = bool(values["hold"])
    values["publish"] = bool(values["publish"])
    return Job(**{name: values[name] for name in _COLUMNS})


def _to_sql(value: Any) -> Any:
    if isinstance(value, JobState | InvoiceStatus | ChainStatus):
        return value.value
    if isinstance(value, bool):
        return int(value)
    return value


class SqlJobStore(ABC):
    """The job store's statements, shared by SQLite and PostgreSQL. A subclass gives `_lock`
    (one statement or transaction at a time on its connection), `_execute` for a read outside
    a transaction and `_transaction` (a write transaction yielding something with `execute`)."""

    _lock: threading.RLock

    @abstractmethod
    def _execute(self, query: str, args: Sequence[Any] = ()) -> Any: ...

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Any]: ...

    @abstractmethod
    def close(self) -> None: ...

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """One write transaction; the collection journal writes in it too (`db.execute(sql, args)`)."""
        with self._transaction() as db:
            yield db

    def read(self, query: str, *args: Any) -> list[Any]:
        """Rows of a read-only query (the collection journal's tables live in this database)."""
        with self._lock:
            return self._execute(query, args).fetchall()

    def create_tables(self, schema: str) -> None:
        """Create another module's tables (the collection journal's) if they are missing."""
        with self._transaction() as db:
            for statement in schema.split(";"):
                if statement.strip():
                    db.execute(statement)

    def _event(self, db: Any, job_id: str, event: str, detail: str | None = None) -> None:
        db.execute(
            "INSERT INTO job_events (job_id, at, event, detail) VALUES (?, ?, ?, ?)",
            (job_id, time.time(), event, detail),
        )

    def insert(self, job: Job) -> None:
        with self._transaction() as db:
            self.insert_in(db, job)

    def insert_in(self, db: Any, job: Job) -> None:
        """Insert a job inside a transaction the caller holds (a batch's tokens, all or none)."""
        placeholders = ", ".join("?" for _ in _COLUMNS)
        db.execute(
            f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({placeholders})",
            [_to_sql(getattr(job, name)) for name in _COLUMNS],
        )
        self._event(db, job.id, "created", job.state.value)

    def _one(self, query: str, *args: Any) -> Job | None:
        with self._lock:
            row = self._execute(query, args).fetchone()
        return _from_row(row) if row else None

    def _many(self, query: str, *args: Any) -> list[Job]:
        with self._lock:
            rows = self._execute(query, args).fetchall()
        return [_from_row(row) for row in rows]

    def get(self, job_id: str) -> Job | None:
        return self._one("SELECT * FROM jobs WHERE id = ?", job_id)

    def by_payment_hash(self, payment_hash: str) -> Job | None:
        return self._one("SELECT * FROM jobs WHERE payment_hash = ?", payment_hash)

    def by_idempotency_key(self, key: str) -> Job | None:
        return self._one("SELECT * FROM jobs WHERE idempotency_key = ?", key)

    def by_input(self, input_sha256: str) -> list[Job]:
        """Every job made from this input."""
        return self._many("SELECT * FROM jobs WHERE input_sha256 = ?", input_sha256)

    def transition(
        self,
        job_id: str,
        source: Iterable[JobState],
        target: JobState,
        outbox: OutboxEntry | None = None,
        attempt: int | None = None,
        also: Also | None = None,
        **changes: Any,
    ) -> Job | None:
        """Move a job from one of `source` to `target` atomically; None if it was not in `source`
        (or, with `attempt`, if another attempt at it began meanwhile: a takeover's fence).
        An outbox entry, if given, is written in the same transaction, and so is what `also`
        writes (given the transaction): all of it or none."""
        allowed = [state for state in source]
        for state in allowed:
            check_transition(state, target)
        with self._transaction() as db:
            assignments = {"state": target, "updated_at": time.time(), **changes}
            sets = ", ".join(f"{name} = ?" for name in assignments)
            marks = ", ".join("?" for _ in allowed)
            fence = " AND attempts = ?" if attempt is not None else ""
            row = db.execute(
                f"UPDATE jobs SET {sets} WHERE id = ? AND state IN ({marks}){fence} RETURNING *",
                [_to_sql(v) for v in assignments.values()]
                + [job_id]
                + [s.value for s in allowed]
                + ([attempt] if attempt is not None else []),
            ).fetchone()
            if row is None:
                return None
            if outbox is not None:
                db.execute(
                    "INSERT INTO provenance_outbox (payment_hash, job_id, payload, status, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (
                        outbox.payment_hash,
                        outbox.job_id,
                        json.dumps(outbox.payload, sort_keys=True),
                        outbox.status,
                        time.time(),
                    ),
                )
            self._event(db, job_id, target.value, changes.get("error"))
            job = _from_row(row)
            if also is not None:
                also(db, job)
        return job

    def update(self, job_id: str, **changes: Any) -> Job:
        """Change fields that are not the job state (invoice status, progress...)."""
        if "state" in changes:
            raise ValueError("use transition() to change a job's state")
        with self._transaction() as db:
            assignments = {"updated_at": time.time(), **changes}
            sets = ", ".join(f"{name} = ?" for name in assignments)
            values = [_to_sql(v) for v in assignments.values()]
            row = db.execute(f"UPDATE jobs SET {sets} WHERE id = ? RETURNING *", [*values, job_id]).fetchone()
            if row is not None and "invoice_status" in changes:
                self._event(db, job_id, f"invoice_{_to_sql(changes['invoice_status'])}")
        if row is None:
            raise KeyError(job_id)
        return _from_row(row)

    def progress(self, job_id: str, attempt: int, fraction: float) -> bool:
        """A running attempt's progress, readable by every node. False when the job is no longer
        this attempt's to run (it failed meanwhile, or another worker took it over): stop."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET progress = ? WHERE id = ? AND state = 'processing' AND attempts = ?",
                (fraction, job_id, attempt),
            )
            return cursor.rowcount > 0

    def unfinished(self) -> list[Job]:
        """Jobs the reconciler must look at: not final, or final with an invoice still open/held."""
        return self._many(
            "SELECT * FROM jobs WHERE state IN ('awaiting_payment', 'payment_held', 'processing') "
            "OR invoice_status IN ('none', 'open', 'accepted') ORDER BY created_at"
        )

    def count(self) -> int:
        with self._lock:
            return self._execute("SELECT COUNT(*) AS n FROM jobs").fetchone()["n"]

    def recent(self, limit: int = 20) -> list[Job]:
        """The newest jobs first."""
        return self._many("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", limit)

    def events(self, job_id: str) -> list[tuple[float, str, str | None]]:
        with self._lock:
            rows = self._execute(
                "SELECT at, event, detail FROM job_events WHERE job_id = ? ORDER BY rowid", (job_id,)
            ).fetchall()
        return [(row["at"], row["event"], row["detail"]) for row in rows]

    def put_root_key(self, key_id: bytes, root_key: bytes) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO l402_root_keys (key_id, root_key) VALUES (?, ?)", (key_id, root_key))

    def get_root_key(self, key_id: bytes) -> bytes | None:
        with self._lock:
            row = self._execute("SELECT root_key FROM l402_root_keys WHERE key_id = ?", (key_id,)).fetchone()
        return bytes(row["root_key"]) if row else None

    # measured engine speed: every node's estimates use every worker's measurements

    def add_sample(self, variant: str, seconds_per_unit: float, keep: int) -> None:
        """One measured engine call; only the newest `keep` of a variant are kept."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO throughput (variant, at, seconds_per_unit) VALUES (?, ?, ?)",
                (variant, time.time(), seconds_per_unit),
            )
            db.execute(
                "DELETE FROM throughput WHERE variant = ? AND rowid NOT IN "
                "(SELECT rowid FROM throughput WHERE variant = ? ORDER BY rowid DESC LIMIT ?)",
                (variant, variant, keep),
            )

    def samples(self, variant: str, limit: int) -> list[float]:
        """The newest measurements of a variant, seconds per unit of work."""
        with self._lock:
            rows = self._execute(
                "SELECT seconds_per_unit FROM throughput WHERE variant = ? ORDER BY rowid DESC LIMIT ?",
                (variant, limit),
            ).fetchall()
        return [row["seconds_per_unit"] for row in rows]

    # provenance outbox: written with the job's success, drained by the chain sender

    def outbox_due(self, now: float, limit: int = 20) -> list[OutboxEntry]:
        with self._lock:
            rows = self._execute(
                "SELECT * FROM provenance_outbox WHERE status IN ('pending', 'sent') AND next_attempt_at <= ? "
                "ORDER BY created_at LIMIT ?",
                (now, limit),
            ).fetchall()
        return [_outbox_from_row(row) for row in rows]

    def outbox_entry(self, payment_hash: str) -> OutboxEntry | None:
        with self._lock:
            row = self._execute("SELECT * FROM provenance_outbox WHERE payment_hash = ?", (payment_hash,)).fetchone()
        return _outbox_from_row(row) if row else None

    def outbox_update(self, payment_hash: str, **changes: Any) -> None:
        """Update an outbox entry and mirror its chain status onto the job, atomically."""
        with self._transaction() as db:
            sets = ", ".join(f"{name} = ?" for name in changes)
            db.execute(f"UPDATE provenance_outbox SET {sets} WHERE payment_hash = ?", [*changes.values(), payment_hash])
            row = db.execute("SELECT * FROM provenance_outbox WHERE payment_hash = ?", (payment_hash,)).fetchone()
            db.execute(
                "UPDATE jobs SET chain_status = ?, chain_tx = ?, chain_block = ?, chain_error = ?, updated_at = ? "
                "WHERE id = ?",
                (
                    _CHAIN_STATUS[row["status"]],
                    row["tx_hash"],
                    row["block"],
                    row["last_error"],
                    time.time(),
                    row["job_id"],
                ),
            )
            if "status" in changes:
                self._event(db, row["job_id"], f"chain_{row['status']}", row["tx_hash"])

    def outbox_replay(self) -> int:
        """A fresh (ephemeral) chain: every recorded entry goes out again. Returns how many."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE provenance_outbox SET status = 'pending', tx_hash = NULL, block = NULL, attempts = 0, "
                "next_attempt_at = 0 WHERE status IN ('sent', 'confirmed')"
            )
            db.execute(
                "UPDATE jobs SET chain_status = 'pending', chain_tx = NULL, chain_block = NULL "
                "WHERE id IN (SELECT job_id FROM provenance_outbox WHERE status = 'pending')"
            )
            return cursor.rowcount

    def outbox_release(self, payment_hashes: Iterable[str]) -> int:
        """Held records (collection tokens whose batch is now paid) may go on chain: pending."""
        hashes = list(payment_hashes)
        released = 0
        with self._transaction() as db:
            for payment_hash in hashes:
                cursor = db.execute(
                    "UPDATE provenance_outbox SET status = 'pending' WHERE payment_hash = ? AND status = 'held'",
                    (payment_hash,),
                )
                if cursor.rowcount:
                    released += 1
                    db.execute(
                        "UPDATE jobs SET chain_status = 'pending', updated_at = ? WHERE payment_hash = ?",
                        (time.time(), payment_hash),
                    )
        return released

    def remote_pins_due(self, now: float, limit: int = 20) -> list[Job]:
        return self._many(
            "SELECT * FROM jobs WHERE ipfs_remote_status = 'pending' AND ipfs_remote_next_at <= ? "
            "ORDER BY finished_at LIMIT ?",
            now,
            limit,
        )

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )


class SqliteJobStore(SqlJobStore):
    """The embedded store: one SQLite file in WAL mode, one connection, one process."""

    def __init__(self, path: Path) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:  # UPDATE ... RETURNING
            raise RuntimeError(f"SQLite {sqlite3.sqlite_version} is too old: the job store needs 3.35 or newer")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # money state: durable across power loss too
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()
        self._db.executescript(SCHEMA)

    def _migrate(self) -> None:
        """Bring a database written by an older release up to the current columns."""
        existing = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if not existing:
            return  # a new database: SCHEMA creates everything
        for name, definition in _ADDED_COLUMNS:
            if name not in existing:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {definition}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _execute(self, query: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._db.execute(query, args)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")


class RootKeys:
    """payments.l402.RootKeyStore on top of the job store: one random root key per token."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    def put(self, key_id: bytes, root_key: bytes) -> None:
        self._store.put_root_key(key_id, root_key)

    def get(self, key_id: bytes) -> bytes | None:
        return self._store.get_root_key(key_id)
