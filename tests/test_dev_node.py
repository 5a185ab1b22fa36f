"""The simulated dev node, through its public API: LND's hold-invoice rules, the payer side,
real signed BOLT11, persistence, expiry and HTLC timeouts, and cross-thread wake-ups."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import bolt11
import pytest
from coincurve import PrivateKey

from payments.backend import (
    BackendUnavailable,
    DuplicateInvoice,
    Feature,
    Invoice,
    InvoiceNotFound,
    InvoiceState,
    InvoiceStateError,
)
from payments.dev import DevNode, DevPaymentError
from payments.invoice_codec import decode_invoice, encode_invoice

SAFETY = 10.0  # seconds; only a guard against hangs, never asserted on


class FakeClock:
    """Unix time that moves only when told to, starting from now so BOLT11 dates look real."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "dev-node.sqlite"


@pytest.fixture
async def node(db: Path, clock: FakeClock) -> AsyncIterator[DevNode]:
    dev = DevNode(db, clock=clock)
    await dev.start()
    yield dev
    await dev.close()


def new_secret() -> tuple[bytes, bytes]:
    preimage = os.urandom(32)
    return preimage, hashlib.sha256(preimage).digest()


class Recorder:
    """Runs watch() in a task and hands over each invoice it yields, one at a time."""

    def __init__(self, node: DevNode, payment_hash: bytes) -> None:
        self.queue: asyncio.Queue[Invoice] = asyncio.Queue()
        self.task = asyncio.create_task(self._run(node, payment_hash))

    async def _run(self, node: DevNode, payment_hash: bytes) -> list[InvoiceState]:
        seen = []
        async for invoice in node.watch(payment_hash):
            seen.append(invoice.state)
            await self.queue.put(invoice)
        return seen

    async def next(self) -> Invoice:
        return await asyncio.wait_for(self.queue.get(), SAFETY)

    async def finished(self) -> list[InvoiceState]:
        return await asyncio.wait_for(self.task, SAFETY)


# ----------------------------------------------------------------- node info and invoices


async def test_node_info_is_labelled_simulated(node: DevNode) -> None:
    info = await node.node_info()
    assert info.alias == "satscale-dev (simulated, not real money)"
    assert info.network == "regtest"
    assert info.real_money is False
    assert len(bytes.fromhex(info.pubkey)) == 33
    assert node.name == "dev"
    assert node.supports(Feature.HOLD_INVOICES)


async def test_block_height_advances_with_time_and_mining(node: DevNode, clock: FakeClock) -> None:
    start = (await node.node_info()).block_height
    clock.advance(2 * 600 + 1)
    assert (await node.node_info()).block_height == start + 2
    assert await node.mine(3) == start + 5
    assert (await node.node_info()).block_height == start + 5


async def test_bolt11_is_a_real_signed_regtest_invoice(node: DevNode) -> None:
    _, payment_hash = new_secret()
    invoice = await node.add_hold_invoice(payment_hash, 21_000, "upscale job 7", 900)
    pubkey = (await node.node_info()).pubkey

    assert invoice.payment_request.startswith("lnbcrt")
    decoded = decode_invoice(invoice.payment_request)
    assert decoded.network == "regtest"
    assert decoded.payment_hash == payment_hash.hex() == invoice.payment_hash
    assert decoded.amount_msat == 21_000 == invoice.amount_msat
    assert decoded.description == "upscale job 7"
    assert decoded.expiry == 900
    assert decoded.timestamp == invoice.created_at
    assert invoice.expires_at == invoice.created_at + 900
    assert decoded.payee == pubkey
    # the signature itself (not a payee tag) recovers the node key
    assert bolt11.decode(invoice.payment_request).signature.recover_public_key() == pubkey


async def test_plain_invoice_bolt11_has_amount_and_memo(node: DevNode) -> None:
    invoice = await node.add_invoice(5_000_000, "plain", 600)
    decoded = decode_invoice(invoice.payment_request)
    assert (decoded.amount_msat, decoded.description, decoded.expiry) == (5_000_000, "plain", 600)
    assert invoice.hold is False
    assert invoice.state is InvoiceState.OPEN
    assert invoice.preimage is not None
    assert hashlib.sha256(bytes.fromhex(invoice.preimage)).hexdigest() == invoice.payment_hash


# ----------------------------------------------------------------- hold invoice lifecycle


async def test_hold_invoice_lifecycle(node: DevNode) -> None:
    preimage, payment_hash = new_secret()
    invoice = await node.add_hold_invoice(payment_hash, 10_000, "job", 600)
    assert invoice.state is InvoiceState.OPEN
    assert invoice.hold is True
    assert invoice.preimage is None

    watcher = Recorder(node, payment_hash)
    assert (await watcher.next()).state is InvoiceState.OPEN

    paid = await node.pay(invoice.payment_request)
    assert paid.state is InvoiceState.ACCEPTED
    assert paid.preimage is None
    assert paid.amount_msat == 10_000
    accepted = await watcher.next()
    assert accepted.state is InvoiceState.ACCEPTED
    assert accepted.amount_paid_msat == 10_000

    payer = asyncio.create_task(node.wait_for_preimage(payment_hash, SAFETY))
    await node.settle(preimage)
    settled = await watcher.next()
    assert settled.state is InvoiceState.SETTLED
    assert settled.preimage == preimage.hex()
    assert await watcher.finished() == [InvoiceState.OPEN, InvoiceState.ACCEPTED, InvoiceState.SETTLED]
    assert await asyncio.wait_for(payer, SAFETY) == preimage

    looked_up = await node.lookup(payment_hash)
    assert looked_up.state is InvoiceState.SETTLED
    assert looked_up.preimage == preimage.hex()
    assert looked_up.amount_paid_msat == 10_000
    [payment] = await node.payments()
    assert (payment.payment_hash, payment.amount_msat, payment.state) == (
        payment_hash.hex(),
        10_000,
        InvoiceState.SETTLED,
    )
    assert payment.charged_msat == 10_000


async def test_hold_invoice_cancel_path(node: DevNode) -> None:
    _, payment_hash = new_secret()
    invoice = await node.add_hold_invoice(payment_hash, 10_000, "job that fails", 600)
    watcher = Recorder(node, payment_hash)
    assert (await watcher.next()).state is InvoiceState.OPEN
    await node.pay(invoice.payment_request)
    assert (await watcher.next()).state is InvoiceState.ACCEPTED

    payer = asyncio.create_task(node.wait_for_preimage(payment_hash, SAFETY))
    await node.cancel(payment_hash)
    assert await watcher.finished() == [InvoiceState.OPEN, InvoiceState.ACCEPTED, InvoiceState.CANCELED]
    with pytest.raises(DevPaymentError, match="cancelled"):
        await asyncio.wait_for(payer, SAFETY)

    canceled = await node.lookup(payment_hash)
    assert canceled.state is InvoiceState.CANCELED
    assert canceled.amount_paid_msat == 0  # the payer keeps the money
    [payment] = await node.payments()
    assert payment.state is InvoiceState.CANCELED
    assert payment.charged_msat == 0


async def test_plain_invoice_settles_on_payment(node: DevNode) -> None:
    invoice = await node.add_invoice(2_000, "plain", 600)
    watcher = Recorder(node, bytes.fromhex(invoice.payment_hash))
    assert (await watcher.next()).state is InvoiceState.OPEN

    paid = await node.pay(invoice.payment_request)
    assert paid.state is InvoiceState.SETTLED
    assert paid.preimage is not None
    assert hashlib.sha256(bytes.fromhex(paid.preimage)).hexdigest() == invoice.payment_hash
    assert await watcher.finished() == [InvoiceState.OPEN, InvoiceState.SETTLED]

    looked_up = await node.lookup(bytes.fromhex(invoice.payment_hash))
    assert looked_up.state is InvoiceState.SETTLED
    assert looked_up.amount_paid_msat == 2_000
    payment_hash = bytes.fromhex(invoice.payment_hash)
    assert await node.wait_for_preimage(payment_hash, SAFETY) == bytes.fromhex(paid.preimage)


async def test_watch_of_a_final_invoice_yields_once_and_ends(node: DevNode) -> None:
    invoice = await node.add_invoice(1_000, "x", 600)
    await node.pay(invoice.payment_request)
    seen = [i.state async for i in node.watch(bytes.fromhex(invoice.payment_hash))]
    assert seen == [InvoiceState.SETTLED]


# ----------------------------------------------------------------- LND's rules


async def test_duplicate_hash_is_refused(node: DevNode) -> None:
    _, payment_hash = new_secret()
    await node.add_hold_invoice(payment_hash, 1_000, "a", 600)
    with pytest.raises(DuplicateInvoice):
        await node.add_hold_invoice(payment_hash, 2_000, "b", 600)
    # also once the first one is cancelled: a hash is never reused
    await node.cancel(payment_hash)
    with pytest.raises(DuplicateInvoice):
        await node.add_hold_invoice(payment_hash, 1_000, "a", 600)


async def test_settle_of_an_open_invoice_is_refused(node: DevNode) -> None:
    preimage, payment_hash = new_secret()
    await node.add_hold_invoice(payment_hash, 1_000, "a", 600)
    with pytest.raises(InvoiceStateError, match="invoice still open"):
        await node.settle(preimage)
    assert (await node.lookup(payment_hash)).state is InvoiceState.OPEN


async def test_settle_of_a_canceled_invoice_is_refused(node: DevNode) -> None:
    preimage, payment_hash = new_secret()
    invoice = await node.add_hold_invoice(payment_hash, 1_000, "a", 600)
    await node.pay(invoice.payment_request)
    await node.cancel(payment_hash)
    with pytest.raises(InvoiceStateError):
        await node.settle(preimage)
    assert (await node.lookup(payment_hash)).state is InvoiceState.CANCELED


async def test_settle_with_an_unknown_preimage(node: DevNode) -> None:
    with pytest.raises(InvoiceNotFound):
        await node.settle(os.urandom(32))


async def test_repeated_settle_succeeds(node: DevNode) -> None:
    preimage, payment_hash = new_secret()
    invoice = await node.add_hold_invoice(payment_hash, 1_000, "a", 600)
    await node.pay(invoice.payment_request)
    await node.settle(preimage)
    await node.settle(preimage)
    assert (await node.lookup(payment_hash)).state is InvoiceState.SETTLED
    assert sum(p.charged_msat for p in await node.payments()) == 1_000


async def test_cancel_of_a_settled_invoice_is_refused(node: DevNode) -> None:
    preimage, payment_hash = new_secret()
    invoice = await node.add_hold_invoice(payment_hash, 1_000, "a", 600)
    await node.pay(invoice.payment_request)
    await node.settle(preimage)
    with pytest.raises(InvoiceStateError, match="invoice already settled"):
        await node.cancel(payment_hash)

    plain = await node.add_invoice(1_000, "plain", 600)
    await node.pay(plain.payment_request)
    with pytest.raises(InvoiceStateError, match="invoice already settled"):
        await node.cancel(bytes.fromhex(plain.payment_hash))


async def test_repeated_cancel_succeeds(node: DevNode) -> None:
    _, payment_hash = new_secret()
    await node.add_hold_invoice(payment_hash, 1_000, "a", 600)
    await node.cancel(payment_hash)
    await node.cancel(payment_hash)
    assert (await node.lookup(payment_hash)).state is InvoiceState.CANCELED


async def test_unknown_hash(node: DevNode) -> None:
    with pytest.raises(InvoiceNotFound):
        await node.lookup(os.urandom(32))
    with pytest.raises(InvoiceNotFound):
        await node.cancel(os.urandom(32))
    with pytest.raises(InvoiceNotFound):
        [i async for i in node.watch(os.urandom(32))]


async def test_open_invoice_past_expiry_becomes_canceled(node: DevNode, clock: FakeClock) -> None:
    preimage, payment_hash = new_secret()
    await node.add_hold_invoice(payment_hash, 1_000, "a", 60)
    clock.advance(59)
    assert (await node.lookup(payment_hash)).state is InvoiceState.OPEN
    clock.advance(2)
    assert (await node.lookup(payment_hash)).state is InvoiceState.CANCELED
    with pytest.raises(InvoiceStateError):
        await node.settle(preimage)


async def test_sweep_expires_open_invoices_and_wakes_watchers(db: Path, clock: FakeClock) -> None:
    # a long poll interval: only the sweep's notification can wake the watcher before the safety timeout
    node = DevNode(db, clock=clock, poll_interval=3600)
    _, payment_hash = new_secret()
    _, other_hash = new_secret()
    await node.add_hold_invoice(payment_hash, 1_000, "expires", 60)
    await node.add_hold_invoice(other_hash, 1_000, "stays", 3600)
    watcher = Recorder(node, payment_hash)
    assert (await watcher.next()).state is InvoiceState.OPEN

    clock.advance(61)
    assert await node.sweep() == [payment_hash.hex()]
    assert await watcher.finished() == [InvoiceState.OPEN, InvoiceState.CANCELED]
    assert (await node.lookup(other_hash)).state is InvoiceState.OPEN
    assert await node.sweep() == []


async def test_accepted_invoice_is_not_expired_by_invoice_expiry(node: DevNode, clock: FakeClock) -> None:
    # the invoice expiry only limits when it can be paid; held funds wait for the HTLC timeout
    preimage, payment_hash = new_secret()
    invoice = await node.add_hold_invoice(payment_hash, 1_000, "a", 60)
    await node.pay(invoice.payment_request)
    clock.advance(120)
    assert (await node.lookup(payment_hash)).state is InvoiceState.ACCEPTED
    await node.settle(preimage)
    assert (await node.lookup(payment_hash)).state is InvoiceState.SETTLED


# ----------------------------------------------------------------- HTLC timeout


async def test_htlc_timeout_by_mined_blocks_cancels_an_accepted_invoice(node: DevNode) -> None:
    preimage, payment_hash = new_secret()
    invoice = await node.add_hold_invoice(payment_hash, 1_000, "held too long", 600)
    await node.pay(invoice.payment_request)
    watcher = Recorder(node, payment_hash)
    assert (await watcher.next()).state is InvoiceState.ACCEPTED
    payer = asyncio.create_task(node.wait_for_preimage(payment_hash, SAFETY))

    await node.mine(79)
    assert (await node.lookup(payment_hash)).state is InvoiceState.ACCEPTED
    await node.mine(1)  # accept height + 80 (the invoice's cltv) reached
    assert await watcher.finished() == [InvoiceState.ACCEPTED, InvoiceState.CANCELED]
    with pytest.raises(DevPaymentError, match="htlc_timeout"):
        await asyncio.wait_for(payer, SAFETY)
    with pytest.raises(InvoiceStateError):
        await node.settle(preimage)
    [payment] = await node.payments()
    assert payment.charged_msat == 0


async def test_htlc_timeout_by_elapsed_time(node: DevNode, clock: FakeClock) -> None:
    _, payment_hash = new_secret()
    invoice = await node.add_hold_invoice(payment_hash, 1_000, "held too long", 600)
    await node.pay(invoice.payment_request)
    clock.advance(79 * 600)
    assert (await node.lookup(payment_hash)).state is InvoiceState.ACCEPTED
    clock.advance(600)
    assert (await node.lookup(payment_hash)).state is InvoiceState.CANCELED


# ----------------------------------------------------------------- the payer's refusals


async def test_paying_twice_is_refused(node: DevNode) -> None:
    _, payment_hash = new_secret()
    hold = await node.add_hold_invoice(payment_hash, 3_000, "hold", 600)
    await node.pay(hold.payment_request)
    with pytest.raises(DevPaymentError, match="already paid"):
        await node.pay(hold.payment_request)

    plain = await node.add_invoice(4_000, "plain", 600)
    await node.pay(plain.payment_request)
    with pytest.raises(DevPaymentError, match="already paid"):
        await node.pay(plain.payment_request)

    ledger = await node.payments()
    assert [p.payment_hash for p in ledger] == [payment_hash.hex(), plain.payment_hash]
    assert [p.amount_msat for p in ledger] == [3_000, 4_000]


async def test_concurrent_payments_charge_once(node: DevNode) -> None:
    invoice = await node.add_invoice(7_000, "race", 600)
    outcomes: list[object] = []

    def pay_from_thread() -> None:
        try:
            outcomes.append(asyncio.run(node.pay(invoice.payment_request)))
        except DevPaymentError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=pay_from_thread) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SAFETY)
    assert len(outcomes) == 8
    assert sum(not isinstance(o, DevPaymentError) for o in outcomes) == 1
    [payment] = await node.payments()
    assert payment.charged_msat == 7_000


async def test_paying_another_nodes_invoice_is_refused(node: DevNode, tmp_path: Path) -> None:
    _, payment_hash = new_secret()
    foreign = encode_invoice(PrivateKey().secret, payment_hash, 1_000, "elsewhere", 600)
    with pytest.raises(DevPaymentError, match="another node"):
        await node.pay(foreign)

    # same hash registered here, but the request was signed by someone else: still refused
    await node.add_hold_invoice(payment_hash, 1_000, "here", 600)
    with pytest.raises(DevPaymentError, match="another node"):
        await node.pay(foreign)

    other = DevNode(tmp_path / "other-node.sqlite")
    other_invoice = await other.add_invoice(1_000, "other dev node", 600)
    with pytest.raises(DevPaymentError, match="another node"):
        await node.pay(other_invoice.payment_request)
    assert (await node.lookup(payment_hash)).state is InvoiceState.OPEN
    assert await node.payments() == []


async def test_paying_garbage_is_refused(node: DevNode) -> None:
    with pytest.raises(DevPaymentError, match="BOLT11"):
        await node.pay("lnbcrt1notaninvoice")


async def test_paying_an_invoice_this_node_does_not_hold_is_refused(node: DevNode, db: Path, tmp_path: Path) -> None:
    # A copy of the node file made before the invoice: same key (so the signature checks) but no invoice.
    clone_db = tmp_path / "clone.sqlite"
    for suffix in ("", "-wal"):
        source = Path(f"{db}{suffix}")
        if source.exists():
            shutil.copyfile(source, Path(f"{clone_db}{suffix}"))
    clone = DevNode(clone_db)
    assert (await clone.node_info()).pubkey == (await node.node_info()).pubkey

    invoice = await node.add_invoice(1_000, "only on the original", 600)
    with pytest.raises(DevPaymentError, match="no invoice"):
        await clone.pay(invoice.payment_request)
    assert await clone.payments() == []


async def test_paying_an_expired_invoice_is_refused(node: DevNode, clock: FakeClock) -> None:
    _, payment_hash = new_secret()
    invoice = await node.add_hold_invoice(payment_hash, 1_000, "late", 60)
    clock.advance(61)
    with pytest.raises(DevPaymentError, match="expired"):
        await node.pay(invoice.payment_request)
    assert (await node.lookup(payment_hash)).state is InvoiceState.CANCELED
    assert await node.payments() == []


async def test_paying_a_canceled_invoice_is_refused(node: DevNode) -> None:
    _, payment_hash = new_secret()
    invoice = await node.add_hold_invoice(payment_hash, 1_000, "withdrawn", 600)
    await node.cancel(payment_hash)
    with pytest.raises(DevPaymentError, match="cancelled"):
        await node.pay(invoice.payment_request)
    assert await node.payments() == []


async def test_wait_for_preimage_refusals(node: DevNode) -> None:
    _, payment_hash = new_secret()
    invoice = await node.add_hold_invoice(payment_hash, 1_000, "a", 600)
    with pytest.raises(DevPaymentError, match="not paid"):
        await node.wait_for_preimage(payment_hash, SAFETY)
    await node.pay(invoice.payment_request)
    with pytest.raises(DevPaymentError, match="not settled"):
        await node.wait_for_preimage(payment_hash, 0.05)
    assert (await node.lookup(payment_hash)).state is InvoiceState.ACCEPTED


# ----------------------------------------------------------------- persistence


async def test_state_survives_a_restart(db: Path, clock: FakeClock) -> None:
    first = DevNode(db, clock=clock)
    info = await first.node_info()
    hold_preimage, hold_hash = new_secret()
    _, open_hash = new_secret()
    _, expiring_hash = new_secret()
    hold = await first.add_hold_invoice(hold_hash, 1_000, "held", 600)
    await first.add_hold_invoice(open_hash, 2_000, "open", 600)
    await first.add_hold_invoice(expiring_hash, 3_000, "expiring", 30)
    plain = await first.add_invoice(4_000, "plain", 600)
    await first.pay(hold.payment_request)
    await first.pay(plain.payment_request)
    await first.close()

    clock.advance(31)
    second = DevNode(db, clock=clock)
    assert (await second.node_info()).pubkey == info.pubkey
    assert (await second.lookup(hold_hash)).state is InvoiceState.ACCEPTED
    assert (await second.lookup(open_hash)).state is InvoiceState.OPEN
    assert (await second.lookup(expiring_hash)).state is InvoiceState.CANCELED
    settled_plain = await second.lookup(bytes.fromhex(plain.payment_hash))
    assert settled_plain.state is InvoiceState.SETTLED
    assert settled_plain.payment_request == plain.payment_request
    assert [p.payment_hash for p in await second.payments()] == [hold_hash.hex(), plain.payment_hash]

    # the restarted node continues where the first stopped
    with pytest.raises(DevPaymentError, match="already paid"):
        await second.pay(hold.payment_request)
    await second.settle(hold_preimage)
    assert await second.wait_for_preimage(hold_hash, SAFETY) == hold_preimage
    with pytest.raises(DuplicateInvoice):
        await second.add_hold_invoice(open_hash, 2_000, "open", 600)


async def test_mined_blocks_survive_a_restart(db: Path, clock: FakeClock) -> None:
    first = DevNode(db, clock=clock)
    height = await first.mine(5)
    assert (await DevNode(db, clock=clock).node_info()).block_height == height


# ----------------------------------------------------------------- threads and shutdown


async def _settle_in_thread(settle: Callable[[], None]) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            settle()
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    await asyncio.to_thread(thread.join, SAFETY)
    assert errors == []


@pytest.mark.parametrize("same_instance", [True, False], ids=["same-node", "second-node-on-same-file"])
async def test_settle_from_a_worker_thread_wakes_a_watcher(db: Path, same_instance: bool) -> None:
    # A poll interval far beyond the safety timeout: only the cross-thread notification can wake the watcher.
    node = DevNode(db, poll_interval=3600)
    preimage, payment_hash = new_secret()
    invoice = await node.add_hold_invoice(payment_hash, 1_000, "worker", 600)
    watcher = Recorder(node, payment_hash)
    assert (await watcher.next()).state is InvoiceState.OPEN
    await node.pay(invoice.payment_request)
    assert (await watcher.next()).state is InvoiceState.ACCEPTED

    def settle() -> None:
        worker_node = node if same_instance else DevNode(db, poll_interval=3600)
        asyncio.run(worker_node.settle(preimage))  # the worker thread has its own event loop

    await _settle_in_thread(settle)
    assert (await watcher.next()).state is InvoiceState.SETTLED
    assert await watcher.finished() == [InvoiceState.OPEN, InvoiceState.ACCEPTED, InvoiceState.SETTLED]


async def test_close_ends_watch_streams(db: Path) -> None:
    node = DevNode(db, poll_interval=3600)
    await node.start()
    _, payment_hash = new_secret()
    await node.add_hold_invoice(payment_hash, 1_000, "a", 600)
    watcher = Recorder(node, payment_hash)
    assert (await watcher.next()).state is InvoiceState.OPEN
    await node.close()
    with pytest.raises(BackendUnavailable):
        await watcher.finished()


async def test_background_sweep_expires_invoices(db: Path, clock: FakeClock) -> None:
    node = DevNode(db, clock=clock, sweep_interval=0.01, poll_interval=3600)
    await node.start()
    try:
        _, payment_hash = new_secret()
        await node.add_hold_invoice(payment_hash, 1_000, "a", 60)
        watcher = Recorder(node, payment_hash)
        assert (await watcher.next()).state is InvoiceState.OPEN
        clock.advance(61)
        assert await watcher.finished() == [InvoiceState.OPEN, InvoiceState.CANCELED]
    finally:
        await node.close()
