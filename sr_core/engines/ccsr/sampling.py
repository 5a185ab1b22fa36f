"""CCSR's truncated samplers: v1's spaced DDPM sampler (whole or tiled) and v2's pipeline loop.

v1 follows `SpacedSampler.sample_ccsr` and `sample_with_tile_ccsr` (csslc/CCSR,
model/q_sampler.py, as inference_ccsr.py / inference_ccsr_tile.py call them); v2 follows
`StableDiffusionControlNetPipeline.__call__` of the CCSR-v2.0 branch (pipelines/pipeline_ccsr.py,
with test_ccsr_tile.py's DDPMScheduler). `schedule.py` holds the schedules and index bookkeeping.

The network is a plain callable, eps_fn(x, t, cond) -> eps: x is [B, 4, h, w], t a [B] long
tensor of (original, 0..999) timesteps, cond a mapping the callable understands; the samplers
only ever touch cond["c_latent"] (the [B, 4, h, w] LQ latent), which tiling slices.

Deliberate differences from the official code, none of which changes the maths:

* every random number comes from the caller's `torch.Generator` (v1 uses the global RNG; v2 mixes
  the pipeline generator with the global RNG). v1 draws in the official order, including one
  normal the official `p_sample_tao` draws and never uses, so with a generator seeded like the
  official global RNG on the same device the untiled v1 stream is the official one. The tiled
  sampler draws identically, so tiled and untiled runs consume the generator the same way (the
  official tiled sampler skips that unused draw).
* the sampler state is float32 (float64 if the caller's latents are float64). v1 is float32 too;
  v2 casts latents and tiled predictions to float16 under its default fp16 run, which is left to
  the caller's eps_fn.
* a latent that fits in one tile is sampled untiled (the official weighted average of a single
  tile rounds the prediction by an ulp or so, nothing more).
* tiles get cond["c_latent"] sliced to their window (what v2 does); the official v1 tiled sampler
  re-encodes each window of the LQ image every step instead, which `tile_cond` can reproduce.
* classifier-free guidance calls eps_fn once per branch (v1: cond then uncond, as the official
  code; v2: uncond then cond, the order of the official doubled batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor

from ..diffusion.tiles import gaussian_weights, sliding_windows
from .schedule import SpacedSchedule, V1Plan, V2Plan, spaced_schedule, v1_plan, v2_alphas_cumprod, v2_plan

Cond = Mapping[str, Any]
#: eps_fn(x [B, C, h, w], t [B] long, cond) -> predicted noise, x's shape
EpsFn = Callable[[Tensor, Tensor, Cond], Tensor]
#: progress(steps_done, total_steps)
ProgressFn = Callable[[int, int], None]
#: (top, bottom, left, right) in latent pixels, exclusive ends
Window = tuple[int, int, int, int]
#: tile_cond(cond, window) -> the conditioning of that tile
TileCondFn = Callable[[Cond, Window], Cond]

StartPoint = Literal["lr", "noise"]


def _check_scale(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


@dataclass(frozen=True)
class CcsrV1Settings:
    """The official v1 sampling settings (inference_ccsr.py defaults)."""

    #: spaced steps of the full chain (the truncated sampler runs about a third of them)
    steps: int = 45
    #: re-noise point and loop start, as a fraction of `steps`
    t_max: float = 0.6667
    #: loop end, as a fraction of `steps` (the last step runs at spaced index round(steps * t_min))
    t_min: float = 0.3333
    #: classifier-free guidance scale; 1 (the official value) evaluates cond only
    cfg_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_scale("cfg_scale", self.cfg_scale)
        v1_plan(self.steps, self.t_max, self.t_min)  # validates

    @property
    def plan(self) -> V1Plan:
        return v1_plan(self.steps, self.t_max, self.t_min)


@dataclass(frozen=True)
class CcsrV2Settings:
    """v2 pipeline settings; `ONE_STEP` and `MULTI_STEP` are the official presets (README commands)."""

    num_inference_steps: int = 6
    t_max: float = 0.6667
    t_min: float = 0.5
    #: classifier-free guidance is on when > 1 (diffusers' convention)
    guidance_scale: float = 4.5
    #: noise level of the start latent and of the first (x0-estimating) call
    start_steps: int = 999
    #: "lr": the LQ latent noised to start_steps (official presets); "noise": pure noise
    start_point: StartPoint = "lr"

    ONE_STEP: ClassVar[CcsrV2Settings]
    MULTI_STEP: ClassVar[CcsrV2Settings]

    def __post_init__(self) -> None:
        _check_scale("guidance_scale", self.guidance_scale)
        if self.start_point not in get_args(StartPoint):
            raise ValueError(f"start_point must be one of {get_args(StartPoint)}, got {self.start_point!r}")
        v2_plan(self.num_inference_steps, self.t_max, self.t_min, self.start_steps)  # validates

    @property
    def plan(self) -> V2Plan:
        return v2_plan(self.num_inference_steps, self.t_max, self.t_min, self.start_steps)

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1.0


# one-step: t_max is test_ccsr_tile.py's default 0.6666 (the README command does not set it)
CcsrV2Settings.ONE_STEP = CcsrV2Settings(num_inference_steps=1, t_max=0.6666, t_min=0.0, guidance_scale=1.0)
CcsrV2Settings.MULTI_STEP = CcsrV2Settings(num_inference_steps=6, t_max=0.6667, t_min=0.5, guidance_scale=4.5)


# -- shared helpers -------------------------------------------------------------------------------


def _randn(like: Tensor, generator: torch.Generator | None) -> Tensor:
    # drawn where the generator lives (a CPU generator for a CUDA latent), then moved: a seed
    # gives the same image on every device
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _timestep(x: Tensor, t: int) -> Tensor:
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)


def _check_latent(name: str, x: Tensor) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point [B, C, H, W] tensor, got {x.dtype} {list(x.shape)}")


def slice_cond(cond: Cond, window: Window) -> dict[str, Any]:
    """`cond` for one tile: "c_latent" cut to the window, every other entry passed whole.

    v2's pipeline slices its VAE-encoded LQ latent exactly so. The official v1 tiled sampler
    instead re-encodes the window of the LQ *image* with the condition encoder; pass a
    `tile_cond` doing that to reproduce it (the two differ near tile borders).
    """
    hi, hi_end, wi, wi_end = window
    return {k: (v[..., hi:hi_end, wi:wi_end] if k == "c_latent" else v) for k, v in cond.items()}


class _Tiler:
    """Gaussian-weighted blending of per-tile predictions (mixture of diffusers)."""

    def __init__(
        self,
        x: Tensor,
        conds: Sequence[Cond | None],
        tile_size: int,
        tile_stride: int,
        tile_cond: TileCondFn | None,
    ) -> None:
        _, _, h, w = x.shape
        self.tile_cond = tile_cond or slice_cond
        # a latent that fits one tile is sampled untiled (see the module notes)
        self.whole = h <= tile_size and w <= tile_size
        if self.whole:
            if not 1 <= tile_stride <= tile_size:
                raise ValueError(f"need 1 <= tile_stride <= tile_size, got {tile_stride} and {tile_size}")
            self.windows: list[Window] = []
            return
        self.windows = sliding_windows(h, w, tile_size, tile_stride)
        # float64 like the official weights; prediction * weights is accumulated into the state dtype
        self.weights = gaussian_weights(tile_size, tile_size).to(x.device)
        if tile_cond is None:
            for c in conds:
                c_latent = None if c is None else c.get("c_latent")
                if isinstance(c_latent, Tensor) and c_latent.shape[-2:] != x.shape[-2:]:
                    raise ValueError(
                        f"cond['c_latent'] is {list(c_latent.shape[-2:])}, the latent {list(x.shape[-2:])}; "
                        "they must match to be sliced per tile (or pass tile_cond)"
                    )

    def cond(self, c: Cond | None, window: Window) -> Cond | None:
        return None if c is None else self.tile_cond(c, window)

    def blend(self, x: Tensor, predict: Callable[[Tensor, Window], Tensor]) -> Tensor:
        """sum_tiles(w * predict(x_tile)) / sum_tiles(w), as the official noise_buffer / count."""
        acc = torch.zeros_like(x)
        count = torch.zeros_like(x)
        for window in self.windows:
            hi, hi_end, wi, wi_end = window
            sl = (slice(None), slice(None), slice(hi, hi_end), slice(wi, wi_end))
            acc[sl] += predict(x[sl], window) * self.weights
            count[sl] += self.weights
        acc /= count
        return acc


# -- v1 -------------------------------------------------------------------------------------------


def _table(values: Tensor, index: int, device: torch.device) -> Tensor:
    # _extract_into_tensor: look up the float64 table, then .float()
    return values[index].to(device=device, dtype=torch.float32)


def _v1_predict_x0(s: SpacedSchedule, x: Tensor, index: int, eps: Tensor) -> Tensor:
    return _table(s.sqrt_recip_alphas_cumprod, index, x.device) * x - (
        _table(s.sqrt_recipm1_alphas_cumprod, index, x.device) * eps
    )


def _v1_eps(eps_fn: EpsFn, x: Tensor, t: Tensor, cond: Cond, uncond: Cond | None, cfg_scale: float) -> Tensor:
    """`SpacedSampler.predict_noise` (eps parameterisation)."""
    if uncond is None or cfg_scale == 1.0:
        return eps_fn(x, t, cond).to(x.dtype)
    e_cond = eps_fn(x, t, cond).to(x.dtype)
    e_uncond = eps_fn(x, t, uncond).to(x.dtype)
    return e_uncond + cfg_scale * (e_cond - e_uncond)


def _v1_initial(x_t: Tensor | Sequence[int], generator: torch.Generator | None, device: Any) -> Tensor:
    if isinstance(x_t, Tensor):
        _check_latent("x_T", x_t)
        return x_t.to(_state_dtype(x_t.dtype))
    shape = tuple(int(s) for s in x_t)
    if len(shape) != 4:
        raise ValueError(f"the latent shape must be [B, C, H, W], got {list(shape)}")
    if device is None:
        device = generator.device if generator is not None else "cpu"
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source, dtype=torch.float32).to(device)


def _v1_run(
    eps_at: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    settings: CcsrV1Settings,
    generator: torch.Generator | None,
    progress: ProgressFn | None,
) -> Tensor:
    plan = settings.plan
    s = spaced_schedule(settings.steps)
    dev = x.device
    total = 1 + len(plan.loop_indices)

    # p_sample_tao: estimate x0 from the noise at the last spaced timestep (999) ...
    first = plan.first_index
    x0 = _v1_predict_x0(s, x, first, eps_at(x, _timestep(x, plan.timesteps[first])))
    # ... drawing a normal it never uses (kept: it shifts every later draw of the official stream)
    _randn(x, generator)
    # ... and re-noise that x0 to the spaced index round((steps - 1) * t_max) with fresh noise
    r = plan.renoise_index
    noise = _randn(x0, generator)
    x = _table(s.sqrt_alphas_cumprod, r, dev) * x0 + _table(s.sqrt_one_minus_alphas_cumprod, r, dev) * noise
    if progress is not None:
        progress(1, total)

    # p_sample_x0 at each spaced index of the truncated range, with the *spaced* schedule's
    # posterior q(x_{i-1} | x_i, x0) and its "fixed_small" variance; index >= 1 throughout, so
    # the official nonzero_mask is always 1
    for k, i in enumerate(plan.loop_indices):
        x0 = _v1_predict_x0(s, x, i, eps_at(x, _timestep(x, plan.timesteps[i])))
        mean = _table(s.posterior_mean_coef1, i, dev) * x0 + _table(s.posterior_mean_coef2, i, dev) * x
        x = mean + torch.sqrt(_table(s.posterior_variance, i, dev)) * _randn(x, generator)
        if progress is not None:
            progress(k + 2, total)
    # the output is the last x0 estimate, not the last posterior sample
    return x0


def _check_v1_inputs(settings: CcsrV1Settings, uncond: Cond | None) -> None:
    if not isinstance(settings, CcsrV1Settings):
        raise TypeError(f"settings must be CcsrV1Settings, got {type(settings).__name__}")
    if settings.cfg_scale != 1.0 and uncond is None:
        raise ValueError("cfg_scale != 1 needs uncond")


@torch.no_grad()
def ccsr_v1_sample(
    eps_fn: EpsFn,
    x_T: Tensor | Sequence[int],
    cond: Cond,
    uncond: Cond | None,
    settings: CcsrV1Settings,
    *,
    generator: torch.Generator | None = None,
    progress: ProgressFn | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Run the v1 truncated sampler (`sample_ccsr`) and return the x0 latent (not decoded).

    x_T: the initial standard-normal latent [B, 4, H/8, W/8], or its shape (then drawn from
    `generator` in float32 on `device`, default the generator's). Steps: one call at t = 999 to
    estimate x0; re-noise it to t_max; DDPM posterior steps down to t_min; return the x0 estimate
    of the last step (16 calls for the defaults, see `v1_call_timesteps`). With cfg_scale != 1
    every call is guided: uncond + cfg_scale * (cond - uncond). The generator must live on the
    latent's device.
    """
    _check_v1_inputs(settings, uncond)
    x = _v1_initial(x_T, generator, device)

    def eps_at(x: Tensor, t: Tensor) -> Tensor:
        return _v1_eps(eps_fn, x, t, cond, uncond, settings.cfg_scale)

    return _v1_run(eps_at, x, settings, generator, progress)


@torch.no_grad()
def ccsr_v1_sample_tiled(
    eps_fn: EpsFn,
    x_T: Tensor | Sequence[int],
    cond: Cond,
    uncond: Cond | None,
    settings: CcsrV1Settings,
    *,
    generator: torch.Generator | None = None,
    progress: ProgressFn | None = None,
    device: torch.device | str | None = None,
    tile_size: int = 64,
    tile_stride: int = 32,
    tile_cond: TileCondFn | None = None,
) -> Tensor:
    """`ccsr_v1_sample` over overlapping latent tiles (`sample_with_tile_ccsr`).

    tile_size / tile_stride are in latent pixels (the official 512 / 256 image pixels). At every
    call, each window (`sliding_windows`) gets its own (guided) noise prediction, with cond and
    uncond cut to it by `tile_cond` (default `slice_cond`: "c_latent" sliced); the predictions are
    averaged with Gaussian weights (`gaussian_weights`) and the step is taken on the whole latent.
    A latent no larger than one tile gives exactly the untiled result; a larger one must be at
    least tile_size on both sides.
    """
    _check_v1_inputs(settings, uncond)
    x = _v1_initial(x_T, generator, device)
    tiler = _Tiler(x, (cond, uncond), tile_size, tile_stride, tile_cond)
    if tiler.whole:
        return ccsr_v1_sample(eps_fn, x, cond, uncond, settings, generator=generator, progress=progress)

    def eps_at(x: Tensor, t: Tensor) -> Tensor:
        # per tile: the guided prediction (cfg before blending, as the official tiled sampler)
        return tiler.blend(
            x,
            lambda tile, win: _v1_eps(
                eps_fn, tile, t, tiler.cond(cond, win), tiler.cond(uncond, win), settings.cfg_scale
            ),
        )

    return _v1_run(eps_at, x, settings, generator, progress)


# -- v2 -------------------------------------------------------------------------------------------


def _v2_alpha(acp: Tensor, t: int) -> Tensor:
    # DDPMScheduler: alphas_cumprod[prev_t] if prev_t >= 0 else one
    return acp[t] if t >= 0 else torch.tensor(1.0, device=acp.device)


def _v2_predict_x0(acp: Tensor, x: Tensor, t: int, eps: Tensor) -> Tensor:
    """The pipeline's predict_start_from_noise (epsilon): (x - sqrt(1 - a_t) eps) / sqrt(a_t)."""
    a_t = acp[t]
    return (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5


def _v2_add_noise(acp: Tensor, x0: Tensor, noise: Tensor, t: int) -> Tensor:
    """DDPMScheduler.add_noise: sqrt(a_t) x0 + sqrt(1 - a_t) noise."""
    a_t = acp[t].to(x0.dtype)
    return a_t**0.5 * x0 + (1 - a_t) ** 0.5 * noise


def _v2_ddpm_step(
    acp: Tensor, eps: Tensor, t: int, prev_t: int, x: Tensor, generator: torch.Generator | None
) -> Tensor:
    """DDPMScheduler.step (epsilon, no clipping, "fixed_small" variance), in diffusers' operation order."""
    a_t = acp[t]
    a_prev = _v2_alpha(acp, prev_t)
    beta_prod_t = 1 - a_t
    beta_prod_prev = 1 - a_prev
    current_alpha = a_t / a_prev
    current_beta = 1 - current_alpha
    x0 = (x - beta_prod_t**0.5 * eps) / a_t**0.5
    x0_coeff = (a_prev**0.5 * current_beta) / beta_prod_t
    x_coeff = current_alpha**0.5 * beta_prod_prev / beta_prod_t
    prev = x0_coeff * x0 + x_coeff * x
    if t > 0:
        noise = _randn(eps, generator)
        variance = torch.clamp((1 - a_prev) / (1 - a_t) * current_beta, min=1e-20)
        prev = prev + variance**0.5 * noise
    return prev


@torch.no_grad()
def ccsr_v2_sample(
    eps_fn: EpsFn,
    lq_latent: Tensor,
    cond: Cond,
    uncond: Cond | None,
    settings: CcsrV2Settings,
    *,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: ProgressFn | None = None,
    tile_size: int | None = None,
    tile_stride: int | None = None,
    tile_cond: TileCondFn | None = None,
) -> Tensor:
    """Run the v2 pipeline's sampling and return the result latent (not decoded, not unscaled).

    lq_latent: the VAE-encoded LQ image times the scaling factor (the official pipeline samples
    the VAE posterior, not its mode), [B, 4, H/8, W/8]; it is the start point for
    start_point "lr". noise: the standard-normal start noise (default: drawn from `generator`).

    Sequence (see `V2Plan`): x = add_noise(lq_latent, noise, 999); one eps call at 999 -- never
    guided, and with guidance on it is given `uncond` (the official step takes the first half of
    the [negative; positive] prompt batch) -- gives x0, re-noised to t_tao; then DDPM steps, each
    guided (uncond + g * (cond - uncond)) when guidance_scale > 1; the result is the last x0
    estimate when t_min > 0, the first x0 with one inference step, else the last sample.
    MULTI_STEP calls eps at 999 (uncond) and at 499 (guided); ONE_STEP once at 999.

    tile_size / tile_stride (latent pixels; official 64 / 32): blend per-tile predictions with
    Gaussian weights, each cfg branch separately and guidance applied after blending, as the
    pipeline's `_tile_predict`; cond/uncond are cut by `tile_cond` (default `slice_cond`, what
    the pipeline does with its VAE condition).
    """
    if not isinstance(settings, CcsrV2Settings):
        raise TypeError(f"settings must be CcsrV2Settings, got {type(settings).__name__}")
    _check_latent("lq_latent", lq_latent)
    if settings.guided and uncond is None:
        raise ValueError("guidance_scale > 1 needs uncond")
    # the conditioning of the negative branch; None: unguided
    negative = uncond if settings.guided else None
    plan = settings.plan
    dtype = _state_dtype(lq_latent.dtype)
    lq = lq_latent.to(dtype)
    if noise is None:
        noise = _randn(lq, generator)
    elif noise.shape != lq.shape:
        raise ValueError(f"noise must have the latent's shape {list(lq.shape)}, got {list(noise.shape)}")
    noise = noise.to(device=lq.device, dtype=dtype)
    acp = v2_alphas_cumprod().to(lq.device)

    predict: Callable[[Tensor, Tensor, Cond], Tensor]
    if tile_size is None and tile_stride is None:

        def predict(x: Tensor, t: Tensor, c: Cond) -> Tensor:
            return eps_fn(x, t, c).to(x.dtype)

    else:
        if tile_size is None or tile_stride is None:
            raise ValueError("give both tile_size and tile_stride, or neither")
        tiler = _Tiler(lq, (cond, uncond), tile_size, tile_stride, tile_cond)

        def predict(x: Tensor, t: Tensor, c: Cond) -> Tensor:
            if tiler.whole:
                return eps_fn(x, t, c).to(x.dtype)
            return tiler.blend(x, lambda tile, win: eps_fn(tile, t, tiler.cond(c, win)).to(x.dtype))

    total = 1 + len(plan.loop_timesteps)
    x = _v2_add_noise(acp, lq, noise, plan.start_step) if settings.start_point == "lr" else noise

    # the x0 estimate at start_steps: one call, unguided, with uncond when guidance is on
    first = cond if negative is None else negative
    x0 = _v2_predict_x0(acp, x, plan.start_step, predict(x, _timestep(x, plan.start_step), first))
    # official: torch.randn_like (global RNG), drawn even when the one-step pipeline discards it
    x = _v2_add_noise(acp, x0, _randn(x0, generator), plan.renoise_timestep)
    if progress is not None:
        progress(1, total)
    if plan.one_step:
        return x0

    last = len(plan.loop_timesteps) - 1
    for k, (t, prev_t) in enumerate(zip(plan.loop_timesteps, plan.prev_timesteps, strict=True)):
        t_in = _timestep(x, t)
        if negative is not None:
            e_uncond = predict(x, t_in, negative)
            e_cond = predict(x, t_in, cond)
            eps = e_uncond + settings.guidance_scale * (e_cond - e_uncond)
        else:
            eps = predict(x, t_in, cond)
        if k == last and plan.returns_x0:
            # official (after the loop): predict_start_from_noise(latents_old, t, noise_pred)
            x0 = _v2_predict_x0(acp, x, t, eps)
        # the step draws its noise even on the last step, whose sample is discarded when t_min > 0
        x = _v2_ddpm_step(acp, eps, t, prev_t, x, generator)
        if progress is not None:
            progress(k + 2, total)
    return x0 if plan.returns_x0 else x
