"""SDXL's conditioner as SUPIR uses it: CLIP ViT-L/14 (hidden state 11 of 12) and OpenCLIP
ViT-bigG/14 (penultimate layer + pooled projection) give the cross-attention context; the pooled
bigG embedding and three Fourier-embedded size pairs give the 2816-wide `vector`.

Tokenisation uses OpenCLIP's BPE vocabulary shipped inside the `open_clip_torch` wheel (no hub).
The two towers pad differently, as in SDXL: CLIP-L's Hugging Face tokenizer pads with
<|endoftext|> (49407), OpenCLIP pads with 0."""

from __future__ import annotations

import math

import open_clip
import torch
from open_clip.transformer import TextTransformer
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from .config import ClipGShape, ClipLShape, SupirConfig

SOT, EOT = 49406, 49407


def tokenize(prompts: list[str], context_length: int = 77, pad: int = 0) -> torch.Tensor:
    """OpenCLIP tokenisation (lower-cased, ftfy-cleaned BPE, <sot> ... <eot>, truncated so <eot>
    stays last), padded with `pad`."""
    tokens = open_clip.tokenize(prompts, context_length=context_length)
    if pad != 0:
        # every position after the <eot> is padding
        eot_pos = (tokens == EOT).int().argmax(dim=1, keepdim=True)
        after = torch.arange(context_length)[None, :] > eot_pos
        tokens = torch.where(after, torch.full_like(tokens, pad), tokens)
    return tokens


def fourier_embedding(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """sgm's timestep_embedding: [cos, sin] of x times geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=x.device) / half)
    args = x[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ClipLEmbedder(nn.Module):
    def __init__(self, shape: ClipLShape, vocab_size: int, context_length: int) -> None:
        super().__init__()
        self.layer_idx = shape.layer_idx
        self.context_length = context_length
        self.transformer = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=vocab_size,
                hidden_size=shape.width,
                intermediate_size=shape.intermediate,
                num_hidden_layers=shape.layers,
                num_attention_heads=shape.heads,
                max_position_embeddings=context_length,
                hidden_act="quick_gelu",
                bos_token_id=SOT,
                eos_token_id=EOT,
                pad_token_id=EOT,
            )
        )

    def forward(self, prompts: list[str]) -> torch.Tensor:
        device = self.transformer.embeddings.token_embedding.weight.device
        tokens = tokenize(prompts, self.context_length, pad=EOT).to(device)
        out = self.transformer(input_ids=tokens, output_hidden_states=True)
        return out.hidden_states[self.layer_idx]


class OpenClipTextTower(TextTransformer):
    """OpenCLIP's text transformer; `logit_scale` belongs to the CLIP model in the checkpoint
    (`conditioner.embedders.1.model.logit_scale`) and is kept so the layout maps one to one."""

    def __init__(self, shape: ClipGShape, vocab_size: int, context_length: int) -> None:
        super().__init__(
            context_length=context_length,
            vocab_size=vocab_size,
            width=shape.width,
            heads=shape.heads,
            layers=shape.layers,
            output_dim=shape.output_dim,
        )
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    def rebuild_attn_mask(self, device: torch.device | str) -> None:
        """The causal mask is not in any checkpoint: recompute it after a meta-device build."""
        n = self.positional_embedding.shape[0]
        mask = torch.full((n, n), float("-inf"), device=device).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)


class ClipGEmbedder(nn.Module):
    def __init__(self, shape: ClipGShape, vocab_size: int, context_length: int) -> None:
        super().__init__()
        self.context_length = context_length
        self.model = OpenClipTextTower(shape, vocab_size, context_length)

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        tokens = tokenize(prompts, self.context_length).to(m.positional_embedding.device)
        x = m.token_embedding(tokens) + m.positional_embedding
        attn_mask = m.attn_mask.to(x.device) if m.attn_mask is not None else None
        blocks = m.transformer.resblocks
        penultimate = x
        for i, block in enumerate(blocks):
            if i == len(blocks) - 1:
                penultimate = x
            x = block(x, attn_mask=attn_mask)
        last = m.ln_final(x)
        # pooled: the <eot> position (the highest token id) through the text projection
        pooled = last[torch.arange(last.shape[0]), tokens.argmax(dim=-1)] @ m.text_projection
        return penultimate, pooled


class SizeEmbedder(nn.Module):
    """ConcatTimestepEmbedderND: each number of a (h, w) pair Fourier-embedded, concatenated."""

    def __init__(self, outdim: int) -> None:
        super().__init__()
        self.outdim = outdim

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        b, d = pairs.shape
        return fourier_embedding(pairs.reshape(-1), self.outdim).reshape(b, d * self.outdim)


class SdxlConditioner(nn.Module):
    def __init__(self, config: SupirConfig) -> None:
        super().__init__()
        self.embedders = nn.ModuleList(
            [
                ClipLEmbedder(config.clip_l, config.vocab_size, config.context_length),
                ClipGEmbedder(config.clip_g, config.vocab_size, config.context_length),
                SizeEmbedder(config.size_embed_dim),  # original_size_as_tuple
                SizeEmbedder(config.size_embed_dim),  # crop_coords_top_left
                SizeEmbedder(config.size_embed_dim),  # target_size_as_tuple
            ]
        )

    def forward(
        self,
        prompts: list[str],
        original_size: tuple[int, int] = (1024, 1024),
        crop_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] = (1024, 1024),
    ) -> dict[str, torch.Tensor]:
        """{"crossattn": [B, 77, 2048], "vector": [B, 2816]} for a list of prompts. SUPIR
        always conditions on 1024x1024, uncropped (SUPIRModel.prepare_condition)."""
        clip_l, clip_g, *sizes = self.embedders
        context_l = clip_l(prompts)
        context_g, pooled = clip_g(prompts)
        n = len(prompts)
        pairs = [original_size, crop_top_left, target_size]
        vector = [pooled.float()] + [
            emb(torch.tensor([pair] * n, device=pooled.device)) for emb, pair in zip(sizes, pairs, strict=True)
        ]
        return {
            "crossattn": torch.cat([context_l.float(), context_g.float()], dim=2),
            "vector": torch.cat(vector, dim=1),
        }
