"""The zigzag samplers against exact models and the paper's claims."""

from __future__ import annotations

import pytest
import torch
from conftest import guided_args, initial_noise, karras_sigmas

from zigzag_kdiff import CFGDenoiser, sample_zigzag_ddim, sample_zigzag_dpmpp_2m, sample_zigzag_euler
from zigzag_kdiff.bench.mixture import GaussianMixture

SAMPLERS = [sample_zigzag_euler, sample_zigzag_ddim, sample_zigzag_dpmpp_2m]
PLAIN = {
    sample_zigzag_euler: "sample_euler",
    sample_zigzag_ddim: "sample_euler",
    sample_zigzag_dpmpp_2m: "sample_dpmpp_2m",
}
"""The k-diffusion sampler each rule is with zigzag_steps=0."""


def plain(sampler):
    import k_diffusion

    return getattr(k_diffusion.sampling, PLAIN[sampler])


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("steps,end", [(12, 0.0), (7, 0.01), (1, 0.0), (2, 0.0)])
def test_lambda_zero_is_k_diffusion_bit_for_bit(counted, sampler, steps, end):
    """λ = 0: ``sample_euler`` for the Euler/DDIM rules, ``sample_dpmpp_2m`` for the DPM++ 2M rule, also on
    schedules ending above 0 (DDIM sigmas end at σ(0)) and with one or two steps (the 2M history edges)."""
    model, _ = counted
    sigmas = karras_sigmas(steps)
    sigmas[-1] = end
    x = initial_noise(8, 2, sigmas[0])
    args = guided_args(8, 5.5)
    expected = plain(sampler)(model, x, sigmas, args, disable=True)
    assert torch.equal(sampler(model, x, sigmas, args, disable=True, zigzag_steps=0), expected)
    assert torch.equal(sampler(model, x, sigmas, args, disable=True, zigzag_rounds=0), expected)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_zero_guidance_gap_approaches_standard_sampling(sampler):
    """Theorem 3: with γ₂ = γ₁ zigzag ≈ standard (the rule's plain sampler); the deviation is O(1/T).

    Bound observed on this model: max ‖x_zigzag − x_standard‖ <= 12/T for T in 10…80.
    """
    mixture = GaussianMixture.random(num_classes=2, components_per_class=1, dim=2, separation=0.7, variance=0.5)
    model = CFGDenoiser(mixture)
    args = guided_args(256, 3.0)
    errors = {}
    for steps in (10, 20, 40, 80):
        sigmas = karras_sigmas(steps)
        x = initial_noise(256, 2, sigmas[0])
        standard = plain(sampler)(model, x, sigmas, args, disable=True)
        zigzag = sampler(model, x, sigmas, args, disable=True, inversion_scale=3.0)
        errors[steps] = float((zigzag - standard).norm(dim=1).max())
        assert errors[steps] <= 12.0 / steps, errors
    assert errors[20] < 0.7 * errors[10] and errors[40] < 0.7 * errors[20] and errors[80] < 0.7 * errors[40], errors
    assert errors[80] > 0  # it really zigzagged


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_zigzag_raises_exact_class_posterior(mixture, sampler):
    """A guidance gap (γ₁ = 1.5, γ₂ = 0) raises p(c|x) over standard sampling at the same scale."""
    model = CFGDenoiser(mixture)
    sigmas = karras_sigmas(20)
    x = initial_noise(1024, 2, sigmas[0])
    args = guided_args(1024, 1.5)
    standard = plain(sampler)(model, x, sigmas, args, disable=True)
    zigzag = sampler(model, x, sigmas, args, disable=True, inversion_scale=0.0)
    p_standard = mixture.class_log_posterior(standard)[:, 0].exp().mean()
    p_zigzag = mixture.class_log_posterior(zigzag)[:, 0].exp().mean()
    assert p_zigzag > p_standard + 0.03, (float(p_standard), float(p_zigzag))


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("inversion_scale,rows_per_inversion", [(0.0, 1), (1.0, 1), (2.0, 2)])
@pytest.mark.parametrize("rounds", [1, 2])
def test_call_and_row_accounting(counted, sampler, inversion_scale, rows_per_inversion, rounds):
    """rows per image = 2T + 3λ·T_max (γ₂ ∈ {0, 1}) or 2T + 4λ·T_max; calls = T + 2λ·T_max."""
    model, counter = counted
    steps, zigzag_steps, batch = 50, 49, 3
    sigmas = karras_sigmas(steps)
    x = initial_noise(batch, 2, sigmas[0])
    sampler(
        model,
        x,
        sigmas,
        guided_args(batch, 5.5),
        disable=True,
        inversion_scale=inversion_scale,
        zigzag_steps=zigzag_steps,
        zigzag_rounds=rounds,
    )
    assert counter.calls == steps + 2 * zigzag_steps * rounds
    assert counter.rows == batch * (2 * steps + (2 + rows_per_inversion) * zigzag_steps * rounds)


def test_guidance_interval_removes_uncond_rows_and_zigzag_outside(mixture):
    from zigzag_kdiff import CallCounter, zigzag_plan

    counter = CallCounter(mixture)
    interval = (0.3, 5.0)
    model = CFGDenoiser(counter, guidance_interval=interval)
    sigmas = karras_sigmas(30)
    x = initial_noise(2, 2, sigmas[0])
    sample_zigzag_euler(model, x, sigmas, guided_args(2, 4.0), disable=True)
    levels = sigmas.tolist()
    guided_steps = sum(0.3 <= s <= 5.0 for s in levels[:-1])
    plan = zigzag_plan(sigmas, None, interval)
    assert plan == [i < 29 and 0.3 <= levels[i + 1] and levels[i] <= 5.0 for i in range(30)]
    zigzag = sum(plan)
    assert 0 < zigzag < guided_steps < 30
    # forward calls: 2 rows inside, 1 outside; each zigzag: 1 (uncond) + 2 (re-denoise, inside) rows
    assert counter.calls == 30 + 2 * zigzag
    assert counter.rows == 2 * (2 * guided_steps + (30 - guided_steps) + 3 * zigzag)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_deterministic_and_batch_equals_single_runs(counted, sampler):
    model, _ = counted
    sigmas = karras_sigmas(15)
    x = initial_noise(4, 2, sigmas[0], seed=7)
    first = sampler(model, x, sigmas, guided_args(4, 4.0), disable=True)
    second = sampler(model, x.clone(), sigmas, guided_args(4, 4.0), disable=True)
    assert torch.equal(first, second)
    singles = torch.cat([sampler(model, x[i : i + 1], sigmas, guided_args(1, 4.0), disable=True) for i in range(4)])
    torch.testing.assert_close(first, singles, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_callback_once_per_step_and_extra_args_untouched(counted, sampler):
    model, _ = counted
    sigmas = karras_sigmas(10)
    args = guided_args(2, 3.0)
    before = dict(args)
    seen = []
    sampler(
        model,
        initial_noise(2, 2, sigmas[0]),
        sigmas,
        args,
        disable=True,
        callback=lambda info: seen.append((info["i"], float(info["sigma"]), info["denoised"].shape)),
    )
    assert [i for i, _, _ in seen] == list(range(10))
    assert [s for _, s, _ in seen] == pytest.approx(sigmas[:-1].tolist())
    assert args == before and args["cond_scale"] == 3.0


def test_euler_and_ddim_rules_differ_only_in_inversion(counted):
    model, _ = counted
    sigmas = karras_sigmas(10)
    x = initial_noise(4, 2, sigmas[0])
    args = guided_args(4, 3.0)
    euler = sample_zigzag_euler(model, x, sigmas, args, disable=True)
    ddim = sample_zigzag_ddim(model, x, sigmas, args, disable=True)
    released = sample_zigzag_ddim(model, x, sigmas, args, disable=True, inversion_update="released")
    assert not torch.allclose(euler, ddim) and not torch.allclose(ddim, released)
    # with the inversion reduced to nothing they coincide
    for out in (
        sample_zigzag_ddim(model, x, sigmas, args, disable=True, zigzag_rounds=0),
        sample_zigzag_euler(model, x, sigmas, args, disable=True, zigzag_rounds=0),
    ):
        assert torch.equal(out, sample_zigzag_euler(model, x, sigmas, args, disable=True, zigzag_steps=0))


def reference_zigzag_dpmpp_2m(model, x, sigmas, args, inversion_scale, history="final", moved=True):
    """Algorithm 1 with DPM-Solver++(2M) denoising steps, written out from Lu et al.'s eqs. in σ form
    (σ ratio and 1 − σ ratio instead of k-diffusion's exp/expm1). ``history``: which denoised prediction
    of step i the multistep correction of step i + 1 uses, "final" (documented) or "first"; ``moved``: the
    re-denoise corrects D_i(x̃_i) with the slope (D_i(x_i) − D_{i−1}) of the path both lie on (documented),
    else with the plain history (D_i(x̃_i) − D_{i−1})."""
    s_in = x.new_ones([len(x)])
    old = None

    def step(x, denoised, i, slope_from=None):
        ratio = sigmas[i + 1] / sigmas[i]
        if old is None or sigmas[i + 1] == 0:
            return ratio * x + (1 - ratio) * denoised
        r = (sigmas[i - 1] / sigmas[i]).log() / (sigmas[i] / sigmas[i + 1]).log()  # h_last / h
        slope = (denoised if slope_from is None else slope_from) - old
        return ratio * x + (1 - ratio) * (denoised + slope / (2 * r))

    for i in range(len(sigmas) - 1):
        first = model(x, sigmas[i] * s_in, **args)
        x_next, denoised = step(x, first, i), first
        if sigmas[i + 1] > 0:
            inverse = model(x_next, sigmas[i + 1] * s_in, **{**args, "cond_scale": inversion_scale})
            x = x_next + (x_next - inverse) / sigmas[i + 1] * (sigmas[i] - sigmas[i + 1])  # Euler inversion
            denoised = model(x, sigmas[i] * s_in, **args)
            x_next = step(x, denoised, i, first if moved else None)
        x, old = x_next, (denoised if history == "final" else first)
    return x


def test_dpmpp_2m_history_is_the_final_denoised_prediction_moved_with_the_latent(counted):
    """Step i + 1's history is the re-denoised prediction of step i (not its first denoise); the re-denoise
    of x̃_i takes its 2M correction from the path both predictions lie on (see ``step_dpmpp_2m``)."""
    model, _ = counted
    sigmas = karras_sigmas(10)
    x = initial_noise(6, 2, sigmas[0], seed=3)
    args = guided_args(6, 4.0)
    ours = sample_zigzag_dpmpp_2m(model, x, sigmas, args, disable=True, inversion_scale=1.0)
    torch.testing.assert_close(ours, reference_zigzag_dpmpp_2m(model, x, sigmas, args, 1.0), rtol=1e-5, atol=1e-5)
    for other in ({"history": "first"}, {"moved": False}):  # the other choices are measurably different
        assert (ours - reference_zigzag_dpmpp_2m(model, x, sigmas, args, 1.0, **other)).abs().max() > 1e-2
    assert not torch.allclose(ours, sample_zigzag_euler(model, x, sigmas, args, disable=True, inversion_scale=1.0))


@pytest.fixture(scope="module")
def convergence_errors():
    """Mean ‖x_T − x_320‖ of each rule at T = 5, 10, 20, 40 (same method, γ₁ = 4, γ₂ = 0, λ = T − 1) on the
    16-D benchmark mixture of ``bench gmm``, 96 samples, float32."""
    from zigzag_kdiff.bench.gmm import MIXTURES
    from zigzag_kdiff.bench.mixture import UNCONDITIONAL

    mixture = MIXTURES[1].build()
    labels = torch.arange(3).repeat_interleave(32)
    model = CFGDenoiser(mixture)
    args = {"cond": labels, "uncond": torch.full_like(labels, UNCONDITIONAL), "cond_scale": 4.0}
    noise = torch.randn(96, 16, generator=torch.Generator().manual_seed(0))

    def run(sampler, steps):
        sigmas = karras_sigmas(steps)
        return sampler(model, noise * sigmas[0], sigmas, args, disable=True)

    errors = {}
    for sampler in SAMPLERS:
        reference = run(sampler, 320)
        errors[sampler] = {t: float((run(sampler, t) - reference).norm(dim=1).mean()) for t in (5, 10, 20, 40)}
    return errors


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_convergence_to_the_zigzag_limit_per_doubling(convergence_errors, sampler):
    """Error ratio per doubling of T (2 = first order, 4 = second order). Measured here for T = 5→10, 10→20,
    20→40: Euler 1.64, 1.87, 2.04; DDIM 1.75, 1.93, 2.07; DPM++ 2M 2.88, 2.07, 1.83 (errors at T = 20: 0.52,
    0.40, 0.15). Every rule is first order in the end: the Euler inversion caps it (``bench convergence``:
    with an exactly solved inversion DPM++ 2M is second order); the DPM++ 2M rule converges faster at small T
    and keeps about 0.3× the Euler rule's error."""
    e = convergence_errors[sampler]
    assert 1.6 < e[10] / e[20] < 2.6 and 1.6 < e[20] / e[40] < 2.6, e
    euler = convergence_errors[sample_zigzag_euler]
    if sampler is sample_zigzag_dpmpp_2m:
        assert e[5] / e[10] > euler[5] / euler[10] + 0.5, (e, euler)  # converges measurably faster ...
        assert e[10] / e[20] > euler[10] / euler[20] + 0.1, (e, euler)
        assert all(e[t] < 0.4 * euler[t] for t in (10, 20, 40)), (e, euler)  # ... and stays closer to its limit
    elif sampler is sample_zigzag_ddim:
        assert all(0.6 * euler[t] < e[t] < euler[t] for t in e), (e, euler)
