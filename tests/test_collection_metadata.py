"""A collection token's new metadata keeps the original document and adds the upgrade."""

from __future__ import annotations

import json

from provenance.metadata import document_bytes, upgraded_token_document

ORIGINAL = {
    "name": "Punk #7",
    "description": "A 24x24 punk",
    "image": "ipfs://QmOld/7.png",
    "external_url": "https://example.org/7",
    "attributes": [{"trait_type": "Hat", "value": "Cap"}, {"display_type": "number", "trait_type": "Age", "value": 3}],
    "properties": {"creator": "alice"},
}
RECORD = {"payment_hash": "ab" * 32, "input_cid": "QmOld", "output_cid": "QmNew"}


def test_every_original_field_is_kept() -> None:
    new = upgraded_token_document(ORIGINAL, "ipfs://QmNew", RECORD)
    assert new["image"] == "ipfs://QmNew" and new["original_image"] == "ipfs://QmOld/7.png"
    for key, value in ORIGINAL.items():
        if key not in ("image", "properties"):
            assert new[key] == value
    assert new["properties"] == {"creator": "alice", "provenance": RECORD}
    assert list(new)[: len(ORIGINAL)] == list(ORIGINAL)  # the collection's order, new keys after
    assert ORIGINAL["image"] == "ipfs://QmOld/7.png"  # the original dict is not modified


def test_a_second_upgrade_keeps_the_first_original() -> None:
    once = upgraded_token_document(ORIGINAL, "ipfs://QmNew", RECORD)
    twice = upgraded_token_document(once, "ipfs://QmNewer", {"payment_hash": "cd" * 32})
    assert twice["original_image"] == "ipfs://QmOld/7.png" and twice["image"] == "ipfs://QmNewer"


def test_odd_properties_are_left_alone_and_bytes_are_stable() -> None:
    odd = {"name": "x", "image": "ar://abc", "properties": ["a", "b"]}
    new = upgraded_token_document(odd, "ipfs://QmNew", RECORD)
    assert new["properties"] == ["a", "b"] and new["satscale_provenance"] == RECORD
    data = document_bytes(new)
    assert data == document_bytes(upgraded_token_document(odd, "ipfs://QmNew", RECORD))
    assert json.loads(data) == new and data.endswith(b"\n")
