"""SUPIR's samplers: restoration-guided EDM (Euler with churn) and DPM-Solver++(2M) SDE, whole or tiled.

The maths of the official `RestoreEDMSampler`, `TiledRestoreEDMSampler`, `RestoreDPMPP2MSampler`
and `TiledRestoreDPMPP2MSampler` (Fanghua-Yu/SUPIR, sgm/modules/diffusionmodules/sampling.py),
with the `LinearCFG` guider and the settings `SUPIRModel.batchify_sample` gives them. Deliberate
differences, none of which changes the maths:

* every random number comes from the caller's `torch.Generator`. The official DPM++ sampler
  draws its SDE noise from a Brownian tree (torchsde); it only ever asks for increments over
  consecutive, disjoint sigma intervals, normalised to unit variance, which are independent
  standard normals, so plain `randn` draws have the same distribution.
* churn noise is drawn only on steps that use it (the official tiled EDM sampler draws a
  full-latent normal every step and discards it when gamma == 0), so tiled and untiled runs
  consume the generator identically.
* inputs are never modified in place (the official samplers scale the caller's noise in place
  and overwrite `cond["control"]` with tile slices).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from ..diffusion.tiles import gaussian_weights, sliding_windows
from .denoiser import NUM_TIMESTEPS, sampling_sigmas

#: the official code normalises sigma by this constant (LinearCFG, RestoreEDMSampler.sigma_max);
#: it is the largest training sigma rounded down (that one is 14.61464...), so at the first step
#: sigma / OFFICIAL_SIGMA_MAX is slightly above 1
OFFICIAL_SIGMA_MAX = 14.6146
#: rho of the Karras schedule the DPM++ sampler uses (k-diffusion's default)
KARRAS_RHO = 7.0

SamplerKind = Literal["edm", "dpmpp2m"]
Cond = Mapping[str, torch.Tensor]
#: denoise(x, sigma [B], cond, control_scale) -> x0 estimate (e.g. DiscreteEpsDenoiser bound to the network)
DenoiseFn = Callable[[torch.Tensor, torch.Tensor, Cond, float], torch.Tensor]
#: progress(steps_done, total_steps)
ProgressFn = Callable[[int, int], None]

_Slice = tuple[slice, slice, slice, slice]


@dataclass(frozen=True)
class SamplerSettings:
    """Everything the official samplers read. Defaults are `SUPIRModel.batchify_sample`'s, except
    `restore_cfg`, whose 4.0 there is overridden by every official entry point (demo and CLI
    both pass -1, i.e. off)."""

    #: "edm": RestoreEDMSampler (the SUPIR_v0 yamls); "dpmpp2m": RestoreDPMPP2MSampler (lightning yaml)
    kind: SamplerKind = "edm"
    num_steps: int = 100
    #: EDM churn: each step with s_tmin <= sigma <= s_tmax first raises sigma by the factor
    #: 1 + min(s_churn / num_steps, sqrt(2) - 1), adding fresh noise. EDM only.
    s_churn: float = 0.0
    #: multiplier of the injected noise (EDM churn noise; DPM++ SDE noise)
    s_noise: float = 1.003
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    #: text CFG scale; with linear_cfg the scale goes from cfg_scale_start (sigma = sigma_max) to cfg_scale
    #: (sigma -> 0), linearly in sigma
    cfg_scale: float = 4.0
    cfg_scale_start: float = 1.0
    linear_cfg: bool = False
    #: strength of the control (low-quality latent) branch; linear_control_scale ramps it from
    #: control_scale_start (sigma = sigma_max) to control_scale, linearly in sigma. Linear: EDM only.
    control_scale: float = 1.0
    control_scale_start: float = 0.0
    linear_control_scale: bool = False
    #: restoration guidance: pull the x0 estimate toward x_center by (sigma / sigma_max) ** restore_cfg
    #: while the next sigma > restore_cfg_s_tmin; <= 0 disables. EDM only.
    restore_cfg: float = -1.0
    restore_cfg_s_tmin: float = 0.05
    #: DPM++ 2M SDE stochasticity (1 = the official sampler's fixed value, 0 = deterministic 2M). DPM++ only.
    eta: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in get_args(SamplerKind):
            raise ValueError(f"sampler kind must be one of {get_args(SamplerKind)}, got {self.kind!r}")
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int):
            raise ValueError(f"num_steps must be an integer, got {self.num_steps!r}")
        if not 1 <= self.num_steps <= NUM_TIMESTEPS:
            raise ValueError(f"num_steps must be in [1, {NUM_TIMESTEPS}], got {self.num_steps}")
        for name in ("linear_cfg", "linear_control_scale"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in (
            "s_churn",
            "s_noise",
            "s_tmin",
            "cfg_scale",
            "cfg_scale_start",
            "control_scale",
            "control_scale_start",
            "restore_cfg_s_tmin",
            "eta",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if isinstance(self.restore_cfg, bool) or not isinstance(self.restore_cfg, int | float):
            raise ValueError(f"restore_cfg must be a number, got {self.restore_cfg!r}")
        if not math.isfinite(self.restore_cfg):
            raise ValueError(f"restore_cfg must be finite (<= 0 disables it), got {self.restore_cfg}")
        if isinstance(self.s_tmax, bool) or not isinstance(self.s_tmax, int | float) or math.isnan(self.s_tmax):
            raise ValueError(f"s_tmax must be a number (inf allowed), got {self.s_tmax!r}")
        if self.s_tmax < self.s_tmin:
            raise ValueError(f"s_tmax ({self.s_tmax}) must not be below s_tmin ({self.s_tmin})")
        if self.kind == "dpmpp2m":
            # the official RestoreDPMPP2MSampler accepts these and silently ignores them; refuse
            # rather than pretend
            if self.s_churn > 0:
                raise ValueError("s_churn is an EDM setting; the DPM++ 2M sampler has no churn (set it to 0)")
            if self.restore_cfg > 0:
                raise ValueError("restore_cfg is an EDM setting; the DPM++ 2M sampler has none (set it to <= 0)")
            if self.linear_control_scale:
                raise ValueError("linear_control_scale is an EDM setting; the DPM++ 2M sampler uses control_scale")


PRESETS: dict[str, SamplerSettings] = {
    # gradio_demo.py, "Quality" (load_and_reset + initial widget values) with options/SUPIR_v0.yaml
    # default_setting (edm_steps 50, s_cfg_Quality 7.5, spt_linear_CFG_Quality 4.0)
    "quality": SamplerSettings(
        kind="edm",
        num_steps=50,
        s_churn=5.0,
        s_noise=1.003,
        cfg_scale=7.5,
        cfg_scale_start=4.0,
        linear_cfg=True,
        control_scale=1.0,
        control_scale_start=0.0,
        linear_control_scale=False,
        restore_cfg=-1.0,
    ),
    # gradio_demo.py, "Fidelity", options/SUPIR_v0.yaml (s_cfg_Fidelity 4.0, spt_linear_CFG_Fidelity 1.0)
    "fidelity": SamplerSettings(
        kind="edm",
        num_steps=50,
        s_churn=5.0,
        s_noise=1.003,
        cfg_scale=4.0,
        cfg_scale_start=1.0,
        linear_cfg=True,
        control_scale=1.0,
        control_scale_start=0.0,
        linear_control_scale=False,
        restore_cfg=-1.0,
    ),
    # test.py argparse defaults (--edm_steps 50 --s_churn 5 --s_noise 1.01 --s_cfg 4.0 --s_stage1 -1
    # --s_stage2 1.0 --spt_linear_CFG 1.0 --spt_linear_s_stage2 0.0; --linear_CFG is store_true with
    # default True, so it is always on)
    "cli": SamplerSettings(
        kind="edm",
        num_steps=50,
        s_churn=5.0,
        s_noise=1.01,
        cfg_scale=4.0,
        cfg_scale_start=1.0,
        linear_cfg=True,
        control_scale=1.0,
        control_scale_start=0.0,
        linear_control_scale=False,
        restore_cfg=-1.0,
    ),
    # gradio_demo.py --opt options/SUPIR_v0_Juggernautv9_lightning.yaml, "Quality": RestoreDPMPP2MSampler
    # (eta 1: DPM++ 2M SDE, Karras sigmas), edm_steps 8, s_cfg_Quality 2.0, spt_linear_CFG_Quality 2.0.
    # The demo also sends s_churn 5, which that sampler ignores.
    "lightning": SamplerSettings(
        kind="dpmpp2m",
        num_steps=8,
        s_noise=1.003,
        cfg_scale=2.0,
        cfg_scale_start=2.0,
        linear_cfg=True,
        control_scale=1.0,
        restore_cfg=-1.0,
        eta=1.0,
    ),
    # same, "Fidelity" (s_cfg_Fidelity 1.5, spt_linear_CFG_Fidelity 1.5)
    "lightning_fidelity": SamplerSettings(
        kind="dpmpp2m",
        num_steps=8,
        s_noise=1.003,
        cfg_scale=1.5,
        cfg_scale_start=1.5,
        linear_cfg=True,
        control_scale=1.0,
        restore_cfg=-1.0,
        eta=1.0,
    ),
}


# -- schedules ------------------------------------------------------------------------------------


def karras_sigmas(
    num_steps: int, sigma_min: torch.Tensor | float, sigma_max: torch.Tensor | float, rho: float = KARRAS_RHO
) -> torch.Tensor:
    """k-diffusion's `get_sigmas_karras` in float32: num_steps sigmas from sigma_max down to sigma_min,
    evenly spaced in sigma ** (1 / rho), then a final 0."""
    sigma_min = torch.as_tensor(sigma_min, dtype=torch.float32)
    sigma_max = torch.as_tensor(sigma_max, dtype=torch.float32)
    ramp = torch.linspace(0, 1, num_steps)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def step_sigmas(settings: SamplerSettings, device: torch.device | str | None = None) -> torch.Tensor:
    """The num_steps + 1 sigmas the sampler walks (descending, final 0).

    EDM: the legacy DDPM spaced sigmas. DPM++: a Karras schedule between the smallest and largest
    of those (so its sigma_min is the sigma of the lowest spaced timestep, e.g. t=124 for 8 steps,
    not the smallest training sigma).
    """
    legacy = sampling_sigmas(settings.num_steps)
    if settings.kind == "dpmpp2m":
        return karras_sigmas(settings.num_steps, legacy[-2], legacy[0]).to(device)
    return legacy.to(device)


def churn_gamma(settings: SamplerSettings, sigma: torch.Tensor | float) -> float:
    """EDM churn factor of a step at noise level `sigma` (0 for the DPM++ sampler)."""
    if settings.kind != "edm":
        return 0.0
    # compared as the official code does: a float32 sigma against the python bounds
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    if settings.s_tmin <= sigma <= settings.s_tmax:
        # official: s_churn / (num_sigmas - 1), num_sigmas = num_steps + 1
        return min(settings.s_churn / settings.num_steps, 2**0.5 - 1)
    return 0.0


def cfg_scale_at(settings: SamplerSettings, sigma: torch.Tensor) -> torch.Tensor:
    """LinearCFG's scale at noise level `sigma` ([B] tensor -> [B] tensor).

    scale(sigma) = (start - cfg_scale) * sigma / 14.6146 + cfg_scale: `start` at sigma_max,
    cfg_scale as sigma -> 0. Without linear_cfg, start == cfg_scale (batchify_sample sets both
    guider scales to cfg_scale), which gives cfg_scale exactly. The EDM sampler passes the
    churned sigma_hat, so with churn the scale at the first steps overshoots `start` a little.
    """
    start = settings.cfg_scale_start if settings.linear_cfg else settings.cfg_scale
    return (start - settings.cfg_scale) * sigma / OFFICIAL_SIGMA_MAX + settings.cfg_scale


def control_scale_at(settings: SamplerSettings, sigma: float) -> float:
    """The control scale at noise level `sigma` (the step's sigma before churn, as a python float).

    With linear_control_scale: (sigma / 14.6146) * (control_scale_start - control_scale) + control_scale,
    i.e. control_scale_start at sigma_max and control_scale as sigma -> 0; otherwise constant.
    """
    if not settings.linear_control_scale:
        return settings.control_scale
    return (sigma / OFFICIAL_SIGMA_MAX) * (
        settings.control_scale_start - settings.control_scale
    ) + settings.control_scale


def cfg_scale_schedule(settings: SamplerSettings) -> list[float]:
    """The CFG scale used at each of the num_steps steps (at sigma_hat for EDM, at sigma for DPM++)."""
    sigmas = step_sigmas(settings)
    scales = []
    for i in range(settings.num_steps):
        sigma = sigmas[i : i + 1] * (churn_gamma(settings, sigmas[i]) + 1.0)
        scales.append(float(cfg_scale_at(settings, sigma)[0]))
    return scales


def control_scale_schedule(settings: SamplerSettings) -> list[float]:
    """The control scale used at each of the num_steps steps."""
    sigmas = step_sigmas(settings)
    return [control_scale_at(settings, sigmas[i].item()) for i in range(settings.num_steps)]


# -- one step -------------------------------------------------------------------------------------


def _bcast(v: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, 1, 1] (sgm's append_dims for 4-D latents)."""
    return v[:, None, None, None]


def _concat_cond(uncond: Cond, cond: Cond) -> dict[str, torch.Tensor]:
    # sgm's guider: uncond first, then cond, along the batch
    return {k: torch.cat((uncond[k], cond[k]), 0) for k in cond}


def _guided_denoise(
    denoise: DenoiseFn,
    x: torch.Tensor,
    sigma: torch.Tensor,
    cond: Cond,
    uncond: Cond,
    settings: SamplerSettings,
    control_scale: float,
    cfg_batch: bool,
) -> torch.Tensor:
    """Classifier-free guidance: x_u + scale(sigma) * (x_c - x_u)."""
    if cfg_batch:
        x_u, x_c = denoise(
            torch.cat([x, x]), torch.cat([sigma, sigma]), _concat_cond(uncond, cond), control_scale
        ).chunk(2)
    else:
        x_u = denoise(x, sigma, uncond, control_scale)
        x_c = denoise(x, sigma, cond, control_scale)
    scale = cfg_scale_at(settings, sigma)
    return x_u + scale.view(-1, 1, 1, 1) * (x_c - x_u)


def _edm_step(
    denoise: DenoiseFn,
    x: torch.Tensor,
    sigma: torch.Tensor,
    next_sigma: torch.Tensor,
    gamma: float,
    noise: torch.Tensor | None,
    cond: Cond,
    uncond: Cond,
    x_center: torch.Tensor | None,
    settings: SamplerSettings,
    cfg_batch: bool,
) -> torch.Tensor:
    """RestoreEDMSampler.sampler_step: churn, guided x0, restoration pull, Euler step."""
    sigma_hat = sigma * (gamma + 1.0)
    if gamma > 0:
        assert noise is not None
        eps = noise * settings.s_noise
        x = x + eps * _bcast(sigma_hat**2 - sigma**2) ** 0.5

    # the control scale follows the un-churned sigma, the CFG scale the churned one (official)
    control_scale = control_scale_at(settings, sigma[0].item())
    denoised = _guided_denoise(denoise, x, sigma_hat, cond, uncond, settings, control_scale, cfg_batch)

    # restoration guidance: linear pull of x0 toward x_center, weight (sigma / 14.6146) ** restore_cfg.
    # Official quirks kept: gated on the *next* sigma, weighted by the un-churned sigma, and the
    # weight is slightly above 1 at the first step (sigma_max > 14.6146). The official file also
    # defines to_d_center (a projection), which no sampler calls.
    if next_sigma[0] > settings.restore_cfg_s_tmin and settings.restore_cfg > 0:
        assert x_center is not None
        d_center = denoised - x_center
        denoised = denoised - d_center * ((sigma.view(-1, 1, 1, 1) / OFFICIAL_SIGMA_MAX) ** settings.restore_cfg)

    d = (x - denoised) / _bcast(sigma_hat)
    dt = _bcast(next_sigma - sigma_hat)
    return x + dt * d


def _dpmpp2m_step(
    denoise: DenoiseFn,
    x: torch.Tensor,
    old_denoised: torch.Tensor | None,
    previous_sigma: torch.Tensor | None,
    sigma: torch.Tensor,
    next_sigma: torch.Tensor,
    noise: torch.Tensor | None,
    cond: Cond,
    uncond: Cond,
    settings: SamplerSettings,
    cfg_batch: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RestoreDPMPP2MSampler.sampler_step: DPM-Solver++(2M) SDE (midpoint form) in t = -log(sigma).

    Returns (x_next, denoised); denoised is the next step's old_denoised.
    """
    denoised = _guided_denoise(denoise, x, sigma, cond, uncond, settings, settings.control_scale, cfg_batch)

    t, t_next = sigma.log().neg(), next_sigma.log().neg()
    h = t_next - t
    # official: eta * h, which is NaN for eta == 0 on the last step (h = inf); 0 is the intended limit
    eta_h = settings.eta * h if settings.eta else torch.zeros_like(h)
    mult1 = _bcast(t_next.neg().exp() / t.neg().exp() * (-eta_h).exp())
    mult2 = _bcast((-h - eta_h).expm1())

    x_standard = mult1 * x - mult2 * denoised
    # first step (and the final one, to sigma 0): first order, and no SDE noise. The official code
    # skips the noise on the first step although mult1/mult2 already include the eta contraction.
    if old_denoised is None or previous_sigma is None or torch.sum(next_sigma) < 1e-14:
        return x_standard, denoised

    r = (t - previous_sigma.log().neg()) / h  # h_last / h
    mult3 = _bcast(1 + 1 / (2 * r))
    mult4 = _bcast(1 / (2 * r))
    denoised_d = mult3 * denoised - mult4 * old_denoised
    x_advanced = mult1 * x - mult2 * denoised_d
    x = torch.where(_bcast(next_sigma) > 0.0, x_advanced, x_standard)
    if settings.eta:
        assert noise is not None
        # official: `eps_noise * next_sigma * ...` with next_sigma of shape [B] broadcast against
        # the last (width) axis, which is only right for B == 1; per-sample here
        x = x + noise * _bcast(next_sigma) * _bcast((-2 * eta_h).expm1().neg().sqrt()) * settings.s_noise
    return x, denoised


# -- drivers --------------------------------------------------------------------------------------


def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # drawn where the generator lives (a CPU generator for a CUDA latent), then moved: a seed
    # gives the same image on every device
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _check_inputs(
    noise: torch.Tensor, cond: Cond, uncond: Cond, x_center: torch.Tensor | None, settings: SamplerSettings
) -> None:
    if noise.ndim != 4 or not noise.is_floating_point():
        raise ValueError(f"noise must be a floating [B, C, H, W] latent, got {noise.dtype} {list(noise.shape)}")
    if set(cond) != set(uncond):
        raise ValueError(f"cond and uncond must have the same keys, got {sorted(cond)} and {sorted(uncond)}")
    for name, c in (("cond", cond), ("uncond", uncond)):
        for key, value in c.items():
            if value.shape[0] != noise.shape[0]:
                raise ValueError(f"{name}[{key!r}] has batch {value.shape[0]}, the latent {noise.shape[0]}")
    if x_center is not None and x_center.shape != noise.shape:
        raise ValueError(f"x_center must have the latent's shape {list(noise.shape)}, got {list(x_center.shape)}")
    if settings.kind == "edm" and settings.restore_cfg > 0 and x_center is None:
        raise ValueError("restore_cfg > 0 needs x_center (the stage-1 latent)")


def _initial_x(noise: torch.Tensor, settings: SamplerSettings) -> torch.Tensor:
    # prepare_sampling_loop: x *= sqrt(1 + sigmas[0]^2) with the *legacy* sigmas[0], also for DPM++
    legacy = sampling_sigmas(settings.num_steps, device=noise.device)
    return noise * torch.sqrt(1.0 + legacy[0] ** 2.0)


@torch.no_grad()
def restore_sample(
    denoise: DenoiseFn,
    noise: torch.Tensor,
    cond: Cond,
    uncond: Cond,
    x_center: torch.Tensor | None,
    settings: SamplerSettings,
    *,
    generator: torch.Generator | None = None,
    progress: ProgressFn | None = None,
    cfg_batch: bool = True,
) -> torch.Tensor:
    """Sample a restored latent, as `batchify_sample` runs the official (untiled) sampler.

    noise: standard normal [B, C, H, W] (official: randn_like of the LQ latent); it is scaled by
    sqrt(1 + sigma_max^2) here. cond/uncond: network conditioning dicts (batch B each; "control"
    is the LQ latent). x_center: the stage-1 latent restoration guidance pulls toward (EDM with
    restore_cfg > 0). cfg_batch: evaluate uncond and cond as one doubled batch (as sgm does;
    uncond first) or as two calls (less memory, same maths). generator must live on noise's device.
    """
    _check_inputs(noise, cond, uncond, x_center, settings)
    x = _initial_x(noise, settings)
    sigmas = step_sigmas(settings, device=x.device)
    s_in = x.new_ones([x.shape[0]])
    n = settings.num_steps

    if settings.kind == "edm":
        for i in range(n):
            gamma = churn_gamma(settings, sigmas[i])
            step_noise = _randn(x, generator) if gamma > 0 else None
            x = _edm_step(
                denoise,
                x,
                s_in * sigmas[i],
                s_in * sigmas[i + 1],
                gamma,
                step_noise,
                cond,
                uncond,
                x_center,
                settings,
                cfg_batch,
            )
            if progress is not None:
                progress(i + 1, n)
        return x

    old_denoised: torch.Tensor | None = None
    for i in range(n):
        step_noise = _randn(x, generator) if i > 0 and torch.sum(s_in * sigmas[i + 1]) > 1e-14 else None
        x, old_denoised = _dpmpp2m_step(
            denoise,
            x,
            old_denoised,
            None if i == 0 else s_in * sigmas[i - 1],
            s_in * sigmas[i],
            s_in * sigmas[i + 1],
            step_noise,
            cond,
            uncond,
            settings,
            cfg_batch,
        )
        if progress is not None:
            progress(i + 1, n)
    return x


def _tile_cond(c: Cond, sl: _Slice) -> dict[str, torch.Tensor]:
    # only the control latent is spatial; text embeddings and the vector stay whole
    return {k: (v[sl] if k == "control" else v) for k, v in c.items()}


@torch.no_grad()
def tiled_restore_sample(
    denoise: DenoiseFn,
    noise: torch.Tensor,
    cond: Cond,
    uncond: Cond,
    x_center: torch.Tensor | None,
    settings: SamplerSettings,
    *,
    generator: torch.Generator | None = None,
    progress: ProgressFn | None = None,
    cfg_batch: bool = True,
    tile_size: int = 128,
    tile_stride: int = 64,
) -> torch.Tensor:
    """`restore_sample` over overlapping latent tiles (TiledRestoreEDMSampler / TiledRestoreDPMPP2MSampler).

    Each step, every `tile_size` window (see `sliding_windows`) takes that step on its own, with
    its slice of cond/uncond["control"], of x_center and of the step's noise (drawn once for the
    whole latent); the results (and, for DPM++, the x0 estimates kept for the next step) are
    blended with Gaussian weights. The latent must be at least tile_size on both sides; one
    that is exactly one tile gives the untiled result (up to float32 rounding of the weights).

    The official code uses cond's control slice for uncond too; here each dict's own
    "control" is sliced (the same thing whenever, as in SUPIR, both hold the same LQ latent).
    Official per-tile local prompts (cond as a list) are not supported.
    """
    _check_inputs(noise, cond, uncond, x_center, settings)
    for name, c in (("cond", cond), ("uncond", uncond)):
        if "control" in c and c["control"].shape[-2:] != noise.shape[-2:]:
            raise ValueError(f"{name}['control'] must match the latent's size to be tiled")
    _, _, h, w = noise.shape
    windows = sliding_windows(h, w, tile_size, tile_stride)
    # float64, as the official weights; latent * weights is accumulated into float32 sums
    weights = gaussian_weights(tile_size, tile_size).to(noise.device)

    x = _initial_x(noise, settings)
    sigmas = step_sigmas(settings, device=x.device)
    s_in = x.new_ones([x.shape[0]])
    n = settings.num_steps
    old_denoised: torch.Tensor | None = None

    for i in range(n):
        x_next = torch.zeros_like(x)
        count = torch.zeros_like(x)
        denoised_next = torch.zeros_like(x)  # DPM++ only: the blended x0 estimates
        gamma = churn_gamma(settings, sigmas[i])
        if settings.kind == "edm":
            step_noise = _randn(x, generator) if gamma > 0 else None
        else:
            step_noise = _randn(x, generator) if i > 0 and torch.sum(s_in * sigmas[i + 1]) > 1e-14 else None

        for hi, hi_end, wi, wi_end in windows:
            sl: _Slice = (slice(None), slice(None), slice(hi, hi_end), slice(wi, wi_end))
            tile_noise = None if step_noise is None else step_noise[sl]
            if settings.kind == "edm":
                tile_x = _edm_step(
                    denoise,
                    x[sl],
                    s_in * sigmas[i],
                    s_in * sigmas[i + 1],
                    gamma,
                    tile_noise,
                    _tile_cond(cond, sl),
                    _tile_cond(uncond, sl),
                    None if x_center is None else x_center[sl],
                    settings,
                    cfg_batch,
                )
            else:
                tile_x, tile_denoised = _dpmpp2m_step(
                    denoise,
                    x[sl],
                    None if old_denoised is None else old_denoised[sl],
                    None if i == 0 else s_in * sigmas[i - 1],
                    s_in * sigmas[i],
                    s_in * sigmas[i + 1],
                    tile_noise,
                    _tile_cond(cond, sl),
                    _tile_cond(uncond, sl),
                    settings,
                    cfg_batch,
                )
                denoised_next[sl] += tile_denoised * weights
            x_next[sl] += tile_x * weights
            count[sl] += weights

        x_next /= count
        x = x_next
        if settings.kind != "edm":
            denoised_next /= count
            old_denoised = denoised_next
        if progress is not None:
            progress(i + 1, n)
    return x
