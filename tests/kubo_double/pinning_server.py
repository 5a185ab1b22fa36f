"""An in-memory IPFS Pinning Service API server (ipfs/pinning-services-api-spec) for loopback tests.

Deterministic, no clocks involved in progress: every GET /pins/{requestid} moves a pending pin one
step along queued -> pinning -> pinned (or -> failed for CIDs in `failing_cids`). CIDs are validated
with the `multiformats` package, independently of `provenance.cid`.

Knobs: `insufficient_funds` (409 on new pins), `rate_limit(n, retry_after)` (the next n requests get
429 with Retry-After), `tamper_cid` (rewrites the CID in every PinStatus it returns).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from multiformats import CID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

DELEGATE = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
_NEXT = {"queued": "pinning", "pinning": "pinned"}


def failure(status: int, reason: str, details: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"reason": reason, "details": details}}, status_code=status, headers=headers)


@dataclass
class PinRecord:
    requestid: str
    cid: str
    name: str | None
    origins: list[str]
    meta: dict[str, str]
    created: datetime
    status: str = "queued"
    info: dict[str, str] = field(default_factory=dict)


class PinningServiceDouble:
    def __init__(
        self,
        token: str,
        *,
        failing_cids: set[str] | None = None,
        tamper_cid: Callable[[str], str] | None = None,
    ) -> None:
        self.token = token
        self.failing_cids = failing_cids or set()
        self.tamper_cid = tamper_cid
        self.insufficient_funds = False
        self.records: dict[str, PinRecord] = {}
        self.requests = 0
        self._rate_limited = 0
        self._retry_after = "1"
        self._last_created = datetime.now(UTC)

    def rate_limit(self, count: int, retry_after: str) -> None:
        self._rate_limited = count
        self._retry_after = retry_after

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/pins", self.pins, methods=["GET", "POST"]),
                Route("/pins/{requestid}", self.pin, methods=["GET", "POST", "DELETE"]),
            ]
        )

    def _gate(self, request: Request) -> Response | None:
        self.requests += 1
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return failure(401, "UNAUTHORIZED", "Access token is missing or invalid")
        if self._rate_limited:
            self._rate_limited -= 1
            return failure(429, "RATE_LIMITED", "Slow down", {"Retry-After": self._retry_after})
        return None

    def _created(self) -> datetime:
        # `created` must be unique: it is the pagination key
        now = max(datetime.now(UTC), self._last_created + timedelta(microseconds=1))
        self._last_created = now
        return now

    def _render(self, record: PinRecord) -> dict[str, Any]:
        pin: dict[str, Any] = {"cid": self.tamper_cid(record.cid) if self.tamper_cid else record.cid}
        if record.name is not None:
            pin["name"] = record.name
        if record.origins:
            pin["origins"] = record.origins
        if record.meta:
            pin["meta"] = record.meta
        body: dict[str, Any] = {
            "requestid": record.requestid,
            "status": record.status,
            "created": record.created.isoformat().replace("+00:00", "Z"),
            "pin": pin,
            "delegates": [DELEGATE],
        }
        if record.info:
            body["info"] = record.info
        return body

    async def _new_record(self, request: Request) -> PinRecord | Response:
        try:
            body = await request.json()
            CID.decode(body["cid"])
        except (ValueError, KeyError, TypeError) as exc:
            return failure(400, "BAD_REQUEST", f"invalid pin object: {exc}")
        if self.insufficient_funds:
            return failure(409, "INSUFFICIENT_FUNDS", "Unable to process request due to the lack of funds")
        record = PinRecord(
            requestid=str(uuid.uuid4()),
            cid=body["cid"],
            name=body.get("name"),
            origins=list(body.get("origins") or []),
            meta=dict(body.get("meta") or {}),
            created=self._created(),
        )
        self.records[record.requestid] = record
        return record

    async def pins(self, request: Request) -> Response:
        if (refused := self._gate(request)) is not None:
            return refused
        if request.method == "POST":
            record = await self._new_record(request)
            if isinstance(record, Response):
                return record
            return JSONResponse(self._render(record), status_code=202)
        return self._list(request)

    def _list(self, request: Request) -> Response:
        query = request.query_params

        def values(name: str) -> list[str]:  # both ?x=a&x=b (the spec's explode) and ?x=a,b
            return [part for value in query.getlist(name) for part in value.split(",") if part]

        try:
            cids = {CID.decode(cid) for cid in values("cid")}
            statuses = set(values("status")) or {"pinned"}
            limit = int(query.get("limit", "10"))
            before = datetime.fromisoformat(query["before"]) if "before" in query else None
            after = datetime.fromisoformat(query["after"]) if "after" in query else None
            meta = json.loads(query["meta"]) if "meta" in query else {}
        except (ValueError, KeyError) as exc:
            return failure(400, "BAD_REQUEST", str(exc))
        if not 1 <= limit <= 1000 or not statuses <= {"queued", "pinning", "pinned", "failed"}:
            return failure(400, "BAD_REQUEST", "limit must be 1..1000 and status one of the four states")
        name, match = query.get("name"), query.get("match", "exact")

        def name_matches(record: PinRecord) -> bool:
            if name is None:
                return True
            have = record.name or ""
            if match.startswith("i"):
                have, want = have.lower(), name.lower()
            else:
                want = name
            return want in have if match.endswith("partial") else want == have

        found = [
            record
            for record in self.records.values()
            if record.status in statuses
            and (not cids or CID.decode(record.cid) in cids)
            and name_matches(record)
            and (before is None or record.created < before)
            and (after is None or record.created > after)
            and all(record.meta.get(key) == value for key, value in meta.items())
        ]
        found.sort(key=lambda record: record.created, reverse=True)
        return JSONResponse({"count": len(found), "results": [self._render(record) for record in found[:limit]]})

    async def pin(self, request: Request) -> Response:
        if (refused := self._gate(request)) is not None:
            return refused
        record = self.records.get(request.path_params["requestid"])
        if record is None:
            return failure(404, "NOT_FOUND", "The specified resource was not found")
        if request.method == "DELETE":
            del self.records[record.requestid]
            return Response(status_code=202)
        if request.method == "POST":
            replacement = await self._new_record(request)
            if isinstance(replacement, Response):
                return replacement
            del self.records[record.requestid]
            return JSONResponse(self._render(replacement), status_code=202)
        self._advance(record)
        return JSONResponse(self._render(record))

    def _advance(self, record: PinRecord) -> None:
        if record.status not in _NEXT:
            return
        if record.cid in self.failing_cids and record.status == "pinning":
            record.status = "failed"
            record.info = {"status_details": "could not fetch the DAG from any provider"}
        else:
            record.status = _NEXT[record.status]
