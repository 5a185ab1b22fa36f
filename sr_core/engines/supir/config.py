"""SUPIR's shapes as configuration. `SupirConfig.official()` is the released model (SDXL base +
SUPIR-v0Q/v0F, 4.8 B parameters); `SupirConfig.tiny()` keeps every connector but shrinks the
channels so the whole pipeline runs on a CPU in seconds; `SupirConfig.from_state_dict` reads the
transformer depths (the one thing released variants change) off a checkpoint."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from ..diffusion.unet import UNetShape


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
    unet: UNetShape = field(default_factory=UNetShape)
    control: UNetShape = field(default_factory=UNetShape)
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
        clip_l = ClipLShape(width=64, layers=2, heads=1, intermediate=128, layer_idx=1)
        clip_g = ClipGShape(width=64, layers=2, heads=1, output_dim=64)
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
    def from_state_dict(cls, shapes: Mapping[str, Sequence[int]], base: SupirConfig | None = None) -> SupirConfig:
        """The configuration a checkpoint implies (official key names -> shapes): channel widths,
        levels, transformer depths, text-tower sizes, VAE widths. A part missing from `shapes`
        keeps `base` (default: the official configuration). Attention heads are 64 channels
        wide, as in every released SDXL/SUPIR/CLIP-L/bigG model."""
        base = base or cls.official()
        keys = {k: tuple(v) for k, v in shapes.items()}
        return replace(
            base,
            unet=unet_from(keys, "model.diffusion_model.", base.unet),
            control=unet_from(keys, "model.control_model.", base.control),
            clip_l=_clip_l_from(keys, base.clip_l),
            clip_g=clip_g_from(keys, base.clip_g),
            vae=vae_from(keys, base.vae),
        )


def _count(keys: Mapping[str, tuple[int, ...]], pattern: str) -> int:
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := regex.match(k))}
    return max(found) + 1 if found else 0


def unet_from(keys: Mapping[str, tuple[int, ...]], prefix: str, shape: UNetShape) -> UNetShape:
    conv_in = keys.get(prefix + "input_blocks.0.0.weight")
    if conv_in is None:
        return shape
    p = re.escape(prefix)
    channels, in_channels = conv_in[0], conv_in[1]
    per_level = shape.num_res_blocks + 1
    mult, attention, depth = [], [], []
    level = 0
    while (first := keys.get(f"{prefix}input_blocks.{1 + level * per_level}.0.in_layers.2.weight")) is not None:
        mult.append(first[0] // channels)
        blocks = _count(keys, rf"{p}input_blocks\.{1 + level * per_level}\.1\.transformer_blocks\.(\d+)\.")
        attention.append(blocks > 0)
        depth.append(blocks or 1)
        level += 1
    middle = _count(keys, rf"{p}middle_block\.1\.transformer_blocks\.(\d+)\.")
    context = next((v[1] for k, v in keys.items() if k.startswith(prefix) and k.endswith("attn2.to_k.weight")), None)
    label = keys.get(prefix + "label_emb.0.0.weight")
    return replace(
        shape,
        model_channels=channels,
        in_channels=in_channels,
        channel_mult=tuple(mult) or shape.channel_mult,
        attention_levels=tuple(attention) or shape.attention_levels,
        transformer_depth=tuple(depth) or shape.transformer_depth,
        transformer_depth_middle=middle or shape.transformer_depth_middle,
        context_dim=context or shape.context_dim,
        adm_in_channels=label[1] if label else shape.adm_in_channels,
    )


def _clip_l_from(keys: Mapping[str, tuple[int, ...]], shape: ClipLShape) -> ClipLShape:
    prefix = "conditioner.embedders.0.transformer.text_model."
    tokens = keys.get(prefix + "embeddings.token_embedding.weight")
    if tokens is None:
        return shape
    layers = _count(keys, re.escape(prefix) + r"encoder\.layers\.(\d+)\.")
    fc1 = keys.get(prefix + "encoder.layers.0.mlp.fc1.weight", (shape.intermediate,))
    width = tokens[1]
    return ClipLShape(width=width, layers=layers, heads=max(1, width // 64), intermediate=fc1[0], layer_idx=layers - 1)


def clip_g_from(
    keys: Mapping[str, tuple[int, ...]], shape: ClipGShape, prefix: str = "conditioner.embedders.1.model."
) -> ClipGShape:
    """An OpenCLIP text tower's shape from its tensors under `prefix` (SDXL's bigG by default)."""
    tokens = keys.get(prefix + "token_embedding.weight")
    if tokens is None:
        return shape
    layers = _count(keys, re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    projection = keys.get(prefix + "text_projection", (tokens[1], shape.output_dim))
    width = tokens[1]
    return ClipGShape(width=width, layers=layers, heads=max(1, width // 64), output_dim=projection[1])


def vae_from(keys: Mapping[str, tuple[int, ...]], shape: VaeShape) -> VaeShape:
    """The VAE's shape from an ldm first stage (`first_stage_model.*`)."""
    prefix = "first_stage_model.encoder."
    if prefix + "conv_in.weight" not in keys:
        return shape
    widths = []
    while (conv := keys.get(f"{prefix}down.{len(widths)}.block.0.conv1.weight")) is not None:
        widths.append(conv[0])
    layers = _count(keys, re.escape(prefix) + r"down\.0\.block\.(\d+)\.")
    quant = keys.get("first_stage_model.quant_conv.weight", (2 * shape.latent_channels,))
    return replace(shape, block_out_channels=tuple(widths), layers_per_block=layers, latent_channels=quant[0] // 2)
