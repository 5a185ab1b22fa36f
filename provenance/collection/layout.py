"""The two ways collections name their tokens' metadata, read off the token URIs themselves.

- Base URI: the contract returns `base + tokenId + suffix` (OpenZeppelin's ERC721 `_baseURI`,
  usually `ipfs://<folder CID>/` and a suffix of "" or ".json", the OpenSea convention). The
  upgrade publishes one new folder with every document under the collection's own names, and
  one new base URI points the whole collection at it.
- A URI per token (ERC721URIStorage, on-chain `data:` documents, mixed collections): every
  token gets its own new document and its own new URI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .erc721 import TokenUri

#: characters that cannot follow the token id inside a folder entry's name
_NOT_IN_NAME = ("/", "?", "#")


@dataclass(frozen=True)
class BaseUriLayout:
    """tokenURI(id) == base + str(id) + suffix for every token read."""

    base: str
    suffix: str
    kind: str = "base-uri"

    def name(self, token_id: int) -> str:
        """The token's document name in the collection's folder (its own naming, kept)."""
        return f"{token_id}{self.suffix}"

    def uri(self, base: str, token_id: int) -> str:
        """What the contract returns for a token once its base URI is `base`."""
        return f"{base}{self.name(token_id)}"


@dataclass(frozen=True)
class PerTokenLayout:
    kind: str = "per-token"


Layout = BaseUriLayout | PerTokenLayout


def _split(token: TokenUri) -> tuple[str, str] | None:
    """(base, suffix) when the URI ends with the token id and a file-name suffix."""
    assert token.uri is not None
    text = str(token.token_id)
    at = token.uri.rfind(text)
    if at <= 0:
        return None
    base, suffix = token.uri[:at], token.uri[at + len(text) :]
    if not base.endswith("/") or any(char in suffix for char in _NOT_IN_NAME):
        return None
    return base, suffix


def detect_layout(tokens: Sequence[TokenUri]) -> Layout:
    """Base URI when every token that has a URI is `base + id + suffix` with one base and one
    suffix (a folder), else a URI per token."""
    found = {_split(token) for token in tokens if token.uri is not None}
    if len(found) == 1 and None not in found:
        base, suffix = found.pop()  # type: ignore[misc]
        return BaseUriLayout(base, suffix)
    return PerTokenLayout()
