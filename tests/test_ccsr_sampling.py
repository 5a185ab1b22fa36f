"""CCSR schedules and samplers (v1 spaced truncated sampler, whole and tiled; v2 pipeline loop).

Expected timesteps are the ones of the official code (csslc/CCSR model/q_sampler.py; the CCSR-v2.0
pipeline); expected values are computed here from the textbook DDPM formulas in float64, never
with the code under test.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from sr_core.engines.ccsr.sampling import (
    CcsrV1Settings,
    CcsrV2Settings,
    ccsr_v1_sample,
    ccsr_v1_sample_tiled,
    ccsr_v2_sample,
)
from sr_core.engines.ccsr.schedule import (
    BUFFER_NAMES,
    CcsrV1Schedule,
    v1_call_timesteps,
    v1_plan,
    v2_alphas_cumprod,
    v2_timesteps,
)
from sr_core.engines.diffusion.tiles import gaussian_weights, sliding_windows

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"

#: the official 45-step respacing of 0..999 (space_timesteps(1000, "45")); note 499, not 500, at
#: index 22: the fractional stride is accumulated in float, so 22 * 999 / 44 = 499.5 arrives as 499.4999...
SPACED_45 = [
    0, 23, 45, 68, 91, 114, 136, 159, 182, 204, 227, 250, 272, 295, 318, 341, 363, 386, 409, 431, 454, 477, 499,
    522, 545, 568, 590, 613, 636, 658, 681, 704, 727, 749, 772, 795, 817, 840, 863, 885, 908, 931, 954, 976, 999,
]  # fmt: skip
#: the issue's facts: v1's 16 network calls with the default settings
V1_CALLS = [999, 658, 636, 613, 590, 568, 545, 522, 499, 477, 454, 431, 409, 386, 363, 341]

A, B, C = 0.1, 0.05, 0.3  # toy eps = A * x + B * c_latent + C * t / 1000 + cond["bias"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # another long test run shares the two cores
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# -- reference formulas ----------------------------------------------------------------------------


def ref_beta(t: int) -> float:
    """The v1 "linear" schedule: linear in sqrt(beta) from 0.00085 to 0.012 over 1000 steps."""
    lo, hi = math.sqrt(0.00085), math.sqrt(0.012)
    return (lo + (hi - lo) * t / 999) ** 2


def ref_alphabar(t: int) -> float:
    """prod_{j <= t} (1 - beta_j); 1 for t < 0."""
    out = 1.0
    for j in range(t + 1):
        out *= 1.0 - ref_beta(j)
    return out


def ref_v2_alphabar(t: int) -> float:
    # scaled_linear: the same curve (diffusers computes it in float32)
    return ref_alphabar(t)


class Recorder:
    """A position-independent toy eps that records its calls: (t, cond name, x, c_latent)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str, torch.Tensor, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        assert bool((t == t[0]).all())
        self.calls.append((int(t[0]), cond["name"], x.clone(), cond["c_latent"].clone()))
        return toy_eps(x, t, cond)

    @property
    def timesteps(self) -> list[int]:
        return [c[0] for c in self.calls]

    @property
    def names(self) -> list[str]:
        return [c[1] for c in self.calls]


def toy_eps(x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
    return A * x + B * cond["c_latent"] + C * t[:, None, None, None] / 1000 + cond["bias"]


def conds(h: int = 8, w: int = 8, b: int = 1, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    c_latent = torch.randn(b, 4, h, w, generator=g)
    cond = {"name": "cond", "c_latent": c_latent, "bias": 0.2, "txt": torch.ones(b, 2, 3)}
    uncond = {"name": "uncond", "c_latent": c_latent, "bias": -0.1, "txt": torch.zeros(b, 2, 3)}
    return cond, uncond


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- v1 timesteps ---------------------------------------------------------------------------------


def test_v1_call_timesteps_are_the_official_ones():
    assert v1_call_timesteps() == V1_CALLS
    assert v1_call_timesteps(45, 0.6667, 0.3333) == V1_CALLS
    plan = v1_plan(45, 0.6667, 0.3333)
    assert list(plan.timesteps) == SPACED_45
    assert plan.first_index == 44
    # the t = 999 x0 estimate is re-noised at spaced index 29 (t = 658), the loop runs 29 .. 15
    assert plan.renoise_index == 29 and SPACED_45[29] == 658
    assert plan.loop_indices == tuple(range(29, 14, -1))
    assert [SPACED_45[i] for i in plan.loop_indices] == V1_CALLS[1:]


def test_v1_renoise_index_and_loop_start_are_computed_separately():
    # official: renoise = round(44 * t_max) (float32 torch.round) but the loop starts at
    # round(45 * t_max) - 1 (Python round, half to even); at t_max = 0.5 they disagree (22 vs 21)
    plan = v1_plan(45, 0.5, 0.3333)
    assert plan.renoise_index == 22
    assert plan.loop_indices[0] == 21


def test_v1_sampler_calls_eps_at_the_official_timesteps():
    cond, uncond = conds()
    rec = Recorder()
    out = ccsr_v1_sample(rec, (1, 4, 8, 8), cond, uncond, CcsrV1Settings(), generator=gen())
    assert rec.timesteps == V1_CALLS
    assert rec.names == ["cond"] * 16  # cfg_scale 1: uncond never evaluated
    assert out.shape == (1, 4, 8, 8) and out.dtype == torch.float32


def test_v1_first_call_and_renoising_follow_the_formulas():
    cond, uncond = conds()
    rec = Recorder()
    ccsr_v1_sample(rec, (1, 4, 8, 8), cond, uncond, CcsrV1Settings(), generator=gen(11))

    # generator replay: x_T, the normal p_sample_tao draws and never uses, the re-noising noise
    g = gen(11)
    x_t = torch.randn(1, 4, 8, 8, generator=g).double()
    torch.randn(1, 4, 8, 8, generator=g)
    renoise = torch.randn(1, 4, 8, 8, generator=g).double()

    t0, _, x_first, _ = rec.calls[0]
    assert t0 == 999
    close(x_first.double(), x_t)
    eps = toy_eps(x_t, torch.tensor([999]), cond).double()
    a999 = ref_alphabar(999)
    x0 = x_t / math.sqrt(a999) - math.sqrt(1 / a999 - 1) * eps
    a658 = ref_alphabar(658)  # spaced alphabar at index 29 equals the original one at 658
    expected = math.sqrt(a658) * x0 + math.sqrt(1 - a658) * renoise
    close(rec.calls[1][2].double(), expected, 1e-4)


def test_v1_posterior_step_by_hand():
    cond, uncond = conds()
    rec = Recorder()
    out = ccsr_v1_sample(rec, (1, 4, 8, 8), cond, uncond, CcsrV1Settings(), generator=gen(5))

    # draws: x_T, unused, re-noise, then one per posterior step (index 29 first)
    g = gen(5)
    for _ in range(3):
        torch.randn(1, 4, 8, 8, generator=g)
    z = torch.randn(1, 4, 8, 8, generator=g).double()

    # the posterior step at spaced index 29 (t = 658), whose previous spaced timestep is 636
    x = rec.calls[1][2].double()
    a_t, a_prev = ref_alphabar(658), ref_alphabar(636)
    beta = 1 - a_t / a_prev  # the *spaced* schedule's beta
    eps = toy_eps(x, torch.tensor([658]), cond)
    x0 = math.sqrt(1 / a_t) * x - math.sqrt(1 / a_t - 1) * eps
    mean = beta * math.sqrt(a_prev) / (1 - a_t) * x0 + (1 - a_prev) * math.sqrt(1 - beta) / (1 - a_t) * x
    variance = beta * (1 - a_prev) / (1 - a_t)
    close(rec.calls[2][2].double(), mean + math.sqrt(variance) * z, 1e-4)
    assert rec.calls[2][0] == 636

    # the output is the x0 estimate of the last call (t = 341), not a posterior sample
    x_last = rec.calls[-1][2].double()
    a = ref_alphabar(341)
    expected = math.sqrt(1 / a) * x_last - math.sqrt(1 / a - 1) * toy_eps(x_last, torch.tensor([341]), cond)
    close(out.double(), expected, 1e-4)


def test_v1_cfg_combines_cond_and_uncond():
    cond, uncond = conds()
    scale = 3.0
    rec = Recorder()
    guided = ccsr_v1_sample(rec, (1, 4, 8, 8), cond, uncond, CcsrV1Settings(cfg_scale=scale), generator=gen(2))
    # every call is guided, cond first then uncond (official predict_noise order)
    assert rec.timesteps == [t for t in V1_CALLS for _ in range(2)]
    assert rec.names == ["cond", "uncond"] * 16
    # the toy's cond dependence is the additive bias, so uncond + s * (cond - uncond) is the
    # unguided sampler with bias_u + s * (bias_c - bias_u)
    mixed = {**cond, "bias": uncond["bias"] + scale * (cond["bias"] - uncond["bias"])}
    plain = ccsr_v1_sample(toy_eps, (1, 4, 8, 8), mixed, None, CcsrV1Settings(), generator=gen(2))
    close(guided, plain)


def test_v1_progress_counts_the_calls():
    cond, _ = conds()
    seen: list[tuple[int, int]] = []
    ccsr_v1_sample(
        toy_eps, (1, 4, 8, 8), cond, None, CcsrV1Settings(), generator=gen(), progress=lambda d, n: seen.append((d, n))
    )
    assert seen == [(i, 16) for i in range(1, 17)]


def test_v1_determinism():
    cond, uncond = conds()
    settings = CcsrV1Settings(cfg_scale=2.0)
    a = ccsr_v1_sample(toy_eps, (2, 4, 8, 8), cond, uncond, settings, generator=gen(9))
    b = ccsr_v1_sample(toy_eps, (2, 4, 8, 8), cond, uncond, settings, generator=gen(9))
    c = ccsr_v1_sample(toy_eps, (2, 4, 8, 8), cond, uncond, settings, generator=gen(10))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # passing x_T drawn from the generator continues the same stream
    g = gen(9)
    x_t = torch.randn(2, 4, 8, 8, generator=g)
    assert torch.equal(ccsr_v1_sample(toy_eps, x_t, cond, uncond, settings, generator=g), a)


# -- v1 tiled ---------------------------------------------------------------------------------------


def test_v1_tiled_one_tile_equals_untiled():
    cond, uncond = conds(8, 8)
    settings = CcsrV1Settings(cfg_scale=2.0)
    untiled = ccsr_v1_sample(toy_eps, (1, 4, 8, 8), cond, uncond, settings, generator=gen(4))
    for tile, stride in ((8, 4), (16, 8)):  # exactly one tile, and smaller than one
        tiled = ccsr_v1_sample_tiled(
            toy_eps, (1, 4, 8, 8), cond, uncond, settings, generator=gen(4), tile_size=tile, tile_stride=stride
        )
        assert torch.equal(tiled, untiled)


def test_v1_tiled_multi_tile_equals_untiled_for_a_position_independent_eps():
    h, w = 12, 20  # 8/4 tiles: rows 0, 4 (flush); columns 0, 4, 8, 12
    assert len(sliding_windows(h, w, 8, 4)) == 8
    cond, uncond = conds(h, w)
    settings = CcsrV1Settings(cfg_scale=1.5)
    untiled = ccsr_v1_sample(toy_eps, (1, 4, h, w), cond, uncond, settings, generator=gen(6))
    rec = Recorder()
    tiled = ccsr_v1_sample_tiled(
        rec, (1, 4, h, w), cond, uncond, settings, generator=gen(6), tile_size=8, tile_stride=4
    )
    close(tiled, untiled)
    # every tile call sees its window of the latent and of c_latent
    windows = sliding_windows(h, w, 8, 4)
    assert len(rec.calls) == 16 * 2 * len(windows)
    for k, (_, _, x, c_latent) in enumerate(rec.calls[: 2 * len(windows)]):
        hi, hi_end, wi, wi_end = windows[k // 2]
        assert torch.equal(c_latent, cond["c_latent"][..., hi:hi_end, wi:wi_end])
        assert x.shape[-2:] == (8, 8)


def test_v1_tiled_blends_tile_predictions_with_gaussian_weights():
    h, w, tile, stride = 12, 14, 8, 4
    windows = sliding_windows(h, w, tile, stride)
    # c_latent holds each pixel's position, so a tile can tell where it is
    pos = (torch.arange(h)[:, None] * 100 + torch.arange(w)[None, :]).float().expand(1, 4, h, w).contiguous()
    cond = {"name": "cond", "c_latent": pos, "bias": 0.0}

    def tile_constant(x, t, c):  # one value per tile, from its top-left corner
        corner = c["c_latent"][0, 0, 0, 0]
        return torch.full_like(x, float(corner) / 1000)

    # the expected blended prediction: sum(w * value) / sum(w) with the official Gaussian weights
    weights = gaussian_weights(tile, tile)
    num = torch.zeros(h, w, dtype=torch.float64)
    den = torch.zeros(h, w, dtype=torch.float64)
    for hi, hi_end, wi, wi_end in windows:
        corner = float(hi * 100 + wi)
        num[hi:hi_end, wi:wi_end] += corner / 1000 * weights
        den[hi:hi_end, wi:wi_end] += weights
    field = (num / den).float().expand(1, 4, h, w)

    tiled = ccsr_v1_sample_tiled(
        tile_constant, (1, 4, h, w), cond, None, CcsrV1Settings(), generator=gen(8), tile_size=tile, tile_stride=stride
    )
    untiled = ccsr_v1_sample(
        lambda x, t, c: field.clone(), (1, 4, h, w), cond, None, CcsrV1Settings(), generator=gen(8)
    )
    close(tiled, untiled)


def test_v1_tiled_rejects_a_latent_thinner_than_the_tile():
    cond, _ = conds(6, 20)
    with pytest.raises(ValueError, match="smaller than the tile"):
        ccsr_v1_sample_tiled(
            toy_eps, (1, 4, 6, 20), cond, None, CcsrV1Settings(), generator=gen(), tile_size=8, tile_stride=4
        )
    cond, _ = conds(8, 8)
    bad = {**cond, "c_latent": cond["c_latent"][..., :4]}
    with pytest.raises(ValueError, match="c_latent"):
        ccsr_v1_sample_tiled(
            toy_eps, (1, 4, 12, 12), bad, None, CcsrV1Settings(), generator=gen(), tile_size=8, tile_stride=4
        )


# -- v1 schedule buffers ------------------------------------------------------------------------------


def official_top_level() -> dict[str, list[int]]:
    rows = (REFERENCE / "ccsr_v1_official_keys.tsv").read_text().splitlines()
    out = {}
    for row in rows:
        name, shape = row.split("\t")
        if "." not in name:
            out[name] = [int(s) for s in shape.strip("[]").split(",")]
    return out


def test_buffer_names_and_shapes_match_the_official_checkpoint():
    official = official_top_level()
    schedule = CcsrV1Schedule()
    state = schedule.state_dict()
    assert set(state) == set(official) == set(BUFFER_NAMES)
    assert [name for name, _ in schedule.named_buffers()] == list(BUFFER_NAMES)
    assert not list(schedule.parameters())
    for name, tensor in state.items():
        assert list(tensor.shape) == official[name], name
        assert tensor.dtype == torch.float32, name
    # a checkpoint holding exactly these names loads strictly
    CcsrV1Schedule().load_state_dict({k: v.clone() for k, v in state.items()}, strict=True)


def test_buffer_values_follow_the_formulas():
    s = CcsrV1Schedule()

    def check(name: str, index: int, expected: float, tol: float = 2e-6) -> None:
        got = float(getattr(s, name)[index])
        assert got == pytest.approx(expected, rel=tol, abs=1e-12), (name, index, got, expected)

    for t in (0, 1, 500, 999):
        beta, abar, abar_prev = ref_beta(t), ref_alphabar(t), ref_alphabar(t - 1)
        check("betas", t, beta)
        check("alphas_cumprod", t, abar)
        check("alphas_cumprod_prev", t, abar_prev)
        check("sqrt_alphas_cumprod", t, math.sqrt(abar))
        check("sqrt_one_minus_alphas_cumprod", t, math.sqrt(1 - abar))
        check("log_one_minus_alphas_cumprod", t, math.log(1 - abar))
        check("sqrt_recip_alphas_cumprod", t, math.sqrt(1 / abar))
        check("sqrt_recipm1_alphas_cumprod", t, math.sqrt(1 / abar - 1))
        variance = beta * (1 - abar_prev) / (1 - abar)
        check("posterior_variance", t, variance)
        check("posterior_log_variance_clipped", t, math.log(max(variance, 1e-20)))
        check("posterior_mean_coef1", t, beta * math.sqrt(abar_prev) / (1 - abar))
        check("posterior_mean_coef2", t, (1 - abar_prev) * math.sqrt(1 - beta) / (1 - abar))
    assert float(s.posterior_log_variance_clipped[0]) == pytest.approx(math.log(1e-20))

    # *_inter: the chain respaced to 45 steps (the kept timesteps' alphabar, telescoped betas),
    # computed by the official code in float32 from the float32 alphas_cumprod
    for k in (0, 1, 22, 29, 44):
        t, t_prev = SPACED_45[k], (SPACED_45[k - 1] if k else -1)
        abar, abar_prev = ref_alphabar(t), ref_alphabar(t_prev)
        beta = 1 - abar / abar_prev
        check("betas_inter", k, beta, 1e-4)
        check("alphas_cumprod_inter", k, abar, 1e-5)
        check("alphas_cumprod_prev_inter", k, abar_prev, 1e-5)
        check("sqrt_recipm1_alphas_cumprod_inter", k, math.sqrt(1 / abar - 1), 1e-4)
        variance = beta * (1 - abar_prev) / (1 - abar)
        check("posterior_variance_inter", k, variance, 1e-4)
        check("posterior_mean_coef1_inter", k, beta * math.sqrt(abar_prev) / (1 - abar), 1e-4)
        check("posterior_mean_coef2_inter", k, (1 - abar_prev) * math.sqrt(1 - beta) / (1 - abar), 1e-4)
    assert torch.equal(s.logvar, torch.zeros(1000))


# -- v2 -------------------------------------------------------------------------------------------------


def test_v2_timesteps():
    assert v2_timesteps(6) == (831, 665, 499, 333, 167, 1)
    assert v2_timesteps(1) == (1,)
    multi = CcsrV2Settings.MULTI_STEP
    assert (multi.num_inference_steps, multi.t_max, multi.t_min, multi.guidance_scale) == (6, 0.6667, 0.5, 4.5)
    assert multi.plan.renoise_timestep == 499 and multi.plan.loop_timesteps == (499,)
    one = CcsrV2Settings.ONE_STEP
    assert (one.num_inference_steps, one.t_min, one.guidance_scale) == (1, 0.0, 1.0)
    assert one.plan.loop_timesteps == ()


def test_v2_multi_step_calls():
    h = w = 8
    cond, uncond = conds(h, w)
    lq = torch.randn(1, 4, h, w, generator=gen(1))
    rec = Recorder()
    ccsr_v2_sample(rec, lq, cond, uncond, CcsrV2Settings.MULTI_STEP, generator=gen(2))
    # one unguided call at 999 (given uncond: the official step takes the negative half of the
    # prompt batch), then one guided step at 499 (uncond and cond branches)
    assert [(c[0], c[1]) for c in rec.calls] == [(999, "uncond"), (499, "uncond"), (499, "cond")]


def test_v2_one_step_calls_and_output():
    cond, uncond = conds()
    lq = torch.randn(1, 4, 8, 8, generator=gen(1))
    rec = Recorder()
    out = ccsr_v2_sample(rec, lq, cond, uncond, CcsrV2Settings.ONE_STEP, generator=gen(3))
    assert [(c[0], c[1]) for c in rec.calls] == [(999, "cond")]
    # x = add_noise(lq, noise, 999); the output is its x0 estimate
    noise = torch.randn(1, 4, 8, 8, generator=gen(3)).double()
    a = ref_v2_alphabar(999)
    x = math.sqrt(a) * lq.double() + math.sqrt(1 - a) * noise
    close(rec.calls[0][2].double(), x)
    x0 = (x - math.sqrt(1 - a) * toy_eps(x, torch.tensor([999]), cond)) / math.sqrt(a)
    close(out.double(), x0, 1e-4)


def test_v2_guidance_combination_and_determinism():
    cond, uncond = conds()
    lq = torch.randn(1, 4, 8, 8, generator=gen(1))
    guided = ccsr_v2_sample(toy_eps, lq, cond, uncond, CcsrV2Settings.MULTI_STEP, generator=gen(4))
    assert torch.equal(guided, ccsr_v2_sample(toy_eps, lq, cond, uncond, CcsrV2Settings.MULTI_STEP, generator=gen(4)))
    assert not torch.allclose(
        guided, ccsr_v2_sample(toy_eps, lq, cond, uncond, CcsrV2Settings.MULTI_STEP, generator=gen(5))
    )
    # the first call is uncond's; the step at 499 uses uncond + 4.5 * (cond - uncond): with the
    # toy, that is an unguided run whose first call sees uncond and the rest the mixed bias
    mixed_bias = uncond["bias"] + 4.5 * (cond["bias"] - uncond["bias"])

    def staged(x, t, c):
        bias = uncond["bias"] if int(t[0]) == 999 else mixed_bias
        return toy_eps(x, t, {**c, "bias": bias})

    plain = dataclasses.replace(CcsrV2Settings.MULTI_STEP, guidance_scale=1.0)
    close(guided, ccsr_v2_sample(staged, lq, cond, None, plain, generator=gen(4)))


def test_v2_tiled_equals_untiled():
    h, w = 12, 20
    cond, uncond = conds(h, w)
    lq = torch.randn(1, 4, h, w, generator=gen(1))
    settings = CcsrV2Settings.MULTI_STEP
    untiled = ccsr_v2_sample(toy_eps, lq, cond, uncond, settings, generator=gen(6))
    tiled = ccsr_v2_sample(toy_eps, lq, cond, uncond, settings, generator=gen(6), tile_size=8, tile_stride=4)
    close(tiled, untiled)
    whole = ccsr_v2_sample(toy_eps, lq, cond, uncond, settings, generator=gen(6), tile_size=32, tile_stride=16)
    assert torch.equal(whole, untiled)


#: stabilityai/stable-diffusion-2-1-base scheduler/scheduler_config.json, as the v2 test script loads it
SD21_BASE_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}


def test_v2_matches_the_pipeline_run_with_diffusers_ddpm_scheduler():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler.from_config(SD21_BASE_SCHEDULER)
    assert torch.equal(v2_alphas_cumprod(), sched.alphas_cumprod)
    for n in (1, 4, 6):
        sched.set_timesteps(n)
        assert tuple(sched.timesteps.tolist()) == v2_timesteps(n)

    cond, uncond = conds()
    lq = torch.randn(1, 4, 8, 8, generator=gen(1))
    for settings in (
        CcsrV2Settings.MULTI_STEP,
        dataclasses.replace(CcsrV2Settings.MULTI_STEP, t_min=0.0),  # runs to the end, returns the sample
        dataclasses.replace(CcsrV2Settings.MULTI_STEP, num_inference_steps=10, t_min=0.2, guidance_scale=1.0),
    ):
        got = ccsr_v2_sample(toy_eps, lq, cond, uncond, settings, generator=gen(8))

        # the official __call__, step by step, with diffusers' scheduler doing the DDPM maths
        n, guided = settings.num_inference_steps, settings.guidance_scale > 1
        sched.set_timesteps(n)
        timesteps = sched.timesteps
        g = gen(8)
        latents = torch.randn(1, 4, 8, 8, generator=g)
        latents = sched.add_noise(lq, latents, torch.tensor([999]))
        t_tao = timesteps[-round(n * settings.t_max)]
        first = uncond if guided else cond
        eps = toy_eps(latents, torch.tensor([999]), first)
        a = sched.alphas_cumprod[999]
        x0 = (latents - (1 - a) ** 0.5 * eps) / a**0.5
        latents = sched.add_noise(x0, torch.randn(1, 4, 8, 8, generator=g), t_tao)
        timesteps = timesteps[-round(n * settings.t_max) :]
        if settings.t_min > 0:
            timesteps = timesteps[: -round(n * settings.t_min)]
        for t in timesteps:
            t_in = t.reshape(1)
            if guided:
                e_u, e_c = toy_eps(latents, t_in, uncond), toy_eps(latents, t_in, cond)
                eps = e_u + settings.guidance_scale * (e_c - e_u)
            else:
                eps = toy_eps(latents, t_in, cond)
            old = latents
            latents = sched.step(eps, t, latents, generator=g).prev_sample
        if settings.t_min > 0:
            a = sched.alphas_cumprod[t]
            latents = (old - (1 - a) ** 0.5 * eps) / a**0.5
        assert torch.equal(got, latents)  # same operations in the same order


# -- settings validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"steps": 1},
        {"steps": 45.0},
        {"t_min": 0.0},
        {"t_min": 0.01},  # round(45 * 0.01) = 0: the official loop would be empty
        {"t_max": 0.3, "t_min": 0.3333},
        {"t_max": 1.2},
        {"cfg_scale": float("nan")},
    ],
)
def test_v1_settings_validation(kwargs):
    with pytest.raises(ValueError):
        CcsrV1Settings(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_inference_steps": 0},
        {"t_max": 1.0},
        {"num_inference_steps": 1, "t_min": 0.5},
        {"t_min": 0.05},  # round(6 * 0.05) = 0 with t_min > 0: empty official loop
        {"t_min": 0.7},
        {"start_point": "hq"},
        {"start_steps": 1000},
    ],
)
def test_v2_settings_validation(kwargs):
    with pytest.raises(ValueError):
        CcsrV2Settings(**kwargs)


def test_guidance_needs_uncond():
    cond, _ = conds()
    with pytest.raises(ValueError, match="uncond"):
        ccsr_v1_sample(toy_eps, (1, 4, 8, 8), cond, None, CcsrV1Settings(cfg_scale=2.0), generator=gen())
    with pytest.raises(ValueError, match="uncond"):
        ccsr_v2_sample(toy_eps, torch.zeros(1, 4, 8, 8), cond, None, CcsrV2Settings.MULTI_STEP, generator=gen())
