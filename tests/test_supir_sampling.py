"""SUPIR noise schedule, denoiser wrapper and samplers, checked against the formulas written out here.

The reference maths follow the official SUPIR sampler (sgm/modules/diffusionmodules/sampling.py);
every expected value is computed in this file from the textbook formulas, never with the code
under test (except the schedule, once it has been checked on its own).
"""

from __future__ import annotations

import dataclasses
import math
from itertools import pairwise

import pytest
import torch

from sr_core.engines.diffusion.tiles import gaussian_weights, sliding_windows
from sr_core.engines.supir.denoiser import DiscreteEpsDenoiser, legacy_ddpm_sigmas, sampling_sigmas
from sr_core.engines.supir.sampling import (
    PRESETS,
    SamplerSettings,
    cfg_scale_schedule,
    churn_gamma,
    control_scale_schedule,
    restore_sample,
    step_sigmas,
    tiled_restore_sample,
)

SIGMA_NORM = 14.6146  # the official hard-coded normaliser of sigma (LinearCFG, restoration guidance)
A, B = 0.5, 0.1  # toy denoiser: x0 = A * x + B * control_scale * control + bias(vector)


def ref_sigma(t: int) -> float:
    """sqrt((1 - alphabar_t) / alphabar_t) of the SD/SDXL linear-in-sqrt beta schedule, in float64."""
    start, end = 0.00085**0.5, 0.012**0.5
    alphabar = 1.0
    for j in range(t + 1):
        beta = (start + (end - start) * j / 999) ** 2
        alphabar *= 1.0 - beta
    return math.sqrt((1.0 - alphabar) / alphabar)


def toy_x0(x: torch.Tensor, cond: dict[str, torch.Tensor], control_scale: float) -> torch.Tensor:
    return A * x + B * control_scale * cond["control"] + cond["vector"][:, :1, None, None]


class Toy:
    """A position-independent denoiser that records what it is called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], float]] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond, control_scale: float) -> torch.Tensor:
        self.calls.append((x.clone(), sigma.clone(), {k: v.clone() for k, v in cond.items()}, control_scale))
        return toy_x0(x, cond, control_scale)


def conds(b: int = 1, h: int = 6, w: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    control = torch.randn(b, 4, h, w, generator=g)
    cond = {"crossattn": torch.randn(b, 3, 8, generator=g), "vector": torch.full((b, 2), 0.3), "control": control}
    uncond = {"crossattn": torch.randn(b, 3, 8, generator=g), "vector": torch.full((b, 2), -0.2), "control": control}
    x_center = torch.randn(b, 4, h, w, generator=g)
    noise = torch.randn(b, 4, h, w, generator=g)
    return noise, cond, uncond, x_center


def cfg(x: torch.Tensor, cond, uncond, cs: float, scale: float | torch.Tensor) -> torch.Tensor:
    x_u, x_c = toy_x0(x, uncond, cs), toy_x0(x, cond, cs)
    return x_u + scale * (x_c - x_u)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# -- schedule -------------------------------------------------------------------------------------


def test_training_sigmas_match_the_beta_formula() -> None:
    sigmas = legacy_ddpm_sigmas()
    assert sigmas.shape == (1000,) and sigmas.dtype == torch.float32
    assert bool((sigmas[1:] > sigmas[:-1]).all())
    for t in (0, 1, 250, 499, 998, 999):
        assert sigmas[t].item() == pytest.approx(ref_sigma(t), rel=1e-6)
    assert sigmas[0].item() == pytest.approx(0.0291672, rel=1e-5)
    assert sigmas[999].item() == pytest.approx(14.614642, rel=1e-6)


@pytest.mark.parametrize("n", [1, 8, 50, 100, 999])
def test_sampling_sigmas_are_the_spaced_training_sigmas_plus_zero(n: int) -> None:
    sigmas = sampling_sigmas(n)
    assert sigmas.shape == (n + 1,) and sigmas[-1].item() == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    # linspace(999, 0, n, endpoint=False) truncated: k-th highest timestep is int(999 - k * 999 / n)
    timesteps = [int(999 - k * 999 / n) for k in range(n)]
    assert timesteps[0] == 999
    for k, t in enumerate(timesteps):
        assert sigmas[k].item() == pytest.approx(ref_sigma(t), rel=1e-6)


def test_sampling_sigmas_known_timesteps_and_limits() -> None:
    training = legacy_ddpm_sigmas()
    assert sampling_sigmas(50)[-2].item() == training[19].item()  # lowest timestep for 50 steps is 19
    assert sampling_sigmas(8)[-2].item() == training[124].item()
    torch.testing.assert_close(sampling_sigmas(1000)[:-1], training.flip(0), rtol=0, atol=0)
    with pytest.raises(ValueError):
        sampling_sigmas(1001)
    with pytest.raises(ValueError):
        sampling_sigmas(0)


# -- denoiser -------------------------------------------------------------------------------------


def test_denoiser_buffer_is_the_checkpoint_key() -> None:
    den = DiscreteEpsDenoiser()
    state = den.state_dict()
    assert list(state) == ["sigmas"]
    assert state["sigmas"].shape == (1000,) and state["sigmas"].dtype == torch.float32
    den.load_state_dict({"sigmas": legacy_ddpm_sigmas()})


def test_denoiser_eps_scaling_with_quantised_sigma() -> None:
    den = DiscreteEpsDenoiser()
    training = [ref_sigma(t) for t in (37, 38, 500, 501)]
    # between two training sigmas, nearer the first / the second
    sigma = torch.tensor([0.7 * training[0] + 0.3 * training[1], 0.2 * training[2] + 0.8 * training[3]])
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    seen = {}

    def network(x_in, timesteps, cond, control_scale):
        seen.update(x_in=x_in, timesteps=timesteps, cond=cond, control_scale=control_scale)
        return eps

    cond = {"control": torch.zeros(2, 4, 3, 3)}
    out = den(network, x, sigma, cond, 0.75)
    assert seen["timesteps"].tolist() == [37, 501]
    assert seen["timesteps"].dtype == torch.int64
    assert seen["cond"] is cond and seen["control_scale"] == 0.75
    s_q = torch.tensor([training[0], training[3]], dtype=torch.float32)[:, None, None, None]
    close(seen["x_in"], x / torch.sqrt(s_q**2 + 1), 1e-6)
    close(out, x - s_q * eps, 1e-6)


def test_denoiser_rejects_unbatched_sigma() -> None:
    with pytest.raises(ValueError):
        DiscreteEpsDenoiser()(lambda *a: a[0], torch.zeros(2, 4, 2, 2), torch.tensor(1.0), {}, 1.0)


# -- EDM ------------------------------------------------------------------------------------------


def test_edm_plain_euler_steps() -> None:
    noise, cond, uncond, _ = conds()
    settings = SamplerSettings(kind="edm", num_steps=4, s_churn=0.0, cfg_scale=3.0, restore_cfg=-1.0)
    toy = Toy()
    out = restore_sample(toy, noise, cond, uncond, None, settings, cfg_batch=False)

    s = [ref_sigma(t) for t in (999, 749, 499, 249)] + [0.0]
    x = noise * math.sqrt(1 + s[0] ** 2)
    # Euler on dx/dsigma = (x - x0) / sigma (= eps for x = x0 + sigma * eps)
    for i in range(4):
        if i > 0:
            close(toy.calls[2 * i][0], x)  # the x the step starts from
        assert toy.calls[2 * i][1].item() == pytest.approx(s[i], rel=1e-6)
        d0 = cfg(x, cond, uncond, 1.0, 3.0)
        x = x + (x - d0) / s[i] * (s[i + 1] - s[i])
    close(out, x)


def test_edm_churn_adds_scaled_noise() -> None:
    noise, cond, uncond, _ = conds()
    # s_tmin = 10: only the first step (sigma 14.6) churns
    settings = SamplerSettings(kind="edm", num_steps=4, s_churn=1.0, s_noise=1.01, s_tmin=10.0, cfg_scale=2.0)
    toy = Toy()
    out = restore_sample(toy, noise, cond, uncond, None, settings, generator=torch.Generator().manual_seed(5))

    gamma = min(1.0 / 4, 2**0.5 - 1)
    eps = torch.randn(noise.shape, generator=torch.Generator().manual_seed(5))
    s = [ref_sigma(t) for t in (999, 749, 499, 249)] + [0.0]
    x = noise * math.sqrt(1 + s[0] ** 2)
    for i in range(4):
        sigma_hat = s[i] * (1 + gamma) if i == 0 else s[i]
        if i == 0:
            x = x + eps * 1.01 * math.sqrt(sigma_hat**2 - s[i] ** 2)
        # one doubled CFG call per step: uncond half first
        assert toy.calls[i][1].tolist() == pytest.approx([sigma_hat, sigma_hat], rel=1e-6)
        close(toy.calls[i][0][:1], x)
        d0 = cfg(x, cond, uncond, 1.0, 2.0)
        x = x + (x - d0) / sigma_hat * (s[i + 1] - sigma_hat)
    close(out, x)


def test_churn_gamma_formula_and_clamp() -> None:
    assert churn_gamma(SamplerSettings(num_steps=50, s_churn=5.0), 1.0) == pytest.approx(0.1)
    assert churn_gamma(SamplerSettings(num_steps=10, s_churn=40.0), 1.0) == pytest.approx(2**0.5 - 1)
    assert churn_gamma(SamplerSettings(num_steps=10, s_churn=5.0, s_tmin=2.0), 1.0) == 0.0
    assert churn_gamma(SamplerSettings(num_steps=10, s_churn=5.0, s_tmax=0.5), 1.0) == 0.0


def test_edm_restoration_guidance() -> None:
    noise, cond, uncond, x_center = conds()
    settings = SamplerSettings(kind="edm", num_steps=3, cfg_scale=1.5, restore_cfg=2.0, restore_cfg_s_tmin=0.05)
    out = restore_sample(Toy(), noise, cond, uncond, x_center, settings)

    s = [ref_sigma(t) for t in (999, 666, 333)] + [0.0]
    x = noise * math.sqrt(1 + s[0] ** 2)
    for i in range(3):
        d0 = cfg(x, cond, uncond, 1.0, 1.5)
        if s[i + 1] > 0.05:  # gated on the next sigma: the last step (to 0) is not pulled
            w = (s[i] / SIGMA_NORM) ** 2.0
            d0 = d0 - (d0 - x_center) * w
        x = x + (x - d0) / s[i] * (s[i + 1] - s[i])
    close(out, x)


def test_linear_cfg_and_control_schedules() -> None:
    settings = SamplerSettings(
        num_steps=20,
        cfg_scale=7.5,
        cfg_scale_start=4.0,
        linear_cfg=True,
        control_scale=0.9,
        control_scale_start=0.2,
        linear_control_scale=True,
    )
    s_first, s_last = ref_sigma(999), ref_sigma(int(999 - 19 * 999 / 20))
    cfgs, controls = cfg_scale_schedule(settings), control_scale_schedule(settings)
    assert len(cfgs) == len(controls) == 20
    assert cfgs[0] == pytest.approx((4.0 - 7.5) * s_first / SIGMA_NORM + 7.5, rel=1e-6)
    assert cfgs[0] == pytest.approx(4.0, abs=1e-4)
    assert cfgs[-1] == pytest.approx((4.0 - 7.5) * s_last / SIGMA_NORM + 7.5, rel=1e-6)
    assert controls[0] == pytest.approx(s_first / SIGMA_NORM * (0.2 - 0.9) + 0.9, rel=1e-6)
    assert controls[-1] == pytest.approx(s_last / SIGMA_NORM * (0.2 - 0.9) + 0.9, rel=1e-6)
    assert all(a < b for a, b in pairwise(cfgs)) and all(a < b for a, b in pairwise(controls))

    # with churn the CFG scale is taken at sigma_hat = sigma * (1 + gamma), the control scale at sigma
    churned = cfg_scale_schedule(PRESETS["quality"])
    assert churned[0] == pytest.approx((4.0 - 7.5) * s_first * 1.1 / SIGMA_NORM + 7.5, rel=1e-6)
    assert cfg_scale_schedule(dataclasses.replace(settings, linear_cfg=False)) == [7.5] * 20
    assert control_scale_schedule(dataclasses.replace(settings, linear_control_scale=False)) == [0.9] * 20


def test_sampler_uses_the_scheduled_cfg_and_control_scales() -> None:
    noise, cond, uncond, _ = conds()
    settings = SamplerSettings(
        num_steps=3,
        cfg_scale=6.0,
        cfg_scale_start=2.0,
        linear_cfg=True,
        control_scale=1.0,
        control_scale_start=0.3,
        linear_control_scale=True,
    )
    toy = Toy()
    out = restore_sample(toy, noise, cond, uncond, None, settings)
    s = [ref_sigma(t) for t in (999, 666, 333)] + [0.0]
    x = noise * math.sqrt(1 + s[0] ** 2)
    for i in range(3):
        cs = s[i] / SIGMA_NORM * (0.3 - 1.0) + 1.0
        assert toy.calls[i][3] == pytest.approx(cs, rel=1e-6)
        scale = (2.0 - 6.0) * s[i] / SIGMA_NORM + 6.0
        d0 = cfg(x, cond, uncond, cs, scale)
        x = x + (x - d0) / s[i] * (s[i + 1] - s[i])
    close(out, x)


def test_cfg_batched_and_sequential_agree_and_runs_reproduce() -> None:
    noise, cond, uncond, x_center = conds(b=2)
    settings = PRESETS["quality"]
    settings = dataclasses.replace(settings, num_steps=5, restore_cfg=3.0)
    runs = [
        restore_sample(Toy(), noise, cond, uncond, x_center, settings, generator=torch.Generator().manual_seed(3),
                       cfg_batch=batch)
        for batch in (True, False, True)
    ]  # fmt: skip
    close(runs[0], runs[1], 1e-6)
    assert torch.equal(runs[0], runs[2])
    steps: list[tuple[int, int]] = []
    restore_sample(Toy(), noise, cond, uncond, x_center, settings, progress=lambda i, n: steps.append((i, n)))
    assert steps == [(i, 5) for i in range(1, 6)]


# -- DPM++ 2M -------------------------------------------------------------------------------------


def ref_karras(n: int) -> list[float]:
    lo, hi = ref_sigma(int(999 - (n - 1) * 999 / n)), ref_sigma(999)
    return [(hi ** (1 / 7) + i / (n - 1) * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7 for i in range(n)] + [0.0]


def test_dpmpp2m_karras_sigmas() -> None:
    sigmas = step_sigmas(PRESETS["lightning"])
    assert sigmas.tolist() == pytest.approx(ref_karras(8), rel=1e-5)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_dpmpp2m_steps(eta: float) -> None:
    noise, cond, uncond, _ = conds()
    settings = SamplerSettings(kind="dpmpp2m", num_steps=3, cfg_scale=2.5, s_noise=1.02, eta=eta)
    toy = Toy()
    out = restore_sample(toy, noise, cond, uncond, None, settings, generator=torch.Generator().manual_seed(9))

    s = ref_karras(3)
    noise_gen = torch.Generator().manual_seed(9)
    x = noise * math.sqrt(1 + ref_sigma(999) ** 2)
    # DPM-Solver++(2M), SDE form, in lambda = -log(sigma), h = lambda_next - lambda:
    # x' = sigma'/sigma * e^(-eta h) x + (1 - e^(-(1 + eta) h)) D, D corrected to second order with
    # r = h_prev / h from the second step on, plus sigma' sqrt(1 - e^(-2 eta h)) s_noise * eps (not on
    # the first step, as in the official sampler); the last step (to sigma 0) returns D itself.
    d_prev = None
    for i in range(3):
        assert toy.calls[i][1][0].item() == pytest.approx(s[i], rel=1e-5)
        d0 = cfg(x, cond, uncond, 1.0, 2.5)
        if s[i + 1] == 0.0:
            x = d0
            break
        h = math.log(s[i] / s[i + 1])
        d = d0
        if d_prev is not None:
            r = math.log(s[i - 1] / s[i]) / h
            d = (1 + 1 / (2 * r)) * d0 - 1 / (2 * r) * d_prev
        x_new = s[i + 1] / s[i] * math.exp(-eta * h) * x + (1 - math.exp(-(1 + eta) * h)) * d
        if d_prev is not None and eta > 0:
            eps = torch.randn(noise.shape, generator=noise_gen)
            x_new = x_new + s[i + 1] * math.sqrt(1 - math.exp(-2 * eta * h)) * 1.02 * eps
        x, d_prev = x_new, d0
    close(out, x, 2e-5)


def test_initial_noise_scaling_uses_the_legacy_sigma_max() -> None:
    noise, cond, uncond, _ = conds()
    for settings in (PRESETS["lightning"], dataclasses.replace(PRESETS["quality"], num_steps=2, s_churn=0.0)):
        toy = Toy()
        restore_sample(toy, noise, cond, uncond, None, settings, generator=torch.Generator().manual_seed(0))
        close(toy.calls[0][0][:1], noise * math.sqrt(1 + ref_sigma(999) ** 2), 1e-6)


# -- tiling ---------------------------------------------------------------------------------------


def tiled_cases() -> list[SamplerSettings]:
    return [
        SamplerSettings(
            kind="edm",
            num_steps=4,
            s_churn=1.0,
            cfg_scale=5.0,
            cfg_scale_start=1.0,
            linear_cfg=True,
            linear_control_scale=True,
            control_scale_start=0.4,
            restore_cfg=2.0,
        ),
        SamplerSettings(kind="dpmpp2m", num_steps=4, cfg_scale=2.0, eta=1.0),
    ]


@pytest.mark.parametrize("settings", tiled_cases(), ids=["edm", "dpmpp2m"])
def test_tiled_single_tile_equals_untiled(settings: SamplerSettings) -> None:
    noise, cond, uncond, x_center = conds(b=2, h=8, w=8)
    whole = restore_sample(Toy(), noise, cond, uncond, x_center, settings, generator=torch.Generator().manual_seed(4))
    tiled = tiled_restore_sample(
        Toy(), noise, cond, uncond, x_center, settings, generator=torch.Generator().manual_seed(4), tile_size=8,
        tile_stride=4,
    )  # fmt: skip
    close(tiled, whole)


@pytest.mark.parametrize("settings", tiled_cases(), ids=["edm", "dpmpp2m"])
def test_tiled_equals_untiled_for_a_pointwise_denoiser(settings: SamplerSettings) -> None:
    noise, cond, uncond, x_center = conds(b=1, h=15, w=22)
    whole = restore_sample(Toy(), noise, cond, uncond, x_center, settings, generator=torch.Generator().manual_seed(2))
    toy = Toy()
    tiled = tiled_restore_sample(
        toy, noise, cond, uncond, x_center, settings, generator=torch.Generator().manual_seed(2), tile_size=8,
        tile_stride=5,
    )  # fmt: skip
    close(tiled, whole)
    # 3 x 4 windows per step, each denoised at the tile size with its slice of the control latent
    assert len(toy.calls) == 12 * settings.num_steps
    assert all(c[0].shape[-2:] == (8, 8) and c[2]["control"].shape[-2:] == (8, 8) for c in toy.calls)
    torch.testing.assert_close(toy.calls[-1][2]["control"][:1], cond["control"][:, :, 7:15, 14:22])


def test_tiled_rejects_a_latent_smaller_than_the_tile() -> None:
    noise, cond, uncond, x_center = conds(h=6, w=20)
    with pytest.raises(ValueError, match="smaller than the tile"):
        tiled_restore_sample(Toy(), noise, cond, uncond, x_center, PRESETS["fidelity"], tile_size=8, tile_stride=4)


def test_gaussian_weights_shape_symmetry_and_peak() -> None:
    w = gaussian_weights(9, 6)  # width 9, height 6
    assert w.shape == (6, 9) and w.dtype == torch.float64
    assert bool((w > 0).all())
    torch.testing.assert_close(w, w.flip(1))  # columns: symmetric about (9 - 1) / 2 = 4
    torch.testing.assert_close(w[1:5], w[1:6].flip(0)[:4])  # rows: symmetric about 6 / 2 = 3 (official)
    assert divmod(int(w.argmax()), 9) == (3, 4)
    assert w[3, 4].item() == pytest.approx(1 / (2 * math.pi * 0.01))

    def g(i: float, mid: float, n: int) -> float:
        return math.exp(-((i - mid) ** 2) / n**2 / 0.02) / math.sqrt(2 * math.pi * 0.01)

    assert w[0, 7].item() == pytest.approx(g(0, 3, 6) * g(7, 4, 9))
    square = gaussian_weights(8, 8)
    assert square[4, 3].item() == square[4, 4].item() == square.max().item()


@pytest.mark.parametrize(("h", "w", "tile", "stride"), [(20, 20, 8, 6), (21, 30, 8, 6), (8, 8, 8, 4), (17, 9, 8, 8)])
def test_sliding_windows_cover_and_end_at_the_border(h: int, w: int, tile: int, stride: int) -> None:
    windows = sliding_windows(h, w, tile, stride)
    covered = torch.zeros(h, w, dtype=torch.int32)
    for top, bottom, left, right in windows:
        assert bottom - top == tile and right - left == tile
        assert top >= 0 and bottom <= h and left >= 0 and right <= w
        covered[top:bottom, left:right] += 1
    assert bool((covered > 0).all())
    assert max(b for _, b, _, _ in windows) == h and max(r for _, _, _, r in windows) == w
    tops = sorted({t for t, _, _, _ in windows})
    # evenly strided from 0, the last one flush with the border (possibly closer than a stride)
    assert tops[0] == 0 and tops[-1] == h - tile
    assert all(b - a == stride for a, b in pairwise(tops[:-1]))
    assert 0 < tops[-1] - tops[-2] <= stride if len(tops) > 1 else True
    assert windows == sorted(windows)  # row by row, left to right


def test_sliding_windows_examples_and_errors() -> None:
    assert sliding_windows(21, 8, 8, 6) == [(0, 8, 0, 8), (6, 14, 0, 8), (12, 20, 0, 8), (13, 21, 0, 8)]
    assert sliding_windows(8, 8, 8, 4) == [(0, 8, 0, 8)]
    for args in ((7, 20, 8, 4), (20, 20, 8, 9), (20, 20, 8, 0)):
        with pytest.raises(ValueError):
            sliding_windows(*args)


# -- settings -------------------------------------------------------------------------------------


def test_presets_validate_and_match_their_sources() -> None:
    assert {"quality", "fidelity", "cli", "lightning"} <= set(PRESETS)
    for preset in PRESETS.values():
        assert dataclasses.replace(preset) == preset  # re-runs __post_init__
    q, f, c, light = PRESETS["quality"], PRESETS["fidelity"], PRESETS["cli"], PRESETS["lightning"]
    assert (q.kind, q.num_steps, q.cfg_scale, q.cfg_scale_start, q.linear_cfg) == ("edm", 50, 7.5, 4.0, True)
    assert (q.s_churn, q.s_noise, q.control_scale, q.restore_cfg) == (5.0, 1.003, 1.0, -1.0)
    assert (f.cfg_scale, f.cfg_scale_start) == (4.0, 1.0)
    assert (c.s_noise, c.cfg_scale, c.cfg_scale_start, c.s_churn) == (1.01, 4.0, 1.0, 5.0)
    assert (light.kind, light.num_steps, light.cfg_scale, light.eta) == ("dpmpp2m", 8, 2.0, 1.0)


@pytest.mark.parametrize(
    "changes",
    [
        {"kind": "euler"},
        {"num_steps": 0},
        {"num_steps": 1001},
        {"num_steps": 2.5},
        {"num_steps": True},
        {"s_churn": -1.0},
        {"s_noise": float("nan")},
        {"cfg_scale": float("inf")},
        {"control_scale": -0.5},
        {"restore_cfg": float("inf")},
        {"s_tmin": 2.0, "s_tmax": 1.0},
        {"eta": -1.0},
        {"linear_cfg": "yes"},
        {"kind": "dpmpp2m", "s_churn": 5.0},
        {"kind": "dpmpp2m", "restore_cfg": 4.0},
        {"kind": "dpmpp2m", "linear_control_scale": True},
    ],
)
def test_invalid_settings_raise(changes: dict) -> None:
    with pytest.raises(ValueError):
        SamplerSettings(**changes)


def test_invalid_inputs_raise() -> None:
    noise, cond, uncond, _ = conds()
    with pytest.raises(ValueError, match="x_center"):
        restore_sample(Toy(), noise, cond, uncond, None, SamplerSettings(num_steps=2, restore_cfg=4.0))
    with pytest.raises(ValueError, match="same keys"):
        restore_sample(Toy(), noise, cond, {"control": cond["control"]}, None, SamplerSettings(num_steps=2))
