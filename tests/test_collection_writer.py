"""Writing a collection's new URIs on anvil: Satscale's upgradeBatch (ERC-4906 runs, ERC-7160
history) and a third party's setter, each sent once however often the run is resumed."""

from __future__ import annotations

import hashlib

import pytest
from eth_account import Account
from eth_utils import keccak
from web3 import Web3

from provenance.chain import ChainRejected, ProvenanceChain, RecordFields, _deploy
from provenance.collection.writer import CollectionWriter, NotAuthorised, Setter, TokenUpgrade

from .anvil import ANVIL_KEY_0, running_anvil
from .collection_world import deploy, send

pytestmark = pytest.mark.chain
#: anvil's second well-known dev key: funded, owns nothing
STRANGER_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
METADATA_UPDATE = keccak(text="MetadataUpdate(uint256)")
BATCH_METADATA_UPDATE = keccak(text="BatchMetadataUpdate(uint256,uint256)")


@pytest.fixture(scope="module")
def chain():
    with running_anvil() as (w3, port):
        yield ProvenanceChain.connect(f"http://127.0.0.1:{port}", ANVIL_KEY_0), w3


def _record(chain: ProvenanceChain, token_id: int) -> str:
    key = hashlib.sha256(b"token %d" % token_id).hexdigest()
    digest = hashlib.sha256(b"%d" % token_id).hexdigest()
    fields = RecordFields(key, f"bafyin{token_id}", f"bafyout{token_id}", digest, digest, "nearest", digest, digest)
    mined = chain.wait_receipt(chain.send_record(fields, chain.next_nonce()), 30)
    assert mined is not None and mined.succeeded
    return key


def _events(w3: Web3, tx: str, address: str) -> list[tuple]:
    receipt = w3.eth.wait_for_transaction_receipt(tx)
    assert receipt["status"] == 1
    found = []
    for log in receipt["logs"]:
        topic = bytes(log["topics"][0])
        values = [int.from_bytes(bytes(log["data"])[i : i + 32], "big") for i in range(0, len(log["data"]), 32)]
        if log["address"] == address and topic == METADATA_UPDATE:
            found.append(("MetadataUpdate", *values))
        elif log["address"] == address and topic == BATCH_METADATA_UPDATE:
            found.append(("BatchMetadataUpdate", *values))
    return found


def test_satscale_collection_runs_and_history(chain) -> None:
    provenance, w3 = chain
    account = provenance.account
    address = _deploy(w3, account, "SatscaleCollection", "Pals", "PAL", provenance.address, account.address)
    collection = w3.eth.contract(address=address, abi=CollectionWriter(w3, account, address).satscale.abi)
    for role in ("MINTER_ROLE", "UPGRADER_ROLE"):
        send(collection.functions.grantRole(keccak(text=role), account.address), w3)
    for token_id in range(1, 9):
        send(collection.functions.mint(account.address, f"ipfs://QmOld/{token_id}.json"), w3)

    writer = CollectionWriter(w3, account, address)
    chosen = [1, 2, 3, 5, 6, 8]
    upgrades = [TokenUpgrade(i, f"ipfs://bafynew{i}", _record(provenance, i)) for i in reversed(chosen)]
    assert writer.pending(upgrades) == upgrades
    [call] = writer.calls(writer.pending(upgrades))
    assert [u.token_id for u in call] == chosen  # ascending, so the contract sees the runs
    tx = writer.send_upgrades(call, provenance.next_nonce())
    assert _events(w3, tx, address) == [
        ("BatchMetadataUpdate", 1, 3),
        ("BatchMetadataUpdate", 5, 6),
        ("MetadataUpdate", 8),
    ]
    index, uris, pinned = collection.functions.tokenURIs(5).call()
    assert (index, uris, pinned) == (1, ["ipfs://QmOld/5.json", "ipfs://bafynew5"], False)  # revision 0 kept
    assert collection.functions.tokenURI(4).call() == "ipfs://QmOld/4.json"  # not chosen, not touched

    # resumed after the transaction was mined: nothing is sent twice
    assert writer.pending(upgrades) == []
    nonce = provenance.next_nonce()
    missing = TokenUpgrade(7, "ipfs://bafynew7", "ab" * 32)  # no record for this key on the registry
    with pytest.raises(NotAuthorised, match="upgradeBatch"):
        writer.send_upgrades([missing], nonce)
    assert provenance.next_nonce() == nonce  # refused by simulation: no transaction, no gas


def test_third_party_setter_only_for_its_owner(chain) -> None:
    _, w3 = chain
    owner = Account.from_key(ANVIL_KEY_0)
    contract = deploy(w3, "BaseURICollection", "Pals", "PAL", "ipfs://QmOld/", ".json")
    send(contract.functions.mint(owner.address, 1), w3)
    send(contract.functions.mint(owner.address, 2), w3)
    setter = Setter.parse("setBaseURI(string)")
    expected = {1: "ipfs://QmNew/1.json", 2: "ipfs://QmNew/2.json"}

    stranger = CollectionWriter(w3, Account.from_key(STRANGER_KEY), contract.address)
    before = w3.eth.get_transaction_count(stranger.account.address)
    with pytest.raises(NotAuthorised, match="setBaseURI would revert"):
        stranger.send_setter(setter, ["ipfs://QmNew/"], before)
    assert w3.eth.get_transaction_count(stranger.account.address) == before

    writer = CollectionWriter(w3, owner, contract.address)
    assert not writer.setter_done(expected)
    tx = writer.send_setter(setter, ["ipfs://QmNew/"], w3.eth.get_transaction_count(owner.address, "pending"))
    assert w3.eth.wait_for_transaction_receipt(tx)["status"] == 1
    assert writer.setter_done(expected) and contract.functions.tokenURI(2).call() == "ipfs://QmNew/2.json"


@pytest.mark.parametrize("signature", ["setBaseURI(bytes)", "drain()", "setBaseURI(string", "x(string,string)", ""])
def test_only_setters_we_can_fill_in(signature) -> None:
    with pytest.raises(ChainRejected, match="not a setter"):
        Setter.parse(signature)


def test_setter_shapes() -> None:
    assert not Setter.parse("setBaseURI(string)").per_token
    assert Setter.parse(" setTokenURI(uint256, string) ").per_token
