"""Satscale's ASGI app: the API under /v1 (the Gradio UI and the IPFS gateway join it here).

Run `python app.py` (or `satscale serve`); host and port come from SATSCALE_HOST and
SATSCALE_PORT (default 127.0.0.1:7860).
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from sr_core.registry import ModelRegistry


def create_app(registry: ModelRegistry | None = None) -> FastAPI:
    registry = registry or ModelRegistry()
    app = FastAPI(title="Satscale", description="Self-hosted AI image upscaling.", version="0.1.0")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/docs")

    @app.get("/healthz")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> list[dict]:
        """Every model the server can run, with the scales and precisions it offers."""
        return [description.to_dict() for description in registry.describe_all()]

    return app


def main() -> None:
    import uvicorn

    host = os.environ.get("SATSCALE_HOST", "127.0.0.1")
    port = int(os.environ.get("SATSCALE_PORT", "7860"))
    uvicorn.run(create_app(), host=host, port=port)


if __name__ == "__main__":
    main()
