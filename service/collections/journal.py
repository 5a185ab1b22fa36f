"""The journal of collection runs, in the job store's database: a run, its tokens and its
batch invoices. Every step of a run is written here before its side effect (an invoice issued,
a batch's tokens queued, a batch settled, a document published, a transaction sent), so a
server killed at any point resumes from what the journal says and never repeats a payment or a
chain write.

    run      running -> finishing -> done
    batch    waiting -> open -> held -> settled | canceled        (kind "work": tokens run)
                          \\-> expired                              (unpaid: its tokens are not run)
             a "release" batch (the tokens of a cancelled batch that succeeded) is open -> settled
             (their results are released) or expired (they are not)
    token    waiting -> queued (a job runs it) -> paid (released) -> upgraded / published
             skipped (at planning), failed (its job failed: never paid for), unpaid
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from ..store import SqlJobStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS collection_runs (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    state TEXT NOT NULL,
    contract TEXT NOT NULL,
    chain_id INTEGER NOT NULL,
    rpc_url TEXT,
    request TEXT NOT NULL,
    plan TEXT NOT NULL,
    folder TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    result TEXT,
    error TEXT,
    pending_tx TEXT,
    kept_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS collection_tokens (
    run_id TEXT NOT NULL REFERENCES collection_runs(id),
    token_id TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    old_uri TEXT,
    name TEXT,
    image_uri TEXT,
    image_sha256 TEXT,
    image_path TEXT,
    metadata_path TEXT,
    pipeline TEXT,
    amount_msat INTEGER NOT NULL DEFAULT 0,
    seconds REAL NOT NULL DEFAULT 0,
    pixel_art TEXT,
    batch INTEGER,
    job_id TEXT,
    new_uri TEXT,
    document_cid TEXT,
    tx_hash TEXT,
    PRIMARY KEY (run_id, token_id)
);
CREATE TABLE IF NOT EXISTS collection_batches (
    payment_hash TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES collection_runs(id),
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    tokens TEXT NOT NULL,
    amount_msat INTEGER NOT NULL,
    preimage TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    payment_request TEXT,
    expires_at REAL,
    held_at REAL,
    macaroon TEXT
);
CREATE INDEX IF NOT EXISTS collection_batches_run ON collection_batches(run_id, seq);
"""

RUN_ACTIVE = ("running", "finishing")
BATCH_DONE = ("settled", "canceled", "expired")


@dataclass(frozen=True)
class RunRow:
    id: str
    created_at: float
    updated_at: float
    state: str
    contract: str
    chain_id: int
    rpc_url: str | None
    request: str  # JSON: what was asked (options, pixel art, setter, tokens)
    plan: str  # JSON: the plan's summary (facts, layout, batches)
    folder: str  # where the run keeps its tokens' images, documents, the CAR and the manifest
    request_hash: str
    idempotency_key: str | None = None
    result: str | None = None  # JSON: what finishing published and sent
    error: str | None = None
    #: JSON: a collection transaction signed and perhaps sent, not yet known mined:
    #: {"tx_hash", "nonce", "raw", "tokens"}; nothing else is signed while it is here
    pending_tx: str | None = None
    kept_bytes: int = 0  # what the run keeps on disk (documents and images) until it ends

    @property
    def asked(self) -> dict[str, Any]:
        return json.loads(self.request)

    @property
    def planned(self) -> dict[str, Any]:
        return json.loads(self.plan)

    @property
    def outcome(self) -> dict[str, Any]:
        return json.loads(self.result) if self.result else {}


@dataclass(frozen=True)
class TokenRow:
    run_id: str
    token_id: int
    status: str
    error: str | None = None
    old_uri: str | None = None
    name: str | None = None
    image_uri: str | None = None
    image_sha256: str | None = None
    image_path: str | None = None
    metadata_path: str | None = None
    pipeline: str | None = None  # JSON: the stages the token runs, as a request spells them
    amount_msat: int = 0
    seconds: float = 0.0
    pixel_art: str | None = None  # JSON: {"chosen", "reason"}
    batch: int | None = None
    job_id: str | None = None
    new_uri: str | None = None
    document_cid: str | None = None
    tx_hash: str | None = None


@dataclass(frozen=True)
class BatchRow:
    payment_hash: str
    run_id: str
    seq: int
    kind: str  # "work" (its tokens run once it is held) or "release" (pays for results already made)
    tokens: str  # JSON list of token ids
    amount_msat: int
    preimage: str
    status: str
    created_at: float
    payment_request: str | None = None
    expires_at: float | None = None
    held_at: float | None = None
    macaroon: str | None = None

    @property
    def token_ids(self) -> list[int]:
        return json.loads(self.tokens)

    @property
    def done(self) -> bool:
        return self.status in BATCH_DONE


def _row(cls: type, row: Any) -> Any:
    values = dict(row)
    if cls is TokenRow:
        values["token_id"] = int(values["token_id"])
    return cls(**{f.name: values[f.name] for f in fields(cls)})


def _insert(db: Any, table: str, values: dict[str, Any]) -> None:
    names = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    db.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", list(values.values()))


def _set(db: Any, table: str, where: str, args: Iterable[Any], changes: dict[str, Any]) -> int:
    sets = ", ".join(f"{name} = ?" for name in changes)
    return db.execute(f"UPDATE {table} SET {sets} WHERE {where}", [*changes.values(), *args]).rowcount


class CollectionJournal:
    """Runs, tokens and batches in the job store's database, SQLite or PostgreSQL (token ids are
    kept as text: an ERC-721 id is a uint256, wider than either's integers)."""

    def __init__(self, store: SqlJobStore) -> None:
        self.store = store
        store.create_tables(SCHEMA)

    # ------------------------------------------------------------ writing

    def create(self, run: RunRow, tokens: Iterable[TokenRow], batches: Iterable[BatchRow]) -> None:
        """A run with its tokens and batches, all or nothing."""
        with self.store.transaction() as db:
            _insert(db, "collection_runs", {f.name: getattr(run, f.name) for f in fields(RunRow)})
            for token in tokens:
                values = {f.name: getattr(token, f.name) for f in fields(TokenRow)}
                values["token_id"] = str(token.token_id)
                _insert(db, "collection_tokens", values)
            for batch in batches:
                _insert(db, "collection_batches", {f.name: getattr(batch, f.name) for f in fields(BatchRow)})

    def update_run(self, run_id: str, **changes: Any) -> None:
        with self.store.transaction() as db:
            _set(db, "collection_runs", "id = ?", [run_id], {"updated_at": time.time(), **changes})

    def update_batch(self, payment_hash: str, source: Iterable[str], **changes: Any) -> bool:
        """Move a batch on from one of `source` (a conditional update); False if it was elsewhere."""
        allowed = list(source)
        marks = ", ".join("?" for _ in allowed)
        with self.store.transaction() as db:
            changed = _set(db, "collection_batches", f"payment_hash = ? AND status IN ({marks})",
                           [payment_hash, *allowed], changes)  # fmt: skip
            if changed:
                db.execute("UPDATE collection_runs SET updated_at = ? WHERE id = "
                           "(SELECT run_id FROM collection_batches WHERE payment_hash = ?)",
                           (time.time(), payment_hash))  # fmt: skip
        return bool(changed)

    def cancel_batch(self, batch: BatchRow, release: BatchRow | None) -> bool:
        """A held batch is cancelled and, in the same transaction, the release batch for its
        tokens that succeeded is written: a crash leaves both or neither."""
        with self.store.transaction() as db:
            changed = _set(db, "collection_batches", "payment_hash = ? AND status = 'held'", [batch.payment_hash],
                           {"status": "canceled"})  # fmt: skip
            if changed and release is not None:
                _insert(db, "collection_batches", {f.name: getattr(release, f.name) for f in fields(BatchRow)})
        return bool(changed)

    def expire_batch(self, run_id: str, batch: BatchRow) -> bool:
        """An unpaid batch, in one transaction: its tokens unpaid and, for a work batch, every later
        work batch too (the payer stopped: nothing more is invoiced)."""
        with self.store.transaction() as db:
            if not _set(db, "collection_batches", "payment_hash = ? AND status = 'open'", [batch.payment_hash],
                        {"status": "expired"}):  # fmt: skip
                return False
            unpaid = {"status": "unpaid", "error": "its invoice expired unpaid"}
            for token_id in batch.token_ids:
                _set(db, "collection_tokens", "run_id = ? AND token_id = ?", [run_id, str(token_id)], unpaid)
            if batch.kind == "work":
                later = db.execute("SELECT payment_hash, tokens FROM collection_batches WHERE run_id = ? AND "
                                   "status = 'waiting' AND kind = 'work'", (run_id,)).fetchall()  # fmt: skip
                stopped = {"status": "unpaid", "error": "an earlier batch's invoice expired unpaid"}
                for row in later:
                    _set(db, "collection_batches", "payment_hash = ?", [row["payment_hash"]], {"status": "expired"})
                    for token_id in json.loads(row["tokens"]):
                        _set(db, "collection_tokens", "run_id = ? AND token_id = ?", [run_id, str(token_id)], stopped)
        return True

    def replace_batch(self, batch: BatchRow, source: str, replacement: BatchRow) -> bool:
        """A paid batch the server could not take (its queue was full when the payment came): the
        batch is cancelled and a new one for the same tokens waits, in one transaction."""
        with self.store.transaction() as db:
            if not _set(db, "collection_batches", "payment_hash = ? AND status = ?", [batch.payment_hash, source],
                        {"status": "canceled"}):  # fmt: skip
                return False
            _insert(db, "collection_batches", {f.name: getattr(replacement, f.name) for f in fields(BatchRow)})
        return True

    def update_tokens(self, run_id: str, token_ids: Iterable[int], **changes: Any) -> None:
        with self.store.transaction() as db:
            for token_id in token_ids:
                _set(db, "collection_tokens", "run_id = ? AND token_id = ?", [run_id, str(token_id)], changes)

    def hold_batch(self, batch: BatchRow, jobs: Iterable[tuple[int, Any]], held_at: float) -> bool:
        """The batch's payment is held: its tokens' jobs are written in the same transaction as
        the batch's new status, so a crash leaves either both or neither."""
        with self.store.transaction() as db:
            changed = _set(db, "collection_batches", "payment_hash = ? AND status = 'open'",
                           [batch.payment_hash], {"status": "held", "held_at": held_at})  # fmt: skip
            if not changed:
                return False
            for token_id, job in jobs:
                self.store.insert_in(db, job)
                _set(db, "collection_tokens", "run_id = ? AND token_id = ?", [batch.run_id, str(token_id)],
                     {"status": "queued", "job_id": job.id})  # fmt: skip
        return True

    # ------------------------------------------------------------ reading

    def run(self, run_id: str) -> RunRow | None:
        rows = self.store.read("SELECT * FROM collection_runs WHERE id = ?", run_id)
        return _row(RunRow, rows[0]) if rows else None

    def by_idempotency_key(self, key: str) -> RunRow | None:
        rows = self.store.read("SELECT * FROM collection_runs WHERE idempotency_key = ?", key)
        return _row(RunRow, rows[0]) if rows else None

    def active(self) -> list[RunRow]:
        rows = self.store.read("SELECT * FROM collection_runs WHERE state IN ('running', 'finishing') "
                               "ORDER BY created_at")  # fmt: skip
        return [_row(RunRow, row) for row in rows]

    def unpaid(self) -> tuple[int, int]:
        """Runs not done of which no batch is held or paid yet, and the bytes they keep."""
        row = self.store.read(
            "SELECT COUNT(*) AS runs, CAST(COALESCE(SUM(kept_bytes), 0) AS BIGINT) AS kept FROM collection_runs r "
            "WHERE state IN ('running', 'finishing') AND NOT EXISTS (SELECT 1 FROM collection_batches b "
            "WHERE b.run_id = r.id AND b.status IN ('held', 'settled'))"
        )[0]
        return row["runs"], row["kept"]

    def tokens(self, run_id: str) -> list[TokenRow]:
        rows = self.store.read("SELECT * FROM collection_tokens WHERE run_id = ?", run_id)
        return sorted((_row(TokenRow, row) for row in rows), key=lambda t: t.token_id)

    def batch(self, payment_hash: str) -> BatchRow | None:
        rows = self.store.read("SELECT * FROM collection_batches WHERE payment_hash = ?", payment_hash)
        return _row(BatchRow, rows[0]) if rows else None

    def batches(self, run_id: str) -> list[BatchRow]:
        rows = self.store.read("SELECT * FROM collection_batches WHERE run_id = ? ORDER BY seq, rowid", run_id)
        return [_row(BatchRow, row) for row in rows]
