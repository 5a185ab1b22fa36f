"""Pointing a collection at its new metadata on chain, and never twice.

- A Satscale collection (ERC-7160 + ERC-4906): `upgradeBatch` in calls of at most
  MAX_TOKENS_PER_CALL tokens, ids ascending, so the contract emits one BatchMetadataUpdate per
  contiguous run and keeps the old URI as a revision. Before any call, every token's revisions
  are read: a token that already has its new URI is not sent again (a resumed run, a crash
  after the transaction was mined).
- Any other collection: the setter the user names (`setBaseURI(string)` for a base-URI
  collection, `setTokenURI(uint256,string)` per token), simulated from the signer first, so an
  unauthorised signer is told so without spending gas; skipped when the chain already returns
  the new URI.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import TransactionNotFound

from ..chain import ChainRejected, _b32, _guard
from ..contracts import load_artifact

T = TypeVar("T")
#: told a transaction's hash, nonce and raw bytes (hex) once it is signed, before it is sent
Signed = Callable[[str, int, str], None] | None

#: tokens per upgradeBatch call: about 150k gas each, so a call stays far below a block's gas limit
MAX_TOKENS_PER_CALL = 100
#: setters a user may name, by their argument types (what we know how to fill in)
SETTER_SHAPES = {("string",): "base URI", ("uint256", "string"): "token URI"}
_SIGNATURE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]{0,63})\(([a-z0-9, ]*)\)$")
_NO_CCIP = {"ccip_read_enabled": False}


class NotAuthorised(ChainRejected):
    """The signer may not make this call (the contract reverts for it)."""


@dataclass(frozen=True)
class TokenUpgrade:
    token_id: int
    uri: str
    record_key: str  # hex bytes32: the provenance record the new image belongs to


@dataclass(frozen=True)
class Setter:
    """A function of someone else's contract that sets URIs: `name(types)`."""

    name: str
    types: tuple[str, ...]

    @classmethod
    def parse(cls, signature: str) -> Setter:
        found = _SIGNATURE.match(signature.strip())
        types = tuple(t.strip() for t in found.group(2).split(",")) if found and found.group(2).strip() else ()
        if found is None or types not in SETTER_SHAPES:
            shapes = " or ".join(f"name({','.join(t)})" for t in SETTER_SHAPES)
            raise ChainRejected(f"{signature!r} is not a setter we can call: it must look like {shapes}")
        return cls(found.group(1), types)

    @property
    def per_token(self) -> bool:
        return self.types == ("uint256", "string")

    def abi(self) -> list[dict[str, Any]]:
        inputs = [{"name": f"arg{i}", "type": t} for i, t in enumerate(self.types)]
        return [
            {"type": "function", "name": self.name, "inputs": inputs, "outputs": [], "stateMutability": "nonpayable"}
        ]


class CollectionWriter:
    """Writes to one collection with one signer; `lock` guards a connection shared with threads."""

    def __init__(
        self, w3: Web3, account: LocalAccount, address: str, lock: AbstractContextManager[Any] | None = None
    ) -> None:
        self.w3 = w3
        self.account = account
        self.address = Web3.to_checksum_address(address)
        self.satscale = w3.eth.contract(address=self.address, abi=load_artifact("SatscaleCollection").abi)
        self._lock = lock or nullcontext()

    def _call(self, action: Callable[[], T]) -> T:
        with self._lock:
            return _guard(action)

    # --- Satscale collections ------------------------------------------------------------------

    def pending(self, upgrades: Sequence[TokenUpgrade]) -> list[TokenUpgrade]:
        """The upgrades not on chain yet: a token whose revisions hold its new URI is done."""
        revisions = self.satscale.functions.tokenURIs
        return [u for u in upgrades if u.uri not in self._call(lambda u=u: revisions(u.token_id).call(**_NO_CCIP))[1]]

    def calls(self, upgrades: Sequence[TokenUpgrade]) -> list[list[TokenUpgrade]]:
        """The upgradeBatch calls to make: ids ascending, at most MAX_TOKENS_PER_CALL each."""
        ordered = sorted(upgrades, key=lambda u: u.token_id)
        return [ordered[i : i + MAX_TOKENS_PER_CALL] for i in range(0, len(ordered), MAX_TOKENS_PER_CALL)]

    def send_upgrades(self, upgrades: Sequence[TokenUpgrade], nonce: int, on_signed: Signed = None) -> str:
        """Submit one upgradeBatch (simulated first: a refusal costs nothing); the tx hash."""
        call = self.satscale.functions.upgradeBatch(
            [u.token_id for u in upgrades], [u.uri for u in upgrades], [_b32(u.record_key) for u in upgrades]
        )
        return self._submit(call, nonce, "upgradeBatch", on_signed)

    # --- any collection: the setter the user named ---------------------------------------------

    def setter_contract(self, setter: Setter) -> Any:
        return self.w3.eth.contract(address=self.address, abi=setter.abi())

    def setter_done(self, expected: dict[int, str]) -> bool:
        """Whether the contract already returns every new URI (the setter was called before)."""
        reader = self.w3.eth.contract(address=self.address, abi=_TOKEN_URI_ABI)
        return all(
            self._call(lambda i=i: reader.functions.tokenURI(i).call(**_NO_CCIP)) == uri for i, uri in expected.items()
        )

    def send_setter(self, setter: Setter, args: Sequence[Any], nonce: int, on_signed: Signed = None) -> str:
        call = getattr(self.setter_contract(setter).functions, setter.name)(*args)
        return self._submit(call, nonce, setter.name, on_signed)

    def next_nonce(self) -> int:
        """The signer's next nonce, counting its transactions still in the pool."""
        return self._call(lambda: self.w3.eth.get_transaction_count(self.account.address, "pending"))

    def mined_nonce(self) -> int:
        """How many of the signer's transactions are mined: a nonce below it is used for good."""
        return self._call(lambda: self.w3.eth.get_transaction_count(self.account.address, "latest"))

    def rebroadcast(self, raw_hex: str) -> None:
        """Send a signed transaction again (a pool that dropped it, a node restarted); a node that
        has it already says so, which is fine."""
        # known already, or its nonce is used: the receipt (or its absence) tells which
        with suppress(ChainRejected):
            self._call(lambda: self.w3.eth.send_raw_transaction(bytes.fromhex(raw_hex.removeprefix("0x"))))

    def receipt(self, tx_hash: str) -> bool | None:
        """Whether a transaction succeeded; None while it is not mined (or unknown)."""

        def read() -> Any:
            try:
                return self.w3.eth.get_transaction_receipt(tx_hash)
            except TransactionNotFound:  # inside the guard, which would make it a refusal
                return None

        found = self._call(read)
        return None if found is None else found["status"] == 1

    def _submit(self, call: Any, nonce: int, what: str, on_signed: Signed = None) -> str:
        sender = {"from": self.account.address}
        try:
            self._call(lambda: call.call(sender, **_NO_CCIP))
        except ChainRejected as exc:
            raise NotAuthorised(f"{what} would revert for {self.account.address}: {exc}") from None

        def submit() -> str:
            transaction = call.build_transaction({**sender, "nonce": nonce, "chainId": self.w3.eth.chain_id})
            signed = self.account.sign_transaction(transaction)
            if on_signed is not None:  # journaled before it is sent: a crash after sending is no mystery
                on_signed("0x" + signed.hash.hex().removeprefix("0x"), nonce, signed.raw_transaction.hex())
            return "0x" + self.w3.eth.send_raw_transaction(signed.raw_transaction).hex().removeprefix("0x")

        return self._call(submit)


_TOKEN_URI_ABI = [
    {
        "type": "function",
        "name": "tokenURI",
        "stateMutability": "view",
        "inputs": [{"name": "tokenId", "type": "uint256"}],
        "outputs": [{"name": "", "type": "string"}],
    }
]
