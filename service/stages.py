"""A job's stages: how a request spells them (`pipeline`), and what a job keeps of them.

A single-model request is a one-stage pipeline. The one parser here serves the API's form
field and query parameter, the web app and the CLI's --then/--pipeline, so a stage is checked
the same way whichever door it came through; the values of a stage's engine options are
checked by the engine's own description (EngineInfo.parse_options) at intake.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sr_core.engines import EngineInfo, Faces
from sr_core.errors import ParameterError
from sr_core.pipeline import MAX_STAGES

#: the longest `pipeline` text accepted (a stage with a long prompt fits many times)
MAX_PIPELINE_CHARS = 8_000
#: a stage's own fields; every other key of a stage object is an option of its engine
STAGE_FIELDS = ("model", "scale", "tile", "precision")
#: a face stage names its model with this key instead of `model`: {"face": "...", "weight": 0.5}
FACE_FIELD = "face"


@dataclass(frozen=True)
class StageOptions:
    """One stage as sent: checked at intake."""

    model: Any
    scale: Any = None
    tile: Any = None
    precision: Any = "auto"
    options: Mapping[str, Any] = field(default_factory=dict)
    #: sent as a face stage ({"face": ...}): its model must be a face model
    face: bool = False


@dataclass(frozen=True)
class StageRequest:
    """One stage resolved: scale filled in, engine options checked (sorted pairs: hashable)."""

    model: str
    scale: int
    tile: int | None = None
    precision: str = "auto"
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def engine_options(self) -> dict[str, Any]:
        return dict(self.options)

    def to_dict(self) -> dict[str, Any]:
        """The stage as a request spells it (and as the job and its metadata keep it)."""
        row: dict[str, Any] = {"model": self.model, "scale": self.scale}
        if self.tile is not None:
            row["tile"] = self.tile
        if self.precision != "auto":
            row["precision"] = self.precision
        return row | dict(self.options)

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> StageRequest:
        """A stage this server stored (already checked)."""
        options = tuple(sorted((k, v) for k, v in row.items() if k not in STAGE_FIELDS))
        return cls(row["model"], int(row["scale"]), row.get("tile"), row.get("precision", "auto"), options)


def parse_pipeline(raw: Any) -> tuple[StageOptions, ...]:
    """A `pipeline` as sent: JSON text (form field, query parameter, file) or a list of stage
    objects, each with a `model` and optionally scale, tile, precision and engine options."""
    if isinstance(raw, str):
        if len(raw) > MAX_PIPELINE_CHARS:
            raise ParameterError(f"pipeline is longer than {MAX_PIPELINE_CHARS} characters")
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise ParameterError(f"pipeline is not JSON: {exc}") from None
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_STAGES:
        raise ParameterError(
            f'pipeline must be a JSON list of 1 to {MAX_STAGES} stages, e.g. [{{"model": "...", "scale": 2}}]'
        )
    return tuple(_stage(stage, index) for index, stage in enumerate(raw, start=1))


def _stage(stage: Any, index: int) -> StageOptions:
    if not isinstance(stage, dict):
        raise ParameterError(f"pipeline stage {index} must be an object with a model")
    face = FACE_FIELD in stage
    if face:
        if "model" in stage:
            raise ParameterError(f'pipeline stage {index}: name its model with "face" or "model", not both')
        stage = {"model": stage[FACE_FIELD]} | {k: v for k, v in stage.items() if k != FACE_FIELD}
        if not isinstance(stage["model"], str) or not stage["model"]:
            raise ParameterError(f"pipeline stage {index}: face needs a face model's name (GET /v1/models lists them)")
    if not isinstance(stage.get("model"), str) or not stage["model"]:
        raise ParameterError(f"pipeline stage {index} needs a model (GET /v1/models lists them)")
    options = {k: v for k, v in stage.items() if k not in STAGE_FIELDS}
    return StageOptions(
        stage["model"], stage.get("scale"), stage.get("tile"), stage.get("precision", "auto"), options, face
    )


def check_stage_model(stage: StageOptions, info: EngineInfo) -> None:
    """A stage sent as a face stage must name a face model (the CLI and the intake call this)."""
    if stage.face and info.faces is not Faces.RESTORES:
        raise ParameterError(f"{stage.model} is not a face model (the model listing says which are)")


def face_stage(model: str, weight: Any = None) -> StageOptions:
    """The CLI's `--face MODEL [--face-weight W]` and the web app's "restore faces"."""
    return StageOptions(model, options={} if weight is None else {"weight": weight}, face=True)


def parse_then(spec: str) -> StageOptions:
    """The CLI's `--then MODEL[:SCALE[:key=value,...]]`."""
    model, _, rest = spec.partition(":")
    scale_text, _, pairs = rest.partition(":")
    if not model:
        raise ParameterError(f"--then {spec!r}: name a model, e.g. --then realesrgan-x4plus:2")
    scale: Any = None
    if scale_text:
        if not scale_text.isdecimal():
            raise ParameterError(f"--then {spec!r}: the scale must be a whole number")
        scale = int(scale_text)
    options: dict[str, Any] = {}
    for pair in filter(None, pairs.split(",")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ParameterError(f"--then {spec!r}: options are key=value pairs separated by commas")
        options[key] = value
    fields = {k: options.pop(k) for k in ("tile", "precision") if k in options}
    tile = fields.get("tile")
    return StageOptions(
        model, scale, int(tile) if tile and tile.isdecimal() else tile, fields.get("precision", "auto"), options
    )


def trivial(stages: Sequence[StageRequest]) -> bool:
    """A one-stage job without engine options: a job as it was before pipelines."""
    return len(stages) == 1 and not stages[0].options


def pipeline_name(stages: Sequence[StageRequest]) -> str:
    """What a job is called: its model, or each stage's model and scale."""
    if len(stages) == 1:
        return stages[0].model
    return " + ".join(f"{s.model} x{s.scale}" for s in stages)


def total_scale(stages: Sequence[StageRequest]) -> int:
    scale = 1
    for stage in stages:
        scale *= stage.scale
    return scale


def encode(stages: Sequence[StageRequest]) -> str | None:
    """The job row's `pipeline` column: None for a trivial job (its model and scale say it all)."""
    if trivial(stages):
        return None
    return json.dumps([s.to_dict() for s in stages], sort_keys=True, separators=(",", ":"))


def decode(pipeline: str | None, model: str, scale: int, tile: int | None, precision: str) -> tuple[StageRequest, ...]:
    if pipeline is None:
        return (StageRequest(model, scale, tile, precision),)
    return tuple(StageRequest.from_dict(row) for row in json.loads(pipeline))


def weights_digest(stages: Sequence[StageRequest], weights: Sequence[str]) -> str:
    """The weights a pipeline ran with, as one sha256 (a one-stage job: its model's own
    weights sha256, as before pipelines)."""
    if len(stages) == 1:
        return weights[0]
    lines = "".join(f"{s.model} {digest}\n" for s, digest in zip(stages, weights, strict=True))
    return hashlib.sha256(lines.encode()).hexdigest()
