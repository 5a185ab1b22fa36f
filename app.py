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
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
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
from service.collections.api import collections_router
from service.collections.compose import compose as compose_collections
from service.config import Settings
from service.frontdoor import FrontDoor
from service.gateway import gateway_router
from service.openapi import install_contract
from service.provenance import Provenance
from service.remote_pins import RemotePinner
from service.store import SqliteJobStore
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


def chain_connector(settings: Settings, store: SqliteJobStore) -> Callable[[], ProvenanceChain]:
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


def create_app(
    settings: Settings | None = None,
    registry: ModelRegistry | None = None,
    backend: LightningBackend | None = None,
) -> FastAPI:
    settings = settings or Settings()
    registry = registry or ModelRegistry(settings=settings.engines)
    store = SqliteJobStore(settings.database_path)
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
    service = JobService(
        settings,
        store,
        backend,
        registry,
        provenance=provenance,
        on_record=recorded,
    )
    front = FrontDoor(service, Gatekeeper(store), provenance, lambda: sender.chain, sender.describe)
    collections = compose_collections(settings, store, backend, service, provenance, ipfs, sender)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.chain_rpc_url is None:
            # the embedded chain starts empty: replay the recorded history before serving, so no
            # job reads "confirmed" while its record is not on this chain yet
            await asyncio.to_thread(lambda: sender.chain)
        await service.start()
        await collections.runs.start()
        tasks = [asyncio.create_task(sender.run(), name="satscale-chain-sender")]
        if pinner.enabled:
            tasks.append(asyncio.create_task(pinner.run(), name="satscale-remote-pins"))
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


if __name__ == "__main__":
    main()
