"""What a collection request may be, for both doors: the API validates its JSON body with these
models, and the web app builds the same models from its fields (one rule, the same texts)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError

from ..engines import DEFAULT_MODEL
from ..intake import JobOptions
from .desk import CollectionDesk
from .errors import CollectionRefused
from .planner import PIXEL_ART_MODES, CollectionRequest
from .runs import RunRequest

PixelArt = Literal[PIXEL_ART_MODES]  # type: ignore[valid-type]
B = TypeVar("B", bound=BaseModel)


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
    model: Annotated[str, Field(max_length=100)] = DEFAULT_MODEL
    scale: Annotated[int | None, Field(ge=1, le=64)] = None
    pipeline: Annotated[
        str | list[dict[str, Any]] | None,
        Field(description="stages instead of model/scale (as for an upscale), or a preset id"),
    ] = None
    pixel_art: PixelArt = "auto"  # auto: tiny or few-colour images get nearest-neighbour
    pixel_scale: Annotated[int | None, Field(ge=1, le=64, description="pixel art's integer scale")] = None


class CollectionRunBody(CollectionPlanBody):
    output_format: Annotated[str | None, Field(max_length=16, description="default: each token's own")] = None
    setter: Annotated[
        str | None,
        Field(
            max_length=100,
            description="another collection's URI setter this server's signer may call with the new URIs: "
            "setBaseURI(string) or setTokenURI(uint256,string); default: none (the manifest only, "
            "or a Satscale collection's own upgradeBatch)",
        ),
    ] = None


def plan_request(body: CollectionPlanBody, output_format: str | None = None) -> CollectionRequest:
    options = JobOptions(body.model, body.scale, output_format=output_format, pipeline=body.pipeline)
    tokens = CollectionDesk.tokens(body.tokens)
    return CollectionRequest(body.contract, body.rpc_url, tokens, options, body.pixel_art, body.pixel_scale)


def run_request(body: CollectionRunBody) -> RunRequest:
    return RunRequest(plan_request(body, body.output_format), body.setter)


def checked(model: type[B], values: dict[str, Any]) -> B:
    """A body from a door that is not the API's (the web app): the API's own rules, the same
    texts a 422 would carry."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise CollectionRefused(detail) from None
