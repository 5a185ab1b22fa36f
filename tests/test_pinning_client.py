"""PinningServiceClient against a loopback, in-memory Pinning Service API server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from provenance.cid import hash_bytes
from provenance.errors import (
    CidMismatch,
    InsufficientFunds,
    PinFailed,
    PinningRateLimited,
    PinningUnauthorized,
    PinNotFound,
    PinTimeout,
)
from provenance.pinning import PinningServiceClient, PinState
from tests.kubo_double import PinningServiceDouble
from tests.servers import serving

TOKEN = "psa-test-token"
INPUT = hash_bytes(b"input image").cid
OUTPUT = hash_bytes(b"output image", cid_version=1).cid
METADATA = hash_bytes(b'{"name": "upscale"}', cid_version=1).cid
UNFETCHABLE = hash_bytes(b"nobody has this").cid


@pytest.fixture
def service() -> PinningServiceDouble:
    return PinningServiceDouble(TOKEN, failing_cids={UNFETCHABLE})


@pytest.fixture
def endpoint(service: PinningServiceDouble) -> Iterator[str]:
    with serving(service.app()) as url:
        yield url


@pytest.fixture
async def client(endpoint: str) -> AsyncIterator[PinningServiceClient]:
    async with PinningServiceClient(endpoint, TOKEN) as pinning:
        yield pinning


async def test_create_get_wait_list_delete(client: PinningServiceClient) -> None:
    created = await client.add_pin(OUTPUT, name="output.png", meta={"job": "42"}, origins=["/ip4/127.0.0.1/tcp/4001"])
    assert created.status is PinState.QUEUED and created.pin.cid == OUTPUT
    assert created.pin.name == "output.png" and dict(created.pin.meta) == {"job": "42"}
    assert created.delegates and created.created.tzinfo is not None

    pending = await client.list_pins(statuses=[PinState.QUEUED, PinState.PINNING])
    assert [status.requestid for status in pending.results] == [created.requestid]
    assert (await client.list_pins()).count == 0  # by default only pinned ones are listed

    assert (await client.get_pin(created.requestid)).status is PinState.PINNING
    pinned = await client.wait_pinned(created.requestid, timeout=30, interval=0.01)
    assert pinned.status is PinState.PINNED and pinned.requestid == created.requestid

    by_cid = await client.list_pins(cids=[OUTPUT])
    assert by_cid.count == 1 and by_cid.results[0].pin.cid == OUTPUT
    assert (await client.list_pins(cids=[INPUT])).count == 0
    assert (await client.list_pins(meta={"job": "42"})).count == 1
    assert (await client.list_pins(name="OUTPUT.PNG", match="iexact")).count == 1
    assert (await client.list_pins(name="put.p", match="partial")).count == 1
    assert (await client.list_pins(name="OUTPUT.PNG")).count == 0  # exact and case-sensitive by default

    await client.delete_pin(created.requestid)
    with pytest.raises(PinNotFound) as caught:
        await client.get_pin(created.requestid)
    assert caught.value.status == 404 and caught.value.reason == "NOT_FOUND"


async def test_pagination_with_before(client: PinningServiceClient) -> None:
    for cid in (INPUT, OUTPUT, METADATA):
        await client.add_pin(cid)
    first = await client.list_pins(statuses=["queued"], limit=2)
    assert first.count == 3 and [status.pin.cid for status in first.results] == [METADATA, OUTPUT]
    rest = await client.list_pins(statuses=["queued"], limit=2, before=first.results[-1].created)
    assert [status.pin.cid for status in rest.results] == [INPUT]


async def test_replace_pin(client: PinningServiceClient) -> None:
    old = await client.add_pin(METADATA, name="metadata.json")
    new = await client.replace_pin(old.requestid, OUTPUT, name="metadata.json")
    assert new.requestid != old.requestid and new.pin.cid == OUTPUT
    with pytest.raises(PinNotFound):
        await client.get_pin(old.requestid)


async def test_bad_token_is_401(endpoint: str) -> None:
    async with PinningServiceClient(endpoint, "wrong") as intruder:
        with pytest.raises(PinningUnauthorized) as caught:
            await intruder.add_pin(INPUT)
    assert caught.value.status == 401 and caught.value.reason == "UNAUTHORIZED"
    assert "Access token is missing or invalid" in str(caught.value)


async def test_insufficient_funds_is_409(client: PinningServiceClient, service: PinningServiceDouble) -> None:
    service.insufficient_funds = True
    with pytest.raises(InsufficientFunds) as caught:
        await client.add_pin(INPUT)
    assert caught.value.status == 409 and caught.value.reason == "INSUFFICIENT_FUNDS"


async def test_rate_limits_carry_retry_after(client: PinningServiceClient, service: PinningServiceDouble) -> None:
    service.rate_limit(1, "7")
    with pytest.raises(PinningRateLimited) as caught:
        await client.add_pin(INPUT)
    assert caught.value.status == 429 and caught.value.retry_after == 7

    service.rate_limit(1, format_datetime(datetime(2020, 1, 1, tzinfo=UTC), usegmt=True))
    with pytest.raises(PinningRateLimited) as caught:
        await client.list_pins()
    assert caught.value.retry_after == 0  # a date in the past means "now"


async def test_wait_pinned_rides_out_rate_limits(client: PinningServiceClient, service: PinningServiceDouble) -> None:
    created = await client.add_pin(INPUT)
    service.rate_limit(2, "0")
    before = service.requests
    pinned = await client.wait_pinned(created.requestid, timeout=30, interval=0.01)
    assert pinned.status is PinState.PINNED
    assert service.requests - before == 4  # two refused polls, then pinning, then pinned


async def test_failed_pin_raises(client: PinningServiceClient) -> None:
    created = await client.add_pin(UNFETCHABLE)
    with pytest.raises(PinFailed) as caught:
        await client.wait_pinned(created.requestid, timeout=30, interval=0.01)
    assert caught.value.cid == UNFETCHABLE and "could not fetch" in str(caught.value)


async def test_wait_pinned_times_out(client: PinningServiceClient) -> None:
    created = await client.add_pin(INPUT)
    with pytest.raises(PinTimeout) as caught:
        await client.wait_pinned(created.requestid, timeout=0)
    assert caught.value.status == "pinning" and isinstance(caught.value, TimeoutError)


async def test_a_service_naming_another_cid_is_caught(endpoint: str, service: PinningServiceDouble) -> None:
    async with PinningServiceClient(endpoint, TOKEN) as pinning:
        created = await pinning.add_pin(INPUT)
        service.tamper_cid = lambda cid: OUTPUT
        with pytest.raises(CidMismatch) as caught:
            await pinning.get_pin(created.requestid)
        assert caught.value.expected == INPUT and caught.value.actual == OUTPUT
        with pytest.raises(CidMismatch):
            await pinning.add_pin(METADATA)
    async with PinningServiceClient(endpoint, TOKEN) as fresh:  # a new client checks against the CID it is given
        with pytest.raises(CidMismatch):
            await fresh.get_pin(created.requestid, cid=INPUT)
