"""The complete SUPIR module tree: SDXL UNet + SUPIR connectors, GLVControl, the first stage
with its denoise encoder, the SDXL conditioner and the discrete denoiser (its sigma table is part
of the official checkpoint)."""

from __future__ import annotations

import torch
from torch import nn

from .config import SupirConfig
from .denoiser import DiscreteEpsDenoiser
from .keys import is_vae_attention_projection, our_to_official
from .text import SdxlConditioner
from .unet import GLVControl, SupirUNet
from .vae import SupirFirstStage


class SupirModel(nn.Module):
    def __init__(self, config: SupirConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = SupirUNet(
            config.unet,
            config.control,
            project_channel_scale=config.project_channel_scale,
            sft_hidden=config.sft_hidden,
        )
        self.control = GLVControl(config.control)
        self.first_stage = SupirFirstStage(config.vae)
        self.conditioner = SdxlConditioner(config)
        # the sigma table is computed, not learned: build it for real even under a meta device
        with torch.device("cpu"):
            self.denoiser = DiscreteEpsDenoiser(config.num_train_timesteps)

    def eps(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        cond: dict[str, torch.Tensor],
        control_scale: float,
    ) -> torch.Tensor:
        """The network the denoiser wraps (sgm ControlWrapper): control features from the
        low-quality latent and the noisy latent, then the UNet's noise prediction. Inputs are
        cast to the weights' dtype; the prediction comes back in float32."""
        dtype = self.dtype
        x = x.to(dtype)
        crossattn, vector = cond["crossattn"].to(dtype), cond["vector"].to(dtype)
        control = self.control(cond["control"].to(dtype), timesteps, x, crossattn, vector)
        return self.unet(x, timesteps, crossattn, vector, control, control_scale).float()

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.base.conv_in.bias.dtype  # the bias: fp8 storage replaces the weight

    def denoise(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        cond: dict[str, torch.Tensor],
        control_scale: float,
    ) -> torch.Tensor:
        """x0 estimate at noise level `sigma` (one per batch row)."""
        return self.denoiser(self.eps, x, sigma, cond, control_scale)

    def official_names(self) -> dict[str, str]:
        """Our state-dict key -> official checkpoint key, for every tensor."""
        return {k: our_to_official(k, self.config) for k in self.state_dict()}


def official_shape(official_key: str, our_shape: tuple[int, ...]) -> tuple[int, ...]:
    if is_vae_attention_projection(official_key):
        return (*our_shape, 1, 1)
    return our_shape
