"""LND over gRPC (grpc.aio on the compiled stubs bundled with lnd-grpc-client).

lnd-grpc-client's LNDClient wrappers are not used: they swallow errors and exit the
process on missing credentials. Every call here carries the macaroon (hex, metadata
key `macaroon`, exactly once) and, for unary calls, a deadline; every failure becomes
one of the backend's typed errors.

Watching: lnd's SubscribeInvoices never reports ACCEPTED or CANCELED, so hold
invoices are watched with Invoices.SubscribeSingleInvoice. Plain invoices share one
Lightning.SubscribeInvoices stream, dispatched by payment hash; since that stream is
silent about expiry, a watch also re-checks the invoice at its expiry and every
`reconcile_interval` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# lnd's tls.cert is ECDSA; grpc's default cipher list must allow it. Read by grpc when
# TLS is first set up, hence at import; an operator's own setting is kept.
os.environ.setdefault("GRPC_SSL_CIPHER_SUITES", "HIGH+ECDSA")

import grpc
from lndgrpc.compiled import invoices_pb2 as inv
from lndgrpc.compiled import invoices_pb2_grpc as inv_grpc
from lndgrpc.compiled import lightning_pb2 as ln
from lndgrpc.compiled import lightning_pb2_grpc as ln_grpc

from .backend import (
    BackendConfigError,
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

TEST_NETWORKS = frozenset({"regtest", "testnet", "signet", "simnet"})
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_NETWORK_ALIASES = {"bitcoin": "mainnet", "testnet3": "testnet", "testnet4": "testnet"}

_STATES = {
    ln.Invoice.OPEN: InvoiceState.OPEN,
    ln.Invoice.ACCEPTED: InvoiceState.ACCEPTED,
    ln.Invoice.SETTLED: InvoiceState.SETTLED,
    ln.Invoice.CANCELED: InvoiceState.CANCELED,
}

# lnd's error texts (invoices/errors.go and the callers in lnrpc/invoicesrpc)
_NOT_FOUND = ("unable to locate invoice", "there are no existing invoices")
_DUPLICATE = ("invoice with payment hash already exists", "invoice already exists")
_WRONG_STATE = (
    "invoice still open",
    "invoice already canceled",
    "invoice already settled",
    "invoice already accepted",
    "cannot accept invoice",
    "cannot move invoice to open",
    "preimage does not match",
    "cannot settle/accept empty HTLC set",
    "unknown preimage",
)
# macaroons/service.go, rpcperms/interceptor.go and the macaroon bakery
_MACAROON = (
    "expected 1 macaroon",
    "permission denied",
    "verification failed",
    "macaroon has expired",
    "not satisfied",
    "cannot get macaroon",
    "cannot retrieve macaroon",
    "unknown macaroon version",
    "invalid ID",
    "empty macaroon data",
    "unmarshal v",
    "no operations found in macaroon",
    "unknown permissions required for method",
    "macaroon locked to different",
    "unable to get metadata from context",
    "wallet not created",
)
# rpcperms/interceptor.go: the node is up but not (yet) serving; retrying later helps
_NOT_READY = (
    "wallet locked",
    "waiting to start",
    "in the process of starting up",
    "server shutting down",
    "server exiting",
)
# what grpc reports when a connection or stream is torn down under a call
_TRANSPORT = ("RST_STREAM", "Stream removed", "Socket closed", "Connection reset", "GOAWAY")


@dataclass(frozen=True)
class LndConfig:
    host: str
    port: int
    tls_cert_path: Path | str
    macaroon_path: Path | str
    network: str = "mainnet"
    timeout: float = 10.0  # seconds, per unary call

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"


def normalize_network(name: str) -> str:
    name = name.strip().lower()
    return _NETWORK_ALIASES.get(name, name)


def translate_error(exc: grpc.RpcError, action: str) -> PaymentError:
    """The typed backend error for a failed gRPC call; `action` names what was attempted."""
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    details = (exc.details() if callable(getattr(exc, "details", None)) else None) or str(exc)
    message = f"LND {action}: {details}"

    def says(texts: tuple[str, ...]) -> bool:
        lowered = details.lower()
        return any(text.lower() in lowered for text in texts)

    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        if "handshake" in details.lower() or "certificate" in details.lower():
            message += " (TLS handshake failed: is tls_cert_path the node's current tls.cert?)"
        return BackendUnavailable(message)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return BackendConfigError(message)
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return BackendConfigError(f"{message} (is lnd built with the invoicesrpc sub-server?)")
    if code == grpc.StatusCode.INTERNAL and says(_TRANSPORT):
        return BackendUnavailable(message)
    if code == grpc.StatusCode.NOT_FOUND or says(_NOT_FOUND):
        return InvoiceNotFound(message)
    if says(_DUPLICATE):
        return DuplicateInvoice(message)
    if says(_WRONG_STATE):
        return InvoiceStateError(message)
    if says(_MACAROON):
        return BackendConfigError(f"{message} (macaroon rejected)")
    if says(_NOT_READY) or code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return BackendUnavailable(message)
    return PaymentError(message)


def _read_credential(path: Path | str, what: str) -> bytes:
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise BackendConfigError(f"cannot read the LND {what} at {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise BackendConfigError(f"the LND {what} at {path} is empty")
    return data


def _macaroon_hex(data: bytes, path: Path | str) -> str:
    """lnd writes binary macaroons; a file holding the hex form is accepted as well."""
    text = data.strip()
    if len(text) % 2 == 0 and all(byte in _HEX_DIGITS for byte in text):
        return text.decode().lower()
    if data[0] != 2:  # binary V2 macaroons start with their version byte (never a hex digit)
        raise BackendConfigError(f"{path} does not hold a macaroon (binary V2 or hex)")
    return data.hex()


class _PlainInvoiceFeed:
    """One Lightning.SubscribeInvoices stream shared by the watches of plain invoices."""

    def __init__(self, backend: LndBackend) -> None:
        self._backend = backend
        self._queues: dict[bytes, set[asyncio.Queue[ln.Invoice | PaymentError]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def subscribe(self, payment_hash: bytes) -> asyncio.Queue[ln.Invoice | PaymentError]:
        queue: asyncio.Queue[ln.Invoice | PaymentError] = asyncio.Queue()
        self._queues.setdefault(payment_hash, set()).add(queue)
        try:
            await self._ensure_open()
        except BaseException:
            self.unsubscribe(payment_hash, queue)
            raise
        return queue

    def unsubscribe(self, payment_hash: bytes, queue: asyncio.Queue[ln.Invoice | PaymentError]) -> None:
        queues = self._queues.get(payment_hash)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._queues[payment_hash]

    async def _ensure_open(self) -> None:
        async with self._lock:
            if self._task is not None and not self._task.done():
                return
            # Live updates only (add_index = settle_index = 0: no backlog); each watch looks its
            # invoice up after registering. lnd sends no response headers before the first
            # update, so there is nothing to await here: failures reach the watches' queues.
            call = ln_grpc.LightningStub(self._backend._connect()).SubscribeInvoices(
                ln.InvoiceSubscription(), metadata=self._backend._metadata
            )
            self._task = asyncio.create_task(self._pump(call), name="lnd-subscribe-invoices")

    async def _pump(self, call: Any) -> None:
        error: PaymentError
        try:
            async for update in call:
                for queue in list(self._queues.get(update.r_hash, ())):
                    queue.put_nowait(update)
            error = BackendUnavailable("LND SubscribeInvoices: the node closed the stream")
        except grpc.RpcError as exc:
            error = translate_error(exc, "SubscribeInvoices")
        except asyncio.CancelledError:
            call.cancel()
            self._fail_all(BackendUnavailable("LND SubscribeInvoices: the backend was closed"))
            raise
        self._fail_all(error)

    def _fail_all(self, error: PaymentError) -> None:
        for queues in list(self._queues.values()):
            for queue in queues:
                queue.put_nowait(error)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class LndBackend(LightningBackend):
    """An LND node over gRPC. Hold invoices need lnd's invoicesrpc sub-server (in release builds)."""

    name = "lnd"
    features = frozenset({Feature.HOLD_INVOICES})

    def __init__(self, config: LndConfig, *, reconcile_interval: float = 15.0) -> None:
        self.config = config
        self.reconcile_interval = reconcile_interval
        self._channel: grpc.aio.Channel | None = None
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._lightning: ln_grpc.LightningStub | None = None
        self._invoices: inv_grpc.InvoicesStub | None = None
        # LND does not mark hold invoices; remember the ones made here
        self._hold_hashes: set[bytes] = set()
        self._feed = _PlainInvoiceFeed(self)

    # --- connection

    async def start(self) -> None:
        """Read the credentials and open the channel (no network round trip: the node may be down now)."""
        self._connect()

    async def close(self) -> None:
        await self._feed.close()
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()

    def _connect(self) -> grpc.aio.Channel:
        if self._channel is not None:
            return self._channel
        cert = _read_credential(self.config.tls_cert_path, "TLS certificate")
        if b"-----BEGIN CERTIFICATE-----" not in cert:
            raise BackendConfigError(f"{self.config.tls_cert_path} is not a PEM certificate (lnd's tls.cert)")
        macaroon = _macaroon_hex(_read_credential(self.config.macaroon_path, "macaroon"), self.config.macaroon_path)
        self._metadata = (("macaroon", macaroon),)
        self._channel = grpc.aio.secure_channel(
            self.config.target,
            grpc.ssl_channel_credentials(root_certificates=cert),
            options=[
                ("grpc.max_receive_message_length", 50 * 1024 * 1024),
                # lnd refuses client pings more often than every 5 s; these find dead streams
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.max_reconnect_backoff_ms", 5_000),
            ],
        )
        self._lightning = ln_grpc.LightningStub(self._channel)
        self._invoices = inv_grpc.InvoicesStub(self._channel)
        return self._channel

    async def _unary(self, service: str, method: str, request: Any) -> Any:
        self._connect()
        stub = self._lightning if service == "lightning" else self._invoices
        try:
            return await getattr(stub, method)(request, metadata=self._metadata, timeout=self.config.timeout)
        except grpc.RpcError as exc:
            raise translate_error(exc, method) from exc

    # --- records

    def _to_invoice(self, message: ln.Invoice) -> Invoice:
        state = _STATES.get(message.state)
        if state is None:
            raise PaymentError(f"LND reported an unknown invoice state {message.state}")
        if state == InvoiceState.ACCEPTED:
            self._hold_hashes.add(message.r_hash)  # only hold invoices wait in ACCEPTED
        hold = message.r_hash in self._hold_hashes
        preimage = (
            message.r_preimage.hex() if message.r_preimage and (state == InvoiceState.SETTLED or not hold) else None
        )
        return Invoice(
            payment_hash=message.r_hash.hex(),
            payment_request=message.payment_request,
            amount_msat=message.value_msat,
            state=state,
            created_at=message.creation_date,
            expires_at=message.creation_date + message.expiry,
            hold=hold,
            preimage=preimage,
            amount_paid_msat=message.amt_paid_msat,
        )

    # --- LightningBackend

    async def node_info(self) -> NodeInfo:
        info = await self._unary("lightning", "GetInfo", ln.GetInfoRequest())
        networks = [normalize_network(chain.network) for chain in info.chains if chain.chain == "bitcoin"]
        network = networks[0] if networks else ("testnet" if info.testnet else "mainnet")
        expected = normalize_network(self.config.network)
        if network != expected:
            raise BackendConfigError(f"the LND node at {self.config.target} is on {network}, configured for {expected}")
        return NodeInfo(
            pubkey=info.identity_pubkey,
            alias=info.alias,
            network=network,
            block_height=info.block_height,
            real_money=network not in TEST_NETWORKS,
        )

    async def add_hold_invoice(self, payment_hash: bytes, amount_msat: int, memo: str, expiry: int) -> Invoice:
        if len(payment_hash) != 32:
            raise ValueError("payment_hash must be 32 bytes")
        request = inv.AddHoldInvoiceRequest(hash=payment_hash, value_msat=amount_msat, memo=memo, expiry=expiry)
        await self._unary("invoices", "AddHoldInvoice", request)
        self._hold_hashes.add(payment_hash)
        return await self.lookup(payment_hash)

    async def add_invoice(self, amount_msat: int, memo: str, expiry: int) -> Invoice:
        request = ln.Invoice(value_msat=amount_msat, memo=memo, expiry=expiry)
        response = await self._unary("lightning", "AddInvoice", request)
        return await self.lookup(response.r_hash)

    async def settle(self, preimage: bytes) -> None:
        if len(preimage) != 32:
            raise ValueError("preimage must be 32 bytes")
        await self._unary("invoices", "SettleInvoice", inv.SettleInvoiceMsg(preimage=preimage))

    async def cancel(self, payment_hash: bytes) -> None:
        if len(payment_hash) != 32:
            raise ValueError("payment_hash must be 32 bytes")
        await self._unary("invoices", "CancelInvoice", inv.CancelInvoiceMsg(payment_hash=payment_hash))

    async def lookup(self, payment_hash: bytes) -> Invoice:
        if len(payment_hash) != 32:
            raise ValueError("payment_hash must be 32 bytes")
        message = await self._unary("invoices", "LookupInvoiceV2", inv.LookupInvoiceMsg(payment_hash=payment_hash))
        return self._to_invoice(message)

    async def watch(self, payment_hash: bytes, hold: bool | None = None) -> AsyncIterator[Invoice]:
        if len(payment_hash) != 32:
            raise ValueError("payment_hash must be 32 bytes")
        if hold:
            self._hold_hashes.add(payment_hash)  # e.g. created before a restart of this process
        if payment_hash in self._hold_hashes:
            updates = self._watch_hold(payment_hash)
        else:
            updates = self._watch_plain(payment_hash)
        last: tuple[InvoiceState, int] | None = None
        async with contextlib.aclosing(updates):
            async for invoice in updates:
                if (invoice.state, invoice.amount_paid_msat) == last:
                    continue
                last = (invoice.state, invoice.amount_paid_msat)
                yield invoice
                if invoice.state.final:
                    return

    async def _watch_hold(self, payment_hash: bytes) -> AsyncIterator[Invoice]:
        current = await self.lookup(payment_hash)
        yield current
        if current.state.final:
            return
        self._connect()
        call = self._invoices.SubscribeSingleInvoice(
            inv.SubscribeSingleInvoiceRequest(r_hash=payment_hash), metadata=self._metadata
        )
        try:
            async for update in call:  # the current state first, then every change
                yield self._to_invoice(update)
        except grpc.RpcError as exc:
            raise translate_error(exc, "SubscribeSingleInvoice") from exc
        finally:
            call.cancel()
        # a final state ends the watch before this; a stream ending otherwise means lnd is going away
        raise BackendUnavailable("LND SubscribeSingleInvoice: the node closed the stream")

    async def _watch_plain(self, payment_hash: bytes) -> AsyncIterator[Invoice]:
        # Register before the lookup, so that no update between the two is lost.
        queue = await self._feed.subscribe(payment_hash)
        try:
            current = await self.lookup(payment_hash)
            # ACCEPTED means a hold invoice made elsewhere: this stream would never report its end
            while not (current.hold and current.state == InvoiceState.ACCEPTED):
                yield current
                if current.state.final:
                    return
                try:
                    item = await asyncio.wait_for(queue.get(), self._recheck_delay(current))
                except TimeoutError:
                    current = await self.lookup(payment_hash)
                else:
                    if isinstance(item, PaymentError):
                        raise item
                    current = self._to_invoice(item)
        finally:
            self._feed.unsubscribe(payment_hash, queue)
        async with contextlib.aclosing(self._watch_hold(payment_hash)) as hold_updates:
            async for invoice in hold_updates:
                yield invoice

    def _recheck_delay(self, invoice: Invoice) -> float:
        """Until the next lookup: at the expiry (lnd cancels then, silently on this stream), else periodically."""
        until_expiry = invoice.expires_at - time.time()
        if invoice.state == InvoiceState.OPEN and until_expiry > -self.reconcile_interval:
            return max(0.5, min(self.reconcile_interval, until_expiry + 1.0))
        return self.reconcile_interval
