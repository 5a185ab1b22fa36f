"""An in-process lnd double: real gRPC over TLS with macaroons, from lnd's own compiled protos.

Serves Lightning.GetInfo / AddInvoice / LookupInvoice / SubscribeInvoices and
Invoices.AddHoldInvoice / SettleInvoice / CancelInvoice / SubscribeSingleInvoice /
LookupInvoiceV2; every other method answers UNIMPLEMENTED as grpc does. A test
drives the "network" through the control plane: `pay`, `mine`, `drop_streams`,
`stop`, `restart`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any

import grpc
from lndgrpc.compiled import invoices_pb2 as inv
from lndgrpc.compiled import invoices_pb2_grpc as inv_grpc
from lndgrpc.compiled import lightning_pb2 as ln
from lndgrpc.compiled import lightning_pb2_grpc as ln_grpc

from . import macaroons
from .registry import DROPPED, LndError, Registry, State, StoredInvoice, Subscription, check_hash
from .tls import make_tls_pair, write_tls_pair

HOST = "127.0.0.1"
_FINAL = (State.SETTLED, State.CANCELED)


def to_rpc_invoice(invoice: StoredInvoice) -> ln.Invoice:
    """invoicesrpc.CreateRPCInvoice."""
    return ln.Invoice(
        memo=invoice.memo,
        r_preimage=invoice.preimage or b"",
        r_hash=invoice.payment_hash,
        value=invoice.value_msat // 1000,
        value_msat=invoice.value_msat,
        settled=invoice.state == State.SETTLED,
        creation_date=invoice.creation_date,
        settle_date=invoice.settle_date,
        payment_request=invoice.payment_request,
        expiry=invoice.expiry,
        cltv_expiry=invoice.cltv_expiry,
        add_index=invoice.add_index,
        settle_index=invoice.settle_index,
        amt_paid=invoice.amt_paid_msat,
        amt_paid_sat=invoice.amt_paid_msat // 1000,
        amt_paid_msat=invoice.amt_paid_msat,
        state=int(invoice.state),
        htlcs=[
            ln.InvoiceHTLC(
                chan_id=1 << 40,
                htlc_index=h.htlc_index,
                amt_msat=h.amt_msat,
                accept_height=h.accept_height,
                accept_time=h.accept_time,
                resolve_time=h.resolve_time,
                expiry_height=h.expiry_height,
                state=int(h.state),
                mpp_total_amt_msat=h.amt_msat,
            )
            for h in invoice.htlcs
        ],
        payment_addr=invoice.payment_addr,
    )


def _amount_msat(value: int, value_msat: int) -> int:
    """lnrpc.UnmarshallAmt."""
    if value and value_msat:
        raise LndError("sat and msat arguments are mutually exclusive")
    if value < 0 or value_msat < 0:
        raise LndError("amount cannot be negative")
    return value * 1000 if value else value_msat


def _lnd_errors(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Report LndError as lnd does: its status code (UNKNOWN for plain Go errors) and text."""

    @wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except LndError as exc:
            await context.abort(exc.code, exc.message)

    return wrapper


async def _stream(
    registry: Registry, subscription: Subscription, context: grpc.aio.ServicerContext, stop_when_final: bool
) -> AsyncIterator[ln.Invoice]:
    try:
        while True:
            item = await subscription.queue.get()
            if item is DROPPED:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "stream dropped by the lnd double")
            yield to_rpc_invoice(item)
            if stop_when_final and item.state in _FINAL:
                return
    finally:
        registry.unsubscribe(subscription)


class LightningService(ln_grpc.LightningServicer):
    def __init__(self, double: LndDouble) -> None:
        self._double = double
        self._registry = double.registry

    @_lnd_errors
    async def GetInfo(self, request: ln.GetInfoRequest, context: grpc.aio.ServicerContext) -> ln.GetInfoResponse:
        registry = self._registry
        return ln.GetInfoResponse(
            version="0.18.5-beta commit=lnd-double",
            identity_pubkey=registry.pubkey,
            alias=self._double.alias,
            color="#3399ff",
            block_height=registry.height,
            block_hash=hashlib.sha256(registry.height.to_bytes(8, "big")).hexdigest(),
            best_header_timestamp=int(time.time()),
            synced_to_chain=True,
            synced_to_graph=True,
            testnet=False,
            chains=[ln.Chain(chain="bitcoin", network=registry.network)],
            uris=[f"{registry.pubkey}@{HOST}:9735"],
        )

    @_lnd_errors
    async def AddInvoice(self, request: ln.Invoice, context: grpc.aio.ServicerContext) -> ln.AddInvoiceResponse:
        invoice = self._registry.add(
            memo=request.memo,
            value_msat=_amount_msat(request.value, request.value_msat),
            expiry=request.expiry,
            cltv_expiry=request.cltv_expiry,
            hold=False,
            preimage=check_hash(request.r_preimage, "preimage") if request.r_preimage else None,
        )
        return ln.AddInvoiceResponse(
            r_hash=invoice.payment_hash,
            payment_request=invoice.payment_request,
            add_index=invoice.add_index,
            payment_addr=invoice.payment_addr,
        )

    @_lnd_errors
    async def LookupInvoice(self, request: ln.PaymentHash, context: grpc.aio.ServicerContext) -> ln.Invoice:
        if request.r_hash_str:
            try:
                r_hash = bytes.fromhex(request.r_hash_str)
            except ValueError:
                raise LndError("encoding/hex: invalid byte") from None
        else:
            r_hash = request.r_hash
        if len(r_hash) != 32:
            raise LndError(f"payment hash must be exactly 32 bytes, is instead {len(r_hash)}")
        try:
            return to_rpc_invoice(self._registry.lookup(r_hash))
        except LndError as exc:
            raise LndError(exc.message, grpc.StatusCode.NOT_FOUND) from None

    async def SubscribeInvoices(
        self, request: ln.InvoiceSubscription, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ln.Invoice]:
        subscription = self._registry.subscribe_all(request.add_index, request.settle_index)
        async for update in _stream(self._registry, subscription, context, stop_when_final=False):
            yield update


class InvoicesService(inv_grpc.InvoicesServicer):
    def __init__(self, double: LndDouble) -> None:
        self._registry = double.registry

    @_lnd_errors
    async def AddHoldInvoice(
        self, request: inv.AddHoldInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> inv.AddHoldInvoiceResp:
        invoice = self._registry.add(
            memo=request.memo,
            value_msat=_amount_msat(request.value, request.value_msat),
            expiry=request.expiry,
            cltv_expiry=request.cltv_expiry,
            hold=True,
            payment_hash=check_hash(request.hash),
        )
        return inv.AddHoldInvoiceResp(
            add_index=invoice.add_index, payment_request=invoice.payment_request, payment_addr=invoice.payment_addr
        )

    @_lnd_errors
    async def SettleInvoice(
        self, request: inv.SettleInvoiceMsg, context: grpc.aio.ServicerContext
    ) -> inv.SettleInvoiceResp:
        self._registry.settle_hold(request.preimage)
        return inv.SettleInvoiceResp()

    @_lnd_errors
    async def CancelInvoice(
        self, request: inv.CancelInvoiceMsg, context: grpc.aio.ServicerContext
    ) -> inv.CancelInvoiceResp:
        self._registry.cancel(request.payment_hash)
        return inv.CancelInvoiceResp()

    @_lnd_errors
    async def LookupInvoiceV2(self, request: inv.LookupInvoiceMsg, context: grpc.aio.ServicerContext) -> ln.Invoice:
        ref = request.WhichOneof("invoice_ref")
        if ref == "payment_hash":
            if len(request.payment_hash) != 32:
                raise LndError(
                    f"unable to parse pay hash: invalid hash length of {len(request.payment_hash)}, want 32",
                    grpc.StatusCode.INVALID_ARGUMENT,
                )
            lookup = self._registry.lookup
            key = request.payment_hash
        elif ref == "payment_addr":
            lookup, key = self._registry.lookup_by_addr, request.payment_addr
        elif ref == "set_id":
            raise LndError("unable to locate invoice", grpc.StatusCode.NOT_FOUND)  # no AMP invoices here
        else:
            raise LndError("invoice ref must be set", grpc.StatusCode.INVALID_ARGUMENT)
        try:
            return to_rpc_invoice(lookup(key))
        except LndError as exc:
            raise LndError(exc.message, grpc.StatusCode.NOT_FOUND) from None

    async def SubscribeSingleInvoice(
        self, request: inv.SubscribeSingleInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ln.Invoice]:
        try:
            subscription = self._registry.subscribe_single(request.r_hash)
        except LndError as exc:
            await context.abort(exc.code, exc.message)
        async for update in _stream(self._registry, subscription, context, stop_when_final=True):
            yield update


def _metadata_values(metadata: Iterable[Any] | None, key: str) -> list[str]:
    return [value for name, value in (metadata or ()) if name == key]


def _peer_ip(context: grpc.aio.ServicerContext) -> str | None:
    peer = context.peer()  # "ipv4:127.0.0.1:54321" or "ipv6:[::1]:54321"
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return None


class MacaroonInterceptor(grpc.aio.ServerInterceptor):
    """lnd's macaroon check (rpcperms.InterceptorChain.checkMacaroon) ahead of every served method.

    Failures are plain errors in lnd, so they reach the client as UNKNOWN with lnd's text.
    """

    def __init__(self, root_key: bytes) -> None:
        self._root_key = root_key

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if handler is None or method not in macaroons.METHOD_PERMISSIONS:
            return handler  # unknown and unimplemented methods behave as plain grpc does
        values = _metadata_values(details.invocation_metadata, "macaroon")

        async def check(context: grpc.aio.ServicerContext) -> None:
            try:
                macaroons.check_request(values, self._root_key, method, _peer_ip(context))
            except macaroons.MacaroonError as exc:
                await context.abort(grpc.StatusCode.UNKNOWN, str(exc))

        if handler.unary_unary is not None:
            inner_unary = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await check(context)
                return await inner_unary(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
        inner_stream = handler.unary_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await check(context)
            async for response in inner_stream(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer, handler.response_serializer)


@dataclass(frozen=True)
class DoubleFiles:
    tls_cert: Path
    tls_key: Path
    admin_macaroon: Path
    invoice_macaroon: Path
    readonly_macaroon: Path


class LndDouble:
    """One simulated lnd node on 127.0.0.1. State survives `stop()` / `restart()`."""

    def __init__(self, directory: Path, port: int = 0, network: str = "regtest", alias: str = "lnd-double") -> None:
        self.directory = Path(directory)
        self.alias = alias
        self._port = port
        self.root_key = os.urandom(32)
        self.registry = Registry(node_key=os.urandom(32), network=network)
        self._tls = make_tls_pair()
        self.files = self._write_files(network)
        self._server: grpc.aio.Server | None = None
        self._expiry_task: asyncio.Task[None] | None = None

    def _write_files(self, network: str) -> DoubleFiles:
        self.directory.mkdir(parents=True, exist_ok=True)
        tls_cert, tls_key = write_tls_pair(self._tls, self.directory)
        # lnd's layout: <lnddir>/data/chain/bitcoin/<network>/*.macaroon, binary
        macaroon_dir = self.directory / "data" / "chain" / "bitcoin" / network
        macaroon_dir.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, ops in (
            ("admin", macaroons.ADMIN_PERMISSIONS),
            ("invoice", macaroons.INVOICE_PERMISSIONS),
            ("readonly", macaroons.READ_PERMISSIONS),
        ):
            path = macaroon_dir / f"{name}.macaroon"
            path.write_bytes(self.bake(ops))
            path.chmod(0o600)
            paths[name] = path
        return DoubleFiles(tls_cert, tls_key, paths["admin"], paths["invoice"], paths["readonly"])

    # --- control plane

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    def bake(self, ops: Iterable[macaroons.Op], valid_until: datetime.datetime | None = None) -> bytes:
        """A binary macaroon for `ops` from this node's root key, optionally with a time-before caveat."""
        macaroon = macaroons.mint(self.root_key, ops)
        if valid_until is not None:
            macaroon = macaroons.add_first_party_caveat(
                macaroon, f"time-before {macaroons.time_before_condition(valid_until)}"
            )
        return macaroon.to_bytes()

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the lnd double is already running")
        server = grpc.aio.server(
            interceptors=[MacaroonInterceptor(self.root_key)],
            # lnd's keepalive settings (lnd.go, config.go): clients may ping every 5 s, only
            # while a call is open; the server pings after a minute of silence.
            options=[
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.keepalive_permit_without_calls", 0),
                ("grpc.keepalive_time_ms", 60_000),
                ("grpc.keepalive_timeout_ms", 20_000),
            ],
        )
        ln_grpc.add_LightningServicer_to_server(LightningService(self), server)
        inv_grpc.add_InvoicesServicer_to_server(InvoicesService(self), server)
        credentials = grpc.ssl_server_credentials([(self._tls.key_pem, self._tls.cert_pem)])
        self._port = server.add_secure_port(f"{HOST}:{self._port}", credentials)
        if self._port == 0:
            raise RuntimeError("could not bind the lnd double's port")
        await server.start()
        self._server = server
        self._expiry_task = asyncio.create_task(self._watch_expiry(), name="lnd-double-expiry")

    async def stop(self) -> None:
        """Shut the node down: connections and streams are cut; invoices, keys and certificate stay."""
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry_task
            self._expiry_task = None
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace=None)

    async def restart(self) -> None:
        """Stop (if running) and start again on the same port."""
        await self.stop()
        await self.start()

    def pay(self, payment_request: str, amount_msat: int | None = None) -> StoredInvoice:
        """Pay as a remote node would: a plain invoice settles, a hold invoice becomes ACCEPTED.

        Raises registry.PaymentRejected if the request is not ours, expired, unknown or no longer open.
        """
        return self.registry.pay(payment_request, amount_msat)

    def mine(self, blocks: int = 1) -> int:
        """Advance the chain; returns the new height. Accepted hold invoices near their HTLC expiry are cancelled."""
        return self.registry.mine(blocks)

    def drop_streams(self) -> int:
        """Fail every open server stream with UNAVAILABLE; returns how many were open."""
        return self.registry.drop_subscriptions()

    @property
    def open_streams(self) -> int:
        return self.registry.subscription_count

    def invoice(self, payment_hash: bytes) -> StoredInvoice:
        return self.registry.lookup(payment_hash)

    async def _watch_expiry(self) -> None:
        """InvoiceExpiryWatcher's timestamp queue: cancel OPEN invoices as they expire (also right after a restart)."""
        registry = self.registry
        while True:
            registry.changed.clear()
            registry.expire_due()
            due = registry.next_expiry()
            timeout = None if due is None else max(0.0, due - registry.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(registry.changed.wait(), timeout)


@asynccontextmanager
async def running_lnd_double(directory: Path, port: int = 0, network: str = "regtest") -> AsyncIterator[LndDouble]:
    """Start a double in `directory` (its tls.cert and macaroons are written there); stop it on exit."""
    double = LndDouble(directory, port=port, network=network)
    await double.start()
    try:
        yield double
    finally:
        await double.stop()
