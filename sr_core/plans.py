"""What a run of an engine is asked to do and what it will do: the types every engine kind
shares (kept apart from the engines so the tile and whole-image runners can use them too)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .tiling import TilePlan

#: called as work progresses with (units done, units total): tiles, or sampler steps
ProgressCallback = Callable[[int, int], None]
#: asked before every batch of tiles (and every sampler step): True stops the run with `Cancelled`
StopCheck = Callable[[], bool]
#: told after each measured piece of engine work: (work units in it, seconds it took)
TimingCallback = Callable[[int, float], None]


@dataclass(frozen=True)
class UpscaleOptions:
    scale: int | None = None  # None: the network's native scale
    tile: int | None = None  # core tile side in input pixels; None: from the memory budget
    context: int | None = None  # None: what the engine says it needs
    batch: int | None = None  # tiles per forward pass; None: from the memory budget
    memory_budget: int | None = None  # bytes for one batch of tiles; None: per device default
    #: per-job values of the engine's own options (EngineInfo.job_options: preset, steps, seed...)
    engine_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UpscalePlan:
    """How a run will go: what the runner does and what a time estimate counts."""

    scale: int
    tiles: TilePlan
    batch: int
    #: units of engine work the run costs, in the engine's own unit (EngineInfo.work_unit): for a
    #: tiled engine the input pixels it processes (every window with its context, twice where an
    #: alpha plane needs its own pass)
    work_pixels: int
    #: pixels the engine streams outside its network calls (a face stage: the detector's copy
    #: and the copy through to the writer), costed by `Engine.calibrate_streaming`
    streamed_pixels: int = 0
    #: what a finished run found, for the job's record (a face stage: the faces it restored and
    #: the ones it left alone, with why); empty before the run and for most engines
    outcome: Mapping[str, Any] = field(default_factory=dict)
