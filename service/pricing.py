"""Prices: msat per output megapixel of every stage, by model (or the engine's price class),
with one minimum per job. A stage whose engine prices per thing it finds (a face stage: per
face, EngineInfo.price_unit) costs its rate times the count found at intake.

Amounts are rounded up to whole satoshis: every wallet can pay them exactly. A one-stage job
costs what it cost before pipelines; each further stage adds its own output's megapixels at
its own rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from sr_core.engines import EngineInfo
from sr_core.errors import ParameterError

from .config import Settings


@dataclass(frozen=True)
class StageQuote:
    model: str
    scale: int
    output_width: int
    output_height: int
    output_megapixels: float
    rate_msat_per_megapixel: int  # per unit for a stage priced per unit (see `unit`)
    amount_msat: int  # before the job's minimum and rounding
    unit: str = "megapixel"
    #: a stage priced per unit: how many the job pays for (at most; a face stage: the faces
    #: detected in the upload, or the most it may restore when priced without an image)
    units: int | None = None


@dataclass(frozen=True)
class Quote:
    model: str
    scale: int
    width: int
    height: int
    output_width: int
    output_height: int
    output_megapixels: float
    rate_msat_per_megapixel: int  # a multi-stage job: its cost per output megapixel, all stages
    minimum_msat: int
    amount_msat: int
    stages: tuple[StageQuote, ...] = ()

    @property
    def amount_sat(self) -> int:
        return self.amount_msat // 1000


def stage_quote(
    settings: Settings,
    model: str,
    info: EngineInfo,
    width: int,
    height: int,
    scale: int,
    work_factor: float = 1.0,
    units: int | None = None,
) -> StageQuote:
    """One stage on an image of this size (the scale already resolved by the engine).
    `work_factor`: the stage's work with the request's own engine options over its work with
    the server's (a job's 200 sampler steps cost what they take, not what the default takes).
    `units`: for an engine priced per unit, how many the job pays for."""
    if width < 1 or height < 1:
        raise ParameterError("width and height must be positive")
    megapixels = width * scale * height * scale / 1e6
    if info.counts_in_image:
        rate = settings.model_prices_msat.get(model, settings.price_per_unit_msat.get(info.price_unit))
        if rate is None:
            raise ParameterError(f"no price per {info.price_unit} is configured for {model}")
        count = units or 0
        return StageQuote(model, scale, width * scale, height * scale, round(megapixels, 4), rate, rate * count,
                          info.price_unit, count)  # fmt: skip
    rate = settings.model_prices_msat.get(model, settings.price_per_megapixel_msat.get(info.price_class))
    if rate is None:
        raise ParameterError(f"no price is configured for {model} (price class {info.price_class})")
    rate = math.ceil(rate * work_factor)
    return StageQuote(
        model, scale, width * scale, height * scale, round(megapixels, 4), rate, math.ceil(rate * megapixels)
    )


def quote(settings: Settings, name: str, width: int, height: int, stages: Sequence[StageQuote]) -> Quote:
    """The whole job: the stages' amounts added up, the minimum applied once."""
    if not stages:
        raise ParameterError("a job has at least one stage")
    last = stages[-1]
    cost = sum(stage.amount_msat for stage in stages)
    amount = max(settings.minimum_price_msat, cost)
    megapixels = last.output_width * last.output_height / 1e6
    single = len(stages) == 1 and stages[0].unit == "megapixel"
    rate = stages[0].rate_msat_per_megapixel if single else math.ceil(cost / megapixels)
    return Quote(
        model=name,
        scale=math.prod(stage.scale for stage in stages),
        width=width,
        height=height,
        output_width=last.output_width,
        output_height=last.output_height,
        output_megapixels=round(megapixels, 4),
        rate_msat_per_megapixel=rate,
        minimum_msat=settings.minimum_price_msat,
        amount_msat=math.ceil(amount / 1000) * 1000,
        stages=tuple(stages),
    )
