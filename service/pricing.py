"""Prices: msat per output megapixel, by model (or the engine's price class), with a minimum.

Amounts are rounded up to whole satoshis: every wallet can pay them exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sr_core.engines import EngineInfo
from sr_core.errors import ParameterError

from .config import Settings


@dataclass(frozen=True)
class Quote:
    model: str
    scale: int
    width: int
    height: int
    output_width: int
    output_height: int
    output_megapixels: float
    rate_msat_per_megapixel: int
    minimum_msat: int
    amount_msat: int

    @property
    def amount_sat(self) -> int:
        return self.amount_msat // 1000


def quote(settings: Settings, model: str, info: EngineInfo, width: int, height: int, scale: int | None) -> Quote:
    scale = info.resolve_scale(scale)
    if width < 1 or height < 1:
        raise ParameterError("width and height must be positive")
    rate = settings.model_prices_msat.get(model, settings.price_per_megapixel_msat.get(info.price_class))
    if rate is None:
        raise ParameterError(f"no price is configured for {model} (price class {info.price_class})")
    megapixels = width * scale * height * scale / 1e6
    amount = max(settings.minimum_price_msat, math.ceil(rate * megapixels))
    return Quote(
        model=model,
        scale=scale,
        width=width,
        height=height,
        output_width=width * scale,
        output_height=height * scale,
        output_megapixels=round(megapixels, 4),
        rate_msat_per_megapixel=rate,
        minimum_msat=settings.minimum_price_msat,
        amount_msat=math.ceil(amount / 1000) * 1000,
    )
