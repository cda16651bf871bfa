"""Flow models (issue #17): the flow denoiser, the three rules on flow latents, distilled guidance g₁/g₂."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import guided_args

from zigzag_kdiff import (
    CallCounter,
    CFGDenoiser,
    FlowDenoiser,
    is_flow,
    sample_zigzag_ddim,
    sample_zigzag_dpmpp_2m,
    sample_zigzag_euler,
)
from zigzag_kdiff.bench.mixture import UNCONDITIONAL, DistilledDenoiser, FlowMixtureVelocity, GaussianMixture

SAMPLERS = [sample_zigzag_euler, sample_zigzag_ddim, sample_zigzag_dpmpp_2m]


@pytest.fixture
def mixture() -> GaussianMixture:
    return GaussianMixture.random(num_classes=2, components_per_class=2, dim=2, separation=0.5, variance=0.5, seed=0)


def flow_sigmas(steps: int, sigma_max: float = 1.0, sigma_min: float = 0.01, shift: float = 1.0) -> torch.Tensor:
    """linspace(sigma_max, sigma_min) with SD3's static shift σ' = shift·σ/(1 + (shift − 1)·σ), then 0."""
    sigmas = torch.linspace(sigma_max, sigma_min, steps, dtype=torch.float64)
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def flow_noise(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_flow_denoiser_is_the_mixture_in_the_ve_view(mixture):
    """D_flow(x; σ) = D_VE(x/(1 − σ); σ/(1 − σ)); at σ = 1 the limit E[x₀ | c]; timestep = σ·timestep_scale."""
    x = flow_noise(16)
    labels = torch.arange(16) % 2
    for scale in (1000.0, 1.0):
        denoiser = FlowDenoiser(FlowMixtureVelocity(mixture, timestep_scale=scale), timestep_scale=scale)
        for level in (0.02, 0.3, 0.9):
            sigma = torch.full((16,), level, dtype=torch.float64)
            expected = mixture(x / (1 - level), sigma / (1 - level), labels)
            torch.testing.assert_close(denoiser(x, sigma, cond=labels), expected, rtol=0, atol=1e-12)
        at_one = denoiser(x, torch.ones(16, dtype=torch.float64), cond=labels)
        torch.testing.assert_close(at_one, mixture.prior_mean(labels, 16), rtol=0, atol=1e-12)
        far = mixture(x / 1e-6, torch.full((16,), (1 - 1e-6) / 1e-6, dtype=torch.float64), labels)
        torch.testing.assert_close(at_one, far, rtol=0, atol=1e-5)  # the limit is continuous


def test_flow_denoiser_passes_timestep_and_keywords():
    seen = {}

    def velocity(x, timestep, **kwargs):
        seen.update(timestep=timestep, **kwargs)
        return torch.ones_like(x)

    class Velocity(torch.nn.Module):
        def forward(self, x, timestep, **kwargs):
            return velocity(x, timestep, **kwargs)

    denoiser = FlowDenoiser(Velocity(), timestep_scale=1000.0)
    x = torch.zeros(2, 3, 4, 4)
    out = denoiser(x, torch.tensor([0.5, 0.25]), guidance=3.5, encoder_hidden_states="c")
    assert torch.equal(seen["timestep"], torch.tensor([500.0, 250.0]))
    assert seen["guidance"] == 3.5 and seen["encoder_hidden_states"] == "c"
    assert torch.equal(out[0], torch.full((3, 4, 4), -0.5)) and torch.equal(out[1], torch.full((3, 4, 4), -0.25))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"timestep_scale": 0.0}, "timestep_scale"),
        ({"timestep_scale": float("nan")}, "timestep_scale"),
        ({"sigma_max": 1.5}, "sigma_max <= 1"),
        ({"sigma_min": 0.5, "sigma_max": 0.5}, "sigma_min < sigma_max"),
    ],
)
def test_flow_denoiser_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FlowDenoiser(torch.nn.Identity(), **kwargs)


def test_is_flow_walks_inner_models(mixture):
    flow = FlowDenoiser(FlowMixtureVelocity(mixture))
    assert is_flow(flow) and is_flow(CFGDenoiser(CallCounter(flow))) and is_flow(CFGDenoiser(DistilledDenoiser(flow)))
    assert not is_flow(CFGDenoiser(mixture)) and not is_flow(mixture) and not is_flow(None)


# --- the rules with zigzag_steps = 0 ---------------------------------------------------------------


def test_flow_euler_and_ddim_at_lambda_zero_are_k_diffusion_sample_euler(mixture):
    """Euler and DDIM rules, λ = 0, on flow latents: k-diffusion's ``sample_euler``, bit for bit."""
    import k_diffusion

    model = CFGDenoiser(FlowDenoiser(FlowMixtureVelocity(mixture)))
    sigmas, x = flow_sigmas(12, shift=3.0), flow_noise(32)
    args = guided_args(32, 4.0)
    expected = k_diffusion.sampling.sample_euler(model, x, sigmas, args, disable=True)
    for sampler in (sample_zigzag_euler, sample_zigzag_ddim):
        assert torch.equal(sampler(model, x, sigmas, args, disable=True, zigzag_steps=0), expected)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_flow_dpmpp_2m_at_lambda_zero_is_k_diffusion_on_the_ve_view(mixture, dtype, tolerance):
    """DPM++ 2M, λ = 0, flow λ = log((1 − σ)/σ): k-diffusion's ``sample_dpmpp_2m`` on the VE view
    ``x/(1 − σ)``, ``σ/(1 − σ)`` (σ_0 < 1, where the view exists), to rounding: 1e-12 in float64, 1e-6
    relative in float32 (the two compute the same update in different orders)."""
    import k_diffusion

    flow_model = CFGDenoiser(FlowDenoiser(FlowMixtureVelocity(mixture)))
    model_ve = CFGDenoiser(mixture)
    sigmas = flow_sigmas(10, sigma_max=0.98, shift=3.0).to(dtype)
    x = (flow_noise(32) * sigmas[0]).to(dtype)
    args = guided_args(32, 4.0)
    flow = sample_zigzag_dpmpp_2m(flow_model, x, sigmas, args, disable=True, zigzag_steps=0)
    sigmas_ve = torch.cat([sigmas[:-1] / (1 - sigmas[:-1]), sigmas.new_zeros([1])])
    ve = k_diffusion.sampling.sample_dpmpp_2m(model_ve, x / (1 - sigmas[0]), sigmas_ve, args, disable=True)
    torch.testing.assert_close(flow, ve, rtol=tolerance, atol=tolerance)
    # the VE formula (λ = −log σ) on the same flow sigmas is another, wrong, integrator
    wrong = sample_zigzag_dpmpp_2m(flow_model, x, sigmas, args, disable=True, zigzag_steps=0, flow=False)
    assert float((wrong - ve).abs().max()) > 1e3 * tolerance


def test_flow_dpmpp_2m_from_sigma_one_starts_with_the_euler_step(mixture):
    """From σ_0 = 1 (λ = −∞, the VE view's limit) the first step is the Euler step, finite everywhere."""
    model = CFGDenoiser(FlowDenoiser(FlowMixtureVelocity(mixture)))
    sigmas, x = flow_sigmas(8), flow_noise(16)
    args = guided_args(16, 3.0)
    one = sigmas[:2]
    torch.testing.assert_close(
        sample_zigzag_dpmpp_2m(model, x, one, args, disable=True, zigzag_steps=0),
        sample_zigzag_euler(model, x, one, args, disable=True, zigzag_steps=0),
        rtol=0,
        atol=1e-14,
    )
    out = sample_zigzag_dpmpp_2m(model, x, sigmas, args, disable=True)
    assert bool(torch.isfinite(out).all())


def test_flow_ddim_inversion_is_the_model_at_sigma_i_without_rescaling(mixture):
    """One zigzag DDIM step on flow: x̃ = x + (σ_i − σ_{i+1})·(x − D(x; σ_i))/σ_i at γ₂, then Euler at γ₁."""
    flow = FlowDenoiser(FlowMixtureVelocity(mixture))
    model = CFGDenoiser(flow)
    sigmas = torch.tensor([0.8, 0.5, 0.2], dtype=torch.float64)
    x = flow_noise(8) * 0.8
    args = guided_args(8, 3.0)

    def d(latent, level, scale):
        return model(latent, torch.full((8,), level, dtype=torch.float64), **{**args, "cond_scale": scale})

    x1 = x + (0.5 - 0.8) * (x - d(x, 0.8, 3.0)) / 0.8  # Φ at γ₁: the Euler (flow DDIM) step
    inverted = x1 + (0.8 - 0.5) * (x1 - d(x1, 0.8, 0.0)) / 0.8  # Ψ at γ₂: model at σ_i on the level-σ_{i+1} latent
    again = inverted + (0.5 - 0.8) * (inverted - d(inverted, 0.8, 3.0)) / 0.8
    expected = again + (0.2 - 0.5) * (again - d(again, 0.5, 3.0)) / 0.5  # last step: plain
    out = sample_zigzag_ddim(model, x, sigmas, args, disable=True, inversion_scale=0.0, zigzag_steps=1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-14)


def test_released_ddim_update_is_refused_on_flow(mixture):
    counter = CallCounter(FlowDenoiser(FlowMixtureVelocity(mixture)))
    with pytest.raises(ValueError, match="inversion_update='released'.*flow"):
        sample_zigzag_ddim(
            CFGDenoiser(counter), flow_noise(4), flow_sigmas(6), guided_args(4, 3.0), inversion_update="released"
        )
    assert counter.calls == 0


# --- distilled guidance ------------------------------------------------------------------------------


def distilled_args(batch: int, guidance: float) -> dict:
    labels = torch.zeros(batch, dtype=torch.long)
    return {"cond": labels, "cond_scale": 1.0, "guidance": guidance}


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("g1,g2", [(3.5, 1.5), (4.0, 0.0), (2.5, 2.5)])
def test_distilled_guidance_is_true_cfg_z_sampling_exactly(mixture, sampler, g1, g2):
    """D_g = D_u + g·(D_c − D_u) as one call: distilled (g₁, g₂) with true CFG off (cond_scale =
    inversion_scale = 1) equals true-CFG Z-Sampling at (γ₁, γ₂) = (g₁, g₂), bit for bit, every rule;
    one call of one row per sample (per latent row) for every denoiser call."""
    flow = FlowDenoiser(FlowMixtureVelocity(mixture))
    sigmas, x = flow_sigmas(8, shift=3.0), flow_noise(16)
    true_cfg = sampler(CFGDenoiser(flow), x, sigmas, guided_args(16, g1), disable=True, inversion_scale=g2)
    counter = CallCounter(DistilledDenoiser(flow))
    distilled = sampler(
        CFGDenoiser(counter),
        x,
        sigmas,
        distilled_args(16, g1),
        disable=True,
        inversion_scale=1.0,
        inversion_guidance=g2,
    )
    assert torch.equal(distilled, true_cfg)
    calls = 8 + 2 * 7  # T + 2λ, λ = T − 1
    assert (counter.calls, counter.rows) == (calls, 16 * calls)


def test_inversion_guidance_reaches_only_the_inversion_calls(mixture):
    flow = FlowDenoiser(FlowMixtureVelocity(mixture))
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x, sigma, cond, guidance):
            seen.append(guidance)
            return DistilledDenoiser(flow)(x, sigma, cond, guidance)

    sample_zigzag_euler(
        CFGDenoiser(Recorder()),
        flow_noise(4),
        flow_sigmas(4),
        distilled_args(4, 3.5),
        disable=True,
        inversion_scale=1.0,
        inversion_guidance=1.0,
    )
    assert seen == [3.5, 1.0, 3.5] * 3 + [3.5]


def test_inversion_guidance_none_keeps_the_callers_guidance_and_hooks_without_the_keyword(mixture):
    """Without inversion_guidance a CallAtScale hook of the old protocol (no ``guidance``) still works."""
    model = CFGDenoiser(DistilledDenoiser(FlowDenoiser(FlowMixtureVelocity(mixture))))
    guidances = []

    def old_hook(model, x, sigma, extra_args, scale):
        guidances.append(extra_args["guidance"])
        return model(x, sigma, **{**extra_args, "cond_scale": scale})

    sample_zigzag_euler(
        model,
        flow_noise(4),
        flow_sigmas(4),
        distilled_args(4, 3.5),
        disable=True,
        inversion_scale=1.0,
        call_at_scale=old_hook,
    )
    assert guidances == [3.5] * 3

    def new_hook(model, x, sigma, extra_args, scale, guidance=None):
        guidances.append(guidance)
        return model(x, sigma, **{**extra_args, "cond_scale": scale, "guidance": guidance})

    guidances.clear()
    sample_zigzag_euler(
        model,
        flow_noise(4),
        flow_sigmas(4),
        {"cond": torch.zeros(4, dtype=torch.long), "guidance": 3.5},
        disable=True,
        inversion_scale=1.0,
        inversion_guidance=2.0,
        call_at_scale=new_hook,
        cond_scale=1.0,
        guidance=3.5,
    )
    assert guidances == [2.0] * 3


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(
    "options,args,match",
    [
        ({"inversion_guidance": 4.0}, {"guidance": 3.5}, r"inversion_guidance \(g₂\) must be <= .* g₁ = 3.5"),
        ({"inversion_guidance": float("nan")}, {"guidance": 3.5}, "inversion_guidance must be a finite number"),
        ({"inversion_guidance": "a"}, {"guidance": 3.5}, "inversion_guidance must be a finite number"),
        ({}, {"guidance": float("inf")}, "guidance must be a finite number"),
        ({"inversion_guidance": 1.0}, {}, "inversion_guidance .* needs .* 'guidance'"),
        ({"inversion_guidance": 4.0, "guidance": 3.0}, {"guidance": 5.0}, "g₁ = 3"),
        ({"flow": "yes"}, {"guidance": 3.5}, "flow must be True, False or None"),
    ],
)
def test_bad_distilled_guidance_raises_before_any_model_call(mixture, sampler, options, args, match):
    counter = CallCounter(DistilledDenoiser(FlowDenoiser(FlowMixtureVelocity(mixture))))
    extra = {"cond": torch.zeros(4, dtype=torch.long), "cond_scale": 1.0, **args}
    with pytest.raises(ValueError, match=match):
        sampler(
            CFGDenoiser(counter), flow_noise(4), flow_sigmas(6), extra, disable=True, inversion_scale=1.0, **options
        )
    assert counter.calls == 0


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_flow_sigmas_above_one_are_refused(mixture, sampler):
    counter = CallCounter(FlowDenoiser(FlowMixtureVelocity(mixture)))
    sigmas = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"sigmas of a flow latent must lie in \[0, 1\]"):
        sampler(CFGDenoiser(counter), flow_noise(4), sigmas, guided_args(4, 3.0), disable=True)
    assert counter.calls == 0
    sampler(CFGDenoiser(counter), flow_noise(4), sigmas, guided_args(4, 3.0), disable=True, flow=False, zigzag_steps=0)
    assert counter.calls == 2  # flow=False: the caller says it is a VE latent


def test_flow_true_cfg_rows_per_step(mixture):
    """True CFG on a flow model (SD3): 2 rows per guided call, 1 per inversion at γ₂ = 0; T + 2λ calls."""
    counter = CallCounter(FlowDenoiser(FlowMixtureVelocity(mixture)))
    sample_zigzag_dpmpp_2m(CFGDenoiser(counter), flow_noise(4), flow_sigmas(6), guided_args(4, 4.0), disable=True)
    assert counter.calls == 6 + 2 * 5
    assert counter.rows == 4 * (2 * (6 + 5) + 5)


def test_uncond_label_selects_the_unconditional_branch(mixture):
    """The distilled denoiser at g = 0 is the unconditional flow denoiser."""
    flow = FlowDenoiser(FlowMixtureVelocity(mixture))
    x, sigma = flow_noise(4), torch.full((4,), 0.5, dtype=torch.float64)
    uncond = flow(x, sigma, cond=torch.full((4,), UNCONDITIONAL))
    torch.testing.assert_close(DistilledDenoiser(flow)(x, sigma, torch.zeros(4, dtype=torch.long), 0.0), uncond)


# --- convergence on flow sigmas (``bench convergence --flow``) ----------------------------------------


def test_flow_dpmpp_2m_is_second_order_on_flow_sigmas():
    """Plain DPM++ 2M with the flow λ = log((1 − σ)/σ), exact flow GMM (d = 2): order >= 1.8 per doubling on
    linspace(1, 0.001) (T = 10 → 20 → 40, reference T = 320) and on SD3's shift-3 schedule (T = 40 → 80, reference
    640). The VE formula λ = −log σ on the same sigmas converges too, with a larger error at T = 10."""
    from zigzag_kdiff.bench import convergence as bc
    from zigzag_kdiff.bench import gmm as bench_gmm

    flow, ve = "DPM++ 2M", "DPM++ 2M, VE λ = −log σ on flow sigmas"
    tiny = bc.FlowConfig(
        mixtures=bench_gmm.MIXTURES[:1], seeds=2, per_class=8, steps=(10, 20, 40), reference_steps=320,
        schedules=("linear",), methods=(flow, ve),
    )  # fmt: skip
    (linear,) = bc.run_flow_convergence(tiny)
    errors = {c.name: c.errors for c in linear.convergence}
    for steps in (10, 20):
        assert bc.order_per_doubling(errors[flow], steps)[0] >= 1.8, errors[flow]
    assert sum(errors[ve][10]) > 1.15 * sum(errors[flow][10])
    sd3 = dataclasses.replace(tiny, steps=(40, 80), reference_steps=640, schedules=("sd3",), methods=(flow,))
    (shifted,) = bc.run_flow_convergence(sd3)
    assert bc.order_per_doubling(shifted.convergence[0].errors, 40)[0] >= 1.8
    text = bc.format_flow_convergence([linear], tiny) + bc.format_flow_convergence([shifted], sd3)
    assert "| DPM++ 2M |" in text and "order 10→20" in text and "SD3's shift-3 schedule" in text


def test_flow_sigmas_schedules():
    from zigzag_kdiff.bench.convergence import flow_sigmas

    linear, sd3 = flow_sigmas(4), flow_sigmas(4, "sd3")
    assert linear[0] == 1 and sd3[0] == 1 and linear[-1] == 0 and sd3[-1] == 0 and len(linear) == 5
    torch.testing.assert_close(sd3[-2], torch.tensor(3e-3 / (1 + 2e-3), dtype=torch.float64))
    with pytest.raises(ValueError, match="schedule must be one of"):
        flow_sigmas(4, "karras")


def test_true_cfg_and_distilled_guidance_are_independent_gaps(mixture):
    """Flux with true CFG too: γ₁/γ₂ choose the branches, g₁/g₂ the guidance input of each call."""
    flow = FlowDenoiser(FlowMixtureVelocity(mixture))
    seen = []

    class Recorder(torch.nn.Module):  # a distilled model that also takes true CFG's uncond
        def forward(self, x, sigma, cond, guidance):
            seen.append((x.shape[0], guidance))
            return flow(x, sigma, cond=cond)

    args = {**guided_args(4, 2.0), "guidance": 3.5}
    sample_zigzag_dpmpp_2m(
        CFGDenoiser(Recorder()), flow_noise(4), flow_sigmas(3), args, disable=True, inversion_guidance=1.0
    )
    assert seen == [(8, 3.5), (4, 1.0), (8, 3.5)] * 2 + [(8, 3.5)]  # γ₂ = 0: the inversion is one uncond branch


def test_gap_check_against_a_guidance_tensor(mixture):
    counter = CallCounter(DistilledDenoiser(FlowDenoiser(FlowMixtureVelocity(mixture))))
    args = {"cond": torch.zeros(4, dtype=torch.long), "cond_scale": 1.0, "guidance": torch.tensor([3.5, 2.0, 3.5, 3.5])}
    with pytest.raises(ValueError, match=r"g₁ = 2\b"):
        sample_zigzag_euler(
            CFGDenoiser(counter), flow_noise(4), flow_sigmas(4), args, inversion_scale=1.0, inversion_guidance=3.0
        )
    args["guidance"] = torch.tensor([3.5, float("nan"), 3.5, 3.5])
    with pytest.raises(ValueError, match="guidance must be a finite number"):
        sample_zigzag_euler(CFGDenoiser(counter), flow_noise(4), flow_sigmas(4), args, inversion_scale=1.0)
    assert counter.calls == 0


def test_a_guidance_tensor_stays_a_tensor_in_the_inversions(mixture):
    """g₁ as a per-row tensor (as diffusers' Flux transformer takes it): the inversions get g₂ in the same form."""
    flow = FlowDenoiser(FlowMixtureVelocity(mixture))
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x, sigma, cond, guidance):
            seen.append(guidance.clone())
            return DistilledDenoiser(flow)(x, sigma, cond, guidance[:, None])

    g1 = torch.full((4,), 3.5, dtype=torch.float64)
    args = {"cond": torch.zeros(4, dtype=torch.long), "cond_scale": 1.0, "guidance": g1}
    sample_zigzag_euler(
        CFGDenoiser(Recorder()), flow_noise(4), flow_sigmas(2), args, disable=True, inversion_scale=1.0,
        inversion_guidance=1.0,
    )  # fmt: skip
    assert [g.tolist() for g in seen] == [[3.5] * 4, [1.0] * 4, [3.5] * 4, [3.5] * 4]
    assert all(g.dtype == torch.float64 for g in seen) and torch.equal(g1, torch.full((4,), 3.5, dtype=torch.float64))
