"""The embedded simulated Lightning node: the default backend. NOT REAL MONEY.

A full backend in the spirit of LNbits' FakeWallet: it issues real signed BOLT11
invoices (`lnbcrt`, regtest) with its own secp256k1 key, follows LND's hold-invoice
rules, and plays the payer too (`pay`, `wait_for_preimage`, `payments`) so the
"Pay with dev wallet" button, the dev HTTP route and the CLI can complete a flow
without a real node. `node_info()` says `real_money=False` so the UI labels it.

State lives in one SQLite file (WAL): the node key (made once, kept across
restarts), a little chain metadata, every invoice, and the simulated payer's ledger.
Every operation opens its own connection under a process-wide lock and writes in
`BEGIN IMMEDIATE` transactions, so the node is safe from the event loop, from
worker threads (each with its own loop) and from a second DevNode on the same file.

Time model:
- An OPEN invoice whose `expires_at` has passed becomes CANCELED ("expired"). This is
  applied lazily on every read, pay, settle and cancel, and by `sweep()` (which
  `start()` runs periodically).
- Block height = one block per `block_interval` seconds (600) since the node file was
  created, plus blocks added by `mine(n)`. A hold invoice's HTLC is locked at the
  height it was ACCEPTED and expires at `accept_height + cltv_expiry` (the invoice's
  min_final_cltv_expiry, 80 by default). Once the chain reaches that height the node
  cancels the invoice ("htlc_timeout") and the payer gets the funds back, as LND does
  rather than risk a force-close, so held funds are never stuck.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from coincurve import PrivateKey

from payments.backend import (
    BackendUnavailable,
    DuplicateInvoice,
    Feature,
    Invoice,
    InvoiceNotFound,
    InvoiceState,
    InvoiceStateError,
    LightningBackend,
    NodeInfo,
    PaymentError,
)
from payments.invoice_codec import DEFAULT_CLTV, InvoiceDecodeError, decode_invoice, encode_invoice

_log = logging.getLogger(__name__)

ALIAS = "satscale-dev (simulated, not real money)"
NETWORK = "regtest"
BLOCK_INTERVAL = 600.0  # seconds per simulated block, as on mainnet

# Why an invoice was cancelled (kept so the payer side can say what happened).
REASON_EXPIRED = "expired"
REASON_CANCELED = "canceled"
REASON_HTLC_TIMEOUT = "htlc_timeout"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS invoices (
    payment_hash TEXT PRIMARY KEY,
    preimage TEXT,
    payment_request TEXT NOT NULL,
    amount_msat INTEGER NOT NULL,
    memo TEXT NOT NULL,
    hold INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    cltv_expiry INTEGER NOT NULL,
    accepted_at INTEGER,
    accept_height INTEGER,
    settled_at INTEGER,
    canceled_at INTEGER,
    cancel_reason TEXT,
    amount_paid_msat INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS invoices_pending ON invoices (state) WHERE state IN ('open', 'accepted');
-- The simulated payer's side: one row per payment hash it paid, so it can pay a hash once.
CREATE TABLE IF NOT EXISTS payments (
    payment_hash TEXT PRIMARY KEY REFERENCES invoices (payment_hash),
    amount_msat INTEGER NOT NULL,
    paid_at INTEGER NOT NULL
);
"""


@dataclass(eq=False)
class _Waiter:
    """One watcher: an event on its own loop, set from whichever thread changed the state."""

    loop: asyncio.AbstractEventLoop
    event: asyncio.Event


@dataclass(eq=False)
class _FileState:
    """What every DevNode on one database file in this process shares: the lock that
    serialises its transactions (so threads queue instead of busy-waiting on SQLite) and
    the watchers, so a change made through any instance wakes them all."""

    lock: threading.Lock
    waiters: dict[str, set[_Waiter]]
    waiters_lock: threading.Lock


_FILES: weakref.WeakValueDictionary[str, _FileState] = weakref.WeakValueDictionary()  # freed with the nodes
_FILES_GUARD = threading.Lock()


def _file_state(path: Path) -> _FileState:
    with _FILES_GUARD:
        state = _FILES.get(str(path))
        if state is None:
            state = _FILES[str(path)] = _FileState(threading.Lock(), {}, threading.Lock())
        return state


class DevPaymentError(PaymentError):
    """The simulated payer refused or could not complete a payment."""


@dataclass(frozen=True)
class PayResult:
    payment_hash: str  # hex
    amount_msat: int
    state: InvoiceState  # SETTLED for a plain invoice, ACCEPTED (funds held) for a hold invoice
    preimage: str | None  # hex; None until a hold invoice is settled (see wait_for_preimage)


@dataclass(frozen=True)
class DevPayment:
    """One payment the simulated payer made, with the invoice's current state."""

    payment_hash: str  # hex
    amount_msat: int
    state: InvoiceState  # ACCEPTED: held; SETTLED: charged; CANCELED: returned to the payer
    paid_at: int  # unix seconds

    @property
    def charged_msat(self) -> int:
        return self.amount_msat if self.state is InvoiceState.SETTLED else 0


def _hash_hex(payment_hash: bytes) -> str:
    if not isinstance(payment_hash, bytes | bytearray) or len(payment_hash) != 32:
        raise ValueError("a payment hash is 32 raw bytes")
    return bytes(payment_hash).hex()


class DevNode(LightningBackend):
    """Simulated node (regtest, not real money) persisted in one SQLite file."""

    name = "dev"
    features = frozenset({Feature.HOLD_INVOICES})

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        block_interval: float = BLOCK_INTERVAL,
        cltv_expiry: int = DEFAULT_CLTV,
        sweep_interval: float = 5.0,
        poll_interval: float = 1.0,
    ) -> None:
        """`clock` gives unix seconds (tests pass a fake one). Watchers are woken by every
        state change made through any DevNode in this process; `poll_interval` is only
        their fallback for changes made by another process or by the passing of time."""
        if block_interval <= 0 or cltv_expiry <= 0 or sweep_interval <= 0 or poll_interval <= 0:
            raise ValueError("block_interval, cltv_expiry, sweep_interval and poll_interval must be positive")
        self.path = Path(path)
        self._clock = clock
        self._block_interval = block_interval
        self._cltv_expiry = cltv_expiry
        self._sweep_interval = sweep_interval
        self._poll_interval = poll_interval
        self._shared = _file_state(self.path.resolve())  # held here: the registry only keeps it weakly
        self._lock = self._shared.lock
        self._waiters = self._shared.waiters
        self._waiters_lock = self._shared.waiters_lock
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False
        self._node_key, self._genesis_time = self._init_db()
        self.pubkey = PrivateKey(self._node_key).public_key.format(compressed=True).hex()
        # Invoices that expired or timed out while no node was running are cancelled now.
        with self._transaction() as conn:
            changed = self._apply_deadlines(conn)
        self._notify(changed)
        if changed:
            _log.info("dev node: %d invoice(s) expired or timed out while it was stopped", len(changed))

    # ----------------------------------------------------------------- storage

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on a fresh connection, serialised within the process."""
        with self._lock:
            conn = self._connect()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                conn.close()

    def _init_db(self) -> tuple[bytes, float]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            conn = self._connect()
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.executescript(_SCHEMA)
            finally:
                conn.close()
        with self._transaction() as conn:
            # INSERT OR IGNORE: a second node (or process) racing on a new file keeps the first key.
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('node_key', ?)", (_new_node_key().hex(),))
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('genesis_time', ?)", (repr(float(self._clock())),))
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('mined_blocks', '0')")
            meta = {row["key"]: row["value"] for row in conn.execute("SELECT key, value FROM meta")}
        return bytes.fromhex(meta["node_key"]), float(meta["genesis_time"])

    def _height(self, conn: sqlite3.Connection, now: float) -> int:
        mined = int(conn.execute("SELECT value FROM meta WHERE key = 'mined_blocks'").fetchone()[0])
        by_time = int(max(0.0, now - self._genesis_time) // self._block_interval)
        return by_time + mined

    def _apply_deadlines(self, conn: sqlite3.Connection, payment_hash: str | None = None) -> list[str]:
        """Cancel expired OPEN invoices and ACCEPTED ones whose HTLC timed out; returns their hashes.
        Must run inside a write transaction; the caller notifies watchers after the commit."""
        now = self._clock()
        height = self._height(conn, now)
        only = "" if payment_hash is None else " AND payment_hash = :hash"
        params = {"now": now, "height": height, "hash": payment_hash, "canceled_at": int(now)}
        params |= {"expired": REASON_EXPIRED, "htlc_timeout": REASON_HTLC_TIMEOUT}
        expired = conn.execute(
            "UPDATE invoices SET state = 'canceled', cancel_reason = :expired, canceled_at = :canceled_at"
            f" WHERE state = 'open' AND expires_at <= :now{only} RETURNING payment_hash",
            params,
        ).fetchall()
        timed_out = conn.execute(
            "UPDATE invoices SET state = 'canceled', cancel_reason = :htlc_timeout, canceled_at = :canceled_at,"
            " amount_paid_msat = 0"
            f" WHERE state = 'accepted' AND accept_height + cltv_expiry <= :height{only} RETURNING payment_hash",
            params,
        ).fetchall()
        return [row[0] for row in expired + timed_out]

    def _row(self, conn: sqlite3.Connection, payment_hash: str) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM invoices WHERE payment_hash = ?", (payment_hash,)).fetchone()
        if row is None:
            raise InvoiceNotFound(f"no invoice with payment hash {payment_hash} on the dev node")
        return row

    def _read(self, payment_hash: str) -> sqlite3.Row:
        """The invoice row with deadlines applied (and watchers told if that changed it)."""
        with self._transaction() as conn:
            changed = self._apply_deadlines(conn, payment_hash)
            row = self._row(conn, payment_hash)
        self._notify(changed)
        return row

    # ----------------------------------------------------------------- watchers

    def _subscribe(self, payment_hash: str) -> _Waiter:
        waiter = _Waiter(asyncio.get_running_loop(), asyncio.Event())
        with self._waiters_lock:
            self._waiters.setdefault(payment_hash, set()).add(waiter)
        return waiter

    def _unsubscribe(self, payment_hash: str, waiter: _Waiter) -> None:
        with self._waiters_lock:
            waiters = self._waiters.get(payment_hash)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[payment_hash]

    def _notify(self, payment_hashes: Iterable[str] | None) -> None:
        """Wake the watchers of these hashes (all watchers if None), whatever thread we are on."""
        with self._waiters_lock:
            if payment_hashes is None:
                waiters = [w for ws in self._waiters.values() for w in ws]
            else:
                waiters = [w for h in payment_hashes for w in self._waiters.get(h, ())]
        for waiter in waiters:
            with contextlib.suppress(RuntimeError):  # that watcher's loop is already closed
                waiter.loop.call_soon_threadsafe(waiter.event.set)

    def _next_deadline(self, row: sqlite3.Row) -> float:
        """When this invoice could next change by itself (expiry, or the next block while held)."""
        if row["state"] == InvoiceState.OPEN:
            return float(row["expires_at"])
        elapsed_blocks = max(0.0, self._clock() - self._genesis_time) // self._block_interval
        return self._genesis_time + (elapsed_blocks + 1) * self._block_interval

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start the periodic sweep that cancels expired and timed-out invoices."""
        self._closed = False
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="dev-node-sweep")

    async def close(self) -> None:
        """Stop the sweep; open watch() streams end with BackendUnavailable."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        self._notify(None)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                await self.sweep()
            except sqlite3.Error:
                _log.exception("dev node: sweep failed; retrying in %.0f s", self._sweep_interval)

    async def sweep(self) -> list[str]:
        """Cancel every expired OPEN invoice and timed-out ACCEPTED one; returns their hashes (hex)."""
        with self._transaction() as conn:
            changed = self._apply_deadlines(conn)
        self._notify(changed)
        return changed

    # ----------------------------------------------------------------- LightningBackend

    async def node_info(self) -> NodeInfo:
        with self._lock:
            conn = self._connect()
            try:
                height = self._height(conn, self._clock())
            finally:
                conn.close()
        return NodeInfo(pubkey=self.pubkey, alias=ALIAS, network=NETWORK, block_height=height, real_money=False)

    async def add_hold_invoice(self, payment_hash: bytes, amount_msat: int, memo: str, expiry: int) -> Invoice:
        return self._add(_hash_hex(payment_hash), None, amount_msat, memo, expiry, hold=True)

    async def add_invoice(self, amount_msat: int, memo: str, expiry: int) -> Invoice:
        preimage = secrets.token_bytes(32)
        payment_hash = hashlib.sha256(preimage).hexdigest()
        return self._add(payment_hash, preimage.hex(), amount_msat, memo, expiry, hold=False)

    def _add(
        self, payment_hash: str, preimage: str | None, amount_msat: int, memo: str, expiry: int, *, hold: bool
    ) -> Invoice:
        if amount_msat <= 0:
            raise ValueError("amount_msat must be positive")
        if expiry <= 0:
            raise ValueError("expiry must be positive (seconds)")
        created_at = int(self._clock())
        payment_request = encode_invoice(
            self._node_key,
            bytes.fromhex(payment_hash),
            amount_msat,
            memo,
            expiry,
            network=NETWORK,
            created_at=created_at,
            cltv_expiry=self._cltv_expiry,
        )
        try:
            with self._transaction() as conn:
                conn.execute(
                    "INSERT INTO invoices (payment_hash, preimage, payment_request, amount_msat, memo, hold, state,"
                    " created_at, expires_at, cltv_expiry) VALUES (?, ?, ?, ?, ?, ?, 'open', ?, ?, ?)",
                    (
                        payment_hash,
                        preimage,
                        payment_request,
                        amount_msat,
                        memo,
                        int(hold),
                        created_at,
                        created_at + expiry,
                        self._cltv_expiry,
                    ),
                )
                row = self._row(conn, payment_hash)
        except sqlite3.IntegrityError:
            raise DuplicateInvoice(f"an invoice with payment hash {payment_hash} already exists") from None
        return _invoice(row)

    async def settle(self, preimage: bytes) -> None:
        if not isinstance(preimage, bytes | bytearray) or len(preimage) != 32:
            raise ValueError("a preimage is 32 raw bytes")
        payment_hash = hashlib.sha256(preimage).hexdigest()
        with self._transaction() as conn:
            changed = self._apply_deadlines(conn, payment_hash)
            row = self._row(conn, payment_hash)
            state = InvoiceState(row["state"])
            if state is InvoiceState.ACCEPTED:
                conn.execute(
                    "UPDATE invoices SET state = 'settled', preimage = ?, settled_at = ? WHERE payment_hash = ?",
                    (bytes(preimage).hex(), int(self._clock()), payment_hash),
                )
                changed.append(payment_hash)
        self._notify(changed)  # an expiry applied above must reach watchers even when we raise below
        if state is InvoiceState.OPEN:
            raise InvoiceStateError("invoice still open")
        if state is InvoiceState.CANCELED:
            raise InvoiceStateError(f"invoice already canceled ({row['cancel_reason']})")

    async def cancel(self, payment_hash: bytes) -> None:
        key = _hash_hex(payment_hash)
        with self._transaction() as conn:
            changed = self._apply_deadlines(conn, key)
            state = InvoiceState(self._row(conn, key)["state"])
            if state in (InvoiceState.OPEN, InvoiceState.ACCEPTED):
                conn.execute(
                    "UPDATE invoices SET state = 'canceled', cancel_reason = ?, canceled_at = ?, amount_paid_msat = 0"
                    " WHERE payment_hash = ?",
                    (REASON_CANCELED, int(self._clock()), key),
                )
                changed.append(key)
        self._notify(changed)
        if state is InvoiceState.SETTLED:
            raise InvoiceStateError("invoice already settled")

    async def lookup(self, payment_hash: bytes) -> Invoice:
        return _invoice(self._read(_hash_hex(payment_hash)))

    async def watch(self, payment_hash: bytes, hold: bool | None = None) -> AsyncIterator[Invoice]:
        # the node's own records say whether an invoice is a hold invoice: `hold` is not needed
        key = _hash_hex(payment_hash)
        waiter = self._subscribe(key)  # before the first read, so no change can slip between
        try:
            last: InvoiceState | None = None
            while True:
                if self._closed:
                    raise BackendUnavailable("the dev node was closed")
                waiter.event.clear()
                row = self._read(key)
                invoice = _invoice(row)
                if invoice.state is not last:
                    last = invoice.state
                    yield invoice
                if invoice.state.final:
                    return
                wait = min(self._poll_interval, max(0.01, self._next_deadline(row) - self._clock()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.event.wait(), wait)
        finally:
            self._unsubscribe(key, waiter)

    # ----------------------------------------------------------------- the simulated payer (dev only)

    async def pay(self, payment_request: str) -> PayResult:
        """Pay one of this node's invoices from the simulated wallet.

        Plain invoice: SETTLED at once, the result carries the preimage. Hold invoice:
        ACCEPTED (funds held until settle or cancel), no preimage yet."""
        try:
            decoded = decode_invoice(payment_request)
        except InvoiceDecodeError as exc:
            raise DevPaymentError(str(exc)) from None
        if decoded.payee != self.pubkey or decoded.network != NETWORK:
            raise DevPaymentError(
                f"this invoice is from another node ({decoded.payee}, {decoded.network}); "
                f"the dev wallet can only pay invoices of this simulated node ({self.pubkey})"
            )
        key = decoded.payment_hash
        refusal: str | None = None
        with self._transaction() as conn:
            changed = self._apply_deadlines(conn, key)
            try:
                row = self._row(conn, key)
            except InvoiceNotFound:
                refusal = "this node has no invoice with that payment hash"
                row = None
            if row is not None:
                refusal = self._refusal(conn, row)
            if refusal is None:
                now = int(self._clock())
                conn.execute("INSERT INTO payments VALUES (?, ?, ?)", (key, row["amount_msat"], now))
                if row["hold"]:
                    conn.execute(
                        "UPDATE invoices SET state = 'accepted', accepted_at = ?, accept_height = ?,"
                        " amount_paid_msat = amount_msat WHERE payment_hash = ?",
                        (now, self._height(conn, now), key),
                    )
                else:
                    conn.execute(
                        "UPDATE invoices SET state = 'settled', accepted_at = ?, settled_at = ?,"
                        " amount_paid_msat = amount_msat WHERE payment_hash = ?",
                        (now, now, key),
                    )
                changed.append(key)
                row = self._row(conn, key)
        self._notify(changed)
        if refusal is not None:
            raise DevPaymentError(refusal)
        invoice = _invoice(row)
        return PayResult(
            payment_hash=key,
            amount_msat=invoice.amount_paid_msat,
            state=invoice.state,
            preimage=invoice.preimage if invoice.state is InvoiceState.SETTLED else None,
        )

    @staticmethod
    def _refusal(conn: sqlite3.Connection, row: sqlite3.Row) -> str | None:
        """Why the dev wallet will not pay this invoice, or None if it may."""
        state = InvoiceState(row["state"])
        if state in (InvoiceState.ACCEPTED, InvoiceState.SETTLED):
            return "this invoice is already paid; a payment hash can be paid only once"
        if state is InvoiceState.CANCELED:
            if row["cancel_reason"] == REASON_EXPIRED:
                return f"this invoice expired at {row['expires_at']} (unix time); ask for a new one"
            return "this invoice was cancelled by the node; ask for a new one"
        if conn.execute("SELECT 1 FROM payments WHERE payment_hash = ?", (row["payment_hash"],)).fetchone():
            return "this invoice is already paid; a payment hash can be paid only once"
        return None

    async def wait_for_preimage(self, payment_hash: bytes, timeout: float) -> bytes:
        """The preimage of a payment the dev wallet made, once the node settles it.
        Raises DevPaymentError if the invoice is cancelled (funds returned) or on timeout."""
        key = _hash_hex(payment_hash)
        with self._lock:
            conn = self._connect()
            try:
                paid = conn.execute("SELECT 1 FROM payments WHERE payment_hash = ?", (key,)).fetchone()
            finally:
                conn.close()
        if paid is None:
            raise DevPaymentError("the dev wallet has not paid this invoice")
        try:
            async with asyncio.timeout(timeout), contextlib.aclosing(self.watch(payment_hash)) as stream:
                async for invoice in stream:
                    if invoice.state is InvoiceState.SETTLED and invoice.preimage is not None:
                        return bytes.fromhex(invoice.preimage)
                    if invoice.state is InvoiceState.CANCELED:
                        reason = self._read(key)["cancel_reason"]
                        raise DevPaymentError(f"payment failed: the invoice was cancelled ({reason}); funds returned")
        except TimeoutError:
            raise DevPaymentError(
                f"the invoice was not settled within {timeout:g} s; the funds are still held"
            ) from None
        raise DevPaymentError("the invoice stream ended without a final state")

    async def payments(self) -> list[DevPayment]:
        """Everything the simulated payer has paid, oldest first, with each invoice's current state."""
        with self._transaction() as conn:
            changed = self._apply_deadlines(conn)
            rows = conn.execute(
                "SELECT p.payment_hash, p.amount_msat, p.paid_at, i.state FROM payments p"
                " JOIN invoices i USING (payment_hash) ORDER BY p.paid_at, p.rowid"
            ).fetchall()
        self._notify(changed)
        return [
            DevPayment(
                payment_hash=row["payment_hash"],
                amount_msat=row["amount_msat"],
                state=InvoiceState(row["state"]),
                paid_at=row["paid_at"],
            )
            for row in rows
        ]

    async def mine(self, blocks: int = 1) -> int:
        """Add `blocks` simulated blocks (timing out held HTLCs that reach their expiry); returns the height."""
        if blocks < 0:
            raise ValueError("blocks must not be negative")
        with self._transaction() as conn:
            conn.execute(
                "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + ? AS TEXT) WHERE key = 'mined_blocks'",
                (blocks,),
            )
            changed = self._apply_deadlines(conn)
            height = self._height(conn, self._clock())
        self._notify(changed)
        return height


def _new_node_key() -> bytes:
    while True:
        secret = secrets.token_bytes(32)
        try:
            PrivateKey(secret)  # rejects 0 and values >= the curve order (vanishingly rare)
        except ValueError:
            continue
        return secret


def _invoice(row: sqlite3.Row) -> Invoice:
    # The node knows the preimage of a plain invoice from the start, of a hold invoice once settled.
    return Invoice(
        payment_hash=row["payment_hash"],
        payment_request=row["payment_request"],
        amount_msat=row["amount_msat"],
        state=InvoiceState(row["state"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        hold=bool(row["hold"]),
        preimage=row["preimage"],
        amount_paid_msat=row["amount_paid_msat"],
    )
