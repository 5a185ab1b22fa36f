"""SUPIR's shapes as configuration. `SupirConfig.official()` is the released model (SDXL base +
SUPIR-v0Q/v0F, 4.8 B parameters); `SupirConfig.tiny()` keeps every connector but shrinks the
channels so the whole pipeline runs on a CPU in seconds; `SupirConfig.from_state_dict` reads the
transformer depths (the one thing released variants change) off a checkpoint."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class UNetShape:
    """The SDXL UNet (and the GLVControl encoder, which copies its encoder half)."""

    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4)
    # transformers per attention block, per level; levels without attention ignore it (SDXL's
    # first level has none: attention_resolutions [4, 2] with channel_mult [1, 2, 4])
    transformer_depth: tuple[int, ...] = (1, 2, 10)
    transformer_depth_middle: int = 10
    attention_levels: tuple[bool, ...] = (False, True, True)
    num_res_blocks: int = 2
    head_channels: int = 64  # num_head_channels: heads = channels // 64
    context_dim: int = 2048  # CLIP-L hidden (768) + OpenCLIP bigG hidden (1280)
    adm_in_channels: int = 2816  # pooled bigG (1280) + 3 size pairs x 2 x 256
    in_channels: int = 4
    out_channels: int = 4

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)

    @property
    def time_embed_dim(self) -> int:
        return self.model_channels * 4

    def skip_channels(self) -> list[int]:
        """Channels of every encoder output the decoder consumes (the sgm `hs` list): conv_in,
        each res(+attn) block, each downsampler; the control adds the middle block's output."""
        chans = [self.model_channels]
        for level, ch in enumerate(self.block_out_channels):
            chans += [ch] * self.num_res_blocks
            if level != len(self.channel_mult) - 1:
                chans.append(ch)
        return chans


@dataclass(frozen=True)
class ClipLShape:
    """CLIP ViT-L/14 text tower (transformers `CLIPTextModel`), SDXL's first text encoder."""

    width: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    # hidden state taken as context: hidden_states[11] = output of the 11th of 12 layers
    layer_idx: int = 11


@dataclass(frozen=True)
class ClipGShape:
    """OpenCLIP ViT-bigG/14 text tower, SDXL's second text encoder (penultimate + pooled)."""

    width: int = 1280
    layers: int = 32
    heads: int = 20
    output_dim: int = 1280


@dataclass(frozen=True)
class VaeShape:
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.13025  # SDXL's


@dataclass(frozen=True)
class SupirConfig:
    unet: UNetShape = UNetShape()
    control: UNetShape = UNetShape()
    clip_l: ClipLShape = ClipLShape()
    clip_g: ClipGShape = ClipGShape()
    vae: VaeShape = VaeShape()
    project_channel_scale: float = 2.0  # LightGLVUNet(project_channel_scale=2) in SUPIR_v0.yaml
    sft_hidden: int = 128  # ZeroSFT's nhidden, fixed in the official code
    size_embed_dim: int = 256  # ConcatTimestepEmbedderND(outdim=256) for each of 3 size pairs
    vocab_size: int = 49408
    context_length: int = 77
    num_train_timesteps: int = 1000

    @classmethod
    def official(cls) -> SupirConfig:
        return cls()

    @classmethod
    def tiny(cls) -> SupirConfig:
        """Every module and connector of the official model, with channels scaled down (32 per
        GroupNorm group is the floor: the official normalisation has 32 groups)."""
        clip_l = ClipLShape(width=32, layers=2, heads=2, intermediate=64, layer_idx=1)
        clip_g = ClipGShape(width=64, layers=2, heads=2, output_dim=64)
        adm = clip_g.output_dim + 3 * 2 * 256
        unet = UNetShape(
            model_channels=32,
            transformer_depth=(1, 1, 1),
            transformer_depth_middle=1,
            context_dim=clip_l.width + clip_g.width,
            adm_in_channels=adm,
        )
        vae = VaeShape(block_out_channels=(32, 32, 64, 64), layers_per_block=1)
        return cls(unet=unet, control=unet, clip_l=clip_l, clip_g=clip_g, vae=vae)

    def with_depths(self, unet: tuple[tuple[int, ...], int], control: tuple[tuple[int, ...], int]) -> SupirConfig:
        return replace(
            self,
            unet=replace(self.unet, transformer_depth=unet[0], transformer_depth_middle=unet[1]),
            control=replace(self.control, transformer_depth=control[0], transformer_depth_middle=control[1]),
        )

    @classmethod
    def from_state_dict(cls, keys: Iterable[str], base: SupirConfig | None = None) -> SupirConfig:
        """The official config with the transformer depths found in `keys` (official names).
        A part missing from `keys` keeps the base depths."""
        base = base or cls.official()
        keys = list(keys)
        return base.with_depths(
            _depths(keys, "model.diffusion_model.", base.unet),
            _depths(keys, "model.control_model.", base.control),
        )


def _depths(keys: list[str], prefix: str, shape: UNetShape) -> tuple[tuple[int, ...], int]:
    """Count transformer blocks per level (first attention block of each level) and in the middle."""
    pattern = re.compile(re.escape(prefix) + r"(input_blocks\.(\d+)|middle_block)\.1\.transformer_blocks\.(\d+)\.")
    per_block: dict[str, int] = {}
    for key in keys:
        m = pattern.match(key)
        if m:
            per_block[m.group(1)] = max(per_block.get(m.group(1), 0), int(m.group(3)) + 1)
    if not per_block:
        return shape.transformer_depth, shape.transformer_depth_middle
    depth = list(shape.transformer_depth)
    for level in range(len(shape.channel_mult)):
        first = 1 + level * (shape.num_res_blocks + 1)
        found = per_block.get(f"input_blocks.{first}")
        if found is not None:
            depth[level] = found
    return tuple(depth), per_block.get("middle_block", shape.transformer_depth_middle)
