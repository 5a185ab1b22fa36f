"""The tiled VAE equals the whole-image forward of diffusers' Encoder/Decoder.

Small random-weight AutoencoderKLs; GroupNorm affine parameters are perturbed away from the
identity so that wrong statistics show. Sizes are chosen so that tiles do not divide them.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL

from sr_core.engines.diffusion.tiled_vae import tiled_decode, tiled_encode

# measured max |tiled - untiled| in float32: encoder ~4e-6, decoder ~1e-5 (outputs of magnitude
# 1-4); the seamy per-tile-statistics baseline is off by 0.1-0.7 on the same inputs
TOLERANCE = 1e-4
SEAM = 0.02


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Hundreds of tiny convs: with two intra-op threads on a busy 2-core box every call pays the
    thread hand-off (measured 108 s for this module against 7 s on one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _vae(block_out_channels: tuple[int, ...], seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    levels = len(block_out_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=block_out_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    ).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in vae.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.copy_(1 + 0.5 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.5 * torch.randn(module.bias.shape, generator=generator))
    return vae


@pytest.fixture(scope="module")
def shallow() -> AutoencoderKL:
    """Two levels: one downsampler, factor 2."""
    return _vae((32, 64), seed=0)


@pytest.fixture(scope="module")
def deep() -> AutoencoderKL:
    """Four levels like the SD/SDXL VAE: factor 8, three asymmetric-padding downsamplers."""
    return _vae((16, 32, 32, 64), seed=1)


def _image(height: int, width: int, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(7)) * 2 - 1


def _latent(height: int, width: int, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 4, height, width, generator=torch.Generator().manual_seed(8))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a.float() - b.float()).abs().max().item()


# (model, image size, encoder tile): 200x136 in 64 px tiles is 4x3 tiles of 50x46; 203x141 is odd,
# so every downsampler of the deep model floors and its bottom/right zero pad matters
ENCODE_CASES = [("shallow", (200, 136), 64), ("deep", (203, 141), 64)]


@pytest.mark.parametrize(("model", "size", "tile"), ENCODE_CASES)
def test_tiled_encode_matches_untiled(model, size, tile, request):
    encoder = request.getfixturevalue(model).encoder
    x = _image(*size)
    with torch.no_grad():
        expected = encoder(x)
    calls: list[tuple[int, int]] = []
    got = tiled_encode(encoder, x, tile_size=tile, progress=lambda done, total: calls.append((done, total)))
    assert _max_diff(got, expected) < TOLERANCE
    total = calls[-1][1]
    assert calls == [(i, total) for i in range(1, total + 1)]


@pytest.mark.parametrize("model", ["shallow", "deep"])
def test_tiled_decode_matches_untiled(model, request):
    decoder = request.getfixturevalue(model).decoder
    z = _latent(37, 29)  # 16 px tiles: 3x2 tiles of 13x15
    with torch.no_grad():
        expected = decoder(z)
    assert _max_diff(tiled_decode(decoder, z, tile_size=16), expected) < TOLERANCE


def test_batch_and_no_offload(shallow):
    x = _image(72, 100, batch=2)
    z = _latent(19, 23, batch=2)
    with torch.no_grad():
        expected_moments, expected_image = shallow.encoder(x), shallow.decoder(z)
    assert _max_diff(tiled_encode(shallow.encoder, x, tile_size=32, offload=None), expected_moments) < TOLERANCE
    assert _max_diff(tiled_decode(shallow.decoder, z, tile_size=8, offload=None), expected_image) < TOLERANCE


def test_tiny_tiles_whose_padding_spans_several_neighbours(deep):
    """8 px encoder tiles (1 latent px) and 3 px decoder tiles: windows reach past the next core."""
    x = _image(40, 27)
    z = _latent(10, 7)
    with torch.no_grad():
        expected_moments, expected_image = deep.encoder(x), deep.decoder(z)
    assert _max_diff(tiled_encode(deep.encoder, x, tile_size=8, pad=16), expected_moments) < TOLERANCE
    assert _max_diff(tiled_decode(deep.decoder, z, tile_size=3, pad=4), expected_image) < TOLERANCE


@pytest.mark.parametrize("model", ["shallow", "deep"])
def test_per_tile_statistics_leave_seams(model, request):
    """Control: the same tiling with per-tile GroupNorm statistics is clearly wrong."""
    vae = request.getfixturevalue(model)
    x, z = _image(200, 136), _latent(37, 29)
    with torch.no_grad():
        expected_moments, expected_image = vae.encoder(x), vae.decoder(z)
    seamy_moments = tiled_encode(vae.encoder, x, tile_size=64, shared_norm_stats=False)
    seamy_image = tiled_decode(vae.decoder, z, tile_size=16, shared_norm_stats=False)
    assert _max_diff(seamy_moments, expected_moments) > SEAM
    assert _max_diff(seamy_image, expected_image) > SEAM


def test_too_little_padding_is_wrong(deep):
    """Control for the paddings: below one latent px (encoder) / 2 latent px (decoder) the edge
    damage between two halo exchanges reaches the tile cores."""
    # 129 = 4 x 32 + 1: the 1 px last column is merged into its neighbour, else with pad 0 its
    # window would vanish in the first downsampler
    x, z = _image(203, 129), _latent(37, 29)
    with torch.no_grad():
        expected_moments, expected_image = deep.encoder(x), deep.decoder(z)
    assert _max_diff(tiled_encode(deep.encoder, x, tile_size=32, pad=0), expected_moments) > SEAM
    assert _max_diff(tiled_decode(deep.decoder, z, tile_size=16, pad=1), expected_image) > SEAM


def test_one_tile_is_the_plain_forward(deep):
    x = _image(64, 56)
    z = _latent(16, 11)
    with torch.no_grad():
        expected_moments, expected_image = deep.encoder(x), deep.decoder(z)
    calls: list[tuple[int, int]] = []
    moments = tiled_encode(deep.encoder, x, tile_size=64, progress=lambda *done_total: calls.append(done_total))
    assert torch.equal(moments, expected_moments)
    assert torch.equal(tiled_decode(deep.decoder, z, tile_size=16), expected_image)
    assert calls == [(1, 1)]


def test_bfloat16(shallow):
    """bf16 tiles are as close to the fp32 result as the bf16 whole-image forward is."""
    x, z = _image(72, 52), _latent(13, 11)
    with torch.no_grad():
        reference_moments, reference_image = shallow.encoder(x), shallow.decoder(z)
        vae = _vae((32, 64), seed=0).to(torch.bfloat16)
        plain_moments = vae.encoder(x.bfloat16())
        plain_image = vae.decoder(z.bfloat16())
    tiled_moments = tiled_encode(vae.encoder, x, tile_size=32)
    tiled_image = tiled_decode(vae.decoder, z, tile_size=6)
    assert tiled_moments.dtype == tiled_image.dtype == torch.bfloat16
    for tiled, plain, reference in [
        (tiled_moments, plain_moments, reference_moments),
        (tiled_image, plain_image, reference_image),
    ]:
        tiled_error = (tiled.float() - reference).abs().mean().item()
        plain_error = (plain.float() - reference).abs().mean().item()
        assert tiled_error < 1.5 * plain_error + 1e-3
        assert _max_diff(tiled, plain) < 0.1
