"""Reading any ERC-721 collection over JSON-RPC: what it supports, which tokens it has, their URIs.

Collections are written by anyone, so nothing is assumed beyond ERC-721 itself (checked through
ERC-165): enumeration (`totalSupply`/`tokenByIndex`), ERC-4906 and ERC-7160 are each asked
for, and a contract that lacks a call simply does not have it. A token whose `tokenURI`
reverts (burnt, never minted) is reported, not fatal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

from web3 import Web3
from web3.exceptions import Web3Exception

from ..chain import ChainRejected, _guard

T = TypeVar("T")

ERC165 = bytes.fromhex("01ffc9a7")
ERC721 = bytes.fromhex("80ac58cd")
ERC721_METADATA = bytes.fromhex("5b5e139f")
ERC721_ENUMERABLE = bytes.fromhex("780e9d63")
ERC4906 = bytes.fromhex("49064906")
ERC7160 = bytes.fromhex("06e1bc5b")

#: a contract's revert may ask web3 to fetch URLs of its choosing (EIP-3668 CCIP-read): never
_NO_CCIP = {"ccip_read_enabled": False}

#: the longest token URI read (an on-chain data: document with its image inlined fits)
MAX_URI_CHARS = 2 << 20

#: the most tokens one upgrade reads (a larger collection is upgraded in ranges)
MAX_TOKENS = 20_000

_ABI: list[dict[str, Any]] = [
    {"type": "function", "name": name, "stateMutability": "view", "inputs": inputs, "outputs": outputs}
    for name, inputs, outputs in [
        ("supportsInterface", [{"name": "id", "type": "bytes4"}], [{"name": "", "type": "bool"}]),
        ("name", [], [{"name": "", "type": "string"}]),
        ("symbol", [], [{"name": "", "type": "string"}]),
        ("totalSupply", [], [{"name": "", "type": "uint256"}]),
        ("tokenByIndex", [{"name": "index", "type": "uint256"}], [{"name": "", "type": "uint256"}]),
        ("tokenURI", [{"name": "tokenId", "type": "uint256"}], [{"name": "", "type": "string"}]),
        ("ownerOf", [{"name": "tokenId", "type": "uint256"}], [{"name": "", "type": "address"}]),
        ("provenanceRegistry", [], [{"name": "", "type": "address"}]),
    ]
]


class CollectionError(Exception):
    """The collection cannot be read as asked; the message says what to do."""


class NotAnErc721(CollectionError):
    pass


class TokensUnlisted(CollectionError):
    """The contract does not say which tokens exist: the caller must give them."""


@dataclass(frozen=True)
class CollectionFacts:
    address: str
    chain_id: int
    name: str | None
    symbol: str | None
    enumerable: bool
    total_supply: int | None  # None: the contract has no totalSupply
    erc4906: bool  # announces metadata updates (ERC-4906)
    erc7160: bool  # keeps every token URI as a revision (ERC-7160)
    #: the ProvenanceRegistry a Satscale collection links its upgrades to (None: not ours)
    provenance_registry: str | None


@dataclass(frozen=True)
class TokenUri:
    token_id: int
    uri: str | None
    error: str | None = None  # why there is no URI (the call reverted: burnt or never minted)


class CollectionReader:
    """Read-only calls to one ERC-721 contract (a `Web3` connected to any JSON-RPC endpoint)."""

    def __init__(
        self, w3: Web3, address: str, lock: AbstractContextManager[Any] | None = None, *, owns_connection: bool = False
    ) -> None:
        """`lock`: held around every call when the connection is shared with another thread
        that needs it (the embedded chain is not thread-safe); `owns_connection`: `close()`
        closes the provider (one made for this reader, not the server's own chain)."""
        if not Web3.is_address(address):
            raise CollectionError(f"{address!r} is not a contract address (0x followed by 40 hex digits)")
        self.w3 = w3
        self.address = Web3.to_checksum_address(address)
        self.contract = w3.eth.contract(address=self.address, abi=_ABI)
        self._lock = lock or nullcontext()
        self._owns_connection = owns_connection

    def close(self) -> None:
        close = getattr(self.w3.provider, "close", None)
        if self._owns_connection and callable(close):
            close()

    def _call(self, call: Callable[[], T]) -> T:
        with self._lock:
            return _guard(call)

    def _optional(self, call: Callable[[], T]) -> T | None:
        """A call the contract may not have: None when it reverts or returns nothing."""
        try:
            return self._call(call)
        except (ChainRejected, Web3Exception):  # reverted, or nothing decodable came back
            return None

    def supports(self, interface: bytes) -> bool:
        return bool(self._optional(lambda: self.contract.functions.supportsInterface(interface).call(**_NO_CCIP)))

    def facts(self) -> CollectionFacts:
        """What the collection supports; refuses an address that is not an ERC-721."""
        code = self._call(lambda: self.w3.eth.get_code(self.address))
        chain_id = self._call(lambda: self.w3.eth.chain_id)
        if not isinstance(chain_id, int) or isinstance(chain_id, bool):
            raise CollectionError("the RPC's chain id is not a number: it is not an EVM chain's JSON-RPC")
        if not code:
            raise NotAnErc721(f"there is no contract at {self.address} on chain {chain_id}")
        if not (self.supports(ERC165) and self.supports(ERC721)):
            raise NotAnErc721(f"{self.address} does not declare ERC-721 (ERC-165 interface 0x80ac58cd)")
        fn = self.contract.functions
        registry = self._optional(lambda: fn.provenanceRegistry().call(**_NO_CCIP))
        return CollectionFacts(
            address=self.address,
            chain_id=chain_id,
            name=self._optional(lambda: fn.name().call(**_NO_CCIP)),
            symbol=self._optional(lambda: fn.symbol().call(**_NO_CCIP)),
            enumerable=self.supports(ERC721_ENUMERABLE),
            total_supply=self._optional(lambda: fn.totalSupply().call(**_NO_CCIP)),
            erc4906=self.supports(ERC4906),
            erc7160=self.supports(ERC7160),
            provenance_registry=Web3.to_checksum_address(registry) if registry and int(registry, 16) else None,
        )

    def exists(self, token_id: int) -> bool:
        return self._optional(lambda: self.contract.functions.ownerOf(token_id).call(**_NO_CCIP)) is not None

    def token_ids(
        self, facts: CollectionFacts, chosen: Iterable[int] | None = None, limit: int = MAX_TOKENS
    ) -> list[int]:
        """The tokens to read: those chosen, else every token the contract lists (enumeration),
        else 1..totalSupply (or 0..totalSupply-1 when token 0 exists); more than `limit` is
        refused before a single id is asked for."""
        if chosen is not None:
            ids = sorted(set(chosen))
        elif facts.enumerable and facts.total_supply is not None:
            self._check_count(facts.total_supply, limit)
            by_index = self.contract.functions.tokenByIndex
            # a contract may list an id twice: each token is read (and priced) once
            ids = sorted({self._call(lambda i=i: by_index(i).call(**_NO_CCIP)) for i in range(facts.total_supply)})
        elif facts.total_supply is not None:
            self._check_count(facts.total_supply, limit)
            first = 0 if self.exists(0) else 1
            ids = list(range(first, first + facts.total_supply))
        else:
            raise TokensUnlisted(
                f"{self.address} does not list its tokens (no ERC-721 Enumerable, no totalSupply): "
                "give the token ids, e.g. --tokens 1-500"
            )
        self._check_count(len(ids), limit)
        return ids

    def _check_count(self, count: int, limit: int) -> None:
        if count > limit:
            raise CollectionError(f"{count} tokens is more than {limit} at once: give a range of tokens (--tokens)")

    def token_uri(self, token_id: int) -> TokenUri:
        try:
            uri = self._call(lambda: self.contract.functions.tokenURI(token_id).call(**_NO_CCIP))
        except (ChainRejected, Web3Exception):
            return TokenUri(token_id, None, f"tokenURI({token_id}) reverted: no such token")
        except (ValueError, TypeError):  # not a string (invalid UTF-8, another type): the contract's answer is bad
            return TokenUri(token_id, None, f"tokenURI({token_id}) did not return a text URI")
        if not isinstance(uri, str) or not uri:
            return TokenUri(token_id, None, f"token {token_id} has an empty URI")
        if len(uri) > MAX_URI_CHARS:
            return TokenUri(token_id, None, f"token {token_id}'s URI is longer than {MAX_URI_CHARS} characters")
        return TokenUri(token_id, uri)


def parse_token_selection(text: str) -> tuple[int, ...]:
    """`1-500`, `7`, `1,5,9-12`: the token ids, ascending, each once (refused: empty parts,
    reversed or negative ranges, more than MAX_TOKENS ids)."""
    ids: set[int] = set()
    for part in (p.strip() for p in str(text).split(",")):
        low, sep, high = part.partition("-")
        try:
            first, last = int(low), int(high if sep else low)
        except ValueError:
            raise CollectionError(f"{part!r} is not a token id or range (write e.g. 1-500 or 1,5,9-12)") from None
        if first < 0 or last < first:
            raise CollectionError(f"{part!r} is not a range of token ids (the first must not exceed the last)")
        if last - first + 1 + len(ids) > MAX_TOKENS:
            raise CollectionError(f"more than {MAX_TOKENS} tokens in one upgrade: give a smaller range")
        ids.update(range(first, last + 1))
    return tuple(sorted(ids))
