"""SUPIR's noise schedule and epsilon-prediction denoiser wrapper.

SDXL was trained as a discrete-time DDPM ("legacy" linear-in-sqrt beta schedule, 1000 steps) with
epsilon prediction. The samplers work in the continuous "sigma" (variance-exploding) view:
x = x0 + sigma * eps. These are the maths of sgm's `LegacyDDPMDiscretization`,
`DiscreteDenoiserWithControl` and `EpsScaling`, as SUPIR configures them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

NUM_TIMESTEPS = 1000
LINEAR_START = 0.00085
LINEAR_END = 0.012

#: network(x_scaled, timesteps, cond, control_scale) -> predicted epsilon
EpsNetwork = Callable[[torch.Tensor, torch.Tensor, Mapping[str, torch.Tensor], float], torch.Tensor]


def _alphas_cumprod(num_timesteps: int, linear_start: float, linear_end: float) -> np.ndarray:
    # sgm's make_beta_schedule("linear"): linear in sqrt(beta), in float64; cumprod in numpy as sgm does
    betas = torch.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    return np.cumprod(1.0 - betas.numpy(), axis=0)


def _sigmas_from_alphas_cumprod(alphas_cumprod: np.ndarray) -> torch.Tensor:
    # the ratio is computed in float64, cast to float32, and only then square-rooted (in float32)
    return torch.tensor((1 - alphas_cumprod) / alphas_cumprod, dtype=torch.float32) ** 0.5


def legacy_ddpm_sigmas(
    num_timesteps: int = NUM_TIMESTEPS, linear_start: float = LINEAR_START, linear_end: float = LINEAR_END
) -> torch.Tensor:
    """The training sigmas, float32, ascending: entry t is sqrt((1 - alphā_t) / alphā_t) of timestep t.

    This is the `denoiser.sigmas` buffer of the official checkpoints (sigmas[0] ≈ 0.0292,
    sigmas[999] ≈ 14.6146).
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be positive, got {num_timesteps}")
    return _sigmas_from_alphas_cumprod(_alphas_cumprod(num_timesteps, linear_start, linear_end))


def spaced_timesteps(num_steps: int, num_timesteps: int = NUM_TIMESTEPS) -> np.ndarray:
    """The training timesteps a `num_steps` sampler visits, ascending (sgm's
    `generate_roughly_equally_spaced_steps`).

    `linspace(num_timesteps - 1, 0, num_steps, endpoint=False)` truncated to int: the highest
    timestep is always 999, the lowest is usually not 0 (e.g. 19 for 50 steps, 124 for 8).
    """
    if not 1 <= num_steps < num_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_timesteps}), got {num_steps}")
    return np.linspace(num_timesteps - 1, 0, num_steps, endpoint=False).astype(int)[::-1]


def sampling_sigmas(
    num_steps: int,
    num_timesteps: int = NUM_TIMESTEPS,
    linear_start: float = LINEAR_START,
    linear_end: float = LINEAR_END,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """`LegacyDDPMDiscretization()(num_steps)`: num_steps + 1 float32 sigmas, descending, ending in 0.

    With num_steps == num_timesteps every training sigma is used; more steps are an error
    (as in sgm).
    """
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
    alphas_cumprod = _alphas_cumprod(num_timesteps, linear_start, linear_end)
    if num_steps < num_timesteps:
        alphas_cumprod = alphas_cumprod[spaced_timesteps(num_steps, num_timesteps)]
    sigmas = torch.flip(_sigmas_from_alphas_cumprod(alphas_cumprod), (0,))
    return torch.cat([sigmas, sigmas.new_zeros([1])]).to(device)


class DiscreteEpsDenoiser(torch.nn.Module):
    """x0 estimate from an epsilon-predicting network, sigma quantised to the training schedule.

    Like sgm's `DiscreteDenoiserWithControl` with `EpsScaling`: the requested sigma is first
    snapped to the nearest training sigma (which is then used for *all* the scalings, not only
    for the timestep), then
        timestep = index of that sigma, c_in = 1 / sqrt(sigma^2 + 1), c_out = -sigma, c_skip = 1,
        x0 = x * c_skip + network(x * c_in, timestep, cond, control_scale) * c_out.
    The samplers themselves keep using the unquantised sigma.
    """

    sigmas: torch.Tensor

    def __init__(
        self, num_timesteps: int = NUM_TIMESTEPS, linear_start: float = LINEAR_START, linear_end: float = LINEAR_END
    ) -> None:
        super().__init__()
        # the key `denoiser.sigmas` of the official state dict
        self.register_buffer("sigmas", legacy_ddpm_sigmas(num_timesteps, linear_start, linear_end))

    def sigma_to_idx(self, sigma: torch.Tensor) -> torch.Tensor:
        """Index of the nearest training sigma, same shape as `sigma` (int64; ties -> lower index)."""
        dists = sigma.reshape(-1) - self.sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape)

    def idx_to_sigma(self, idx: torch.Tensor) -> torch.Tensor:
        return self.sigmas[idx]

    def forward(
        self,
        network: EpsNetwork,
        x: torch.Tensor,
        sigma: torch.Tensor,
        cond: Mapping[str, torch.Tensor],
        control_scale: float,
    ) -> torch.Tensor:
        """x: [B, C, H, W]; sigma: [B] (one noise level per sample, as the samplers pass it)."""
        if sigma.ndim != 1 or sigma.shape[0] != x.shape[0]:
            raise ValueError(f"sigma must have shape [{x.shape[0]}], got {list(sigma.shape)}")
        idx = self.sigma_to_idx(sigma)
        sigma_q = self.idx_to_sigma(idx)
        # sgm re-quantises c_noise (= sigma_q) to get the timestep; sigma_q is a training sigma
        # (strictly increasing table), so that is `idx` itself
        timesteps = idx
        s = sigma_q[:, None, None, None]
        c_skip = torch.ones_like(s)
        c_out = -s
        c_in = 1 / (s**2 + 1.0) ** 0.5
        eps = network(x * c_in, timesteps, cond, control_scale)
        return eps * c_out + x * c_skip
