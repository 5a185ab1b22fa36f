"""Seamless tiled encode/decode for diffusers' VAE `Encoder` and `Decoder` (SUPIR, CCSR).

Running the VAE on a 2048x2048 image in one piece needs several GB of activations, and cutting
the image into tiles that are encoded separately leaves seams: every GroupNorm normalises each
tile with its own statistics, and the mid-block attention only sees its own tile. Here the
network runs layer-synchronously over all tiles, like the Tiled VAE of multidiffusion-upscaler
that SUPIR ships (SUPIR/utils/tilevae.py), but exactly. That one pools GroupNorm statistics over
whole padded tiles (padding counted twice), runs the mid-block attention inside each tile and
relies on a 32/11 px padding covering enough of the receptive field, so it is only close to the
whole-image result. Here:

* The network is flattened into per-tile operations (convs, activations, down/upsamplers,
  residual adds) separated by *barriers*. Between two barriers each tile runs alone on the
  compute device; at a barrier every tile has reached the same layer.
* GroupNorm: each tile reports per-channel count/mean/M2 over its *core* (the pixels it owns, not
  its padding) when it reaches a barrier. The cores partition the image at every resolution
  level, so the merged statistics (Chan's parallel formula, float32) are the whole-image ones
  and every tile is normalised with them.
* Halo exchange: at every barrier each tile's padding is overwritten with its neighbours' core
  values, which are exact. Between two barriers there is at most one 3x3 conv and one
  down/upsampler, so the padding only has to absorb that much edge damage, not the whole
  receptive field: 1 latent px for the encoder (one px per level, and the padding halves at
  every downsampler), 2 latent px for the decoder (an upsampler doubles 1 damaged px and its
  conv adds one: 3 px of the doubled level). Hence the small default paddings, and tiled ==
  untiled up to float rounding (max abs difference ~1e-5, see tests/test_tiled_vae.py); one
  px less and the error is of order 1.
* Mid-block attention is global: at that barrier the tile cores are stitched into the full
  tensor of that level (the latent resolution, 1/8 of the image side for SD/SDXL VAEs), the
  attention runs on it with the keys/values of all positions (queries in chunks), and the tiles
  are cut back out, exact padding included.

Peak memory (fp32, SD2.1/SDXL VAE: 128..512 channels, 2048x2048 image; bf16 halves it):

* Compute device: one padded tile at a time, a few tensors of (tile + 2*pad)^2 x C: per tensor
  528^2 x 128 x 4 B = 143 MB for the encoder's default tile, (68*8)^2 x 256 x 4 B = 300 MB for
  the decoder's (after its last upsampler). Plus, once per attention, about five tensors of the
  level size (256^2 x 512 x 4 B = 128 MB each: input, normalised, keys, values, output) and one
  chunk of scores capped at `_ATTENTION_SCORE_BUDGET` elements (256 MB fp32). Nothing of full
  image resolution at the full channel count is ever allocated there; the results (moments,
  image) have only 8/3 channels.
* Offload device (CPU by default): the current activation of every tile plus one pending
  residual, i.e. 2-3 x H x W x C x bytes at the widest level (2048^2 x 256 x 4 B = 4 GB per copy
  for the decoder's last upsampler, 2 GB per copy at the encoder's 128-channel first level).
  That is the price of exact shared statistics; the official implementation needs the same.

`tiled_encode(encoder, x)` equals `encoder(x)` (moments, 2*latent channels) and
`tiled_decode(decoder, z)` equals `decoder(z)`; inputs that fit one tile run the plain forward.
Works in float32 and bfloat16 on any device; inference only (no autograd).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.models.autoencoders.vae import Decoder, Encoder
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import Tensor, nn

ProgressCallback = Callable[[int, int], None]

# the tile sizes are the official SUPIR ones (CPU/8 GB); the paddings are the minimum for an exact
# result with the halo exchange (module docstring), the encoder's rounded up to its factor f
DEFAULT_ENCODER_TILE = 512  # input pixels
DEFAULT_ENCODER_PAD = 8  # input pixels (= 1 latent pixel for a factor-8 VAE)
DEFAULT_DECODER_TILE = 64  # latent pixels
DEFAULT_DECODER_PAD = 2  # latent pixels

# largest number of attention scores (query chunk x all keys x heads x batch) materialised at once
_ATTENTION_SCORE_BUDGET = 1 << 26


# ---------------------------------------------------------------------------------------------
# the network as a flat program


@dataclass(frozen=True)
class _Op:
    """One step of the flattened network.

    kind: "local" (per-tile module, `rescale` = resolution exponent change: -1 downsampler,
    +1 upsampler), "save" (push `module(x)` as residual), "norm" (GroupNorm with shared stats),
    "add" (pop residual, add, divide by `factor`), "barrier", "attention" (global).
    """

    kind: Literal["local", "save", "norm", "add", "barrier", "attention"]
    module: Callable[[Tensor], Tensor] | None = None
    rescale: int = 0
    factor: float = 1.0


def _identity(x: Tensor) -> Tensor:
    return x


def _resnet_ops(block: nn.Module) -> list[_Op]:
    if not isinstance(block, ResnetBlock2D):
        raise NotImplementedError(f"tiled VAE: unsupported resnet {type(block).__name__}")
    if block.time_emb_proj is not None or block.upsample is not None or block.downsample is not None:
        raise NotImplementedError("tiled VAE: resnets with time embedding or up/down sampling are unsupported")
    shortcut = block.conv_shortcut if block.conv_shortcut is not None else _identity
    return [
        _Op("barrier"),
        # the 1x1 shortcut is applied at once: the stored residual has the (often smaller) output width
        _Op("save", shortcut),
        _Op("norm", block.norm1),
        _Op("local", block.nonlinearity),
        _Op("local", block.conv1),
        _Op("barrier"),
        _Op("norm", block.norm2),
        _Op("local", block.nonlinearity),
        _Op("local", block.dropout),
        _Op("local", block.conv2),
        _Op("add", factor=block.output_scale_factor),
    ]


def _mid_ops(mid: nn.Module) -> list[_Op]:
    ops = _resnet_ops(mid.resnets[0])
    for attn, resnet in zip(mid.attentions, mid.resnets[1:], strict=True):
        if attn is not None:
            ops += [_Op("barrier"), _Op("attention", attn)]
        ops += _resnet_ops(resnet)
    return ops


def _tail_ops(module: Encoder | Decoder) -> list[_Op]:
    if not isinstance(module.conv_norm_out, nn.GroupNorm):
        raise NotImplementedError("tiled VAE: only GroupNorm output norms are supported (no SpatialNorm/MoVQ)")
    return [
        _Op("barrier"),
        _Op("norm", module.conv_norm_out),
        _Op("local", module.conv_act),
        _Op("local", module.conv_out),
    ]


def _encoder_ops(encoder: Encoder) -> list[_Op]:
    ops = [_Op("local", encoder.conv_in)]
    for block in encoder.down_blocks:
        if getattr(block, "attentions", None):
            raise NotImplementedError(f"tiled VAE: unsupported down block {type(block).__name__}")
        for resnet in block.resnets:
            ops += _resnet_ops(resnet)
        for down in block.downsamplers or ():
            # a 3x3 stride-2 conv after a (0, 1, 0, 1) zero pad: input rows [a, b) with a even map to
            # output rows [a/2, b//2), which keeps tiles aligned when they start on multiples of 2
            if not (isinstance(down, Downsample2D) and down.use_conv and down.padding == 0 and down.norm is None):
                raise NotImplementedError("tiled VAE: only diffusers' padding-0 conv downsampler is supported")
            ops.append(_Op("local", down, rescale=-1))
    return ops + _mid_ops(encoder.mid_block) + _tail_ops(encoder)


def _decoder_ops(decoder: Decoder) -> list[_Op]:
    ops = [_Op("local", decoder.conv_in), *_mid_ops(decoder.mid_block)]
    for block in decoder.up_blocks:
        if getattr(block, "attentions", None):
            raise NotImplementedError(f"tiled VAE: unsupported up block {type(block).__name__}")
        for resnet in block.resnets:
            ops += _resnet_ops(resnet)
        for up in block.upsamplers or ():
            if not (isinstance(up, Upsample2D) and up.interpolate and not up.use_conv_transpose and up.norm is None):
                raise NotImplementedError("tiled VAE: only diffusers' nearest-neighbour upsampler is supported")
            ops.append(_Op("local", up, rescale=1))
    return ops + _tail_ops(decoder)


def _stages(ops: list[_Op]) -> list[list[_Op] | _Op]:
    """Split the program into per-tile passes (lists of ops) and global attention ops."""
    stages: list[list[_Op] | _Op] = []
    current: list[_Op] = []
    for op in ops:
        if op.kind in ("barrier", "attention") and current:
            stages.append(current)
            current = []
        if op.kind == "attention":
            stages.append(op)
        elif op.kind != "barrier":
            current.append(op)
    if current:
        stages.append(current)
    return stages


# ---------------------------------------------------------------------------------------------
# geometry


def _scale(v: int, exponent: int) -> int:
    return v << exponent if exponent >= 0 else v >> -exponent


@dataclass(frozen=True)
class _Axis:
    """Tiles along one axis in input coordinates: cores partition [0, size); windows add padding."""

    size: int
    cores: tuple[tuple[int, int], ...]
    windows: tuple[tuple[int, int], ...]

    @staticmethod
    def split(size: int, tile: int, pad: int, align: int) -> _Axis:
        """Cores of at most `tile` (a multiple of `align`) starting on multiples of `align`.

        A last core thinner than `align` is merged into the one before (which may then exceed
        `tile` by less than `align`): it would vanish at the latent level, and with a small `pad`
        its window would shrink to nothing in a downsampler.
        """
        count = -(-size // tile)
        step = -(-size // count)
        step = -(-step // align) * align
        bounds = list(range(0, size, step))
        if len(bounds) > 1 and size - bounds[-1] < align:
            bounds.pop()
        bounds.append(size)
        cores = tuple(pairwise(bounds))
        windows = tuple((max(0, s - pad), min(size, e + pad)) for s, e in cores)
        return _Axis(size, cores, windows)

    def at(self, exponent: int) -> _Axis:
        """The same tiles at the level whose resolution is 2**exponent times the input's.

        Going down, starts are multiples of 2**-exponent so they scale exactly and ends floor like
        the downsampler's output size does.
        """
        return _Axis(
            _scale(self.size, exponent),
            tuple((_scale(s, exponent), _scale(e, exponent)) for s, e in self.cores),
            tuple((_scale(s, exponent), _scale(e, exponent)) for s, e in self.windows),
        )

    def overlaps(self) -> list[list[tuple[int, int, int]]]:
        """For each tile i: (j, start, stop) for every core j that window i overlaps (its own included)."""
        result = []
        for ws, we in self.windows:
            row = []
            for j, (cs, ce) in enumerate(self.cores):
                s, e = max(ws, cs), min(we, ce)
                if s < e:
                    row.append((j, s, e))
            result.append(row)
        return result


@dataclass
class _Grid:
    rows: _Axis
    cols: _Axis

    def at(self, exponent: int) -> _Grid:
        return _Grid(self.rows.at(exponent), self.cols.at(exponent))

    def __len__(self) -> int:
        return len(self.rows.cores) * len(self.cols.cores)

    def index(self, i: int) -> tuple[int, int]:
        return divmod(i, len(self.cols.cores))

    def window(self, i: int) -> tuple[slice, slice]:
        r, c = self.index(i)
        return slice(*self.rows.windows[r]), slice(*self.cols.windows[c])

    def core(self, i: int) -> tuple[slice, slice]:
        r, c = self.index(i)
        return slice(*self.rows.cores[r]), slice(*self.cols.cores[c])

    def core_in_window(self, i: int) -> tuple[slice, slice]:
        r, c = self.index(i)
        (cs, ce), (ws, _) = self.rows.cores[r], self.rows.windows[r]
        (ds, de), (vs, _) = self.cols.cores[c], self.cols.windows[c]
        return slice(cs - ws, ce - ws), slice(ds - vs, de - vs)


# ---------------------------------------------------------------------------------------------
# GroupNorm with statistics merged over tiles


@dataclass
class _Moments:
    """Per-(batch, channel) count, mean and sum of squared deviations, merged across tiles."""

    count: int = 0
    mean: Tensor | None = None
    m2: Tensor | None = None

    def add(self, x: Tensor) -> None:
        x = x.float()
        n = x.shape[-2] * x.shape[-1]
        if n == 0:
            return
        var, mean = torch.var_mean(x, dim=(-2, -1), correction=0)
        m2 = var * n
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total

    def scale_shift(self, norm: nn.GroupNorm) -> tuple[Tensor, Tensor]:
        """Per-(batch, channel) a, b with norm(x) == x * a + b for the whole image."""
        assert self.mean is not None and self.m2 is not None
        b, c = self.mean.shape
        g = norm.num_groups
        mean = self.mean.view(b, g, c // g)
        group_mean = mean.mean(dim=-1, keepdim=True)
        group_m2 = self.m2.view(b, g, c // g).sum(-1, keepdim=True)
        group_m2 = group_m2 + self.count * (mean - group_mean).square().sum(-1, keepdim=True)
        group_var = group_m2 / (self.count * (c // g))
        rstd = torch.rsqrt(group_var + norm.eps).expand(b, g, c // g).reshape(b, c)
        group_mean = group_mean.expand(b, g, c // g).reshape(b, c)
        scale = rstd if norm.weight is None else rstd * norm.weight.float()
        shift = -group_mean * scale
        if norm.bias is not None:
            shift = shift + norm.bias.float()
        return scale, shift


def _apply_norm(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    return torch.addcmul(shift[:, :, None, None], x.float(), scale[:, :, None, None]).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# the exact global attention


def _global_attention(attn: Attention, x: Tensor) -> Tensor:
    """`attn(x)` on the full tensor of its level, with the queries in chunks.

    Memory: x, its normalised copy, keys, values and output (each B x C x H x W), plus one chunk of
    scores of at most `_ATTENTION_SCORE_BUDGET` elements.
    """
    plain = (
        attn.spatial_norm is None
        and attn.norm_q is None
        and attn.norm_k is None
        and not attn.is_cross_attention
        and attn.scale_qk
    )
    if not plain:
        return attn(x)
    b, _, h, w = x.shape
    n = h * w
    hidden = attn.group_norm(x) if attn.group_norm is not None else x
    tokens = hidden.flatten(2).transpose(1, 2)  # B, N, C
    del hidden
    key = attn.to_k(tokens)
    value = attn.to_v(tokens)
    heads = attn.heads
    head_dim = key.shape[-1] // heads
    key = key.view(b, n, heads, head_dim).transpose(1, 2)
    value = value.view(b, n, heads, head_dim).transpose(1, 2)
    chunk = max(1, _ATTENTION_SCORE_BUDGET // (b * heads * n))
    out = torch.empty(b, n, attn.out_dim, dtype=x.dtype, device=x.device)
    for start in range(0, n, chunk):
        query = attn.to_q(tokens[:, start : start + chunk])
        query = query.view(b, -1, heads, head_dim).transpose(1, 2)
        part = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
        part = part.transpose(1, 2).reshape(b, -1, heads * head_dim).to(query.dtype)
        out[:, start : start + chunk] = attn.to_out[1](attn.to_out[0](part))
    del tokens, key, value
    out = out.transpose(1, 2).reshape(b, attn.out_dim, h, w)
    if attn.residual_connection:
        out = out + x
    return out / attn.rescale_output_factor


# ---------------------------------------------------------------------------------------------
# the driver


@dataclass
class _Tile:
    x: Tensor | None = None
    residuals: list[Tensor] = field(default_factory=list)


def _refresh_halos(tiles: list[_Tile], grid: _Grid) -> None:
    """Overwrite every tile's padding with its neighbours' (exact) core values."""
    row_overlaps, col_overlaps = grid.rows.overlaps(), grid.cols.overlaps()
    ncols = len(grid.cols.cores)
    for i, tile in enumerate(tiles):
        r, c = grid.index(i)
        wr, wc = grid.rows.windows[r][0], grid.cols.windows[c][0]
        for rj, rs, re in row_overlaps[r]:
            for cj, cs, ce in col_overlaps[c]:
                j = rj * ncols + cj
                if j == i:
                    continue
                jr, jc = grid.rows.windows[rj][0], grid.cols.windows[cj][0]
                source = tiles[j].x[..., rs - jr : re - jr, cs - jc : ce - jc]
                tile.x[..., rs - wr : re - wr, cs - wc : ce - wc] = source.to(tile.x.device)


def _run_tiled(
    ops: list[_Op],
    x: Tensor,
    grid: _Grid,
    offload: torch.device | None,
    shared_norm_stats: bool,
    progress: ProgressCallback | None,
) -> Tensor:
    device = x.device
    stages = _stages(ops)
    n = len(grid)
    total = sum(n if isinstance(s, list) else 1 for s in stages)
    done = 0
    tiles = [_Tile() for _ in range(n)]
    exponent = 0
    moments: _Moments | None = None  # whole-image statistics of the current activations
    output: Tensor | None = None
    store = offload or device

    for stage_index, stage in enumerate(stages):
        level = grid.at(exponent)
        last = stage_index == len(stages) - 1

        if isinstance(stage, _Op):  # global attention on the stitched level tensor
            full = None
            for i, tile in enumerate(tiles):
                part = tile.x[(..., *level.core_in_window(i))].to(device)
                if full is None:
                    shape = (*part.shape[:2], level.rows.size, level.cols.size)
                    full = torch.empty(shape, dtype=part.dtype, device=device)
                full[(..., *level.core(i))] = part
            full = _global_attention(stage.module, full)
            moments = _Moments()
            moments.add(full)
            for i, tile in enumerate(tiles):
                tile.x = full[(..., *level.window(i))].to(store, copy=True)
            del full
            done += 1
            if progress:
                progress(done, total)
            continue

        # one pass over the tiles, each running the ops up to the next barrier
        next_moments = _Moments()
        rescale = sum(op.rescale for op in stage)
        out_level = grid.at(exponent + rescale)
        for i, tile in enumerate(tiles):
            h = x[(..., *grid.window(i))] if tile.x is None else tile.x.to(device)
            for op in stage:
                if op.kind == "local":
                    h = op.module(h)
                elif op.kind == "save":
                    tile.residuals.append(op.module(h).to(store))
                elif op.kind == "norm" and shared_norm_stats:
                    h = _apply_norm(h, *moments.scale_shift(op.module))
                elif op.kind == "norm":  # per-tile statistics over the padded tile: the seamy baseline
                    h = op.module(h)
                elif op.kind == "add":
                    h = (h + tile.residuals.pop().to(device)) / op.factor
                else:  # pragma: no cover - _stages removes barriers and attention
                    raise AssertionError(op.kind)
            if last:
                core = h[(..., *out_level.core_in_window(i))]
                if output is None:
                    shape = (*h.shape[:2], out_level.rows.size, out_level.cols.size)
                    output = torch.empty(shape, dtype=h.dtype, device=device)
                output[(..., *out_level.core(i))] = core
                tile.x = None
            else:
                next_moments.add(h[(..., *out_level.core_in_window(i))])
                tile.x = h.to(store)
            del h
            done += 1
            if progress:
                progress(done, total)
        exponent += rescale
        moments = next_moments
        if not last:
            _refresh_halos(tiles, grid.at(exponent))

    assert output is not None
    return output


def _prepare(module: nn.Module, x: Tensor, offload: torch.device | str | None) -> tuple[Tensor, torch.device | None]:
    if x.ndim != 4:
        raise ValueError(f"expected a B x C x H x W tensor, got shape {tuple(x.shape)}")
    param = next(module.parameters())
    x = x.to(device=param.device, dtype=param.dtype)
    store = torch.device(offload) if offload is not None else None
    return x, store


def _plain(module: nn.Module, x: Tensor, progress: ProgressCallback | None) -> Tensor:
    result = module(x)
    if progress:
        progress(1, 1)
    return result


@torch.no_grad()
def tiled_encode(
    encoder: Encoder,
    x: Tensor,
    *,
    tile_size: int = DEFAULT_ENCODER_TILE,
    pad: int = DEFAULT_ENCODER_PAD,
    offload: torch.device | str | None = "cpu",
    progress: ProgressCallback | None = None,
    shared_norm_stats: bool = True,
) -> Tensor:
    """`encoder(x)` computed tile by tile, seamlessly (equal up to float rounding).

    encoder: a diffusers VAE `Encoder` (`vae.encoder`, or SUPIR's `denoise_encoder`), eval mode.
    x: B x C x H x W image batch, as the encoder expects it (usually in [-1, 1]); moved to the
        encoder's device and dtype.
    tile_size: largest tile core, in input pixels; rounded up to a multiple of the encoder's
        downsampling factor f (8 for SD/SDXL VAEs). A last strip thinner than f joins its
        neighbour.
    pad: padding around each core, in input pixels; rounded up to a multiple of f. f (1 latent
        pixel, the default for f = 8) is enough for an exact result thanks to the halo
        exchange; 0 is allowed but not exact.
    offload: where the tiles' activations wait between layers (None: the compute device).
    progress: called as progress(done, total) after every tile pass and global step (once as
        (1, 1) when the input fits one tile).
    shared_norm_stats: False normalises every tile with its own statistics (the seamy baseline;
        for tests and comparisons only).

    Returns the moments (B x 2*latent_channels x H//f x W//f), like `encoder(x)`. An input
    within one tile runs `encoder(x)` directly.
    """
    x, store = _prepare(encoder, x, offload)
    factor = 2 ** sum(1 for block in encoder.down_blocks for _ in block.downsamplers or ())
    tile_size = max(factor, -(-tile_size // factor) * factor)
    pad = -(-max(0, pad) // factor) * factor
    height, width = x.shape[-2:]
    if height <= tile_size and width <= tile_size:
        return _plain(encoder, x, progress)
    grid = _Grid(_Axis.split(height, tile_size, pad, factor), _Axis.split(width, tile_size, pad, factor))
    return _run_tiled(_encoder_ops(encoder), x, grid, store, shared_norm_stats, progress)


@torch.no_grad()
def tiled_decode(
    decoder: Decoder,
    z: Tensor,
    *,
    tile_size: int = DEFAULT_DECODER_TILE,
    pad: int = DEFAULT_DECODER_PAD,
    offload: torch.device | str | None = "cpu",
    progress: ProgressCallback | None = None,
    shared_norm_stats: bool = True,
) -> Tensor:
    """`decoder(z)` computed tile by tile, seamlessly (equal up to float rounding).

    decoder: a diffusers VAE `Decoder` (`vae.decoder`), eval mode.
    z: B x C x h x w, what the decoder takes, i.e. `vae.post_quant_conv(latent / scaling_factor)`;
        moved to the decoder's device and dtype.
    tile_size: largest tile core, in latent pixels.
    pad: padding around each core, in latent pixels; 2 (the default) is enough for an exact
        result (an upsampler and the conv after it damage 3 px of the doubled level); 0 and 1
        are allowed but not exact.
    offload, progress, shared_norm_stats: as for `tiled_encode`.

    Returns the image (B x out_channels x H*f x W*f). A latent within one tile runs
    `decoder(z)` directly.
    """
    z, store = _prepare(decoder, z, offload)
    height, width = z.shape[-2:]
    tile_size = max(1, tile_size)
    if height <= tile_size and width <= tile_size:
        return _plain(decoder, z, progress)
    pad = max(0, pad)
    grid = _Grid(_Axis.split(height, tile_size, pad, 1), _Axis.split(width, tile_size, pad, 1))
    return _run_tiled(_decoder_ops(decoder), z, grid, store, shared_norm_stats, progress)
