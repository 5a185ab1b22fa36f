"""A read-only IPFS gateway at /ipfs/{cid} over the local store.

Follows the Trustless Gateway conventions: the file itself by default, the single block
with `?format=raw` (or `Accept: application/vnd.ipld.raw`), the whole DAG as a CARv1 with
`?format=car` (or `Accept: application/vnd.ipld.car`). Content is immutable, so it is
cached forever; every block is re-hashed as it is read.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from provenance.cid import IDENTITY, Cid
from provenance.errors import (
    BlockNotFound,
    CorruptBlock,
    InvalidCid,
    InvalidDirectoryEntry,
    IpfsError,
    NotADirectory,
    NotAFile,
    PathNotFound,
)
from provenance.ipfs import LocalIpfsStore

from .openapi import errors
from .problems import Problem

RAW = "application/vnd.ipld.raw"
CAR = "application/vnd.ipld.car"
IMMUTABLE = "public, max-age=29030400, immutable"
SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"{", "application/json"),
)


def content_type(head: bytes) -> str:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for magic, kind in SIGNATURES if head.startswith(magic)), "application/octet-stream")


def _requested_format(request: Request, format: str | None) -> str:
    if format:
        return format
    accept = request.headers.get("accept", "")
    if RAW in accept:
        return "raw"
    if CAR in accept:
        return "car"
    return "file"


def _problem(exc: IpfsError, cid: str) -> Problem:
    if isinstance(exc, InvalidCid):
        return Problem(400, "invalid-cid", "Invalid CID", f"{cid!r} is not a CID: {exc}")
    if isinstance(exc, BlockNotFound):
        return Problem(404, "not-found", "Not held here", f"{cid} is not pinned on this node")
    if isinstance(exc, PathNotFound | NotADirectory | InvalidDirectoryEntry):
        return Problem(404, "not-found", "No such path", str(exc))
    if isinstance(exc, NotAFile):
        return Problem(422, "not-a-file", "Not a file", str(exc))
    if isinstance(exc, CorruptBlock):
        return Problem(502, "corrupt-block", "Corrupt content", str(exc))
    return Problem(500, "ipfs-error", "IPFS error", str(exc))


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def gateway_router(store: LocalIpfsStore) -> APIRouter:
    router = APIRouter(tags=["ipfs gateway"])

    binary = {"schema": {"type": "string", "format": "binary"}}
    served = [kind for _, kind in SIGNATURES] + ["image/webp", "application/octet-stream", RAW, f"{CAR}; version=1"]

    @router.get(
        "/ipfs/{cid}",
        response_class=Response,
        responses={
            200: {"description": "The content, verified block by block", "content": dict.fromkeys(served, binary)},
            304: {"description": "Not modified (the ETag matched; content is immutable)"},
            **errors(400, 404, 422),
            502: {"description": "A stored block does not match its CID", "content": errors(400)[400]["content"]},
        },
    )
    def get_ipfs(request: Request, cid: str, format: str | None = Query(None, pattern="^(raw|car)$")) -> Response:
        """Content by CID: the file, `?format=raw` for one block, `?format=car` for the DAG."""
        return serve(request, cid, "", format)

    def get_ipfs_path(
        request: Request, cid: str, path: str, format: str | None = Query(None, pattern="^(raw|car)$")
    ) -> Response:
        """Content at a path inside a UnixFS directory (e.g. a collection's `<folder>/1.json`),
        basic and HAMT-sharded directories alike."""
        return serve(request, cid, path, format)

    def serve(request: Request, cid: str, path: str, format: str | None) -> Response:
        kind = _requested_format(request, format)
        inner = path.strip("/")
        try:
            root = Cid.parse(cid)
            if root.hash_code == IDENTITY:
                # an identity CID carries its bytes in itself: serving it would let anyone have this
                # origin serve content of their choosing; the gateway serves only what it holds
                raise BlockNotFound(str(root))
            parsed = store.resolve_path(root, inner)  # "" is the root itself
            etag = f'"{parsed}.{kind}"' if kind != "file" else f'"{parsed}"'
            headers = {
                "Cache-Control": IMMUTABLE,
                "ETag": etag,
                "X-Ipfs-Path": f"/ipfs/{root}" + (f"/{inner}" if inner else ""),
                "X-Content-Type-Options": "nosniff",
            }
            if request.headers.get("if-none-match") == etag:
                return Response(status_code=304, headers=headers)
            if kind == "raw":
                block = store.get_block(parsed)
                return Response(block, media_type=RAW, headers=headers)
            if kind == "car":
                store.get_block(parsed)  # fail now (404) rather than mid-stream
                headers["Content-Disposition"] = f'attachment; filename="{parsed}.car"'
                return StreamingResponse(store.export_car(parsed), media_type=f"{CAR}; version=1", headers=headers)
            size = store.stat(parsed).size
            chunks = store.cat(parsed)
            first = next(chunks, b"")  # the first block is read and verified before any header goes out
        except IpfsError as exc:
            raise _problem(exc, cid) from None
        headers["Content-Length"] = str(size)
        if request.method == "HEAD":
            return Response(status_code=200, headers=headers, media_type=content_type(first))
        return StreamingResponse(_prepend(first, chunks), media_type=content_type(first), headers=headers)

    router.add_api_route("/ipfs/{cid}", get_ipfs, methods=["HEAD"], include_in_schema=False)
    router.add_api_route(
        "/ipfs/{cid}/{path:path}", get_ipfs_path, response_class=Response, responses=errors(400, 404, 422)
    )
    router.add_api_route("/ipfs/{cid}/{path:path}", get_ipfs_path, methods=["HEAD"], include_in_schema=False)
    return router
