"""Which naming a collection uses, read off its token URIs."""

from __future__ import annotations

import pytest

from provenance.collection.erc721 import CollectionError, TokenUri, parse_token_selection
from provenance.collection.layout import BaseUriLayout, PerTokenLayout, detect_layout

FOLDER = "ipfs://QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG/"


def _uris(template: str, ids=(1, 2, 10, 11)) -> list[TokenUri]:
    return [TokenUri(i, template.format(i)) for i in ids]


@pytest.mark.parametrize("suffix", ["", ".json"])
def test_base_uri_folders_keep_their_naming(suffix) -> None:
    layout = detect_layout(_uris(FOLDER + "{}" + suffix))
    assert layout == BaseUriLayout(FOLDER, suffix)
    assert layout.name(10) == f"10{suffix}"
    assert layout.uri("ipfs://bafynew/", 7) == f"ipfs://bafynew/7{suffix}"


def test_https_api_and_burnt_tokens() -> None:
    tokens = [*_uris("https://api.example.org/meta/{}"), TokenUri(3, None, "reverted")]
    assert detect_layout(tokens) == BaseUriLayout("https://api.example.org/meta/", "")


@pytest.mark.parametrize(
    "uris",
    [
        # every token its own document (ERC721URIStorage)
        [TokenUri(1, "ipfs://QmAAA"), TokenUri(2, "ipfs://QmBBB")],
        # on-chain documents
        [TokenUri(1, "data:application/json;base64,eyJhIjoxfQ=="), TokenUri(2, "data:application/json,{}")],
        # mostly a folder, one token moved elsewhere
        [*_uris(FOLDER + "{}.json"), TokenUri(12, "ipfs://QmOther/12.json")],
        # the id is not the file name (a query string, a path after it)
        _uris("https://api.example.org/token?id={}"),
        _uris(FOLDER + "{}/metadata.json"),
        # names that are not base + id + one suffix
        [TokenUri(1, FOLDER + "1.json"), TokenUri(2, FOLDER + "2")],
    ],
)
def test_anything_else_is_a_uri_per_token(uris) -> None:
    assert detect_layout(uris) == PerTokenLayout()


def test_a_cid_that_happens_to_end_in_the_id_is_not_a_folder() -> None:
    assert detect_layout([TokenUri(1, "ipfs://QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbd1")]) == PerTokenLayout()


def test_token_selection() -> None:
    assert parse_token_selection("1-5") == (1, 2, 3, 4, 5)
    assert parse_token_selection(" 9, 1-3,2 ,0") == (0, 1, 2, 3, 9)
    for bad in ["", "a-b", "5-1", "-3", "1-", "1,,2", "0-999999"]:
        with pytest.raises(CollectionError):
            parse_token_selection(bad)
