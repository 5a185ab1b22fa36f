"""Where a collection upgrade reads from, as the operator configured it: the chain (the
server's own, or an RPC URL the caller names, vetted like a token URI), IPFS (the local store,
then the configured gateway) and the fetch policy (which private hosts are allowed)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from provenance.chain import ProvenanceChain
from provenance.collection.addresses import PrivateAccess
from provenance.collection.erc721 import CollectionReader
from provenance.collection.fetch import FetchPolicy
from provenance.collection.fetch_errors import NotFound
from provenance.collection.ipfs_readers import GatewayIpfsReader, IpfsReader, LocalStoreReader
from provenance.collection.rpc import vetted_web3
from provenance.ipfs import LocalIpfsStore

from ..config import Settings


class FirstHolder:
    """IPFS content from the first reader that holds it (the local store before any gateway)."""

    def __init__(self, readers: Sequence[IpfsReader]) -> None:
        self.readers = tuple(readers)

    async def read(self, cid: str, path: str, limit: int) -> bytes:
        missing: NotFound | None = None
        for reader in self.readers:
            try:
                return await reader.read(cid, path, limit)
            except NotFound as exc:
                missing = exc
        assert missing is not None
        raise NotFound(f"{missing} (and no configured gateway holds it: SATSCALE_IPFS_GATEWAY_URL)")


def private_access(settings: Settings) -> PrivateAccess:
    return PrivateAccess.from_entries(settings.fetch_allow_private_hosts)


def fetch_policy(settings: Settings) -> FetchPolicy:
    return FetchPolicy(
        allow_private_hosts=frozenset(settings.fetch_allow_private_hosts),
        arweave_gateway=settings.arweave_gateway_url,
        ca_bundle=settings.fetch_ca_bundle,
    )


def ipfs_reader(settings: Settings, store: LocalIpfsStore) -> IpfsReader:
    readers: list[IpfsReader] = [LocalStoreReader(store)]
    if settings.ipfs_gateway_url:
        readers.append(GatewayIpfsReader(settings.ipfs_gateway_url))
    return FirstHolder(readers)


ReaderFactory = Callable[[str | None, str], CollectionReader]


def reader_factory(settings: Settings, own_chain: Callable[[], ProvenanceChain]) -> ReaderFactory:
    """`(rpc_url, address) -> reader`: no URL reads the server's own chain (the embedded one by
    default, where the demo collection lives); a URL is vetted like any address a caller names."""
    access = private_access(settings)

    def reader(rpc_url: str | None, address: str) -> CollectionReader:
        if rpc_url:
            ca_bundle = str(settings.fetch_ca_bundle) if settings.fetch_ca_bundle else None
            return CollectionReader(vetted_web3(rpc_url, access, ca_bundle=ca_bundle), address, owns_connection=True)
        chain = own_chain()
        return CollectionReader(chain.w3, address, chain.lock)

    return reader
