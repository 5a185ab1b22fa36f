"""Collection upgrades over HTTP: `POST /v1/collections/plan` (free: what an upgrade would do
and cost, changing nothing anywhere)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from ..engines import DEFAULT_MODEL
from ..intake import JobOptions
from ..openapi import errors
from ..problems import Problem
from .desk import ChainUnreachable, CollectionDesk, CollectionRefused, PlannerBusy
from .planner import PIXEL_ART_MODES, CollectionRequest

PixelArt = Literal[PIXEL_ART_MODES]  # type: ignore[valid-type]
PLAN_RETRY_AFTER = "5"


class CollectionPlanBody(BaseModel):
    contract: Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{40}$", description="the ERC-721 contract")]
    rpc_url: Annotated[
        str | None,
        Field(max_length=2000, description="the chain's JSON-RPC URL; default: this server's chain"),
    ] = None
    tokens: Annotated[
        str | None,
        Field(max_length=20_000, description="token ids: 1-500 or 1,5,9-12; default: every token listed"),
    ] = None
    model: str = DEFAULT_MODEL
    scale: Annotated[int | None, Field(ge=1, le=64)] = None
    pipeline: Annotated[
        str | list[dict[str, Any]] | None,
        Field(description="stages instead of model/scale (as for an upscale), or a preset id"),
    ] = None
    pixel_art: PixelArt = "auto"  # auto: tiny or few-colour images get nearest-neighbour
    pixel_scale: Annotated[int | None, Field(ge=1, le=64, description="pixel art's integer scale")] = None


def collections_router(desk: CollectionDesk) -> APIRouter:
    router = APIRouter(prefix="/v1/collections", tags=["collections"])

    @router.post("/plan", responses=errors(422, 502, 503))
    async def plan(body: CollectionPlanBody) -> dict[str, Any]:
        """Read the collection and every chosen token's metadata and image; say what each token
        would get (its pipeline, or nearest-neighbour for pixel art, and why), what is skipped
        and why, the price and the payment batches. Changes nothing anywhere (a dry run)."""
        options = JobOptions(body.model, body.scale, pipeline=body.pipeline)
        try:
            request = CollectionRequest(
                body.contract,
                body.rpc_url,
                CollectionDesk.tokens(body.tokens),
                options,
                body.pixel_art,
                body.pixel_scale,
            )
            found = await desk.plan(request)
        except CollectionRefused as exc:
            raise Problem(422, "collection-refused", "Collection cannot be planned", str(exc)) from None
        except ChainUnreachable as exc:
            raise Problem(502, "chain-unreachable", "Chain unreachable", str(exc)) from None
        except PlannerBusy as exc:
            raise Problem(
                503, "planner-busy", "Planner busy", str(exc), headers={"Retry-After": PLAN_RETRY_AFTER}
            ) from None
        return found.to_dict()

    return router
