"""The collection desk (plans) and runs (paid upgrades) put together from the server's parts."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

from payments.backend import LightningBackend
from provenance.collection.rpc import vetted_web3
from provenance.collection.writer import CollectionWriter
from provenance.ipfs import LocalIpfsStore

from ..chain_sender import ChainSender
from ..config import Settings
from ..provenance import Provenance
from ..store import SqlJobStore
from ..worker import JobService
from .batches import BatchPayments
from .desk import CollectionDesk
from .finish import ChainAccess, RunFinisher
from .journal import CollectionJournal, RunRow
from .runs import CollectionRuns
from .sources import private_access, reader_factory


@dataclass(frozen=True)
class Collections:
    desk: CollectionDesk
    runs: CollectionRuns


def chain_access(settings: Settings, sender: ChainSender) -> Callable[[RunRow], ChainAccess]:
    """A run writes to its collection with the server's signer: over the server's own chain
    connection (sharing its nonce with the provenance records) when the collection is on that
    chain, else over the caller's RPC URL, vetted like any address a caller names."""

    def access(run: RunRow) -> ChainAccess:
        chain = sender.chain
        if run.rpc_url is None or run.chain_id == chain.chain_id:
            return ChainAccess(CollectionWriter(chain.w3, chain.account, run.contract, chain.lock), sender.exclusive)
        ca_bundle = str(settings.fetch_ca_bundle) if settings.fetch_ca_bundle else None
        w3 = vetted_web3(run.rpc_url, private_access(settings), ca_bundle=ca_bundle)
        return ChainAccess(CollectionWriter(w3, chain.account, run.contract), nullcontext)

    return access


def compose(
    settings: Settings,
    store: SqlJobStore,
    backend: LightningBackend,
    service: JobService,
    provenance: Provenance,
    ipfs: LocalIpfsStore,
    sender: ChainSender,
) -> Collections:
    desk = CollectionDesk(settings, service.intake, ipfs, reader_factory(settings, lambda: sender.chain))
    journal = CollectionJournal(store)
    payments = BatchPayments(
        settings,
        store,
        journal,
        backend,
        service.intake,
        service.runner,
        service.queue,
        provenance,
        service.clock,
        sender.wake,
    )
    finisher = RunFinisher(journal, store, ipfs, chain_access(settings, sender), sender.describe)
    runs = CollectionRuns(
        settings.data_dir / "collections", store, journal, desk, backend, payments, finisher, service.runner,
        settings.max_pending_upload_bytes, service.inputs.pending_bytes, service.clock,
    )  # fmt: skip
    service.runner.on_final = runs.wake
    return Collections(desk, runs)
