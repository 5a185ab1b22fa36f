"""Async client for the IPFS Pinning Service API (ipfs/pinning-services-api-spec, v1.x).

Endpoints: POST /pins, GET /pins, GET|POST|DELETE /pins/{requestid}; bearer token auth.
Failures are {"error": {"reason", "details"}} and become typed errors (401, 404, 409, 429
with Retry-After). Each PinStatus the service returns must name the CID we asked for;
the client remembers which CID each of its requestids was created for and checks it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

import httpx

from .cid import Cid
from .errors import (
    CidMismatch,
    InsufficientFunds,
    InvalidCid,
    PinFailed,
    PinningBadRequest,
    PinningError,
    PinningRateLimited,
    PinningUnauthorized,
    PinNotFound,
    PinTimeout,
    RemoteUnavailable,
)


class PinState(StrEnum):
    QUEUED = "queued"
    PINNING = "pinning"
    PINNED = "pinned"
    FAILED = "failed"


@dataclass(frozen=True)
class Pin:
    cid: str
    name: str | None = None
    origins: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"cid": self.cid}
        if self.name is not None:
            body["name"] = self.name
        if self.origins:
            body["origins"] = list(self.origins)
        if self.meta:
            body["meta"] = dict(self.meta)
        return body


@dataclass(frozen=True)
class PinStatus:
    requestid: str
    status: PinState
    created: datetime
    pin: Pin
    delegates: tuple[str, ...]
    info: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PinResults:
    count: int  # matches in total; more than len(results) means another page (use `before`)
    results: tuple[PinStatus, ...]


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _failure(response: httpx.Response) -> PinningError:
    status = response.status_code
    reason, details = f"HTTP_{status}", response.text.strip()[:500]
    try:
        error = response.json().get("error")
        if isinstance(error, dict) and "reason" in error:
            reason, details = str(error["reason"]), str(error.get("details", ""))
    except (ValueError, AttributeError):
        pass
    if status == 429:
        return PinningRateLimited(status, reason, details, _retry_after(response.headers.get("Retry-After")))
    kinds: dict[int, type[PinningError]] = {
        400: PinningBadRequest,
        401: PinningUnauthorized,
        404: PinNotFound,
        409: InsufficientFunds,
    }
    return kinds.get(status, PinningError)(status, reason, details)


def _parse_status(body: Any, status: int) -> PinStatus:
    try:
        pin = body["pin"]
        created = datetime.fromisoformat(str(body["created"]))
        return PinStatus(
            requestid=str(body["requestid"]),
            status=PinState(body["status"]),
            created=created,
            pin=Pin(
                cid=str(pin["cid"]),
                name=pin.get("name"),
                origins=tuple(pin.get("origins") or ()),
                meta=dict(pin.get("meta") or {}),
            ),
            delegates=tuple(body.get("delegates") or ()),  # required by the spec; tolerate services that omit it
            info=dict(body.get("info") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PinningError(status, "INVALID_RESPONSE", f"not a PinStatus: {exc!r}") from None


def _format_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class PinningServiceClient:
    """One pinning service account: `endpoint` is the API root (…/pins lives under it), `token` its access token."""

    def __init__(
        self,
        endpoint: str,
        token: str,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=endpoint.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )
        self._requested: dict[str, Cid] = {}  # requestid -> the CID we asked to pin

    async def __aenter__(self) -> PinningServiceClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise RemoteUnavailable(f"pinning service {method} {path} failed: {exc!r}", 0) from exc
        if response.status_code not in (200, 202):
            raise _failure(response)
        return response

    def _checked(self, status: PinStatus, expected: Cid | None, context: str) -> PinStatus:
        expected = expected or self._requested.get(status.requestid)
        if expected is None:
            return status
        try:
            same = Cid.parse(status.pin.cid).same_content(expected)
        except InvalidCid:
            same = False
        if not same:
            raise CidMismatch(expected.encode(), status.pin.cid, context)
        return status

    async def add_pin(
        self,
        cid: str | Cid,
        *,
        name: str | None = None,
        origins: Sequence[str] = (),
        meta: Mapping[str, str] | None = None,
    ) -> PinStatus:
        """POST /pins: ask the service to pin `cid` recursively. Usually answers queued; see wait_pinned."""
        return await self._post_pin("pins", cid, name, origins, meta, "POST /pins")

    async def replace_pin(
        self,
        requestid: str,
        cid: str | Cid,
        *,
        name: str | None = None,
        origins: Sequence[str] = (),
        meta: Mapping[str, str] | None = None,
    ) -> PinStatus:
        """POST /pins/{requestid}: swap the pinned CID without unpinning shared blocks; returns a new requestid."""
        status = await self._post_pin(f"pins/{requestid}", cid, name, origins, meta, "replace pin")
        if status.requestid != requestid:
            self._requested.pop(requestid, None)
        return status

    async def _post_pin(
        self,
        path: str,
        cid: str | Cid,
        name: str | None,
        origins: Sequence[str],
        meta: Mapping[str, str] | None,
        context: str,
    ) -> PinStatus:
        """POST a Pin object; the answer's CID is checked and its requestid remembered for `cid`."""
        target = Cid.parse(cid)
        pin = Pin(target.encode(), name, tuple(origins), dict(meta or {}))
        response = await self._request("POST", path, json=pin.to_json())
        status = self._checked(_parse_status(response.json(), response.status_code), target, context)
        self._requested[status.requestid] = target
        return status

    async def get_pin(self, requestid: str, *, cid: str | Cid | None = None) -> PinStatus:
        """GET /pins/{requestid}; checked against `cid`, or the CID this client created the request for."""
        response = await self._request("GET", f"pins/{requestid}")
        status = _parse_status(response.json(), response.status_code)
        if status.requestid != requestid:
            raise PinningError(
                response.status_code, "INVALID_RESPONSE", f"asked for {requestid}, got {status.requestid}"
            )
        return self._checked(status, Cid.parse(cid) if cid is not None else None, f"GET /pins/{requestid}")

    async def list_pins(
        self,
        *,
        cids: Iterable[str | Cid] = (),
        name: str | None = None,
        match: str | None = None,
        statuses: Iterable[PinState | str] = (),
        before: datetime | None = None,
        after: datetime | None = None,
        limit: int | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> PinResults:
        """GET /pins with the spec's filters (the service lists only pinned ones when no status is given)."""
        wanted = [Cid.parse(cid) for cid in cids]
        params: list[tuple[str, str]] = [("cid", cid.encode()) for cid in wanted]
        params += [("status", PinState(state).value) for state in statuses]
        if name is not None:
            params.append(("name", name))
        if match is not None:
            params.append(("match", match))
        if before is not None:
            params.append(("before", _format_time(before)))
        if after is not None:
            params.append(("after", _format_time(after)))
        if limit is not None:
            params.append(("limit", str(limit)))
        if meta:
            params.append(("meta", json.dumps(dict(meta), separators=(",", ":"))))
        response = await self._request("GET", "pins", params=params)
        body = response.json()
        try:
            count, items = int(body["count"]), list(body["results"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PinningError(response.status_code, "INVALID_RESPONSE", f"not PinResults: {exc!r}") from None
        results = []
        for item in items:
            status = self._checked(_parse_status(item, response.status_code), None, "GET /pins")
            if wanted and not any(Cid.parse(status.pin.cid).same_content(cid) for cid in wanted):
                raise CidMismatch(", ".join(cid.encode() for cid in wanted), status.pin.cid, "GET /pins?cid=")
            results.append(status)
        return PinResults(count, tuple(results))

    async def delete_pin(self, requestid: str) -> None:
        """DELETE /pins/{requestid} (202 Accepted)."""
        await self._request("DELETE", f"pins/{requestid}")
        self._requested.pop(requestid, None)

    async def wait_pinned(
        self,
        requestid: str,
        timeout: float,
        *,
        cid: str | Cid | None = None,
        interval: float = 0.5,
        max_interval: float = 10.0,
    ) -> PinStatus:
        """Poll until pinned (returned), failed (PinFailed) or `timeout` seconds pass (PinTimeout).

        Polls back off from `interval` to `max_interval`; a 429 waits for its Retry-After.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = interval
        last = PinState.QUEUED.value
        while True:
            try:
                status = await self.get_pin(requestid, cid=cid)
            except PinningRateLimited as exc:
                pause = exc.retry_after if exc.retry_after is not None else delay
            else:
                if status.status is PinState.PINNED:
                    return status
                if status.status is PinState.FAILED:
                    raise PinFailed(requestid, status.pin.cid, dict(status.info))
                last = status.status.value
                pause = delay
                delay = min(delay * 2, max_interval)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise PinTimeout(requestid, last, timeout)
            await asyncio.sleep(min(pause, remaining))
