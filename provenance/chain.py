"""The provenance registry on an EVM chain, through web3 8.

`ProvenanceChain` signs every transaction locally with its own key (raw transactions),
the same way on a real chain, on anvil and on the embedded in-process chain, so the
code path the tests exercise is the production one. Calls are synchronous (web3's
EthereumTesterProvider has no async form); the service runs them in a worker thread.

Errors: `ChainUnavailable` (the RPC cannot be reached: retry later) and `ChainRejected`
(the chain refused the transaction or call: retrying the same thing will not help).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import EthereumTesterProvider, Web3
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    ProviderConnectionError,
    TimeExhausted,
    TransactionNotFound,
    Web3RPCError,
)

from .contracts import load_artifact

RECORDER_ROLE = keccak(text="RECORDER_ROLE")
T = TypeVar("T")


class ChainError(Exception):
    """Base class of the chain client's errors."""


class ChainUnavailable(ChainError):
    """The JSON-RPC endpoint cannot be reached or timed out."""


class ChainRejected(ChainError):
    """The chain refused a call or a transaction (revert, bad nonce, no funds...)."""


@dataclass(frozen=True)
class RecordFields:
    """One job's provenance, as the registry stores it (hashes as hex, no 0x)."""

    payment_hash: str
    input_cid: str
    output_cid: str
    input_sha256: str
    output_sha256: str
    model: str
    weights_sha256: str
    params_hash: str

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> RecordFields:
        return cls(**{name: payload[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class OnChainRecord:
    fields: RecordFields
    recorder: str
    recorded_at: int  # block timestamp


@dataclass(frozen=True)
class Mined:
    tx_hash: str
    block: int
    succeeded: bool
    gas_used: int


def _b32(hex_text: str) -> bytes:
    value = bytes.fromhex(hex_text.removeprefix("0x"))
    if len(value) != 32:
        raise ValueError(f"expected 32 bytes of hex, got {len(value)}")
    return value


class ProvenanceChain:
    def __init__(
        self,
        w3: Web3,
        account: LocalAccount,
        registry_address: str,
        *,
        embedded: bool = False,
        collection_address: str | None = None,
    ) -> None:
        self.w3 = w3
        self.account = account
        self.embedded = embedded
        self.collection_address = collection_address
        self.registry = w3.eth.contract(address=registry_address, abi=load_artifact("ProvenanceRegistry").abi)
        self._lock = threading.RLock()  # eth-tester is not thread-safe; one request at a time is plenty here

    # ------------------------------------------------------------------ construction

    @classmethod
    def embedded_chain(cls) -> ProvenanceChain:
        """A fresh in-process chain (py-evm) with the registry and a demo ERC-4906 collection
        linked to it deployed. Ephemeral by nature."""
        w3 = Web3(EthereumTesterProvider())
        key = w3.provider.ethereum_tester.backend.account_keys[0]
        account = Account.from_key(key.to_bytes())
        address = deploy_registry(w3, account)
        collection = _deploy(w3, account, "SatscaleCollection", "Satscale Upgrades", "SATUP", address, account.address)
        return cls(w3, account, address, embedded=True, collection_address=collection)

    @classmethod
    def connect(
        cls,
        rpc_url: str,
        private_key: str,
        *,
        registry_address: str | None = None,
        chain_id: int | None = None,
        timeout: float = 10.0,
    ) -> ProvenanceChain:
        """A JSON-RPC chain; without a registry address the registry is deployed (and owned) by this key."""
        w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
        account = Account.from_key(private_key)
        actual = _guard(lambda: w3.eth.chain_id)
        if chain_id is not None and actual != chain_id:
            raise ChainRejected(f"{rpc_url} is chain {actual}, the configuration says {chain_id}")
        address = registry_address or deploy_registry(w3, account)
        if not _guard(lambda: w3.eth.get_code(Web3.to_checksum_address(address))):
            raise ChainRejected(f"no contract at {address} on chain {actual}")
        return cls(w3, account, Web3.to_checksum_address(address))

    @property
    def address(self) -> str:
        return self.registry.address

    @property
    def lock(self) -> threading.RLock:
        """Held around every call on this connection (eth-tester is not thread-safe)."""
        return self._lock

    @property
    def chain_id(self) -> int:
        return self._call(lambda: self.w3.eth.chain_id)

    def _call(self, action: Callable[[], T]) -> T:
        with self._lock:
            return _guard(action)

    # ------------------------------------------------------------------ reads

    def exists(self, payment_hash: str) -> bool:
        return bool(self._call(lambda: self.registry.functions.exists(_b32(payment_hash)).call()))

    def record_of(self, payment_hash: str) -> OnChainRecord | None:
        if not self.exists(payment_hash):
            return None
        raw = self._call(lambda: self.registry.functions.recordOf(_b32(payment_hash)).call())
        input_cid, output_cid, input_sha, output_sha, model, weights, params, recorder, recorded_at = raw
        fields = RecordFields(
            payment_hash=payment_hash.removeprefix("0x"),
            input_cid=input_cid,
            output_cid=output_cid,
            input_sha256=input_sha.hex(),
            output_sha256=output_sha.hex(),
            model=model,
            weights_sha256=weights.hex(),
            params_hash=params.hex(),
        )
        return OnChainRecord(fields, recorder, int(recorded_at))

    def records_for_output(self, sha256: str) -> list[str]:
        hashes = self._call(lambda: self.registry.functions.recordsForOutput(_b32(sha256)).call())
        return [h.hex() for h in hashes]

    def records_for_input(self, sha256: str) -> list[str]:
        hashes = self._call(lambda: self.registry.functions.recordsForInput(_b32(sha256)).call())
        return [h.hex() for h in hashes]

    def find_record_tx(self, payment_hash: str) -> tuple[str, int] | None:
        """The transaction that recorded `payment_hash`, from the event indexed by it."""
        event = self.registry.events.ProvenanceRecorded()
        logs = self._call(lambda: event.get_logs(from_block=0, argument_filters={"paymentHash": _b32(payment_hash)}))
        if not logs:
            return None
        return "0x" + logs[0]["transactionHash"].hex().removeprefix("0x"), int(logs[0]["blockNumber"])

    # ------------------------------------------------------------------ writes

    def next_nonce(self) -> int:
        return int(self._call(lambda: self.w3.eth.get_transaction_count(self.account.address, "pending")))

    def send_record(self, fields: RecordFields, nonce: int) -> str:
        """Sign and submit `record(...)`; returns the transaction hash (0x...)."""
        call = self.registry.functions.record(
            _b32(fields.payment_hash),
            fields.input_cid,
            fields.output_cid,
            _b32(fields.input_sha256),
            _b32(fields.output_sha256),
            fields.model,
            _b32(fields.weights_sha256),
            _b32(fields.params_hash),
        )

        def submit() -> str:
            transaction = call.build_transaction(
                {"from": self.account.address, "nonce": nonce, "chainId": self.w3.eth.chain_id}
            )
            signed = self.account.sign_transaction(transaction)
            return "0x" + self.w3.eth.send_raw_transaction(signed.raw_transaction).hex().removeprefix("0x")

        return self._call(submit)

    def wait_receipt(self, tx_hash: str, timeout: float) -> Mined | None:
        """The receipt once mined; None if it is not mined within `timeout` (or was dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                receipt = self._call(lambda: self.w3.eth.get_transaction_receipt(tx_hash))
            except (TransactionNotFound, ChainRejected):
                receipt = None
            if receipt is not None:
                return Mined(
                    tx_hash=tx_hash,
                    block=int(receipt["blockNumber"]),
                    succeeded=receipt["status"] == 1,
                    gas_used=int(receipt["gasUsed"]),
                )
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)


def _transact(w3: Web3, account: LocalAccount, build: Callable[[dict], dict], what: str) -> Any:
    """Sign and send one transaction built by `build`, wait for it; the receipt."""

    def run() -> Any:
        nonce = w3.eth.get_transaction_count(account.address, "pending")
        transaction = build({"from": account.address, "nonce": nonce, "chainId": w3.eth.chain_id})
        signed = account.sign_transaction(transaction)
        receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction), 60)
        if receipt["status"] != 1:
            raise ChainRejected(f"{what} reverted")
        return receipt

    return _guard(run)


def _deploy(w3: Web3, account: LocalAccount, name: str, *args: Any) -> str:
    artifact = load_artifact(name)
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    return _transact(w3, account, factory.constructor(*args).build_transaction, f"deploying {name}")["contractAddress"]


def deploy_registry(w3: Web3, account: LocalAccount) -> str:
    """Deploy the registry with `account` as admin and recorder; returns its address."""
    address = _deploy(w3, account, "ProvenanceRegistry", account.address)
    registry = w3.eth.contract(address=address, abi=load_artifact("ProvenanceRegistry").abi)
    grant = registry.functions.grantRole(RECORDER_ROLE, account.address).build_transaction
    _transact(w3, account, grant, "granting the recorder role")
    return address


def _guard(action: Callable[[], T]) -> T:
    """Run a web3 call, translating transport failures and refusals into our two errors."""
    try:
        return action()
    except (requests.ConnectionError, requests.Timeout, ProviderConnectionError, TimeExhausted, OSError) as exc:
        raise ChainUnavailable(f"the chain RPC cannot be reached: {exc}") from None
    except (ContractCustomError, ContractLogicError) as exc:
        raise ChainRejected(f"the contract refused: {exc}") from None
    except Web3RPCError as exc:
        raise ChainRejected(f"the chain refused: {exc}") from None
    except Exception as exc:  # eth-tester raises its own TransactionFailed and validation errors
        if type(exc).__module__.startswith(("eth_tester", "eth.")):
            raise ChainRejected(f"the chain refused: {exc}") from None
        raise
