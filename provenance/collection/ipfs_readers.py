"""Where `ipfs://` content is read from: the `IpfsReader` protocol and its two adapters.

Every IPFS token URI (and every gateway-style https URL, rewritten) is served by the reader the
operator chose, so no token ever makes us depend on a random public gateway.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import httpx

from ..errors import (
    BlockNotFound,
    CorruptBlock,
    InvalidCid,
    NotADirectory,
    NotAFile,
    PathNotFound,
    UnsupportedCodec,
)
from ..ipfs import LocalIpfsStore
from .fetch_errors import BadContent, NotFound, RefusedAddress, TooLarge, TooManyRedirects
from .httpio import ONE_REQUEST_PER_CONNECTION, HttpGetter, Redirect, ssl_context


class IpfsReader(Protocol):
    """Reads one file of IPFS content.

    `path` is relative to `cid` ("" for the CID itself), segments already percent-decoded, no
    leading slash. Raise NotFound when the CID or path is absent, TooLarge as soon as the file is
    known to exceed `limit` bytes (reading no further), BadContent when it is not a file. The
    caller bounds the whole call with its deadline (it may be cancelled at any await).
    """

    async def read(self, cid: str, path: str, limit: int) -> bytes: ...


class LocalStoreReader:
    """Content of the local store (`LocalIpfsStore`): blocks are re-hashed as they are read."""

    def __init__(self, store: LocalIpfsStore) -> None:
        self._store = store

    async def read(self, cid: str, path: str, limit: int) -> bytes:
        # disk reads and hashing: off the event loop
        return await asyncio.to_thread(self._read, cid, path, limit)

    def _read(self, cid: str, path: str, limit: int) -> bytes:
        where = f"{cid}/{path}" if path else cid
        try:
            target = self._store.resolve_path(cid, path)
            size = self._store.stat(target).size
            if size > limit:
                raise TooLarge(f"ipfs://{where} is {size} bytes; this fetch allows {limit}")
            body = bytearray()
            for piece in self._store.cat(target):
                if len(body) + len(piece) > limit:
                    raise TooLarge(f"ipfs://{where} holds more than {limit} bytes")
                body += piece
            return bytes(body)
        except (BlockNotFound, PathNotFound) as exc:
            raise NotFound(f"ipfs://{where} is not in the local IPFS store ({exc}); pin or import it first") from None
        except NotADirectory as exc:
            raise NotFound(f"ipfs://{where}: {exc}") from None
        except (NotAFile, CorruptBlock, UnsupportedCodec, InvalidCid) as exc:
            raise BadContent(f"ipfs://{where} cannot be served as a file: {exc}") from None


class GatewayIpfsReader:
    """An HTTP gateway (`<base>/ipfs/<cid>/<path>`, e.g. a Kubo node's gateway port) the operator configured.

    Trusted like any operator setting: it may sit on a private address. It is followed through
    redirects only within its own host and subdomains (subdomain gateways redirect there). Bytes
    are not re-hashed: a path's content cannot be checked against the root CID without the DAG.
    """

    def __init__(
        self,
        base_url: str,
        *,
        ca_bundle: str | Path | None = None,
        timeout: float = 20.0,
        max_redirects: int = 5,
        user_agent: str = "satscale-ipfs-gateway/1",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._base = httpx.URL(base_url.rstrip("/") + "/")
        self._max_redirects = max_redirects
        self._http = HttpGetter(
            transport
            or httpx.AsyncHTTPTransport(
                verify=ssl_context(ca_bundle), trust_env=False, limits=ONE_REQUEST_PER_CONNECTION
            ),
            timeout=httpx.Timeout(timeout),
            user_agent=user_agent,
        )

    async def __aenter__(self) -> GatewayIpfsReader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def url_for(self, cid: str, path: str) -> str:
        suffix = "/" + quote(path, safe="/") if path else ""
        return str(self._base.join(f"ipfs/{quote(cid, safe='')}{suffix}"))

    async def read(self, cid: str, path: str, limit: int) -> bytes:
        url = self.url_for(cid, path)
        for _ in range(self._max_redirects + 1):
            result = await self._http.get_once(url, limit)
            if not isinstance(result, Redirect):
                return result.data
            url = self._within_gateway(result)
        raise TooManyRedirects(f"the IPFS gateway {self._base} redirected more than {self._max_redirects} times")

    def _within_gateway(self, redirect: Redirect) -> str:
        target = httpx.URL(redirect.url).join(redirect.location)
        base_host = self._base.host
        if target.scheme not in ("http", "https") or not (
            target.host == base_host or target.host.endswith("." + base_host)
        ):
            raise RefusedAddress(
                f"the IPFS gateway {self._base} redirected outside itself, to {redirect.location!r}; "
                "configure a gateway that serves the content directly"
            )
        return str(target)
