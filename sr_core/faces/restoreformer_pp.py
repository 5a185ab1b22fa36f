"""RestoreFormer++ (Wang, Zhou et al., TPAMI 2023), written for inference, and its spandrel
architecture.

spandrel 0.4.2 knows only RestoreFormer (v1): its loader hard-codes eight attention heads and
attention at 16x16 alone. RestoreFormer++ is the same VQ autoencoder with two changes, both in
the official `VQVAEGANMultiHeadTransformer` (wzhouxiff/RestoreFormerPlusPlus,
RestoreFormer/modules/vqvae/vqvae_arch.py) built as `head_size=4, ex_multi_scale_num=1`
(RestoreFormer/RestoreFormer.py, and configs/RestoreFormerPlusPlus.yaml):

- four attention heads instead of eight (a shape-free change: the tensors cannot tell);
- the decoder also cross-attends at the next scale up (32x32 for the official model): each
  `ex_multi_scale_num` step turns the decoder's resolutions into [first, last * 2]. The query
  there is the encoder's feature map of that scale (`hs["block_<level>"]`), where the 16x16
  blocks use the encoder's middle-block output (`hs["block_<last>_atten"]`).

Parameter names and shapes are the official ones, so the release checkpoint (its `vqvae.`
prefix removed) loads strictly. Training-only parts (losses, `requires_grad` switches, dropout,
which is 0 in every released configuration) are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from spandrel import Architecture, ImageModelDescriptor, SizeRequirements, StateDict
from spandrel.util import KeyCondition, get_seq_len
from torch import nn

ARCH_ID = "RestoreFormer++"
#: the official model's heads (not recorded in the tensors' shapes)
HEAD_SIZE = 4
#: the resolution every released RestoreFormer model works at
RESOLUTION = 512


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """Two GroupNorm-swish-conv steps and a 1x1 shortcut when the width changes."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class MultiHeadAttnBlock(nn.Module):
    """Multi-head attention over the pixels: keys and values from `x`, queries from `y` (the
    encoder's features, in the decoder) or from `x` itself."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.heads = heads
        self.norm1 = _norm(channels)
        self.norm2 = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        head_dim = c // self.heads
        keyed = self.norm1(x)
        queried = keyed if y is None else self.norm2(y)
        # channels are grouped head-major: channel = head * head_dim + i
        q = self.q(queried).reshape(b, self.heads, head_dim, h * w).transpose(2, 3)
        k = self.k(keyed).reshape(b, self.heads, head_dim, h * w)
        v = self.v(keyed).reshape(b, self.heads, head_dim, h * w).transpose(2, 3)
        weights = torch.softmax(torch.matmul(q * head_dim**-0.5, k), dim=3)
        out = torch.matmul(weights, v)  # b, heads, hw, head_dim
        out = out.permute(0, 1, 3, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # the official asymmetric padding


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution of the encoder or decoder: blocks, their attention, the resampler."""

    def __init__(self, blocks: list[nn.Module], attn: list[nn.Module], resample: nn.Module | None, name: str) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)
        if resample is not None:
            self.add_module(name, resample)


class _Mid(nn.Module):
    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = MultiHeadAttnBlock(channels, heads)
        self.block_2 = ResnetBlock(channels, channels)


class Encoder(nn.Module):
    def __init__(
        self,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        in_channels: int,
        resolution: int,
        z_channels: int,
        double_z: bool,
        heads: int,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        widths = [ch] + [ch * m for m in ch_mult]
        res = resolution
        levels = []
        for i in range(len(ch_mult)):
            width = widths[i + 1]
            blocks = [ResnetBlock(widths[i] if j == 0 else width, width) for j in range(num_res_blocks)]
            attn = [MultiHeadAttnBlock(width, heads) for _ in blocks] if res in attn_resolutions else []
            last = i == len(ch_mult) - 1
            levels.append(_Level(blocks, attn, None if last else Downsample(width), "downsample"))
            res = res if last else res // 2
        self.down = nn.ModuleList(levels)
        self.mid = _Mid(widths[-1], heads)
        self.norm_out = _norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The latent (`out`) and the features the decoder queries with, under the official names."""
        features: dict[str, torch.Tensor] = {}
        h = self.conv_in(x)
        last = len(self.down) - 1
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if i != last:
                features[f"block_{i}"] = h
                h = level.downsample(h)
        h = self.mid.block_1(h)
        features[f"block_{last}_atten"] = h
        h = self.mid.block_2(self.mid.attn_1(h))
        features["mid_atten"] = h
        features["out"] = self.conv_out(_swish(self.norm_out(h)))
        return features


class Decoder(nn.Module):
    def __init__(
        self,
        ch: int,
        out_ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        resolution: int,
        z_channels: int,
        heads: int,
    ) -> None:
        super().__init__()
        width = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, width, 3, padding=1)
        self.mid = _Mid(width, heads)
        res = resolution // 2 ** (len(ch_mult) - 1)
        levels: list[_Level] = []
        for i in reversed(range(len(ch_mult))):
            out = ch * ch_mult[i]
            blocks = [ResnetBlock(width if j == 0 else out, out) for j in range(num_res_blocks + 1)]
            attn = [MultiHeadAttnBlock(out, heads) for _ in blocks] if res in attn_resolutions else []
            levels.insert(0, _Level(blocks, attn, Upsample(out) if i != 0 else None, "upsample"))
            width = out
            res = res * 2 if i != 0 else res
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(width)
        self.conv_out = nn.Conv2d(width, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_1(h)
        h = self.mid.block_2(self.mid.attn_1(h, features["mid_atten"]))
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            query = features.get(f"block_{i}_atten", features.get(f"block_{i}"))
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h, query)
            if i != 0:
                h = level.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest codebook entry for every latent pixel (the official distance and tie-breaking)."""

    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.permute(0, 2, 3, 1).contiguous()
        flat = z.view(-1, z.shape[-1])
        codebook = self.embedding.weight
        distance = (
            torch.sum(flat**2, dim=1, keepdim=True)
            + torch.sum(codebook**2, dim=1)
            - 2 * torch.matmul(flat, codebook.t())
        )
        nearest = torch.min(distance, dim=1).indices
        quantized = codebook[nearest].view(z.shape)
        # the official straight-through form, kept for bit-identical results
        quantized = z + (quantized - z)
        return quantized.permute(0, 3, 1, 2).contiguous()


class RestoreFormerPlusPlus(nn.Module):
    """The official `VQVAEGANMultiHeadTransformer`, for inference: `forward` returns the restored
    image ([-1, 1] in, [-1, 1] out, RGB) and nothing else."""

    def __init__(
        self,
        *,
        n_embed: int = 1024,
        embed_dim: int = 256,
        ch: int = 64,
        out_ch: int = 3,
        ch_mult: Sequence[int] = (1, 2, 2, 4, 4, 8),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        in_channels: int = 3,
        resolution: int = RESOLUTION,
        z_channels: int = 256,
        double_z: bool = False,
        head_size: int = HEAD_SIZE,
        ex_multi_scale_num: int = 1,
    ) -> None:
        super().__init__()
        decoder_resolutions = list(attn_resolutions)
        for _ in range(ex_multi_scale_num):  # the official rule: [first, last * 2], not a growing list
            decoder_resolutions = [decoder_resolutions[0], decoder_resolutions[-1] * 2]
        self.encoder = Encoder(
            ch, ch_mult, num_res_blocks, attn_resolutions, in_channels, resolution, z_channels, double_z, head_size
        )
        self.decoder = Decoder(
            ch, out_ch, ch_mult, num_res_blocks, decoder_resolutions, resolution, z_channels, head_size
        )
        self.quantize = VectorQuantizer(n_embed, embed_dim)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        quantized = self.quantize(self.quant_conv(features["out"]))
        return self.decoder(self.post_quant_conv(quantized), features)


def _attention_levels(state_dict: StateDict, part: str) -> set[int]:
    prefix = f"{part}.{'down' if part == 'encoder' else 'up'}."
    return {
        int(key[len(prefix) :].split(".", 1)[0]) for key in state_dict if key.startswith(prefix) and ".attn." in key
    }


def _has_extra_decoder_scale(state_dict: StateDict) -> bool:
    """A decoder that attends at a level the encoder does not: RestoreFormer++, never v1."""
    return bool(_attention_levels(state_dict, "decoder") - _attention_levels(state_dict, "encoder"))


class RestoreFormerPlusPlusArch(Architecture[RestoreFormerPlusPlus]):
    """Detected before spandrel's RestoreFormer, which would claim these tensors and then fail."""

    def __init__(self) -> None:
        keys = KeyCondition.has_all(
            "quantize.embedding.weight",
            "encoder.conv_in.weight",
            "quant_conv.weight",
            "post_quant_conv.weight",
            "encoder.down.0.block.0.norm1.weight",
            "encoder.mid.attn_1.q.weight",
            "decoder.mid.attn_1.q.weight",
            "encoder.conv_out.weight",
            "decoder.conv_out.weight",
        )
        super().__init__(
            id=ARCH_ID, detect=lambda state_dict: keys(state_dict) and _has_extra_decoder_scale(state_dict)
        )

    def load(self, state_dict: StateDict) -> ImageModelDescriptor[RestoreFormerPlusPlus]:
        n_embed, embed_dim = state_dict["quantize.embedding.weight"].shape
        z_channels = state_dict["quant_conv.weight"].shape[1]
        ch, in_channels = state_dict["encoder.conv_in.weight"].shape[:2]
        out_ch = state_dict["decoder.conv_out.weight"].shape[0]
        levels = get_seq_len(state_dict, "encoder.down")
        ch_mult = tuple(state_dict[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] // ch for i in range(levels))
        encoder_levels = _attention_levels(state_dict, "encoder")
        decoder_levels = _attention_levels(state_dict, "decoder")
        attn_resolutions = sorted((RESOLUTION // 2**i for i in encoder_levels), reverse=True)
        if not attn_resolutions:
            raise ValueError("a RestoreFormer++ encoder attends at some resolution; these tensors' does not")
        wanted = {RESOLUTION // 2**i for i in decoder_levels}
        for ex_multi_scale_num in range(1, levels):
            resolutions = list(attn_resolutions)
            for _ in range(ex_multi_scale_num):
                resolutions = [resolutions[0], resolutions[-1] * 2]
            if set(resolutions) == wanted:
                break
        else:
            raise ValueError(f"the decoder attends at {sorted(wanted)}, which no RestoreFormer++ configuration does")
        model = RestoreFormerPlusPlus(
            n_embed=n_embed,
            embed_dim=embed_dim,
            ch=ch,
            out_ch=out_ch,
            ch_mult=ch_mult,
            num_res_blocks=get_seq_len(state_dict, "encoder.down.0.block"),
            attn_resolutions=attn_resolutions,
            in_channels=in_channels,
            z_channels=z_channels,
            double_z=state_dict["encoder.conv_out.weight"].shape[0] == 2 * z_channels,
            head_size=HEAD_SIZE,
            ex_multi_scale_num=ex_multi_scale_num,
        )
        return ImageModelDescriptor(
            model,
            state_dict,
            architecture=self,
            purpose="FaceSR",
            tags=[],
            supports_half=False,
            supports_bfloat16=True,
            scale=1,
            input_channels=in_channels,
            output_channels=out_ch,
            size_requirements=SizeRequirements(multiple_of=32),
            call_fn=lambda net, image: (net(image * 2 - 1) + 1) / 2,
        )
