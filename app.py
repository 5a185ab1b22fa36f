"""Satscale's ASGI app: the Gradio UI at /, the paid API under /v1, the IPFS gateway at /ipfs.

`python app.py` (or `satscale serve`) runs it on the embedded defaults: a simulated
Lightning node (no real money), a data folder in the project, the default weights.
Settings: SATSCALE_* environment variables or a TOML file named by SATSCALE_CONFIG
(see service/config.py and the README).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import version

from fastapi import FastAPI

from payments.backend import LightningBackend
from payments.dev import DevNode
from provenance.chain import ChainRejected, ProvenanceChain
from provenance.ipfs import LocalIpfsStore
from provenance.kubo import KuboRpcClient
from provenance.pinning import PinningServiceClient
from service import problems, ui
from service.access import Gatekeeper
from service.api import build_router, dev_router, provenance_router
from service.chain_sender import ChainSender
from service.cluster.coordinator import Coordinator
from service.cluster.leadership import AdvisoryLock
from service.cluster.queue import ProcrastinateQueue
from service.cluster.roster import Roster
from service.cluster.worker import ClusterWorker
from service.collections.api import collections_router
from service.collections.compose import compose as compose_collections
from service.config import Settings
from service.credentials import ChainIdentity, OutputCredentials, signing_identity, trust_anchors
from service.frontdoor import FrontDoor
from service.gateway import gateway_router
from service.openapi import install_contract
from service.postgres_store import REGISTRY_LOCK, PostgresJobStore
from service.provenance import Provenance
from service.remote_pins import RemotePinner
from service.runner import JobRunner
from service.store import SqliteJobStore, SqlJobStore
from service.worker import JobService
from sr_core.registry import ModelRegistry

log = logging.getLogger("satscale")

#: py_ecc (imported with eth_account) raises Python's recursion limit to 100000; at that depth
#: CPython's JSON parser overflows the C stack on a deeply nested body (a crash, not an error).
#: This keeps what py-evm needs and lets the parser raise RecursionError instead.
SAFE_RECURSION_LIMIT = 12_288
sys.setrecursionlimit(min(sys.getrecursionlimit(), SAFE_RECURSION_LIMIT))


def make_backend(settings: Settings) -> LightningBackend:
    if settings.backend == "lnd":
        from payments.lnd import LndBackend, LndConfig

        if settings.lnd_tls_cert is None or settings.lnd_macaroon is None:
            from payments.backend import BackendConfigError

            raise BackendConfigError("backend 'lnd' needs SATSCALE_LND_TLS_CERT and SATSCALE_LND_MACAROON")
        return LndBackend(
            LndConfig(
                host=settings.lnd_host,
                port=settings.lnd_port,
                tls_cert_path=settings.lnd_tls_cert,
                macaroon_path=settings.lnd_macaroon,
                network=settings.lnd_network,
            )
        )
    return DevNode(settings.data_dir / "dev-node.sqlite3")


def chain_connector(settings: Settings, store: SqlJobStore) -> Callable[[], ProvenanceChain]:
    """How the chain sender gets its client: the embedded chain (replaying the outbox into it,
    since it starts empty) or a JSON-RPC chain with a registry configured, remembered or deployed."""

    def connect() -> ProvenanceChain:
        if settings.chain_rpc_url is None:
            chain = ProvenanceChain.embedded_chain()
            replayed = store.outbox_replay()
            if replayed:
                log.info("embedded chain: replaying %d provenance records", replayed)
            return chain
        if not settings.chain_private_key:
            raise ChainRejected("SATSCALE_CHAIN_RPC_URL needs SATSCALE_CHAIN_PRIVATE_KEY (the recorder's key)")
        if isinstance(store, PostgresJobStore):
            with store.exclusive(REGISTRY_LOCK):  # two nodes starting at once deploy one registry, not two
                return remembered_registry(store)
        return remembered_registry(store)

    def remembered_registry(store: SqlJobStore) -> ProvenanceChain:
        assert settings.chain_rpc_url is not None and settings.chain_private_key
        remembered = f"registry_address:{settings.chain_rpc_url}"
        chain = ProvenanceChain.connect(
            settings.chain_rpc_url,
            settings.chain_private_key,
            registry_address=settings.chain_registry_address or store.get_meta(remembered),
            chain_id=settings.chain_id,
        )
        store.set_meta(remembered, chain.address)
        return chain

    return connect


def chain_identity(sender: ChainSender) -> Callable[[], ChainIdentity | None]:
    """The registry and chain id a job's record goes to, for its Content Credentials (a worker
    that never connected connects here: blocking, from the engine's thread)."""

    def identity() -> ChainIdentity:
        chain = sender.chain
        return ChainIdentity(registry=chain.address, chain_id=chain.chain_id)

    return identity


@dataclass
class Core:
    """Everything but the doors: what an API node and a worker both need."""

    settings: Settings
    store: SqlJobStore
    backend: LightningBackend
    ipfs: LocalIpfsStore
    sender: ChainSender
    pinner: RemotePinner
    provenance: Provenance
    credentials: OutputCredentials
    service: JobService
    #: a cluster's (PostgreSQL) queue and roster; None on the embedded single box
    queue: ProcrastinateQueue | None = None
    roster: Roster | None = None


def build_core(
    settings: Settings, registry: ModelRegistry | None = None, backend: LightningBackend | None = None
) -> Core:
    registry = registry or ModelRegistry(settings=settings.engines)
    store: SqlJobStore = (
        PostgresJobStore(settings.store_url) if settings.store_url else SqliteJobStore(settings.database_path)
    )
    backend = backend or make_backend(settings)
    ipfs = LocalIpfsStore(settings.data_dir / "ipfs")
    private_ipfs = LocalIpfsStore(settings.data_dir / "ipfs-private")  # unpublished jobs: never served
    sender = ChainSender(store, chain_connector(settings, store))
    pinner = RemotePinner(
        store,
        ipfs,
        KuboRpcClient(settings.ipfs_kubo_url, settings.ipfs_kubo_auth) if settings.ipfs_kubo_url else None,
        PinningServiceClient(settings.ipfs_pinning_endpoint, settings.ipfs_pinning_token or "")
        if settings.ipfs_pinning_endpoint
        else None,
    )

    def recorded() -> None:
        sender.wake()
        pinner.wake()

    provenance = Provenance(ipfs, private_ipfs, settings.ipfs_cid_version, remote=pinner.enabled)
    credentials = OutputCredentials(
        signing_identity(settings), chain_identity(sender), settings.ipfs_cid_version, trust_anchors(settings)
    )
    roster = Roster(store) if isinstance(store, PostgresJobStore) else None
    queues: list[ProcrastinateQueue] = []

    def cluster_queue(runner: JobRunner) -> ProcrastinateQueue:
        assert isinstance(store, PostgresJobStore) and roster is not None and settings.store_url
        queues.append(ProcrastinateQueue(store, roster, runner, settings.store_url))
        return queues[0]

    service = JobService(
        settings,
        store,
        backend,
        registry,
        provenance=provenance,
        on_record=recorded,
        queue=cluster_queue if roster is not None else None,
        sole=roster is None,
        workers=roster.capacity if roster is not None else None,
        credentials=credentials,
    )
    return Core(
        settings,
        store,
        backend,
        ipfs,
        sender,
        pinner,
        provenance,
        credentials,
        service,
        queues[0] if queues else None,
        roster,
    )


def cluster_worker(core: Core) -> ClusterWorker:
    """This process as a worker of the cluster, advertising every model whose weights it has and
    that loads, in the pool and with the concurrency the settings name."""
    if core.queue is None or core.roster is None:
        raise ValueError("a worker needs SATSCALE_STORE_URL (the PostgreSQL database the API nodes use)")
    models = [row.entry.name for row in core.service.engines.listing() if row.error is None]
    return ClusterWorker(core.queue, core.roster, models, core.settings.worker_queue, core.settings.worker_concurrency)


def create_app(
    settings: Settings | None = None,
    registry: ModelRegistry | None = None,
    backend: LightningBackend | None = None,
) -> FastAPI:
    settings = settings or Settings()
    if settings.role == "worker":
        raise ValueError("a worker serves no HTTP: run `satscale worker` (or `satscale serve --role api|all`)")
    core = build_core(settings, registry, backend)
    store, backend, ipfs, sender, pinner, provenance, service = (
        core.store, core.backend, core.ipfs, core.sender, core.pinner, core.provenance, core.service
    )  # fmt: skip
    front = FrontDoor(service, Gatekeeper(store), provenance, lambda: sender.chain, sender.describe)
    collections = compose_collections(settings, store, backend, service, provenance, ipfs, sender)
    coordinator: Coordinator | None = None

    async def embedded_duties() -> list[asyncio.Task]:
        if settings.chain_rpc_url is None:
            # the embedded chain starts empty: replay the recorded history before serving, so no
            # job reads "confirmed" while its record is not on this chain yet
            await asyncio.to_thread(lambda: sender.chain)
        await service.start()
        await collections.runs.start()
        tasks = [asyncio.create_task(sender.run(), name="satscale-chain-sender")]
        if pinner.enabled:
            tasks.append(asyncio.create_task(pinner.run(), name="satscale-remote-pins"))
        return tasks

    async def cluster_duties() -> list[asyncio.Task]:
        nonlocal coordinator
        assert core.queue is not None and core.roster is not None and settings.store_url
        await service.start()

        async def collection_runs() -> None:
            await collections.runs.start(sole=False)
            try:
                await asyncio.Event().wait()
            finally:
                await collections.runs.stop()

        duties = {"chain-sender": sender.run, "collection-runs": collection_runs}
        if pinner.enabled:
            duties["remote-pins"] = pinner.run
        coordinator = Coordinator(AdvisoryLock(settings.store_url), service, core.queue, duties)
        tasks = [asyncio.create_task(coordinator.run(), name="satscale-coordinator")]
        if settings.role == "all":  # this node runs jobs too
            worker = cluster_worker(core)
            tasks.append(asyncio.create_task(worker.run(), name="satscale-cluster-worker"))
        return tasks

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = await (cluster_duties() if core.queue is not None else embedded_duties())
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await pinner.close()
            await collections.runs.stop()
            await service.stop()
            store.close()

    app = FastAPI(
        title="Satscale",
        description="Self-hosted AI image upscaling, paid per image over Lightning (L402).",
        version=version("satscale"),
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.front = front
    app.state.ipfs = ipfs
    app.state.chain_sender = sender
    app.state.collections = collections
    problems.install(app)
    app.include_router(build_router(front))
    app.include_router(provenance_router(front))
    app.include_router(collections_router(collections))
    app.include_router(gateway_router(ipfs))
    if isinstance(backend, DevNode):
        app.include_router(dev_router(front))

    @app.get("/healthz", tags=["health"])
    def health() -> dict:
        return {
            "status": "ok",
            "lightning": "up" if service.backend_available else "down",
            "backend": backend.name,
            "chain": "up" if sender.available else "down",
            "role": settings.role,
            "coordinator": coordinator.leading if coordinator is not None else True,
        }

    def listed_models() -> tuple[list[str], list[int]]:
        rows = [row.to_dict() for row in front.models()]
        scales = sorted({scale for row in rows for scale in row.get("scales", [])})
        return [row["name"] for row in rows if "error" not in row], scales

    install_contract(app, listed_models)
    # last: the UI takes "/" and everything no route above claimed
    return ui.mount(app, front, collections)


def main(**overrides: object) -> None:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(**overrides)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port)


async def run_worker(settings: Settings, registry: ModelRegistry | None = None) -> None:
    """A cluster worker (`satscale worker`): runs jobs from the queue until cancelled or signalled."""
    core = build_core(settings, registry)
    worker = cluster_worker(core)
    await core.service.start()
    task = asyncio.create_task(worker.run(), name="satscale-cluster-worker")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await asyncio.wait([task, asyncio.create_task(stopping.wait())], return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await core.service.stop()
        core.store.close()


def worker_main(**overrides: object) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run_worker(Settings(role="worker", **overrides)))


if __name__ == "__main__":
    main()
