"""LndBackend end to end against the lnd double: real gRPC, TLS and macaroons, lnd's rules and texts."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from lndgrpc.compiled import invoices_pb2 as inv
from lndgrpc.compiled import invoices_pb2_grpc as inv_grpc
from lndgrpc.compiled import lightning_pb2 as ln
from lndgrpc.compiled import lightning_pb2_grpc as ln_grpc
from pymacaroons import Macaroon, Verifier

from payments.backend import (
    BackendConfigError,
    BackendUnavailable,
    DuplicateInvoice,
    Feature,
    Invoice,
    InvoiceNotFound,
    InvoiceState,
    InvoiceStateError,
    PaymentError,
)
from payments.invoice_codec import decode_invoice
from payments.lnd import LndBackend, LndConfig, translate_error
from tests.lnd_double import (
    ADMIN_PERMISSIONS,
    HOLD_EXPIRY_DELTA,
    INVOICE_PERMISSIONS,
    LndDouble,
    Op,
    PaymentRejected,
    running_lnd_double,
)
from tests.lnd_double.macaroons import decode_identifier
from tests.lnd_double.tls import make_tls_pair, write_tls_pair

SAFETY = 15.0  # seconds; only a guard against hangs, never asserted on
T = TypeVar("T")


@pytest.fixture
async def double(tmp_path: Path) -> AsyncIterator[LndDouble]:
    async with running_lnd_double(tmp_path / "lnd") as node:
        yield node


def make_backend(
    double: LndDouble, *, macaroon: Path | None = None, cert: Path | None = None, network: str = "regtest"
) -> LndBackend:
    config = LndConfig(
        host=double.host,
        port=double.port,
        tls_cert_path=cert or double.files.tls_cert,
        macaroon_path=macaroon or double.files.admin_macaroon,
        network=network,
        timeout=5.0,
    )
    return LndBackend(config, reconcile_interval=1.0)


@pytest.fixture
async def backend(double: LndDouble) -> AsyncIterator[LndBackend]:
    client = make_backend(double)
    await client.start()
    yield client
    await client.close()


def new_secret() -> tuple[bytes, bytes]:
    preimage = os.urandom(32)
    return preimage, hashlib.sha256(preimage).digest()


async def step(updates: AsyncIterator[Invoice]) -> Invoice:
    return await asyncio.wait_for(anext(updates), SAFETY)


async def assert_ended(updates: AsyncIterator[Invoice]) -> None:
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(updates), SAFETY)


async def eventually(call: Callable[[], Awaitable[T]]) -> T:
    """Retry while the node is unreachable (grpc reconnects with backoff after a restart)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SAFETY
    while True:
        try:
            return await call()
        except BackendUnavailable:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def wait_for_streams(double: LndDouble, count: int) -> None:
    async with asyncio.timeout(SAFETY):
        while double.open_streams < count:
            await asyncio.sleep(0.01)


# --- node and invoices


async def test_node_info(double: LndDouble, backend: LndBackend) -> None:
    info = await backend.node_info()
    assert info.pubkey == double.registry.pubkey
    assert info.alias == "lnd-double"
    assert info.network == "regtest"
    assert info.real_money is False
    double.mine(3)
    assert (await backend.node_info()).block_height == info.block_height + 3
    assert backend.supports(Feature.HOLD_INVOICES)


async def test_node_on_another_network_is_a_config_error(double: LndDouble) -> None:
    client = make_backend(double, network="mainnet")
    with pytest.raises(BackendConfigError, match="regtest"):
        await client.node_info()
    await client.close()


async def test_hold_invoice_settles(double: LndDouble, backend: LndBackend) -> None:
    preimage, payment_hash = new_secret()
    invoice = await backend.add_hold_invoice(payment_hash, 21_000, "upscale 4x", 600)
    assert (invoice.state, invoice.hold, invoice.preimage) == (InvoiceState.OPEN, True, None)
    assert invoice.payment_hash == payment_hash.hex()
    assert invoice.expires_at == invoice.created_at + 600

    decoded = decode_invoice(invoice.payment_request)
    assert invoice.payment_request.startswith("lnbcrt")
    assert decoded.payment_hash == payment_hash.hex()
    assert decoded.amount_msat == 21_000
    assert decoded.payee == double.registry.pubkey
    assert decoded.description == "upscale 4x"

    async with aclosing(backend.watch(payment_hash)) as updates:
        assert (await step(updates)).state == InvoiceState.OPEN
        double.pay(invoice.payment_request)
        accepted = await step(updates)
        assert (accepted.state, accepted.amount_paid_msat, accepted.preimage) == (InvoiceState.ACCEPTED, 21_000, None)
        await backend.settle(preimage)
        settled = await step(updates)
        assert settled.state == InvoiceState.SETTLED
        assert settled.preimage == preimage.hex()
        await assert_ended(updates)

    await backend.settle(preimage)  # lnd: settling a settled invoice succeeds
    assert (await backend.lookup(payment_hash)).state == InvoiceState.SETTLED


async def test_hold_invoice_cancel_is_repeatable_and_final(double: LndDouble, backend: LndBackend) -> None:
    preimage, payment_hash = new_secret()
    invoice = await backend.add_hold_invoice(payment_hash, 5_000, "cancel me", 600)
    async with aclosing(backend.watch(payment_hash)) as updates:
        assert (await step(updates)).state == InvoiceState.OPEN
        double.pay(invoice.payment_request)
        assert (await step(updates)).state == InvoiceState.ACCEPTED
        await backend.cancel(payment_hash)
        assert (await step(updates)).state == InvoiceState.CANCELED
        await assert_ended(updates)
    await backend.cancel(payment_hash)  # again: succeeds
    with pytest.raises(InvoiceStateError, match="invoice already canceled"):
        await backend.settle(preimage)


async def test_cancel_after_settle_is_a_state_error(double: LndDouble, backend: LndBackend) -> None:
    preimage, payment_hash = new_secret()
    invoice = await backend.add_hold_invoice(payment_hash, 1_000, "", 600)
    double.pay(invoice.payment_request)
    await backend.settle(preimage)
    with pytest.raises(InvoiceStateError, match="invoice already settled"):
        await backend.cancel(payment_hash)


async def test_settle_of_open_invoice_is_a_state_error(backend: LndBackend) -> None:
    preimage, payment_hash = new_secret()
    await backend.add_hold_invoice(payment_hash, 1_000, "", 600)
    with pytest.raises(InvoiceStateError, match="invoice still open"):
        await backend.settle(preimage)


async def test_duplicate_hash(backend: LndBackend) -> None:
    _, payment_hash = new_secret()
    await backend.add_hold_invoice(payment_hash, 1_000, "", 600)
    with pytest.raises(DuplicateInvoice):
        await backend.add_hold_invoice(payment_hash, 2_000, "", 600)


async def test_unknown_hash(backend: LndBackend) -> None:
    preimage, payment_hash = new_secret()
    with pytest.raises(InvoiceNotFound):
        await backend.lookup(payment_hash)
    with pytest.raises(InvoiceNotFound):
        await backend.settle(preimage)
    with pytest.raises(InvoiceNotFound):
        await backend.cancel(payment_hash)
    with pytest.raises(InvoiceNotFound):
        await anext(backend.watch(payment_hash))


async def test_plain_invoice_paid(double: LndDouble, backend: LndBackend) -> None:
    invoice = await backend.add_invoice(7_000, "plain", 600)
    assert (invoice.state, invoice.hold) == (InvoiceState.OPEN, False)
    assert invoice.preimage is not None
    assert hashlib.sha256(bytes.fromhex(invoice.preimage)).hexdigest() == invoice.payment_hash
    decoded = decode_invoice(invoice.payment_request)
    assert (decoded.payment_hash, decoded.amount_msat, decoded.payee) == (
        invoice.payment_hash,
        7_000,
        double.registry.pubkey,
    )

    async with aclosing(backend.watch(bytes.fromhex(invoice.payment_hash))) as updates:
        assert (await step(updates)).state == InvoiceState.OPEN
        double.pay(invoice.payment_request)
        settled = await step(updates)
        assert settled.state == InvoiceState.SETTLED
        assert settled.preimage == invoice.preimage
        assert settled.amount_paid_msat == 7_000
        await assert_ended(updates)


async def test_plain_watches_share_one_stream(double: LndDouble, backend: LndBackend) -> None:
    first = await backend.add_invoice(1_000, "a", 600)
    second = await backend.add_invoice(2_000, "b", 600)
    async with (
        aclosing(backend.watch(bytes.fromhex(first.payment_hash))) as a,
        aclosing(backend.watch(bytes.fromhex(second.payment_hash))) as b,
    ):
        assert (await step(a)).state == InvoiceState.OPEN
        assert (await step(b)).state == InvoiceState.OPEN
        await wait_for_streams(double, 1)
        assert double.open_streams == 1
        double.pay(second.payment_request)
        assert (await step(b)).payment_hash == second.payment_hash
        double.pay(first.payment_request)
        assert (await step(a)).state == InvoiceState.SETTLED


async def test_hold_invoice_made_elsewhere_is_followed_once_accepted(double: LndDouble, backend: LndBackend) -> None:
    preimage, payment_hash = new_secret()
    invoice = await backend.add_hold_invoice(payment_hash, 3_000, "", 600)
    double.pay(invoice.payment_request)
    other = make_backend(double)  # knows nothing of the hold invoices `backend` made
    try:
        async with aclosing(other.watch(payment_hash)) as updates:
            accepted = await step(updates)
            assert (accepted.state, accepted.hold) == (InvoiceState.ACCEPTED, True)
            await backend.settle(preimage)
            assert (await step(updates)).state == InvoiceState.SETTLED
            await assert_ended(updates)
    finally:
        await other.close()


# --- credentials and transport


async def test_wrong_tls_certificate(double: LndDouble, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    cert, _ = write_tls_pair(make_tls_pair(), other)
    client = make_backend(double, cert=cert)
    with pytest.raises(BackendUnavailable, match="TLS"):
        await client.node_info()
    await client.close()


async def test_readonly_macaroon_cannot_write(double: LndDouble) -> None:
    client = make_backend(double, macaroon=double.files.readonly_macaroon)
    assert (await client.node_info()).network == "regtest"
    with pytest.raises(BackendConfigError, match="permission denied"):
        await client.add_hold_invoice(new_secret()[1], 1_000, "", 600)
    with pytest.raises(BackendConfigError, match="permission denied"):
        await client.add_invoice(1_000, "", 600)
    await client.close()


async def test_invoice_macaroon_has_lnds_permissions(double: LndDouble) -> None:
    client = make_backend(double, macaroon=double.files.invoice_macaroon)
    preimage, payment_hash = new_secret()
    invoice = await client.add_hold_invoice(payment_hash, 1_000, "", 600)
    double.pay(invoice.payment_request)
    await client.settle(preimage)
    assert (await client.lookup(payment_hash)).state == InvoiceState.SETTLED
    # lnd's invoice macaroon has no info:read, so GetInfo is refused
    with pytest.raises(BackendConfigError, match="permission denied"):
        await client.node_info()
    await client.close()


async def test_missing_credentials_name_the_path(double: LndDouble, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "admin.macaroon"
    client = make_backend(double, macaroon=missing)
    with pytest.raises(BackendConfigError, match=str(missing)):
        await client.start()
    with pytest.raises(BackendConfigError, match=str(missing)):
        await client.node_info()
    missing_cert = tmp_path / "nowhere" / "tls.cert"
    with pytest.raises(BackendConfigError, match=str(missing_cert)):
        await make_backend(double, cert=missing_cert).node_info()


async def test_macaroon_file_in_hex_form(double: LndDouble, tmp_path: Path) -> None:
    path = tmp_path / "admin.macaroon.hex"
    path.write_text(double.files.admin_macaroon.read_bytes().hex() + "\n")
    client = make_backend(double, macaroon=path)
    assert (await client.node_info()).network == "regtest"
    await client.close()
    garbage = tmp_path / "garbage.macaroon"
    garbage.write_bytes(b"\x01not a macaroon")
    with pytest.raises(BackendConfigError, match=str(garbage)):
        await make_backend(double, macaroon=garbage).start()


async def test_macaroon_from_another_node_or_expired(double: LndDouble, tmp_path: Path) -> None:
    async with running_lnd_double(tmp_path / "stranger") as stranger:
        foreign = make_backend(double, macaroon=stranger.files.admin_macaroon)
        with pytest.raises(BackendConfigError, match="verification failed"):
            await foreign.node_info()
        await foreign.close()

    now = datetime.datetime.now(datetime.UTC)
    expired = tmp_path / "expired.macaroon"
    expired.write_bytes(double.bake(ADMIN_PERMISSIONS, valid_until=now - datetime.timedelta(minutes=1)))
    client = make_backend(double, macaroon=expired)
    with pytest.raises(BackendConfigError, match="macaroon has expired"):
        await client.node_info()
    await client.close()

    fresh = tmp_path / "fresh.macaroon"
    fresh.write_bytes(double.bake(ADMIN_PERMISSIONS, valid_until=now + datetime.timedelta(hours=1)))
    client = make_backend(double, macaroon=fresh)
    assert (await client.node_info()).network == "regtest"
    await client.close()


async def test_uri_permission_grants_one_method(double: LndDouble, tmp_path: Path) -> None:
    path = tmp_path / "getinfo.macaroon"
    path.write_bytes(double.bake([Op("uri", "/lnrpc.Lightning/GetInfo")]))
    client = make_backend(double, macaroon=path)
    assert (await client.node_info()).pubkey == double.registry.pubkey
    with pytest.raises(BackendConfigError, match="permission denied"):
        await client.add_invoice(1_000, "", 600)
    await client.close()


async def test_double_checks_raw_grpc_calls(double: LndDouble) -> None:
    credentials = grpc.ssl_channel_credentials(double.files.tls_cert.read_bytes())
    macaroon = double.files.admin_macaroon.read_bytes().hex()
    async with grpc.aio.secure_channel(f"{double.host}:{double.port}", credentials) as channel:
        stub = ln_grpc.LightningStub(channel)
        for metadata, count in (((), 0), ((("macaroon", macaroon), ("macaroon", macaroon)), 2)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetInfo(ln.GetInfoRequest(), metadata=metadata, timeout=SAFETY)
            assert caught.value.code() == grpc.StatusCode.UNKNOWN
            assert caught.value.details() == f"expected 1 macaroon, got {count}"
        assert (await stub.GetInfo(ln.GetInfoRequest(), metadata=(("macaroon", macaroon),))).alias == "lnd-double"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListChannels(ln.ListChannelsRequest(), metadata=(("macaroon", macaroon),), timeout=SAFETY)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        invoices = inv_grpc.InvoicesStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await invoices.LookupInvoiceV2(
                inv.LookupInvoiceMsg(payment_hash=os.urandom(32)), metadata=(("macaroon", macaroon),), timeout=SAFETY
            )
        assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.NOT_FOUND, "unable to locate invoice")


async def test_subscribe_invoices_reports_only_adds_and_settles(double: LndDouble, backend: LndBackend) -> None:
    credentials = grpc.ssl_channel_credentials(double.files.tls_cert.read_bytes())
    metadata = (("macaroon", double.files.admin_macaroon.read_bytes().hex()),)
    async with grpc.aio.secure_channel(f"{double.host}:{double.port}", credentials) as channel:
        call = ln_grpc.LightningStub(channel).SubscribeInvoices(ln.InvoiceSubscription(), metadata=metadata)
        await wait_for_streams(double, 1)
        _, hold_hash = new_secret()
        hold = await backend.add_hold_invoice(hold_hash, 1_000, "hold", 600)
        double.pay(hold.payment_request)  # ACCEPTED: not reported
        await backend.cancel(hold_hash)  # CANCELED: not reported
        plain = await backend.add_invoice(2_000, "plain", 600)
        double.pay(plain.payment_request)
        seen = [await asyncio.wait_for(call.read(), SAFETY) for _ in range(3)]
        call.cancel()
    assert [(m.r_hash.hex(), m.state) for m in seen] == [
        (hold.payment_hash, ln.Invoice.OPEN),
        (plain.payment_hash, ln.Invoice.OPEN),
        (plain.payment_hash, ln.Invoice.SETTLED),
    ]
    assert [m.add_index for m in seen] == [1, 2, 2]
    assert seen[2].settle_index == 1


def test_macaroon_files_are_standard_v2(tmp_path: Path) -> None:
    double = LndDouble(tmp_path)
    raw = double.files.admin_macaroon.read_bytes()
    macaroon = Macaroon.deserialize(base64.urlsafe_b64encode(raw).decode().rstrip("="))
    assert macaroon.location == "lnd"
    assert Verifier().verify(macaroon, double.root_key)
    assert decode_identifier(macaroon.identifier_bytes).ops == ADMIN_PERMISSIONS
    invoice_id = Macaroon.deserialize(base64.urlsafe_b64encode(double.files.invoice_macaroon.read_bytes()).decode())
    assert decode_identifier(invoice_id.identifier_bytes).ops == INVOICE_PERMISSIONS


# --- outages


async def test_dropped_stream_then_restart(double: LndDouble, backend: LndBackend) -> None:
    _, hold_hash = new_secret()
    hold = await backend.add_hold_invoice(hold_hash, 4_000, "", 600)
    plain = await backend.add_invoice(1_000, "", 600)
    double.pay(hold.payment_request)

    hold_updates = backend.watch(hold_hash)
    plain_updates = backend.watch(bytes.fromhex(plain.payment_hash))
    async with aclosing(hold_updates), aclosing(plain_updates):
        assert (await step(hold_updates)).state == InvoiceState.ACCEPTED
        assert (await step(plain_updates)).state == InvoiceState.OPEN
        pending_hold = asyncio.create_task(anext(hold_updates))
        pending_plain = asyncio.create_task(anext(plain_updates))
        await wait_for_streams(double, 2)
        assert double.drop_streams() == 2
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(pending_hold, SAFETY)
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(pending_plain, SAFETY)

    await double.restart()
    again = await eventually(lambda: anext(backend.watch(hold_hash)))
    assert (again.state, again.amount_paid_msat, again.hold) == (InvoiceState.ACCEPTED, 4_000, True)
    assert (await backend.lookup(bytes.fromhex(plain.payment_hash))).state == InvoiceState.OPEN


async def test_stopped_node(double: LndDouble, backend: LndBackend) -> None:
    _, payment_hash = new_secret()
    invoice = await backend.add_hold_invoice(payment_hash, 2_000, "", 600)
    async with aclosing(backend.watch(payment_hash)) as updates:
        assert (await step(updates)).state == InvoiceState.OPEN
        pending = asyncio.create_task(anext(updates))
        await wait_for_streams(double, 1)
        await double.stop()
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(pending, SAFETY)

    with pytest.raises(BackendUnavailable):
        await backend.node_info()
    with pytest.raises(BackendUnavailable):
        await backend.add_invoice(1_000, "", 600)
    with pytest.raises(BackendUnavailable):
        await backend.lookup(payment_hash)
    with pytest.raises(BackendUnavailable):
        await anext(backend.watch(payment_hash))

    await double.restart()
    restored = await eventually(lambda: backend.lookup(payment_hash))
    assert restored.payment_request == invoice.payment_request
    assert restored.state == InvoiceState.OPEN


# --- expiry


async def test_open_invoices_expire(double: LndDouble, backend: LndBackend) -> None:
    _, hold_hash = new_secret()
    hold = await backend.add_hold_invoice(hold_hash, 1_000, "", 1)
    plain = await backend.add_invoice(1_000, "", 1)
    hold_updates = backend.watch(hold_hash)
    plain_updates = backend.watch(bytes.fromhex(plain.payment_hash))
    async with aclosing(hold_updates), aclosing(plain_updates):
        assert (await step(hold_updates)).state == InvoiceState.OPEN
        assert (await step(plain_updates)).state == InvoiceState.OPEN
        assert (await step(hold_updates)).state == InvoiceState.CANCELED
        assert (await step(plain_updates)).state == InvoiceState.CANCELED
        await assert_ended(hold_updates)
        await assert_ended(plain_updates)
    with pytest.raises(PaymentRejected):
        double.pay(hold.payment_request)


async def test_accepted_hold_invoice_cancelled_near_htlc_expiry(double: LndDouble, backend: LndBackend) -> None:
    _, payment_hash = new_secret()
    invoice = await backend.add_hold_invoice(payment_hash, 1_000, "", 600)
    double.pay(invoice.payment_request)
    htlc_expiry = double.invoice(payment_hash).htlcs[0].expiry_height  # accept height + the invoice's cltv
    async with aclosing(backend.watch(payment_hash)) as updates:
        assert (await step(updates)).state == InvoiceState.ACCEPTED
        # lnd cancels once height + HoldExpiryDelta reaches the HTLC's expiry, so it can fail back in time
        double.mine(htlc_expiry - HOLD_EXPIRY_DELTA - double.registry.height - 1)
        assert (await backend.lookup(payment_hash)).state == InvoiceState.ACCEPTED
        double.mine(1)
        assert (await step(updates)).state == InvoiceState.CANCELED
        await assert_ended(updates)


# --- error mapping


@pytest.mark.parametrize(
    ("code", "details", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", BackendUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", BackendUnavailable),
        (grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2", BackendUnavailable),
        (grpc.StatusCode.UNKNOWN, "wallet locked, unlock it to enable full RPC access", BackendUnavailable),
        (grpc.StatusCode.UNKNOWN, "permission denied", BackendConfigError),
        (grpc.StatusCode.UNKNOWN, "expected 1 macaroon, got 0", BackendConfigError),
        (grpc.StatusCode.UNIMPLEMENTED, "unknown service invoicesrpc.Invoices", BackendConfigError),
        (grpc.StatusCode.NOT_FOUND, "unable to locate invoice", InvoiceNotFound),
        (grpc.StatusCode.UNKNOWN, "unable to locate invoice", InvoiceNotFound),
        (grpc.StatusCode.UNKNOWN, "invoice with payment hash already exists", DuplicateInvoice),
        (grpc.StatusCode.UNKNOWN, "invoice still open", InvoiceStateError),
        (grpc.StatusCode.UNKNOWN, "invoice already canceled", InvoiceStateError),
        (grpc.StatusCode.UNKNOWN, "invoice already settled", InvoiceStateError),
        (grpc.StatusCode.UNKNOWN, "something new", PaymentError),
    ],
)
def test_error_mapping(code: grpc.StatusCode, details: str, expected: type[PaymentError]) -> None:
    error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)
    translated = translate_error(error, "Call")
    assert type(translated) is expected
    assert details in str(translated)
