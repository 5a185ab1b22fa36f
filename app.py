"""Satscale's ASGI app: the paid API under /v1 (the Gradio UI and the IPFS gateway join it here).

`python app.py` (or `satscale serve`) runs it on the embedded defaults: a simulated
Lightning node (no real money), a data folder in the project, the default weights.
Settings: SATSCALE_* environment variables or a TOML file named by SATSCALE_CONFIG
(see service/config.py and the README).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from payments.backend import LightningBackend
from payments.dev import DevNode
from service import problems
from service.api import build_router, dev_router
from service.config import Settings
from service.store import SqliteJobStore
from service.worker import JobService
from sr_core.registry import ModelRegistry


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


def create_app(
    settings: Settings | None = None,
    registry: ModelRegistry | None = None,
    backend: LightningBackend | None = None,
) -> FastAPI:
    settings = settings or Settings()
    registry = registry or ModelRegistry()
    store = SqliteJobStore(settings.database_path)
    backend = backend or make_backend(settings)
    service = JobService(settings, store, backend, registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()
            store.close()

    app = FastAPI(
        title="Satscale",
        description="Self-hosted AI image upscaling, paid per image over Lightning (L402).",
        version="0.2.0",
        lifespan=lifespan,
    )
    app.state.service = service
    problems.install(app)
    app.include_router(build_router(service, registry))
    if isinstance(backend, DevNode):
        app.include_router(dev_router(service))

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/docs")

    @app.get("/healthz", tags=["health"])
    def health() -> dict:
        return {"status": "ok", "lightning": "up" if service.backend_available else "down", "backend": backend.name}

    return app


def main(**overrides: object) -> None:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(**overrides)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
