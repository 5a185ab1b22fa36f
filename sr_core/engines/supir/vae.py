"""SUPIR's first stage: the SDXL VAE (diffusers `AutoencoderKL`) plus the degradation-robust
`denoise_encoder`, a fine-tuned copy of the VAE encoder that SUPIR uses to encode the
low-quality input (its latent conditions the control model and seeds the stage-1 image)."""

from __future__ import annotations

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.autoencoders.vae import Encoder
from torch import nn

from .config import VaeShape


def build_autoencoder(shape: VaeShape) -> AutoencoderKL:
    """diffusers' AutoencoderKL in the SD/SDXL layout (`shape`'s widths)."""
    n = len(shape.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=shape.block_out_channels,
        layers_per_block=shape.layers_per_block,
        latent_channels=shape.latent_channels,
        norm_num_groups=shape.norm_num_groups,
        scaling_factor=shape.scaling_factor,
    )


def build_encoder(shape: VaeShape) -> Encoder:
    """A copy of the VAE's encoder (SUPIR's denoise encoder, CCSR's condition encoder)."""
    return Encoder(
        in_channels=3,
        out_channels=shape.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * len(shape.block_out_channels),
        block_out_channels=shape.block_out_channels,
        layers_per_block=shape.layers_per_block,
        norm_num_groups=shape.norm_num_groups,
        double_z=True,
    )


class SupirFirstStage(nn.Module):
    def __init__(self, shape: VaeShape) -> None:
        super().__init__()
        self.scaling_factor = shape.scaling_factor
        self.vae = build_autoencoder(shape)
        self.denoise_encoder = build_encoder(shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.decoder.conv_in.weight.dtype

    def moments_to_latent(
        self, moments: torch.Tensor, sample: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """quant_conv, then the posterior's mode or a sample (sgm's DiagonalGaussianDistribution:
        log-variance clamped to [-30, 20]), scaled like sgm's first stage. Float32 on the CPU
        generator's terms: the noise is drawn on the CPU so a seed gives the same image anywhere."""
        mean, logvar = self.vae.quant_conv(moments).float().chunk(2, dim=1)
        if not sample:
            return mean * self.scaling_factor
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        noise = torch.randn(mean.shape, generator=generator).to(mean.device)
        return (mean + std * noise) * self.scaling_factor

    def latent_to_decoder_input(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.post_quant_conv(z / self.scaling_factor)
