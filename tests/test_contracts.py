"""The Solidity contracts, deployed from the committed artifacts into a real anvil node and into py-evm.

anvil comes from the npm package pinned in contracts/package.json (`npm ci` in contracts/ installs it).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import operator
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
from web3.exceptions import ContractCustomError, ContractLogicError
from web3.logs import DISCARD
from web3.types import TxReceipt

from provenance.contracts import ARTIFACTS_DIR, FIXTURES_DIR, load_artifact

from .anvil import running_anvil

pytestmark = pytest.mark.chain

CONTRACTS_DIR = Path(__file__).resolve().parent.parent / "contracts"
ZERO = b"\x00" * 32

RECORDER_ROLE = keccak(text="RECORDER_ROLE")
MINTER_ROLE = keccak(text="MINTER_ROLE")
UPGRADER_ROLE = keccak(text="UPGRADER_ROLE")

# Measured with solc 0.8.37 (optimizer 200 runs, prague): 391,928 gas for a record with two 59-character CIDs on
# fresh input and output hashes (16 new storage slots); 102,512 for a mint with a 22-character URI (owner, balance
# and revision 0; no state slot); 171,707 for a token's first upgrade to a 66-character URI (a new revision: 3 URI
# slots, its length and its payment hash, and the token's state slot), 154,607 for its next one (the state slot
# exists); about 2,926,000 for a batch of 20 first upgrades of contiguous ids (146,300 a token). Keeping every revision
# costs about 40,000 more per upgrade than overwriting one URI did (132,292). The bounds leave about 2x headroom:
# going past them means the storage layout regressed.
MAX_GAS_PER_RECORD = 800_000
MAX_GAS_PER_MINT = 200_000
MAX_GAS_PER_UPGRADE = 350_000
MAX_GAS_PER_BATCH_OF_20 = 6_000_000

MAX_UINT256 = 2**256 - 1


def interface_id(*signatures: str) -> bytes:
    """An ERC-165 interface id: the XOR of the functions' selectors."""
    selectors = (int.from_bytes(keccak(text=s)[:4], "big") for s in signatures)
    return functools.reduce(operator.xor, selectors).to_bytes(4, "big")


ERC7160_FUNCTIONS = (
    "tokenURIs(uint256)",
    "pinTokenURI(uint256,uint256)",
    "unpinTokenURI(uint256)",
    "hasPinnedTokenURI(uint256)",
)
ERC7160_ID = interface_id(*ERC7160_FUNCTIONS)
ERC721_ENUMERABLE_ID = interface_id("totalSupply()", "tokenOfOwnerByIndex(address,uint256)", "tokenByIndex(uint256)")
ERC4906_ID = bytes.fromhex("49064906")  # ERC-4906 has only events: its id is fixed by the EIP
ERC721_ID = bytes.fromhex("80ac58cd")
ERC721_METADATA_ID = bytes.fromhex("5b5e139f")
ERC165_ID = bytes.fromhex("01ffc9a7")
ACCESS_CONTROL_ID = bytes.fromhex("7965db0b")

METADATA_UPDATE = keccak(text="MetadataUpdate(uint256)")
BATCH_METADATA_UPDATE = keccak(text="BatchMetadataUpdate(uint256,uint256)")
TOKEN_URI_PINNED = keccak(text="TokenUriPinned(uint256,uint256)")
TOKEN_URI_UNPINNED = keccak(text="TokenUriUnpinned(uint256)")
TOKEN_UPGRADED = keccak(text="TokenUpgraded(uint256,bytes32,string)")
TRANSFER = keccak(text="Transfer(address,address,uint256)")


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


def deploy(w3: Web3, name: str, sender: str, *args: Any, artifacts_dir: Path = ARTIFACTS_DIR) -> Contract:
    artifact = load_artifact(name, artifacts_dir)
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
    """Sends `fn` from `sender` and expects custom error `name`; its arguments. Works on both providers."""
    with pytest.raises((ContractCustomError, TransactionFailed)) as info:
        fn.transact({"from": sender})
    error, args = decode_error(contract, info.value)
    assert error == name, f"reverted with {error}{args}, expected {name}"
    return args


def expect_call_revert(contract: Contract, fn: ContractFunction, name: str) -> tuple[Any, ...]:
    """Calls the view `fn` and expects custom error `name`; its arguments."""
    with pytest.raises((ContractCustomError, TransactionFailed)) as info:
        fn.call()
    error, args = decode_error(contract, info.value)
    assert error == name, f"reverted with {error}{args}, expected {name}"
    return args


def word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def topics_of(receipt: TxReceipt, contract: Contract) -> list[list[bytes]]:
    """The topics of every log `contract` emitted in `receipt`, in order."""
    return [[bytes(t) for t in log["topics"]] for log in receipt["logs"] if log["address"] == contract.address]


def metadata_events(receipt: TxReceipt, contract: Contract) -> list[tuple[Any, ...]]:
    """The ERC-4906 events `contract` emitted in `receipt`, in order, decoded from the raw logs:
    ("MetadataUpdate", id) and ("BatchMetadataUpdate", from, to). ERC-4906's arguments are not indexed."""
    events: list[tuple[Any, ...]] = []
    for log in receipt["logs"]:
        if log["address"] != contract.address or bytes(log["topics"][0]) not in (
            METADATA_UPDATE,
            BATCH_METADATA_UPDATE,
        ):
            continue
        assert len(log["topics"]) == 1, "ERC-4906 event arguments must not be indexed"
        data = bytes(log["data"])
        values = [int.from_bytes(data[i : i + 32], "big") for i in range(0, len(data), 32)]
        if bytes(log["topics"][0]) == METADATA_UPDATE:
            assert len(values) == 1
            events.append(("MetadataUpdate", *values))
        else:
            assert len(values) == 2
            events.append(("BatchMetadataUpdate", *values))
    return events


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
    buyer: str

    def record(self, job: Job) -> TxReceipt:
        return send(self.registry.functions.record(*job.args()), self.recorder)

    def mint(self, uri: str = "ipfs://original/1.json") -> int:
        receipt = send(self.collection.functions.mint(self.holder, uri), self.minter)
        (transfer,) = self.collection.events.Transfer().process_receipt(receipt, errors=DISCARD)
        return transfer["args"]["tokenId"]

    def upgrade(self, token: int) -> tuple[str, Job, TxReceipt]:
        """Records a fresh job and upgrades `token` to its output; (new URI, job, receipt)."""
        job = make_job()
        self.record(job)
        uri = f"ipfs://{job.output_cid}"
        return uri, job, send(self.collection.functions.upgrade(token, uri, job.payment_hash), self.upgrader)

    def fresh_collection(self) -> Deployment:
        """The same chain, registry and accounts with a new, empty collection (its token ids start at 1 again)."""
        collection = deploy_collection(self.w3, self.registry, self.admin, self.minter, self.upgrader)
        return dataclasses.replace(self, collection=collection)


def deploy_collection(w3: Web3, registry: Contract, admin: str, minter: str, upgrader: str) -> Contract:
    collection = deploy(w3, "SatscaleCollection", admin, "Satscale Upscaled", "SSU", registry.address, admin)
    send(collection.functions.grantRole(MINTER_ROLE, minter), admin)
    send(collection.functions.grantRole(UPGRADER_ROLE, upgrader), admin)
    return collection


@pytest.fixture(scope="module")
def chain(anvil_w3: Web3) -> Deployment:
    w3 = anvil_w3
    admin, recorder, minter, upgrader, holder, stranger, buyer = w3.eth.accounts[:7]
    registry = deploy(w3, "ProvenanceRegistry", admin, admin)
    send(registry.functions.grantRole(RECORDER_ROLE, recorder), admin)
    collection = deploy_collection(w3, registry, admin, minter, upgrader)
    return Deployment(w3, registry, collection, admin, recorder, minter, upgrader, holder, stranger, buyer)


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
    assert ERC7160_ID.hex() == "06e1bc5b"  # the id ERC-7160 states, from the four selectors
    assert ERC721_ENUMERABLE_ID.hex() == "780e9d63"
    supports = chain.collection.functions.supportsInterface
    for name, interface in {
        "ERC-7160": ERC7160_ID,
        "ERC-4906": ERC4906_ID,
        "ERC-721": ERC721_ID,
        "ERC-721 Metadata": ERC721_METADATA_ID,
        "ERC-165": ERC165_ID,
        "AccessControl": ACCESS_CONTROL_ID,
    }.items():
        assert supports(interface).call(), name
    for interface in (ERC721_ENUMERABLE_ID, bytes.fromhex("ffffffff"), bytes(4)):
        assert not supports(interface).call(), interface.hex()
    # the ABI carries ERC-7160 exactly as the EIP declares it
    abi = {item["name"]: item for item in chain.collection.abi if item["type"] in ("function", "event")}
    signatures = {f"{n}({','.join(i['type'] for i in abi[n]['inputs'])})" for n in abi}
    assert set(ERC7160_FUNCTIONS) <= signatures
    assert [o["type"] for o in abi["tokenURIs"]["outputs"]] == ["uint256", "string[]", "bool"]
    assert [o["type"] for o in abi["hasPinnedTokenURI"]["outputs"]] == ["bool"]
    assert [(i["type"], i["indexed"]) for i in abi["TokenUriPinned"]["inputs"]] == [("uint256", True)] * 2
    assert [(i["type"], i["indexed"]) for i in abi["TokenUriUnpinned"]["inputs"]] == [("uint256", True)]


def test_mint(chain: Deployment) -> None:
    col = chain.collection.functions
    receipt = send(col.mint(chain.holder, "ipfs://original/7.json"), chain.minter)
    (transfer,) = chain.collection.events.Transfer().process_receipt(receipt, errors=DISCARD)
    token = transfer["args"]["tokenId"]
    assert col.ownerOf(token).call() == chain.holder
    assert col.tokenURI(token).call() == "ipfs://original/7.json"
    assert col.tokenURIs(token).call() == [0, ["ipfs://original/7.json"], False]
    assert col.provenanceOf(token).call() == ZERO
    assert col.provenanceOfRevision(token, 0).call() == ZERO
    # a new token's metadata is not an update: Transfer only
    assert [t[0] for t in topics_of(receipt, chain.collection)] == [TRANSFER]
    print(f"gas per mint: {receipt['gasUsed']}")
    assert receipt["gasUsed"] < MAX_GAS_PER_MINT
    expect_revert(
        chain.collection, col.mint(chain.holder, "ipfs://x"), chain.stranger, "AccessControlUnauthorizedAccount"
    )
    expect_revert(chain.collection, col.mint(chain.holder, ""), chain.minter, "EmptyURI")


def test_upgrade_links_token_to_record(chain: Deployment) -> None:
    token = chain.mint()
    new_uri, job, receipt = chain.upgrade(token)

    col = chain.collection
    assert col.functions.tokenURI(token).call() == new_uri
    assert col.functions.provenanceOf(token).call() == job.payment_hash
    assert metadata_events(receipt, col) == [("MetadataUpdate", token)]
    (upgraded,) = col.events.TokenUpgraded().process_receipt(receipt, errors=DISCARD)
    assert dict(upgraded["args"]) == {"tokenId": token, "paymentHash": job.payment_hash, "uri": new_uri}
    assert topics_of(receipt, col) == [[TOKEN_UPGRADED, word(token), job.payment_hash], [METADATA_UPDATE]]
    # the token leads back to the record, and the record to the images
    assert chain.registry.functions.recordOf(col.functions.provenanceOf(token).call()).call()[1] == job.output_cid
    print(f"gas per upgrade: {receipt['gasUsed']}")
    assert receipt["gasUsed"] < MAX_GAS_PER_UPGRADE


def test_revision_history(chain: Deployment) -> None:
    token = chain.mint("ipfs://original/history.json")
    first_uri, first, _ = chain.upgrade(token)
    second_uri, second, receipt = chain.upgrade(token)
    col = chain.collection.functions
    # revision 0 is the minted URI, kept on chain; each upgrade appends one; unpinned, tokenURI is the latest
    assert col.tokenURIs(token).call() == [2, ["ipfs://original/history.json", first_uri, second_uri], False]
    assert col.tokenURI(token).call() == second_uri
    assert col.hasPinnedTokenURI(token).call() is False
    assert [col.provenanceOfRevision(token, i).call() for i in range(3)] == [
        ZERO,
        first.payment_hash,
        second.payment_hash,
    ]
    assert col.provenanceOf(token).call() == second.payment_hash
    args = expect_call_revert(chain.collection, col.provenanceOfRevision(token, 3), "TokenURIIndexOutOfRange")
    assert args == (token, 3, 3)
    print(f"gas per second upgrade of a token: {receipt['gasUsed']}")
    # every ERC-7160 read refuses a token that does not exist
    for fn in (col.tokenURIs(10**9), col.hasPinnedTokenURI(10**9), col.provenanceOfRevision(10**9, 0)):
        assert expect_call_revert(chain.collection, fn, "ERC721NonexistentToken") == (10**9,)


def test_owner_pins_a_revision(chain: Deployment) -> None:
    token = chain.mint("ipfs://original/pin.json")
    upgraded_uri, _, _ = chain.upgrade(token)
    col = chain.collection
    receipt = send(col.functions.pinTokenURI(token, 0), chain.holder)
    assert col.functions.tokenURI(token).call() == "ipfs://original/pin.json"
    assert col.functions.hasPinnedTokenURI(token).call() is True
    assert col.functions.tokenURIs(token).call() == [0, ["ipfs://original/pin.json", upgraded_uri], True]
    # TokenUriPinned(tokenId, index), both indexed, then ERC-4906's MetadataUpdate
    assert topics_of(receipt, col) == [[TOKEN_URI_PINNED, word(token), word(0)], [METADATA_UPDATE]]
    assert metadata_events(receipt, col) == [("MetadataUpdate", token)]
    (pinned,) = col.events.TokenUriPinned().process_receipt(receipt, errors=DISCARD)
    assert dict(pinned["args"]) == {"tokenId": token, "index": 0}
    print(f"gas per pin: {receipt['gasUsed']}")
    # pinning another revision moves the pin; pinning the same one again is allowed
    send(col.functions.pinTokenURI(token, 1), chain.holder)
    assert col.functions.tokenURI(token).call() == upgraded_uri
    assert col.functions.tokenURIs(token).call()[::2] == [1, True]
    send(col.functions.pinTokenURI(token, 1), chain.holder)
    assert col.functions.tokenURIs(token).call()[::2] == [1, True]


def test_only_the_token_owner_pins(chain: Deployment) -> None:
    token = chain.mint()
    chain.upgrade(token)
    col = chain.collection
    # an approved operator is not the owner either
    send(col.functions.setApprovalForAll(chain.stranger, True), chain.holder)
    try:
        for outsider in (chain.stranger, chain.admin, chain.upgrader, chain.minter):
            args = expect_revert(col, col.functions.pinTokenURI(token, 0), outsider, "NotTokenOwner")
            assert args == (outsider, token)
    finally:
        send(col.functions.setApprovalForAll(chain.stranger, False), chain.holder)
    assert col.functions.hasPinnedTokenURI(token).call() is False
    # the owner's pin cannot be taken away by the admin or the upgrader
    send(col.functions.pinTokenURI(token, 0), chain.holder)
    for outsider in (chain.admin, chain.upgrader):
        assert expect_revert(col, col.functions.unpinTokenURI(token), outsider, "NotTokenOwner") == (outsider, token)
        assert expect_revert(col, col.functions.pinTokenURI(token, 1), outsider, "NotTokenOwner") == (outsider, token)
    assert col.functions.tokenURIs(token).call()[::2] == [0, True]
    assert expect_revert(col, col.functions.pinTokenURI(10**9, 0), chain.holder, "ERC721NonexistentToken") == (10**9,)
    assert expect_revert(col, col.functions.unpinTokenURI(10**9), chain.holder, "ERC721NonexistentToken") == (10**9,)


def test_pin_index_out_of_range(chain: Deployment) -> None:
    token = chain.mint()
    col = chain.collection
    assert expect_revert(col, col.functions.pinTokenURI(token, 1), chain.holder, "TokenURIIndexOutOfRange") == (
        token,
        1,
        1,
    )
    chain.upgrade(token)
    args = expect_revert(col, col.functions.pinTokenURI(token, MAX_UINT256), chain.holder, "TokenURIIndexOutOfRange")
    assert args == (token, MAX_UINT256, 2)
    assert col.functions.hasPinnedTokenURI(token).call() is False


def test_pinned_token_stays_pinned_across_upgrades(chain: Deployment) -> None:
    token = chain.mint("ipfs://original/kept.json")
    first_uri, _, _ = chain.upgrade(token)
    send(chain.collection.functions.pinTokenURI(token, 0), chain.holder)
    second_uri, second, receipt = chain.upgrade(token)
    col = chain.collection.functions
    # the upgrade appends a revision and announces it; the owner's pin decides what tokenURI shows
    assert metadata_events(receipt, chain.collection) == [("MetadataUpdate", token)]
    assert col.tokenURI(token).call() == "ipfs://original/kept.json"
    assert col.tokenURIs(token).call() == [0, ["ipfs://original/kept.json", first_uri, second_uri], True]
    assert col.provenanceOf(token).call() == second.payment_hash  # the latest upgrade, pinned or not
    # a batch upgrade does not move the pin either
    job = make_job()
    chain.record(job)
    send(chain.collection.functions.upgradeBatch([token], ["ipfs://batch"], [job.payment_hash]), chain.upgrader)
    assert col.tokenURI(token).call() == "ipfs://original/kept.json"
    assert col.tokenURIs(token).call()[::2] == [0, True]
    assert len(col.tokenURIs(token).call()[1]) == 4


def test_unpin(chain: Deployment) -> None:
    token = chain.mint("ipfs://original/unpin.json")
    upgraded_uri, _, _ = chain.upgrade(token)
    col = chain.collection
    send(col.functions.pinTokenURI(token, 0), chain.holder)
    assert expect_revert(col, col.functions.unpinTokenURI(token), chain.stranger, "NotTokenOwner") == (
        chain.stranger,
        token,
    )
    receipt = send(col.functions.unpinTokenURI(token), chain.holder)
    assert topics_of(receipt, col) == [[TOKEN_URI_UNPINNED, word(token)], [METADATA_UPDATE]]
    assert metadata_events(receipt, col) == [("MetadataUpdate", token)]
    assert col.functions.hasPinnedTokenURI(token).call() is False
    assert col.functions.tokenURI(token).call() == upgraded_uri  # back to the latest revision
    assert col.functions.tokenURIs(token).call()[::2] == [1, False]
    # unpinning again is a no-op that still reports itself
    receipt = send(col.functions.unpinTokenURI(token), chain.holder)
    assert [t[0] for t in topics_of(receipt, col)] == [TOKEN_URI_UNPINNED, METADATA_UPDATE]
    assert col.functions.tokenURI(token).call() == upgraded_uri


def test_pin_survives_a_transfer(chain: Deployment) -> None:
    token = chain.mint("ipfs://original/sold.json")
    chain.upgrade(token)
    col = chain.collection
    send(col.functions.pinTokenURI(token, 0), chain.holder)
    send(col.functions.transferFrom(chain.holder, chain.buyer, token), chain.holder)
    assert col.functions.hasPinnedTokenURI(token).call() is True
    assert col.functions.tokenURI(token).call() == "ipfs://original/sold.json"
    # the pin now answers to the new owner only
    assert expect_revert(col, col.functions.unpinTokenURI(token), chain.holder, "NotTokenOwner") == (
        chain.holder,
        token,
    )
    send(col.functions.unpinTokenURI(token), chain.buyer)
    assert col.functions.hasPinnedTokenURI(token).call() is False


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
    assert col.functions.tokenURIs(token).call() == [0, ["ipfs://original/1.json"], False]
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

    # one range event for the whole run, and no per-token MetadataUpdate
    assert metadata_events(receipt, col) == [("BatchMetadataUpdate", tokens[0], tokens[-1])]
    upgraded = col.events.TokenUpgraded().process_receipt(receipt, errors=DISCARD)
    assert [(e["args"]["tokenId"], e["args"]["paymentHash"]) for e in upgraded] == list(
        zip(tokens, hashes, strict=True)
    )
    for token, uri, payment in zip(tokens, uris, hashes, strict=True):
        assert col.functions.tokenURI(token).call() == uri
        assert col.functions.provenanceOf(token).call() == payment
        assert col.functions.provenanceOfRevision(token, 1).call() == payment
    print(f"gas per batch upgrade of 3: {receipt['gasUsed']}")


def test_upgrade_batch_emits_one_event_per_run(chain: Deployment) -> None:
    fresh = chain.fresh_collection()
    assert [fresh.mint(f"ipfs://original/{i}") for i in range(1, 11)] == list(range(1, 11))
    job = make_job()
    fresh.record(job)
    ids = [1, 2, 3, 7, 8, 10]
    col = fresh.collection
    receipt = send(
        col.functions.upgradeBatch(ids, [f"ipfs://up/{i}" for i in ids], [job.payment_hash] * len(ids)),
        fresh.upgrader,
    )
    assert metadata_events(receipt, col) == [
        ("BatchMetadataUpdate", 1, 3),
        ("BatchMetadataUpdate", 7, 8),
        ("MetadataUpdate", 10),
    ]
    # every log in order: each token's TokenUpgraded, then its run's metadata event; nothing else
    kinds = [t[0] for t in topics_of(receipt, col)]
    run_of_3, run_of_2, run_of_1 = [TOKEN_UPGRADED] * 3, [TOKEN_UPGRADED] * 2, [TOKEN_UPGRADED]
    assert kinds == [*run_of_3, BATCH_METADATA_UPDATE, *run_of_2, BATCH_METADATA_UPDATE, *run_of_1, METADATA_UPDATE]
    assert len(receipt["logs"]) == len(kinds)
    for i in range(1, 11):
        expected = f"ipfs://up/{i}" if i in ids else f"ipfs://original/{i}"
        assert col.functions.tokenURI(i).call() == expected

    # descending, repeated and scattered ids are runs of one each
    receipt = send(
        col.functions.upgradeBatch(
            [5, 4, 4, 9], ["ipfs://a", "ipfs://b", "ipfs://c", "ipfs://d"], [job.payment_hash] * 4
        ),
        fresh.upgrader,
    )
    assert metadata_events(receipt, col) == [("MetadataUpdate", i) for i in (5, 4, 4, 9)]
    assert col.functions.tokenURIs(4).call() == [2, ["ipfs://original/4", "ipfs://b", "ipfs://c"], False]
    # an ascending run may start anywhere in the call and be followed by anything
    receipt = send(
        col.functions.upgradeBatch([10, 1, 2, 3, 4, 6], ["ipfs://z"] * 6, [job.payment_hash] * 6), fresh.upgrader
    )
    assert metadata_events(receipt, col) == [
        ("MetadataUpdate", 10),
        ("BatchMetadataUpdate", 1, 4),
        ("MetadataUpdate", 6),
    ]


def test_upgrade_batch_of_20_gas(chain: Deployment) -> None:
    jobs = [make_job() for _ in range(20)]
    for job in jobs:
        chain.record(job)
    tokens = [chain.mint() for _ in jobs]
    uris = [f"ipfs://{job.output_cid}" for job in jobs]  # 66 characters, as in the single upgrade
    receipt = send(
        chain.collection.functions.upgradeBatch(tokens, uris, [job.payment_hash for job in jobs]), chain.upgrader
    )
    assert metadata_events(receipt, chain.collection) == [("BatchMetadataUpdate", tokens[0], tokens[-1])]
    print(f"gas per batch upgrade of 20: {receipt['gasUsed']} ({receipt['gasUsed'] // 20} a token)")
    assert receipt["gasUsed"] < MAX_GAS_PER_BATCH_OF_20


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
    assert len(col.functions.tokenURIs(a).call()[1]) == 1
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


# --- third-party collections (test fixtures) ---------------------------------------------------------------------


def test_load_fixture_artifacts() -> None:
    assert FIXTURES_DIR == CONTRACTS_DIR / "artifacts" / "fixtures"
    for name in ("BaseURICollection", "URIStorageCollection"):
        artifact = load_artifact(name, FIXTURES_DIR)
        assert artifact.name == name and artifact.evm_version == "prague"
        assert artifact.bytecode.startswith("0x60")
        # fixtures stay out of the production path, and production contracts out of the fixtures'
        with pytest.raises(ValueError, match="unknown contract"):
            load_artifact(name)
    with pytest.raises(ValueError, match="unknown contract"):
        load_artifact("SatscaleCollection", FIXTURES_DIR)


def deploy_fixture(w3: Web3, name: str, owner: str, *args: Any) -> Contract:
    return deploy(w3, name, owner, *args, artifacts_dir=FIXTURES_DIR)


@pytest.mark.parametrize(("suffix", "expected"), [("", "ipfs://base/42"), (".json", "ipfs://base/42.json")])
def test_base_uri_collection(chain: Deployment, suffix: str, expected: str) -> None:
    owner = chain.admin
    col = deploy_fixture(chain.w3, "BaseURICollection", owner, "Apes", "APE", "ipfs://base/", suffix)
    send(col.functions.mint(chain.holder, 42), owner)
    send(col.functions.mint(chain.holder, 7), owner)
    assert col.functions.tokenURI(42).call() == expected
    assert col.functions.tokenURI(7).call() == expected.replace("42", "7")
    assert expect_call_revert(col, col.functions.tokenURI(1), "ERC721NonexistentToken") == (1,)
    # enumerable: a caller finds every token without knowing the ids
    for interface in (ERC721_ENUMERABLE_ID, ERC721_ID, ERC721_METADATA_ID, ERC4906_ID, ERC165_ID):
        assert col.functions.supportsInterface(interface).call(), interface.hex()
    assert not col.functions.supportsInterface(ERC7160_ID).call()
    assert col.functions.totalSupply().call() == 2
    assert [col.functions.tokenByIndex(i).call() for i in range(2)] == [42, 7]
    assert col.functions.tokenOfOwnerByIndex(chain.holder, 1).call() == 7

    for fn in (col.functions.setBaseURI("ipfs://evil/"), col.functions.mint(chain.stranger, 1)):
        assert expect_revert(col, fn, chain.stranger, "OwnableUnauthorizedAccount") == (chain.stranger,)
    receipt = send(col.functions.setBaseURI("ipfs://revealed/"), owner)
    # ERC-4906's "every token" range
    assert metadata_events(receipt, col) == [("BatchMetadataUpdate", 0, MAX_UINT256)]
    assert col.functions.tokenURI(42).call() == expected.replace("base", "revealed")
    send(col.functions.setBaseURI(""), owner)
    assert col.functions.tokenURI(42).call() == ""  # no base, no URI (suffix or not)


def test_uri_storage_collection(chain: Deployment) -> None:
    owner = chain.admin
    col = deploy_fixture(chain.w3, "URIStorageCollection", owner, "Editions", "ED")
    receipt = send(col.functions.mint(chain.holder, 5, "ipfs://bafy-five/metadata.json"), owner)
    assert metadata_events(receipt, col) == [("MetadataUpdate", 5)]  # ERC721URIStorage announces every URI
    send(col.functions.mint(chain.holder, 900, "ar://nine-hundred"), owner)
    assert col.functions.tokenURI(5).call() == "ipfs://bafy-five/metadata.json"
    assert col.functions.tokenURI(900).call() == "ar://nine-hundred"

    # no enumeration: neither the interface nor totalSupply, so callers must give a token range
    assert not col.functions.supportsInterface(ERC721_ENUMERABLE_ID).call()
    for interface in (ERC721_ID, ERC721_METADATA_ID, ERC4906_ID, ERC165_ID):
        assert col.functions.supportsInterface(interface).call(), interface.hex()
    names = {item.get("name") for item in col.abi}
    assert not names & {"totalSupply", "tokenByIndex", "tokenOfOwnerByIndex"}
    with pytest.raises((ContractLogicError, TransactionFailed)):  # the bare selector reverts without data
        chain.w3.eth.call({"to": col.address, "data": "0x" + keccak(text="totalSupply()")[:4].hex()})

    for fn in (col.functions.setTokenURI(5, "ipfs://evil"), col.functions.mint(chain.stranger, 6, "ipfs://x")):
        assert expect_revert(col, fn, chain.stranger, "OwnableUnauthorizedAccount") == (chain.stranger,)
    receipt = send(col.functions.setTokenURI(5, "ipfs://bafy-five-v2/metadata.json"), owner)
    assert metadata_events(receipt, col) == [("MetadataUpdate", 5)]
    assert col.functions.tokenURI(5).call() == "ipfs://bafy-five-v2/metadata.json"
    assert expect_revert(col, col.functions.setTokenURI(6, "ipfs://x"), owner, "ERC721NonexistentToken") == (6,)


# --- the embedded chain ------------------------------------------------------------------------------------------


def test_artifacts_run_in_py_evm() -> None:
    """The same bytecode runs in web3's in-process EthereumTesterProvider (py-evm), the default embedded chain."""
    w3 = Web3(EthereumTesterProvider())
    admin, recorder, holder = w3.eth.accounts[:3]
    registry = deploy(w3, "ProvenanceRegistry", admin, admin)
    send(registry.functions.grantRole(RECORDER_ROLE, recorder), admin)
    collection = deploy_collection(w3, registry, admin, admin, admin)

    job = make_job()
    receipt = send(registry.functions.record(*job.args()), recorder)
    (event,) = registry.events.ProvenanceRecorded().process_receipt(receipt, errors=DISCARD)
    assert event["args"]["paymentHash"] == job.payment_hash
    assert registry.functions.recordOf(job.payment_hash).call()[:2] == (job.input_cid, job.output_cid)
    assert registry.functions.recordsForOutput(job.output_sha256).call() == [job.payment_hash]

    col = collection.functions
    for i in range(1, 5):
        send(col.mint(holder, f"ipfs://original/{i}"), admin)
    upgraded = f"ipfs://{job.output_cid}"
    receipt = send(col.upgrade(1, upgraded, job.payment_hash), admin)
    assert metadata_events(receipt, collection) == [("MetadataUpdate", 1)]
    assert col.provenanceOf(1).call() == job.payment_hash
    receipt = send(col.upgradeBatch([1, 2, 4], ["ipfs://b1", "ipfs://b2", "ipfs://b4"], [job.payment_hash] * 3), admin)
    assert metadata_events(receipt, collection) == [("BatchMetadataUpdate", 1, 2), ("MetadataUpdate", 4)]
    assert col.tokenURIs(1).call() == [2, ["ipfs://original/1", upgraded, "ipfs://b1"], False]

    assert supports_all(collection, ERC7160_ID, ERC4906_ID, ERC721_ID, ACCESS_CONTROL_ID)
    assert expect_revert(collection, col.pinTokenURI(1, 0), admin, "NotTokenOwner") == (admin, 1)
    assert expect_revert(collection, col.pinTokenURI(1, 3), holder, "TokenURIIndexOutOfRange") == (1, 3, 3)
    receipt = send(col.pinTokenURI(1, 0), holder)
    assert topics_of(receipt, collection) == [[TOKEN_URI_PINNED, word(1), word(0)], [METADATA_UPDATE]]
    send(col.upgrade(1, "ipfs://later", job.payment_hash), admin)
    assert col.tokenURI(1).call() == "ipfs://original/1"
    assert col.hasPinnedTokenURI(1).call() is True
    receipt = send(col.unpinTokenURI(1), holder)
    assert topics_of(receipt, collection) == [[TOKEN_URI_UNPINNED, word(1)], [METADATA_UPDATE]]
    assert col.tokenURI(1).call() == "ipfs://later"

    for name, args in (("BaseURICollection", ("A", "A", "ipfs://b/", ".json")), ("URIStorageCollection", ("U", "U"))):
        fixture = deploy_fixture(w3, name, admin, *args)
        mint_args = (holder, 3) if name == "BaseURICollection" else (holder, 3, "ipfs://u/3")
        send(fixture.functions.mint(*mint_args), admin)
        assert fixture.functions.tokenURI(3).call() == (
            "ipfs://b/3.json" if name == "BaseURICollection" else "ipfs://u/3"
        )
        assert fixture.functions.supportsInterface(ERC721_ENUMERABLE_ID).call() is (name == "BaseURICollection")

    with pytest.raises(TransactionFailed) as info:
        registry.functions.record(*job.args()).transact({"from": recorder})
    assert decode_error(registry, info.value) == ("AlreadyRecorded", (job.payment_hash,))


def supports_all(contract: Contract, *interfaces: bytes) -> bool:
    return all(contract.functions.supportsInterface(i).call() for i in interfaces)
