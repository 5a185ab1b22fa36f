"""The double's invoice registry: lnd's invoice state rules, indexes and notifications.

Read from lnd's invoices package (invoiceregistry.go, update_invoice.go, errors.go,
invoice_expiry_watcher.go) and lnrpc/invoicesrpc (addinvoice.go, invoices_server.go):
- OPEN → ACCEPTED (hold invoice paid) → SETTLED | CANCELED; OPEN → SETTLED (plain invoice paid); OPEN → CANCELED.
- SettleInvoice: OPEN fails "invoice still open", CANCELED fails "invoice already canceled",
  SETTLED succeeds again. CancelInvoice: SETTLED fails "invoice already settled", CANCELED succeeds again.
- An OPEN invoice is cancelled once its expiry passes; an ACCEPTED hold invoice is
  cancelled when the height comes within HOLD_EXPIRY_DELTA blocks of its HTLC's expiry.
- All-invoice subscribers get only adds (OPEN) and SETTLED events, deduplicated by
  add_index / settle_index; single-invoice subscribers get the current state, then every change.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import bolt11
import grpc
from coincurve import PrivateKey

from payments.invoice_codec import InvoiceDecodeError, decode_invoice, encode_invoice

DEFAULT_CLTV_EXPIRY = 80  # lnd's bitcoin.timelockdelta default
MIN_CLTV_DELTA = 24  # routing.MinCLTVDelta
MAX_CLTV_DELTA = 65535  # invoices.MaxFinalCltvDelta
DEFAULT_INVOICE_EXPIRY = 24 * 3600  # invoicesrpc.DefaultInvoiceExpiry
MAX_INVOICE_EXPIRY = 365 * 24 * 3600
MAX_MEMO_SIZE = 1024
# lncfg.DefaultHoldInvoiceExpiryDelta = DefaultIncomingBroadcastDelta (16) + 2
HOLD_EXPIRY_DELTA = 18

# errors.go
ERR_NOT_FOUND = "unable to locate invoice"
ERR_DUPLICATE = "invoice with payment hash already exists"
ERR_STILL_OPEN = "invoice still open"
ERR_ALREADY_CANCELED = "invoice already canceled"
ERR_ALREADY_SETTLED = "invoice already settled"


class State(enum.IntEnum):
    """lnrpc.Invoice.InvoiceState values."""

    OPEN = 0
    SETTLED = 1
    CANCELED = 2
    ACCEPTED = 3


class HtlcState(enum.IntEnum):
    """lnrpc.InvoiceHTLCState values."""

    ACCEPTED = 0
    SETTLED = 1
    CANCELED = 2


class LndError(Exception):
    """An RPC error as lnd reports it: a gRPC status code and lnd's text."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.UNKNOWN) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class PaymentRejected(Exception):
    """The simulated payer could not pay this payment request."""


@dataclass(frozen=True)
class Htlc:
    htlc_index: int
    amt_msat: int
    accept_height: int
    accept_time: int
    expiry_height: int
    state: HtlcState = HtlcState.ACCEPTED
    resolve_time: int = 0


@dataclass(frozen=True)
class StoredInvoice:
    payment_hash: bytes
    preimage: bytes | None  # None for a hold invoice until it is settled
    payment_request: str
    payment_addr: bytes
    memo: str
    value_msat: int
    created: float
    expiry: int
    cltv_expiry: int
    hold: bool
    add_index: int
    state: State = State.OPEN
    settle_index: int = 0
    settle_date: int = 0
    amt_paid_msat: int = 0
    htlcs: tuple[Htlc, ...] = ()

    @property
    def creation_date(self) -> int:
        return int(self.created)

    @property
    def expires_at(self) -> float:
        return self.created + self.expiry


DROPPED = object()  # queued to a subscription to make its stream fail


@dataclass(eq=False)
class Subscription:
    """One open stream. `payment_hash` None: all invoices (SubscribeInvoices)."""

    payment_hash: bytes | None
    add_index: int = 0
    settle_index: int = 0
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    def offer(self, invoice: StoredInvoice) -> None:
        if self.payment_hash is not None:
            if invoice.payment_hash == self.payment_hash:
                self.queue.put_nowait(invoice)
            return
        # invoiceRegistry.dispatchToClients: skip what this client has already seen
        if invoice.state == State.SETTLED:
            if self.settle_index >= invoice.settle_index:
                return
            self.settle_index = invoice.settle_index
        elif invoice.state == State.OPEN:
            if self.add_index >= invoice.add_index:
                return
            self.add_index = invoice.add_index
        else:
            return  # ACCEPTED and CANCELED are never sent to all-invoice subscribers
        self.queue.put_nowait(invoice)


def check_hash(raw: bytes, kind: str = "hash") -> bytes:
    """lntypes.MakeHash / MakePreimage."""
    if len(raw) != 32:
        raise LndError(f"invalid {kind} length of {len(raw)}, want 32")
    return raw


class Registry:
    def __init__(
        self, node_key: bytes, network: str = "regtest", height: int = 500, clock: Callable[[], float] = time.time
    ) -> None:
        self.node_key = node_key
        self.pubkey = PrivateKey(node_key).public_key.format(compressed=True).hex()
        self.network = network
        self.height = height
        self.clock = clock
        self._invoices: dict[bytes, StoredInvoice] = {}
        self._add_index = 0
        self._settle_index = 0
        self._htlc_index = 0
        self._subscriptions: set[Subscription] = set()
        self.changed = asyncio.Event()  # wakes the expiry watcher

    # --- queries

    def lookup(self, payment_hash: bytes) -> StoredInvoice:
        invoice = self._invoices.get(payment_hash)
        if invoice is None:
            raise LndError(ERR_NOT_FOUND)
        return invoice

    def lookup_by_addr(self, payment_addr: bytes) -> StoredInvoice:
        for invoice in self._invoices.values():
            if invoice.payment_addr == payment_addr:
                return invoice
        raise LndError(ERR_NOT_FOUND)

    def next_expiry(self) -> float | None:
        """When the next OPEN invoice expires."""
        times = [inv.expires_at for inv in self._invoices.values() if inv.state == State.OPEN]
        return min(times, default=None)

    # --- invoice life cycle

    def add(
        self,
        *,
        memo: str,
        value_msat: int,
        expiry: int,
        cltv_expiry: int,
        hold: bool,
        payment_hash: bytes | None = None,
        preimage: bytes | None = None,
    ) -> StoredInvoice:
        """addinvoice.go AddInvoice: validate, sign the payment request, store."""
        if len(memo.encode()) > MAX_MEMO_SIZE:
            raise LndError(f"memo too large: {len(memo.encode())} bytes (maxsize={MAX_MEMO_SIZE})")
        if value_msat < 0:
            raise LndError(f"payments of negative value are not allowed, value is {value_msat}")
        if expiry > MAX_INVOICE_EXPIRY:
            raise LndError(
                f"expiry of {float(expiry):g} seconds greater than max expiry of {float(MAX_INVOICE_EXPIRY):g} seconds"
            )
        if cltv_expiry > MAX_CLTV_DELTA:
            raise LndError(f"CLTV delta of {cltv_expiry} is too large, max accepted is: {MAX_CLTV_DELTA}")
        if cltv_expiry and cltv_expiry < MIN_CLTV_DELTA:
            raise LndError(f"CLTV delta of {cltv_expiry} must be greater than minimum of {MIN_CLTV_DELTA}")
        if preimage is not None and payment_hash is not None:
            raise LndError("preimage and hash both set")
        if payment_hash is None:
            preimage = preimage if preimage is not None else os.urandom(32)
            payment_hash = hashlib.sha256(check_hash(preimage, "preimage")).digest()
        if payment_hash in self._invoices:
            raise LndError(ERR_DUPLICATE)
        created = self.clock()
        expiry = expiry if expiry > 0 else DEFAULT_INVOICE_EXPIRY
        cltv_expiry = cltv_expiry or DEFAULT_CLTV_EXPIRY
        payment_request = encode_invoice(
            self.node_key,
            payment_hash,
            value_msat,
            memo,
            expiry,
            network=self.network,
            created_at=int(created),
            cltv_expiry=cltv_expiry,
        )
        self._add_index += 1
        invoice = StoredInvoice(
            payment_hash=payment_hash,
            preimage=preimage,
            payment_request=payment_request,
            payment_addr=bytes.fromhex(bolt11.decode(payment_request).payment_secret),
            memo=memo,
            value_msat=value_msat,
            created=created,
            expiry=expiry,
            cltv_expiry=cltv_expiry,
            hold=hold,
            add_index=self._add_index,
        )
        self._store(invoice)
        return invoice

    def settle_hold(self, preimage: bytes) -> StoredInvoice:
        """InvoiceRegistry.SettleHodlInvoice, with invoices_server.go's "already settled is fine"."""
        payment_hash = hashlib.sha256(check_hash(preimage, "preimage")).digest()
        invoice = self.lookup(payment_hash)
        if invoice.state == State.OPEN:
            raise LndError(ERR_STILL_OPEN)
        if invoice.state == State.CANCELED:
            raise LndError(ERR_ALREADY_CANCELED)
        if invoice.state == State.SETTLED:
            return invoice
        now = int(self.clock())
        return self._store(
            replace(
                invoice,
                state=State.SETTLED,
                preimage=preimage,
                settle_index=self._next_settle_index(),
                settle_date=now,
                htlcs=self._resolve_htlcs(invoice, HtlcState.SETTLED, now),
            )
        )

    def cancel(self, payment_hash: bytes) -> StoredInvoice:
        """InvoiceRegistry.CancelInvoice: a settled invoice stays settled; cancelling twice is fine."""
        invoice = self.lookup(check_hash(payment_hash))
        if invoice.state == State.SETTLED:
            raise LndError(ERR_ALREADY_SETTLED)
        if invoice.state == State.CANCELED:
            return invoice
        now = int(self.clock())
        return self._store(
            replace(invoice, state=State.CANCELED, htlcs=self._resolve_htlcs(invoice, HtlcState.CANCELED, now))
        )

    def pay(self, payment_request: str, amount_msat: int | None = None) -> StoredInvoice:
        """A payer with a route to us sends one HTLC for this payment request."""
        try:
            decoded = decode_invoice(payment_request)
        except InvoiceDecodeError as exc:
            raise PaymentRejected(str(exc)) from None
        if decoded.payee != self.pubkey:
            raise PaymentRejected(f"invoice is for node {decoded.payee}, not this node")
        if decoded.network != self.network:
            raise PaymentRejected(f"invoice is for {decoded.network}, this node is on {self.network}")
        now = self.clock()
        if now >= decoded.expires_at:
            raise PaymentRejected("invoice expired")
        try:
            invoice = self.lookup(bytes.fromhex(decoded.payment_hash))
        except LndError:
            raise PaymentRejected("invoice not found") from None
        amount = invoice.value_msat if amount_msat is None else amount_msat
        if invoice.state == State.CANCELED:
            raise PaymentRejected("invoice already canceled")
        if invoice.state != State.OPEN:
            raise PaymentRejected("invoice no longer open")
        if amount < invoice.value_msat:
            raise PaymentRejected("amount too low")
        self._htlc_index += 1
        htlc = Htlc(
            htlc_index=self._htlc_index,
            amt_msat=amount,
            accept_height=self.height,
            accept_time=int(now),
            expiry_height=self.height + invoice.cltv_expiry,
        )
        if invoice.hold:
            accepted = self._store(replace(invoice, state=State.ACCEPTED, amt_paid_msat=amount, htlcs=(htlc,)))
            self._expire_held()
            return self.lookup(accepted.payment_hash)
        return self._store(
            replace(
                invoice,
                state=State.SETTLED,
                amt_paid_msat=amount,
                settle_index=self._next_settle_index(),
                settle_date=int(now),
                htlcs=(replace(htlc, state=HtlcState.SETTLED, resolve_time=int(now)),),
            )
        )

    def mine(self, blocks: int) -> int:
        if blocks < 0:
            raise ValueError("blocks must not be negative")
        self.height += blocks
        self._expire_held()
        return self.height

    def expire_due(self) -> list[StoredInvoice]:
        """Cancel every OPEN invoice whose expiry has passed (InvoiceExpiryWatcher, timestamp queue)."""
        now = self.clock()
        due = [inv for inv in self._invoices.values() if inv.state == State.OPEN and now >= inv.expires_at]
        return [self.cancel(inv.payment_hash) for inv in due]

    def _expire_held(self) -> None:
        """InvoiceExpiryWatcher, height queue: cancel accepted hold invoices close to their HTLC expiry."""
        for invoice in list(self._invoices.values()):
            if invoice.state != State.ACCEPTED or not invoice.hold:
                continue
            expiries = [h.expiry_height for h in invoice.htlcs if h.state == HtlcState.ACCEPTED]
            if expiries and self.height + HOLD_EXPIRY_DELTA >= min(expiries):
                self.cancel(invoice.payment_hash)

    def _resolve_htlcs(self, invoice: StoredInvoice, state: HtlcState, now: int) -> tuple[Htlc, ...]:
        return tuple(
            replace(h, state=state, resolve_time=now) if h.state == HtlcState.ACCEPTED else h for h in invoice.htlcs
        )

    def _next_settle_index(self) -> int:
        self._settle_index += 1
        return self._settle_index

    def _store(self, invoice: StoredInvoice) -> StoredInvoice:
        self._invoices[invoice.payment_hash] = invoice
        for subscription in list(self._subscriptions):
            subscription.offer(invoice)
        self.changed.set()
        return invoice

    # --- subscriptions

    def subscribe_all(self, add_index: int, settle_index: int) -> Subscription:
        """SubscribeNotifications: backlog of adds after add_index and settles after settle_index (0: none)."""
        subscription = Subscription(payment_hash=None)
        ordered = sorted(self._invoices.values(), key=lambda inv: inv.add_index)
        if add_index:
            for invoice in ordered:
                if invoice.add_index > add_index and invoice.state in (State.OPEN, State.SETTLED):
                    subscription.queue.put_nowait(invoice)
        if settle_index:
            for invoice in sorted(ordered, key=lambda inv: inv.settle_index):
                if invoice.state == State.SETTLED and invoice.settle_index > settle_index:
                    subscription.queue.put_nowait(invoice)
        subscription.add_index = max([add_index, *(inv.add_index for inv in ordered)]) if add_index else 0
        subscription.settle_index = max([settle_index, self._settle_index]) if settle_index else 0
        self._subscriptions.add(subscription)
        return subscription

    def subscribe_single(self, payment_hash: bytes) -> Subscription:
        """The current state first if the invoice exists (it may not yet), then every change."""
        subscription = Subscription(payment_hash=check_hash(payment_hash))
        if payment_hash in self._invoices:
            subscription.queue.put_nowait(self._invoices[payment_hash])
        self._subscriptions.add(subscription)
        return subscription

    @property
    def subscription_count(self) -> int:
        return len(self._subscriptions)

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def drop_subscriptions(self) -> int:
        """Make every open stream fail; returns how many there were."""
        dropped = list(self._subscriptions)
        for subscription in dropped:
            subscription.queue.put_nowait(DROPPED)
        self._subscriptions.clear()
        return len(dropped)
