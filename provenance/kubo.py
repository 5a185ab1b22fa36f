"""Async client for a Kubo node's HTTP RPC (`/api/v0`), trusting nothing it says about CIDs.

Every command is a POST (Kubo refuses GET on the RPC port). Errors come back as
{"Message", "Code", "Type": "error"} with HTTP 500 (400 for code 1, a client error).
Every CID the node returns is compared with our own computation (`provenance.cid`), and
`cat` re-derives the CID of the bytes it streams, so a node that lies raises CidMismatch.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .cid import DAG_PB, RAW, AddResult, Cid, FileDagBuilder, hash_bytes, hash_file, resolve_raw_leaves
from .errors import (
    CidMismatch,
    InvalidCid,
    KuboAuthError,
    KuboClientError,
    KuboError,
    RemoteUnavailable,
    UnsupportedCodec,
)

# hashing a few MiB inline costs milliseconds; above this, hash in a thread so the event loop stays responsive
_INLINE_HASH_LIMIT = 4 << 20


@dataclass(frozen=True)
class KuboVersion:
    version: str
    commit: str
    repo: str
    system: str
    golang: str


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _kubo_error(response: httpx.Response) -> KuboError:
    status = response.status_code
    message = response.text.strip() or response.reason_phrase
    code: int | None = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("Type") == "error":
        message = str(body.get("Message", message))
        code = body.get("Code") if isinstance(body.get("Code"), int) else None
    if status in (401, 403):
        return KuboAuthError(message, status, code)
    if code == 1 or status == 400:
        return KuboClientError(message, status, code)
    return KuboError(message, status, code)


def _layouts_for(cid: Cid) -> list[tuple[int, bool]]:
    """The (cid_version, raw_leaves) settings of `ipfs add` that can produce a root like `cid`."""
    if cid.version == 0:
        return [(0, False)]
    if cid.codec == RAW:
        return [(1, True)]
    if cid.codec == DAG_PB:
        return [(1, True), (1, False)]
    raise UnsupportedCodec(f"{cid} is {cid.codec_name}; only UnixFS files can be verified")


class KuboRpcClient:
    """One Kubo node. `auth` is either a full Authorization header value ("Bearer ...", "Basic ...")
    matching the node's API.Authorizations, or a (user, password) pair for HTTP basic auth."""

    def __init__(
        self,
        base_url: str,
        auth: str | tuple[str, str] | None = None,
        *,
        timeout: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        root = base_url.rstrip("/").removesuffix("/api/v0")
        headers = {"Authorization": auth} if isinstance(auth, str) else {}
        self._http = httpx.AsyncClient(
            base_url=f"{root}/api/v0/",
            headers=headers,
            auth=auth if isinstance(auth, tuple) else None,
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> KuboRpcClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _post(self, command: str, params: dict[str, str], **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.post(command, params=params, **kwargs)
        except httpx.TransportError as exc:
            raise RemoteUnavailable(f"Kubo RPC {command} failed: {exc!r}", 0) from exc
        if response.status_code != 200:
            raise _kubo_error(response)
        return response

    async def version(self) -> KuboVersion:
        body = (await self._post("version", {})).json()
        return KuboVersion(
            version=str(body.get("Version", "")),
            commit=str(body.get("Commit", "")),
            repo=str(body.get("Repo", "")),
            system=str(body.get("System", "")),
            golang=str(body.get("Golang", "")),
        )

    async def add(
        self,
        source: bytes | Path,
        *,
        cid_version: int = 0,
        raw_leaves: bool | None = None,
        pin: bool = True,
        filename: str | None = None,
    ) -> AddResult:
        """Upload a file with `ipfs add` semantics; the node's CID must equal the one we compute first."""
        raw = resolve_raw_leaves(cid_version, raw_leaves)
        if isinstance(source, bytes | bytearray | memoryview):
            data = bytes(source)
            if len(data) <= _INLINE_HASH_LIMIT:
                local = hash_bytes(data, cid_version=cid_version, raw_leaves=raw)
            else:
                local = await asyncio.to_thread(hash_bytes, data, cid_version=cid_version, raw_leaves=raw)
            response = await self._upload(data, filename or "file", cid_version, raw, pin)
        else:
            path = Path(source)
            local = await asyncio.to_thread(hash_file, path, cid_version=cid_version, raw_leaves=raw)
            with open(path, "rb") as handle:  # httpx streams the file object in small pieces
                response = await self._upload(handle, filename or path.name, cid_version, raw, pin)
        remote = self._added_cid(response)
        try:
            matches = Cid.parse(remote) == local.root
        except InvalidCid:
            matches = False
        if not matches:
            raise CidMismatch(local.cid, remote, "add")
        return local

    async def _upload(self, content: Any, name: str, cid_version: int, raw: bool, pin: bool) -> httpx.Response:
        params = {
            "cid-version": str(cid_version),
            "raw-leaves": _flag(raw),
            "pin": _flag(pin),
            "quieter": "true",
            "progress": "false",
        }
        return await self._post("add", params, files={"file": (name, content, "application/octet-stream")})

    @staticmethod
    def _added_cid(response: httpx.Response) -> str:
        """The root's CID from add's newline-delimited JSON (the last object carrying a Hash)."""
        root: str | None = None
        for line in response.text.splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                raise KuboError(f"add answered with something other than JSON: {line[:200]!r}", 200) from None
            if entry.get("Type") == "error":
                raise KuboError(str(entry.get("Message", "add failed")), 200, entry.get("Code"))
            if "Hash" in entry:
                root = str(entry["Hash"])
        if root is None:
            raise KuboError("add answered without any CID", 200)
        return root

    async def pin_add(self, cid: str | Cid) -> str:
        """Pin recursively on the node (`ipfs pin add`); returns the CID the node confirmed."""
        target = Cid.parse(cid)
        body = (await self._post("pin/add", {"arg": target.encode()})).json()
        pins = [str(pin) for pin in body.get("Pins") or []]
        for pin in pins:
            try:
                if Cid.parse(pin).same_content(target):
                    return pin
            except InvalidCid:
                continue
        raise CidMismatch(target.encode(), ", ".join(pins) or "(none)", "pin/add")

    async def cat(self, cid: str | Cid, *, verify: bool = True) -> AsyncIterator[bytes]:
        """Stream a file's bytes. With verify=True the bytes are rebuilt into a UnixFS DAG as they pass, and
        CidMismatch is raised at the end if they do not produce `cid`: treat everything received as void then.
        (Verification assumes Kubo's default chunking, which is how every CID we record was made.)"""
        target = Cid.parse(cid)
        builders = [FileDagBuilder(version, raw) for version, raw in _layouts_for(target)] if verify else []
        try:
            async with self._http.stream("POST", "cat", params={"arg": target.encode()}) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _kubo_error(response)
                async for piece in response.aiter_bytes():
                    for builder in builders:
                        builder.write(piece)
                    yield piece
        except httpx.TransportError as exc:
            raise RemoteUnavailable(f"Kubo RPC cat failed: {exc!r}", 0) from exc
        if builders:
            for builder in builders:
                builder.finish()
                if builder.result.root == target:
                    return
            raise CidMismatch(target.encode(), builders[0].result.cid, "cat: the bytes served hash to another CID")

    async def cat_bytes(self, cid: str | Cid, *, verify: bool = True) -> bytes:
        """The whole file, verified before it is returned."""
        return b"".join([piece async for piece in self.cat(cid, verify=verify)])
