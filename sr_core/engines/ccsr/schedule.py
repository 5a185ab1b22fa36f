"""CCSR's noise schedules and the timestep bookkeeping of its samplers.

v1 (csslc/CCSR, ldm code): a 1000-step DDPM with the "linear" schedule (betas linear in sqrt
space, 0.00085 .. 0.012). Two things are built from it:

* `CcsrV1Schedule`, an `nn.Module` holding the schedule buffers the model class registers
  (`DDPM.register_schedule` / `register_schedule_inter` / `logvar` in
  ldm/models/diffusion/ddpm_ccsr_stage2.py), so the checkpoint's top-level tensors load strictly.
  The sampler never reads them.
* `spaced_schedule`, what `SpacedSampler.make_schedule` (model/q_sampler.py) derives at sampling
  time: the 1000 steps respaced to `steps` (45) in float64, the tables the sampler indexes by
  spaced index. `v1_plan` is the sampler's index bookkeeping.

v2 (the CCSR-v2.0 branch, diffusers code): SD 2.1-base's DDPMScheduler, i.e. "scaled_linear"
betas (the same curve, computed in float32 by diffusers), "leading" timestep spacing with
steps_offset 1. `v2_alphas_cumprod`, `v2_timesteps` and `v2_plan` reproduce what the pipeline uses.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

NUM_TIMESTEPS = 1000
LINEAR_START = 0.00085
LINEAR_END = 0.012
#: `DDPM.__init__` hard-codes this respacing for the `*_inter` buffers (training's truncated chain)
INTER_STEPS = 45

#: the top-level tensors of the official v1 checkpoint, in registration order
BUFFER_NAMES: tuple[str, ...] = (
    *(
        f"{base}{suffix}"
        for suffix in ("", "_inter")
        for base in (
            "betas",
            "alphas_cumprod",
            "alphas_cumprod_prev",
            "sqrt_alphas_cumprod",
            "sqrt_one_minus_alphas_cumprod",
            "log_one_minus_alphas_cumprod",
            "sqrt_recip_alphas_cumprod",
            "sqrt_recipm1_alphas_cumprod",
            "posterior_variance",
            "posterior_log_variance_clipped",
            "posterior_mean_coef1",
            "posterior_mean_coef2",
        )
    ),
    "logvar",
)


def linear_betas(
    num_timesteps: int = NUM_TIMESTEPS, linear_start: float = LINEAR_START, linear_end: float = LINEAR_END
) -> np.ndarray:
    """`make_beta_schedule("linear")`: float64 betas, linear in sqrt space, then squared.

    Uses torch.linspace as the official code does (its rounding differs from numpy's linspace).
    """
    return (torch.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=torch.float64) ** 2).numpy()


def space_timesteps(num_timesteps: int, section_counts: int | str | Sequence[int]) -> set[int]:
    """The timesteps kept when respacing `num_timesteps` (guided-diffusion's `space_timesteps`).

    The range is cut into len(section_counts) near-equal sections; section i keeps
    section_counts[i] timesteps, `round(k * (size - 1) / (count - 1))` for k = 0 .. count - 1, with
    the fractional stride accumulated in float and Python's round (half to even), exactly as the
    official loop does. CCSR always passes one section (e.g. "45"). The "ddimN" form is not supported.
    """
    if isinstance(section_counts, int):
        counts = [section_counts]
    elif isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            raise ValueError("the 'ddimN' spacing is not used by CCSR and not supported")
        counts = [int(x) for x in section_counts.split(",")]
    else:
        counts = [int(x) for x in section_counts]
    size_per, extra = divmod(num_timesteps, len(counts))
    start = 0
    steps: list[int] = []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return set(steps)


def _schedule_arrays(betas: np.ndarray) -> dict[str, np.ndarray]:
    """`register_schedule`'s formulas (v_posterior = 0), evaluated with numpy in `betas`' dtype.

    The *_inter betas are float32, so part of their tables is computed in float32 and part (the
    terms involving alphas_cumprod_prev, which np.append promotes to float64) in float64, as in
    the official code; keep the expressions as they are for bit-exact buffers.
    """
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas, axis=0)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    return {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": alphas_cumprod_prev,
        "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
        "log_one_minus_alphas_cumprod": np.log(1.0 - alphas_cumprod),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1),
        "posterior_variance": posterior_variance,
        # the variance is 0 at t = 0; the log is clipped there (log(1e-20))
        "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
    }


def _v1_buffers() -> dict[str, torch.Tensor]:
    out = {k: torch.tensor(v, dtype=torch.float32) for k, v in _schedule_arrays(linear_betas()).items()}
    # The *_inter schedule is the 1000-step chain respaced to 45 steps, but (unlike the sampler's
    # float64 respacing) its betas come from the *float32 buffer* alphas_cumprod, in float32
    # arithmetic: beta_k = 1 - acp[t_k] / acp[t_{k-1}], acp[t_{-1}] = 1.
    kept = torch.tensor(sorted(space_timesteps(NUM_TIMESTEPS, [INTER_STEPS])))
    acp = out["alphas_cumprod"][kept]
    prev = torch.cat([torch.ones(1), acp[:-1]])
    inter_betas = (1 - acp / prev).numpy()
    out.update({f"{k}_inter": torch.tensor(v, dtype=torch.float32) for k, v in _schedule_arrays(inter_betas).items()})
    # learn_logvar is False and logvar_init 0: a float32 buffer of zeros
    out["logvar"] = torch.full((NUM_TIMESTEPS,), 0.0, dtype=torch.float32)
    return out


class CcsrV1Schedule(nn.Module):
    """The DDPM schedule tensors of the v1 model, as float32 buffers named as in its checkpoint.

    1000-step tables (betas ... posterior_mean_coef2), their 45-step respaced `*_inter`
    counterparts and `logvar`; `BUFFER_NAMES` lists them. The official class also registers
    `lvlb_weights(_inter)`, non-persistent (not in the checkpoint) and training-only: left out.
    """

    def __init__(self) -> None:
        super().__init__()
        buffers = _v1_buffers()
        for name in BUFFER_NAMES:
            self.register_buffer(name, buffers[name])


@dataclass(frozen=True)
class SpacedSchedule:
    """`SpacedSampler.make_schedule(steps)`: float64 tables indexed by spaced index 0 .. steps - 1.

    timesteps[i] is the original timestep of spaced index i (ascending). betas are respaced so
    that alphas_cumprod[i] equals the 1000-step alphas_cumprod at timesteps[i]; everything else
    follows with `register_schedule`'s formulas. The sampler casts each looked-up value to float32.
    """

    timesteps: tuple[int, ...]
    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor


@functools.lru_cache(maxsize=8)
def spaced_schedule(steps: int) -> SpacedSchedule:
    """The sampler's respaced schedule for `steps` spaced steps (float64 CPU tensors; do not modify)."""
    _check_int("steps", steps, 1, NUM_TIMESTEPS)
    used = space_timesteps(NUM_TIMESTEPS, str(steps))
    original_acp = np.cumprod(1.0 - linear_betas(), axis=0)
    betas: list[float] = []
    last = 1.0
    for i, acp in enumerate(original_acp):
        if i in used:
            betas.append(1 - acp / last)
            last = acp
    arrays = _schedule_arrays(np.array(betas, dtype=np.float64))
    return SpacedSchedule(
        timesteps=tuple(sorted(used)),
        **{
            name: torch.from_numpy(np.ascontiguousarray(arrays[name]))
            for name in (
                "betas",
                "alphas_cumprod",
                "alphas_cumprod_prev",
                "sqrt_alphas_cumprod",
                "sqrt_one_minus_alphas_cumprod",
                "sqrt_recip_alphas_cumprod",
                "sqrt_recipm1_alphas_cumprod",
                "posterior_variance",
                "posterior_mean_coef1",
                "posterior_mean_coef2",
            )
        },
    )


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


@dataclass(frozen=True)
class V1Plan:
    """Which spaced indices the v1 truncated sampler (`SpacedSampler.sample_ccsr`) visits.

    1. one network call at spaced index `first_index` (= steps - 1, timestep 999 for 45 steps)
       on the initial noise, to estimate x0;
    2. that x0 is re-noised to spaced index `renoise_index` (q_sample);
    3. posterior steps at `loop_indices` (descending), each one network call;
    4. the result is the x0 estimate of the last of them.

    The official code computes `renoise_index` as round((steps - 1) * t_max) (float32 torch.round)
    and the loop start as round(steps * t_max) - 1 (Python round). With the defaults both are 29;
    for some settings (e.g. 45 steps, t_max 0.5: 22 vs 21) they differ by one and the loop starts
    one index below the noise level the latent was re-noised to. Kept as is.
    """

    timesteps: tuple[int, ...]
    first_index: int
    renoise_index: int
    loop_indices: tuple[int, ...]

    @property
    def call_timesteps(self) -> list[int]:
        """The timestep of every network evaluation (per cfg branch), in order."""
        return [self.timesteps[self.first_index], *(self.timesteps[i] for i in self.loop_indices)]


def v1_plan(steps: int, t_max: float, t_min: float) -> V1Plan:
    """Validated index bookkeeping of the v1 sampler; see `V1Plan`."""
    _check_int("steps", steps, 2, NUM_TIMESTEPS)
    _check_fraction("t_max", t_max)
    _check_fraction("t_min", t_min)
    if not 0 < t_min < t_max <= 1:
        raise ValueError(f"need 0 < t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    start = round(steps * t_max)  # the loop covers spaced indices start - 1 .. stop
    stop = round(steps * t_min)
    if stop < 1:
        # the official slice time_range[:-0] is empty: no posterior step, and no x0 to return
        raise ValueError(f"round(steps * t_min) must be >= 1, got round({steps} * {t_min}) = {stop}")
    if start <= stop:
        raise ValueError(
            f"no posterior steps: round(steps * t_max) = {start} must exceed round(steps * t_min) = {stop}"
        )
    # index * t_max with index a long tensor is float32; torch.round rounds half to even
    renoise = int(torch.round(torch.tensor([steps - 1]) * t_max).item())
    return V1Plan(
        timesteps=spaced_schedule(steps).timesteps,
        first_index=steps - 1,
        renoise_index=renoise,
        loop_indices=tuple(range(start - 1, stop - 1, -1)),
    )


def v1_call_timesteps(steps: int = 45, t_max: float = 0.6667, t_min: float = 0.3333) -> list[int]:
    """Timesteps of the v1 sampler's network calls: [999, 658, 636, ..., 341] for the defaults."""
    return v1_plan(steps, t_max, t_min).call_timesteps


# -- v2 -------------------------------------------------------------------------------------------

#: SD 2.1-base's scheduler config, as the v2 pipeline loads it into a DDPMScheduler
V2_BETA_START = 0.00085
V2_BETA_END = 0.012
V2_STEPS_OFFSET = 1


@functools.lru_cache(maxsize=1)
def _v2_alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(V2_BETA_START**0.5, V2_BETA_END**0.5, NUM_TIMESTEPS, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def v2_alphas_cumprod() -> torch.Tensor:
    """DDPMScheduler's alphas_cumprod for "scaled_linear" betas: float32 throughout, as diffusers computes it."""
    return _v2_alphas_cumprod().clone()


def v2_timesteps(num_inference_steps: int) -> tuple[int, ...]:
    """`DDPMScheduler.set_timesteps` with "leading" spacing and steps_offset 1, descending.

    k * (1000 // n) + 1 for k = n - 1 .. 0: [831, 665, 499, 333, 167, 1] for n = 6, [1] for n = 1.
    """
    _check_int("num_inference_steps", num_inference_steps, 1, NUM_TIMESTEPS)
    ratio = NUM_TIMESTEPS // num_inference_steps
    return tuple(k * ratio + V2_STEPS_OFFSET for k in range(num_inference_steps - 1, -1, -1))


@dataclass(frozen=True)
class V2Plan:
    """Timesteps the v2 pipeline (`StableDiffusionControlNetPipeline.__call__`) uses.

    1. one network call at `start_step` (999), never guided, to estimate x0;
    2. that x0 is re-noised to `renoise_timestep` (scheduler.add_noise);
    3. one DDPM step (scheduler.step) per `loop_timesteps` entry, guided when guidance > 1, each
       stepping to the matching `prev_timesteps` entry (-1: to the clean sample);
    4. result: with one inference step, the x0 of step 1 (steps 2-3 are skipped); otherwise, if
       `returns_x0` (t_min > 0), the x0 estimate of the last loop step, else the last step's sample.
    """

    timesteps: tuple[int, ...]
    start_step: int
    renoise_timestep: int
    loop_timesteps: tuple[int, ...]
    prev_timesteps: tuple[int, ...]
    returns_x0: bool

    @property
    def one_step(self) -> bool:
        return len(self.timesteps) == 1


def v2_plan(num_inference_steps: int, t_max: float, t_min: float, start_steps: int = 999) -> V2Plan:
    """Validated timestep bookkeeping of the v2 pipeline; see `V2Plan`."""
    timesteps = v2_timesteps(num_inference_steps)
    _check_fraction("t_max", t_max)
    _check_fraction("t_min", t_min)
    _check_int("start_steps", start_steps, 0, NUM_TIMESTEPS - 1)
    if not 0 < t_max < 1:
        # t_max == 1 makes the official pipeline skip the x0 estimate (and fail with one step)
        raise ValueError(f"t_max must be in (0, 1), got {t_max}")
    if not 0 <= t_min < t_max:
        raise ValueError(f"need 0 <= t_min < t_max, got t_min={t_min}, t_max={t_max}")
    n = num_inference_steps
    keep = round(n * t_max)
    drop = round(n * t_min)
    if n == 1:
        if t_min > 0:
            raise ValueError("the one-step pipeline needs t_min == 0 (the official code fails otherwise)")
    else:
        if keep < 1:
            raise ValueError(f"round(num_inference_steps * t_max) must be >= 1, got {keep}")
        if t_min > 0 and not 1 <= drop < keep:
            # drop == 0 empties timesteps[:-0]; drop >= keep leaves no step: the official code fails
            raise ValueError(f"with t_min > 0 need 1 <= round(n * t_min) < round(n * t_max), got {drop} and {keep}")
    # timesteps[-keep] with Python indexing; for one step any keep picks the only timestep
    renoise = timesteps[-keep] if n > 1 else timesteps[0]
    loop = timesteps[-keep:] if n > 1 else timesteps
    if t_min > 0:
        loop = loop[:-drop]
    following = {t: (timesteps[i + 1] if i + 1 < n else -1) for i, t in enumerate(timesteps)}
    return V2Plan(
        timesteps=timesteps,
        start_step=start_steps,
        renoise_timestep=renoise,
        loop_timesteps=loop if n > 1 else (),
        prev_timesteps=tuple(following[t] for t in loop) if n > 1 else (),
        returns_x0=t_min > 0,
    )
