"""The Solidity contracts, deployed from the committed artifacts into a real anvil node and into py-evm.

anvil comes from the npm package pinned in contracts/package.json (`npm ci` in contracts/ installs it).
"""

from __future__ import annotations

import ast
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_tester.exceptions import TransactionFailed
from eth_utils import keccak
from multiformats import CID, multihash
from web3 import EthereumTesterProvider, Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractCustomError
from web3.logs import DISCARD
from web3.types import TxReceipt

from provenance.contracts import load_artifact

from .anvil import running_anvil

pytestmark = pytest.mark.chain

CONTRACTS_DIR = Path(__file__).resolve().parent.parent / "contracts"
ZERO = b"\x00" * 32

RECORDER_ROLE = keccak(text="RECORDER_ROLE")
MINTER_ROLE = keccak(text="MINTER_ROLE")
UPGRADER_ROLE = keccak(text="UPGRADER_ROLE")

# Measured with solc 0.8.37 (optimizer 200 runs, prague): 391,928 gas for a record with two 59-character CIDs on
# fresh input and output hashes (16 new storage slots), 132,292 for an upgrade to a 66-character URI. The bounds
# leave 2x headroom: going past them means the storage layout regressed.
MAX_GAS_PER_RECORD = 800_000
MAX_GAS_PER_UPGRADE = 270_000


# --- anvil -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def anvil_w3() -> Iterator[Web3]:
    with running_anvil() as (w3, _port):
        yield w3


# --- helpers -----------------------------------------------------------------------------------------------------


def send(fn: ContractFunction, sender: str) -> TxReceipt:
    receipt = fn.w3.eth.wait_for_transaction_receipt(fn.transact({"from": sender}))
    assert receipt["status"] == 1
    return receipt


def deploy(w3: Web3, name: str, sender: str, *args: Any) -> Contract:
    artifact = load_artifact(name)
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    receipt = w3.eth.wait_for_transaction_receipt(factory.constructor(*args).transact({"from": sender}))
    assert receipt["status"] == 1
    return w3.eth.contract(address=receipt["contractAddress"], abi=artifact.abi)


def revert_data(exc: Exception) -> bytes:
    """The raw revert data behind a failed call or transaction, from either provider."""
    if isinstance(exc, ContractCustomError):
        data = exc.data if isinstance(exc.data, str) else exc.data["data"]
        return bytes.fromhex(data.removeprefix("0x"))
    if isinstance(exc, TransactionFailed):
        # web3's EthereumTesterProvider re-raises py-evm's revert as "execution reverted: <bytes repr>"
        message = str(exc.args[0]).removeprefix("execution reverted: ")
        data = ast.literal_eval(message)
        assert isinstance(data, bytes), message
        return data
    raise AssertionError(f"not a revert: {exc!r}")


def decode_error(contract: Contract, exc: Exception) -> tuple[str, tuple[Any, ...]]:
    """(error name, arguments) of a custom-error revert, decoded with the contract's ABI."""
    raw = revert_data(exc)
    for item in contract.abi:
        if item["type"] != "error":
            continue
        types = [i["type"] for i in item["inputs"]]
        if keccak(text=f"{item['name']}({','.join(types)})")[:4] == raw[:4]:
            values = contract.w3.codec.decode(types, raw[4:])
            return item["name"], tuple(
                Web3.to_checksum_address(v) if t == "address" else v for t, v in zip(types, values, strict=True)
            )
    raise AssertionError(f"revert data 0x{raw.hex()} matches no error in the ABI")


def expect_revert(contract: Contract, fn: ContractFunction, sender: str, name: str) -> tuple[Any, ...]:
    with pytest.raises(ContractCustomError) as info:
        fn.transact({"from": sender})
    error, args = decode_error(contract, info.value)
    assert error == name, f"reverted with {error}{args}, expected {name}"
    return args


def cid_of(data: bytes) -> str:
    """A CIDv1 (raw, sha2-256, base32) like those Satscale pins: 59 characters."""
    return str(CID("base32", 1, "raw", multihash.wrap(hashlib.sha256(data).digest(), "sha2-256")))


@dataclass(frozen=True)
class Job:
    payment_hash: bytes
    input_cid: str
    output_cid: str
    input_sha256: bytes
    output_sha256: bytes
    model_id: str
    weights_sha256: bytes
    params_hash: bytes

    def args(self) -> tuple[Any, ...]:
        return (
            self.payment_hash,
            self.input_cid,
            self.output_cid,
            self.input_sha256,
            self.output_sha256,
            self.model_id,
            self.weights_sha256,
            self.params_hash,
        )

    def replace(self, **changes: Any) -> Job:
        return Job(**{**self.__dict__, **changes})


def make_job(input_bytes: bytes | None = None) -> Job:
    inp = input_bytes if input_bytes is not None else os.urandom(256)
    out = os.urandom(1024)
    return Job(
        payment_hash=hashlib.sha256(os.urandom(32)).digest(),  # a payment hash is sha256 of the preimage
        input_cid=cid_of(inp),
        output_cid=cid_of(out),
        input_sha256=hashlib.sha256(inp).digest(),
        output_sha256=hashlib.sha256(out).digest(),
        model_id="realesrgan-x4plus",
        weights_sha256=hashlib.sha256(b"weights").digest(),
        params_hash=hashlib.sha256(b'{"scale":4,"tile":512}').digest(),
    )


# --- fixtures ----------------------------------------------------------------------------------------------------


@dataclass
class Deployment:
    w3: Web3
    registry: Contract
    collection: Contract
    admin: str
    recorder: str
    minter: str
    upgrader: str
    holder: str
    stranger: str

    def record(self, job: Job) -> TxReceipt:
        return send(self.registry.functions.record(*job.args()), self.recorder)

    def mint(self, uri: str = "ipfs://original/1.json") -> int:
        receipt = send(self.collection.functions.mint(self.holder, uri), self.minter)
        (transfer,) = self.collection.events.Transfer().process_receipt(receipt, errors=DISCARD)
        return transfer["args"]["tokenId"]


@pytest.fixture(scope="module")
def chain(anvil_w3: Web3) -> Deployment:
    w3 = anvil_w3
    admin, recorder, minter, upgrader, holder, stranger = w3.eth.accounts[:6]
    registry = deploy(w3, "ProvenanceRegistry", admin, admin)
    collection = deploy(w3, "SatscaleCollection", admin, "Satscale Upscaled", "SSU", registry.address, admin)
    send(registry.functions.grantRole(RECORDER_ROLE, recorder), admin)
    send(collection.functions.grantRole(MINTER_ROLE, minter), admin)
    send(collection.functions.grantRole(UPGRADER_ROLE, upgrader), admin)
    return Deployment(w3, registry, collection, admin, recorder, minter, upgrader, holder, stranger)


# --- ProvenanceRegistry ------------------------------------------------------------------------------------------


def test_deployment_and_roles(chain: Deployment) -> None:
    reg, col = chain.registry, chain.collection
    assert reg.functions.RECORDER_ROLE().call() == RECORDER_ROLE
    assert reg.functions.hasRole(reg.functions.DEFAULT_ADMIN_ROLE().call(), chain.admin).call()
    assert reg.functions.hasRole(RECORDER_ROLE, chain.recorder).call()
    assert not reg.functions.hasRole(RECORDER_ROLE, chain.admin).call()  # the admin only administers
    assert col.functions.provenanceRegistry().call() == reg.address
    assert col.functions.name().call() == "Satscale Upscaled"
    assert col.functions.symbol().call() == "SSU"
    assert col.functions.MINTER_ROLE().call() == MINTER_ROLE
    assert col.functions.UPGRADER_ROLE().call() == UPGRADER_ROLE

    # a stranger cannot grant itself a role
    args = expect_revert(
        reg, reg.functions.grantRole(RECORDER_ROLE, chain.stranger), chain.stranger, "AccessControlUnauthorizedAccount"
    )
    assert args == (chain.stranger, ZERO)


def test_non_recorder_cannot_record(chain: Deployment) -> None:
    job = make_job()
    for sender in (chain.stranger, chain.admin):
        args = expect_revert(
            chain.registry, chain.registry.functions.record(*job.args()), sender, "AccessControlUnauthorizedAccount"
        )
        assert args == (sender, RECORDER_ROLE)
    assert not chain.registry.functions.exists(job.payment_hash).call()


def test_record_and_read_back(chain: Deployment) -> None:
    job = make_job()
    assert not chain.registry.functions.exists(job.payment_hash).call()
    receipt = chain.record(job)
    block = chain.w3.eth.get_block(receipt["blockNumber"])

    assert chain.registry.functions.exists(job.payment_hash).call()
    stored = chain.registry.functions.recordOf(job.payment_hash).call()
    assert tuple(stored) == (
        job.input_cid,
        job.output_cid,
        job.input_sha256,
        job.output_sha256,
        job.model_id,
        job.weights_sha256,
        job.params_hash,
        chain.recorder,
        block["timestamp"],
    )
    print(f"gas per record: {receipt['gasUsed']}")
    assert receipt["gasUsed"] < MAX_GAS_PER_RECORD


def test_record_of_unknown_payment_reverts(chain: Deployment) -> None:
    unknown = os.urandom(32)
    with pytest.raises(ContractCustomError) as info:
        chain.registry.functions.recordOf(unknown).call()
    assert decode_error(chain.registry, info.value) == ("RecordNotFound", (unknown,))


def test_duplicate_payment_hash_reverts(chain: Deployment) -> None:
    job = make_job()
    chain.record(job)
    # same payment, different everything else: still refused, and the first record is untouched
    again = make_job().replace(payment_hash=job.payment_hash)
    fn = chain.registry.functions.record(*again.args())
    assert expect_revert(chain.registry, fn, chain.recorder, "AlreadyRecorded") == (job.payment_hash,)
    assert chain.registry.functions.recordOf(job.payment_hash).call()[0] == job.input_cid
    assert chain.registry.functions.recordsForOutput(again.output_sha256).call() == []


@pytest.mark.parametrize(
    ("change", "error", "args"),
    [
        ({"input_cid": ""}, "EmptyCid", ("inputCid",)),
        ({"output_cid": ""}, "EmptyCid", ("outputCid",)),
        ({"model_id": ""}, "EmptyModelId", ()),
        ({"payment_hash": ZERO}, "ZeroHash", ("paymentHash",)),
        ({"input_sha256": ZERO}, "ZeroHash", ("inputSha256",)),
        ({"output_sha256": ZERO}, "ZeroHash", ("outputSha256",)),
        ({"weights_sha256": ZERO}, "ZeroHash", ("weightsSha256",)),
        ({"params_hash": ZERO}, "ZeroHash", ("paramsHash",)),
    ],
)
def test_invalid_record_reverts(chain: Deployment, change: dict[str, Any], error: str, args: tuple[Any, ...]) -> None:
    job = make_job().replace(**change)
    fn = chain.registry.functions.record(*job.args())
    assert expect_revert(chain.registry, fn, chain.recorder, error) == args


def test_lookup_by_input_and_output_hash(chain: Deployment) -> None:
    source = os.urandom(300)
    first, second = make_job(source), make_job(source)  # the same image upscaled twice
    other = make_job()
    for job in (first, second, other):
        chain.record(job)
    reg = chain.registry.functions
    assert reg.recordsForInput(first.input_sha256).call() == [first.payment_hash, second.payment_hash]
    assert reg.recordsForOutput(first.output_sha256).call() == [first.payment_hash]
    assert reg.recordsForOutput(second.output_sha256).call() == [second.payment_hash]
    assert reg.recordsForInput(other.input_sha256).call() == [other.payment_hash]
    assert reg.recordsForInput(os.urandom(32)).call() == []
    # a verifier holding only the output image finds the whole record
    (payment,) = reg.recordsForOutput(second.output_sha256).call()
    assert reg.recordOf(payment).call()[0] == second.input_cid


def test_provenance_recorded_event(chain: Deployment) -> None:
    job = make_job()
    receipt = chain.record(job)
    (log,) = receipt["logs"]
    signature = keccak(text="ProvenanceRecorded(bytes32,bytes32,bytes32,string,string,string)")
    assert [bytes(t) for t in log["topics"]] == [signature, job.payment_hash, job.input_sha256, job.output_sha256]

    (event,) = chain.registry.events.ProvenanceRecorded().process_receipt(receipt, errors=DISCARD)
    assert event["address"] == chain.registry.address
    assert dict(event["args"]) == {
        "paymentHash": job.payment_hash,
        "inputSha256": job.input_sha256,
        "outputSha256": job.output_sha256,
        "inputCid": job.input_cid,
        "outputCid": job.output_cid,
        "modelId": job.model_id,
    }
    # indexers filter on the topics
    found = chain.registry.events.ProvenanceRecorded().get_logs(
        from_block=receipt["blockNumber"], argument_filters={"outputSha256": job.output_sha256}
    )
    assert [e["args"]["paymentHash"] for e in found] == [job.payment_hash]


# --- SatscaleCollection ------------------------------------------------------------------------------------------


def test_supports_interfaces(chain: Deployment) -> None:
    supports = chain.collection.functions.supportsInterface
    for interface_id in ("0x49064906", "0x80ac58cd", "0x5b5e139f", "0x01ffc9a7", "0x7965db0b"):
        assert supports(bytes.fromhex(interface_id[2:])).call(), interface_id  # 4906, 721, metadata, 165, roles
    assert not supports(bytes.fromhex("ffffffff")).call()


def test_mint(chain: Deployment) -> None:
    token = chain.mint("ipfs://original/7.json")
    col = chain.collection.functions
    assert col.ownerOf(token).call() == chain.holder
    assert col.tokenURI(token).call() == "ipfs://original/7.json"
    assert col.provenanceOf(token).call() == ZERO
    expect_revert(
        chain.collection, col.mint(chain.holder, "ipfs://x"), chain.stranger, "AccessControlUnauthorizedAccount"
    )
    expect_revert(chain.collection, col.mint(chain.holder, ""), chain.minter, "EmptyURI")


def test_upgrade_links_token_to_record(chain: Deployment) -> None:
    job = make_job()
    chain.record(job)
    token = chain.mint()
    new_uri = f"ipfs://{job.output_cid}"
    receipt = send(chain.collection.functions.upgrade(token, new_uri, job.payment_hash), chain.upgrader)

    col = chain.collection
    assert col.functions.tokenURI(token).call() == new_uri
    assert col.functions.provenanceOf(token).call() == job.payment_hash
    (update,) = col.events.MetadataUpdate().process_receipt(receipt, errors=DISCARD)
    assert update["args"]["_tokenId"] == token
    (upgraded,) = col.events.TokenUpgraded().process_receipt(receipt, errors=DISCARD)
    assert dict(upgraded["args"]) == {"tokenId": token, "paymentHash": job.payment_hash, "uri": new_uri}
    topics = [bytes(t) for t in receipt["logs"][-1]["topics"]]
    assert topics == [keccak(text="TokenUpgraded(uint256,bytes32,string)"), token.to_bytes(32, "big"), job.payment_hash]
    # the token leads back to the record, and the record to the images
    assert chain.registry.functions.recordOf(col.functions.provenanceOf(token).call()).call()[1] == job.output_cid
    print(f"gas per upgrade: {receipt['gasUsed']}")
    assert receipt["gasUsed"] < MAX_GAS_PER_UPGRADE


def test_upgrade_refusals(chain: Deployment) -> None:
    job = make_job()
    chain.record(job)
    token = chain.mint()
    col = chain.collection
    missing = os.urandom(32)
    fn = col.functions.upgrade(token, "ipfs://new", missing)
    assert expect_revert(col, fn, chain.upgrader, "ProvenanceNotFound") == (missing,)
    fn = col.functions.upgrade(token, "ipfs://new", job.payment_hash)
    for outsider in (chain.stranger, chain.minter, chain.holder, chain.admin):
        assert expect_revert(col, fn, outsider, "AccessControlUnauthorizedAccount") == (outsider, UPGRADER_ROLE)
    assert expect_revert(
        col, col.functions.upgrade(10**9, "ipfs://new", job.payment_hash), chain.upgrader, "ERC721NonexistentToken"
    ) == (10**9,)
    expect_revert(col, col.functions.upgrade(token, "", job.payment_hash), chain.upgrader, "EmptyURI")
    assert col.functions.tokenURI(token).call() == "ipfs://original/1.json"
    assert col.functions.provenanceOf(token).call() == ZERO


def test_upgrade_batch_contiguous(chain: Deployment) -> None:
    jobs = [make_job() for _ in range(3)]
    for job in jobs:
        chain.record(job)
    tokens = [chain.mint() for _ in jobs]
    assert tokens == list(range(tokens[0], tokens[0] + 3))
    uris = [f"ipfs://{job.output_cid}" for job in jobs]
    hashes = [job.payment_hash for job in jobs]
    col = chain.collection
    receipt = send(col.functions.upgradeBatch(tokens, uris, hashes), chain.upgrader)

    (batch,) = col.events.BatchMetadataUpdate().process_receipt(receipt, errors=DISCARD)
    assert (batch["args"]["_fromTokenId"], batch["args"]["_toTokenId"]) == (tokens[0], tokens[-1])
    upgraded = col.events.TokenUpgraded().process_receipt(receipt, errors=DISCARD)
    assert [(e["args"]["tokenId"], e["args"]["paymentHash"]) for e in upgraded] == list(
        zip(tokens, hashes, strict=True)
    )
    # ERC721URIStorage emits MetadataUpdate for every URI it stores, so each token has its own event as well
    updates = col.events.MetadataUpdate().process_receipt(receipt, errors=DISCARD)
    assert [e["args"]["_tokenId"] for e in updates] == tokens
    for token, uri, payment in zip(tokens, uris, hashes, strict=True):
        assert col.functions.tokenURI(token).call() == uri
        assert col.functions.provenanceOf(token).call() == payment
    print(f"gas per batch upgrade of 3: {receipt['gasUsed']}")


def test_upgrade_batch_not_contiguous(chain: Deployment) -> None:
    job = make_job()
    chain.record(job)
    tokens = [chain.mint() for _ in range(3)]
    picked = [tokens[2], tokens[0]]  # descending with a gap: per-token MetadataUpdate only
    receipt = send(
        chain.collection.functions.upgradeBatch(picked, ["ipfs://a", "ipfs://b"], [job.payment_hash] * 2),
        chain.upgrader,
    )
    col = chain.collection
    assert col.events.BatchMetadataUpdate().process_receipt(receipt, errors=DISCARD) == ()
    assert [
        e["args"]["_tokenId"] for e in col.events.MetadataUpdate().process_receipt(receipt, errors=DISCARD)
    ] == picked
    assert col.functions.tokenURI(tokens[2]).call() == "ipfs://a"
    assert col.functions.tokenURI(tokens[1]).call() == "ipfs://original/1.json"
    # a batch of one is a range of one: MetadataUpdate says it all
    receipt = send(col.functions.upgradeBatch([tokens[1]], ["ipfs://c"], [job.payment_hash]), chain.upgrader)
    assert col.events.BatchMetadataUpdate().process_receipt(receipt, errors=DISCARD) == ()
    assert len(col.events.MetadataUpdate().process_receipt(receipt, errors=DISCARD)) == 1


def test_upgrade_batch_refusals(chain: Deployment) -> None:
    job = make_job()
    chain.record(job)
    a, b = chain.mint(), chain.mint()
    col = chain.collection
    fn = col.functions.upgradeBatch([a, b], ["ipfs://a"], [job.payment_hash, job.payment_hash])
    assert expect_revert(col, fn, chain.upgrader, "BatchLengthMismatch") == (2, 1, 2)
    fn = col.functions.upgradeBatch([a, b], ["ipfs://a", "ipfs://b"], [job.payment_hash])
    assert expect_revert(col, fn, chain.upgrader, "BatchLengthMismatch") == (2, 2, 1)
    expect_revert(col, col.functions.upgradeBatch([], [], []), chain.upgrader, "EmptyBatch")
    # one missing record rolls back the whole batch
    missing = os.urandom(32)
    fn = col.functions.upgradeBatch([a, b], ["ipfs://a", "ipfs://b"], [job.payment_hash, missing])
    assert expect_revert(col, fn, chain.upgrader, "ProvenanceNotFound") == (missing,)
    assert col.functions.provenanceOf(a).call() == ZERO
    fn = col.functions.upgradeBatch([a], ["ipfs://a"], [job.payment_hash])
    assert expect_revert(col, fn, chain.stranger, "AccessControlUnauthorizedAccount") == (chain.stranger, UPGRADER_ROLE)


def test_collection_refuses_a_registry_without_code(chain: Deployment) -> None:
    artifact = load_artifact("SatscaleCollection")
    factory = chain.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    with pytest.raises(ContractCustomError) as info:
        factory.constructor("X", "X", chain.stranger, chain.admin).transact({"from": chain.admin})
    assert decode_error(chain.collection, info.value) == ("InvalidRegistry", (chain.stranger,))


def test_load_artifact() -> None:
    for name in ("ProvenanceRegistry", "SatscaleCollection"):
        artifact = load_artifact(name)
        assert artifact.name == name
        assert artifact.bytecode.startswith("0x60") and len(artifact.deployed_bytecode) > 2
        assert artifact.evm_version == "prague"
        assert artifact.compiler_version.startswith("0.8.37+")
        assert any(item.get("name") == "supportsInterface" for item in artifact.abi)
    with pytest.raises(ValueError, match="unknown contract"):
        load_artifact("Nope")


# --- the embedded chain ------------------------------------------------------------------------------------------


def test_artifacts_run_in_py_evm() -> None:
    """The same bytecode runs in web3's in-process EthereumTesterProvider (py-evm), the default embedded chain."""
    w3 = Web3(EthereumTesterProvider())
    admin, recorder, holder = w3.eth.accounts[:3]
    registry = deploy(w3, "ProvenanceRegistry", admin, admin)
    collection = deploy(w3, "SatscaleCollection", admin, "Satscale Upscaled", "SSU", registry.address, admin)
    send(registry.functions.grantRole(RECORDER_ROLE, recorder), admin)
    send(collection.functions.grantRole(MINTER_ROLE, admin), admin)
    send(collection.functions.grantRole(UPGRADER_ROLE, admin), admin)

    job = make_job()
    receipt = send(registry.functions.record(*job.args()), recorder)
    (event,) = registry.events.ProvenanceRecorded().process_receipt(receipt, errors=DISCARD)
    assert event["args"]["paymentHash"] == job.payment_hash
    assert registry.functions.recordOf(job.payment_hash).call()[:2] == (job.input_cid, job.output_cid)
    assert registry.functions.recordsForOutput(job.output_sha256).call() == [job.payment_hash]

    send(collection.functions.mint(holder, "ipfs://original"), admin)
    send(collection.functions.upgrade(1, f"ipfs://{job.output_cid}", job.payment_hash), admin)
    assert collection.functions.provenanceOf(1).call() == job.payment_hash
    with pytest.raises(TransactionFailed) as info:
        registry.functions.record(*job.args()).transact({"from": recorder})
    assert decode_error(registry, info.value) == ("AlreadyRecorded", (job.payment_hash,))
