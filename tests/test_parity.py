"""Parity with the released Z-Sampling code on a real (tiny, random-weight) SDXL-architecture UNet.

The released code's loop (xie-lab-ml/Zigzag-Diffusion-Sampling, ``z_sampling_call``) is written out
below with diffusers' own ``DDIMScheduler`` and ``DDIMInverseScheduler`` (SDXL's scheduler config:
leading spacing, steps offset 1, ``set_alpha_to_one=False``), CFG on the batch ``[uncond, cond]``,
the unconditional embeddings all zeros (SDXL's ``force_zeros_for_empty_prompt`` with no negative
prompt). Our ``sample_zigzag_ddim`` runs the same UNet through k-diffusion's
``DiscreteEpsDDPMDenoiser`` (quantize=True) and our ``CFGDenoiser`` on ``ddim_sigmas``; its final
latent ``z`` is compared in the VP form ``z / sqrt(1 + σ_end²)`` with the released loop's.

The released code ran diffusers 0.22.3; installed here is a newer diffusers. The two
``DDIMInverseScheduler.step`` implementations were read side by side: they compute the same update
(the source timestep is ``timestep − 1000 // T``, ``ᾱ(0)`` below 0, the target is the passed
timestep); the newer one only dropped the unused ``eta``/``use_clipped_model_output``/
``variance_noise`` arguments. :func:`test_inverse_scheduler_is_the_0_22_3_update` pins that
formula, written out explicitly, against the installed scheduler, so the parity tests cannot pass
against a changed scheduler silently.

Relative error = max |ours − released| / max |released| over the final latent (float32, CPU).

Run as a script for the table of measured errors at T = 50 over the whole grid (about two minutes):
``PYTHONPATH=. python tests/test_parity.py``.
"""

from __future__ import annotations

import itertools
import time

import pytest
import torch

from zigzag_kdiff import CFGDenoiser, ddim_sigmas, sample_zigzag_ddim, sample_zigzag_euler
from zigzag_kdiff.models import UNetEps, tiny_unet

pytest.importorskip("diffusers")
pytest.importorskip("k_diffusion")

GAMMA_1 = 5.5
TOLERANCE = 1e-4
LATENT = (1, 4, 8, 8)
TOKENS, WIDTH, POOLED = 8, 64, 32  # token count, token-embedding width, pooled width (SDXL: 77, 2048, 1280)


def scheduler_config() -> dict:
    """SDXL's scheduler config as the released code turns it into DDIM (reference file)."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "timestep_spacing": "leading",
        "steps_offset": 1,
        "set_alpha_to_one": False,
        "clip_sample": False,
        "prediction_type": "epsilon",
    }


class Setup:
    """One tiny SDXL-architecture UNet, a prompt's embeddings and an initial VP latent."""

    def __init__(self) -> None:
        self.unet = tiny_unet(cross_attention_dim=WIDTH, sample_size=LATENT[-1], sdxl=True, text_embeds_dim=POOLED)
        gen = torch.Generator().manual_seed(1)
        self.cond = {
            "encoder_hidden_states": torch.randn(1, TOKENS, WIDTH, generator=gen),
            "added_cond_kwargs": {
                "text_embeds": torch.randn(1, POOLED, generator=gen),
                "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]),
            },
        }
        self.uncond = {
            "encoder_hidden_states": torch.zeros(1, TOKENS, WIDTH),
            "added_cond_kwargs": {
                "text_embeds": torch.zeros(1, POOLED),
                "time_ids": self.cond["added_cond_kwargs"]["time_ids"],
            },
        }
        self.latents = torch.randn(LATENT, generator=torch.Generator().manual_seed(42))  # x_T, VP form

    # --- the released code's loop -----------------------------------------------------------------

    def released(self, steps: int, lam: int, t_max: int, gamma_2: float, update: str = "released") -> torch.Tensor:
        """``z_sampling_call`` of the released pipeline, reduced to its arithmetic (η = 0, no rescale)."""
        from diffusers import DDIMInverseScheduler, DDIMScheduler

        scheduler = DDIMScheduler(**scheduler_config())
        inverse_scheduler = DDIMInverseScheduler(**scheduler_config())
        scheduler.set_timesteps(steps)
        inverse_scheduler.set_timesteps(steps)
        timesteps = scheduler.timesteps
        embeds = torch.cat([self.uncond["encoder_hidden_states"], self.cond["encoder_hidden_states"]])
        added = {
            key: torch.cat([self.uncond["added_cond_kwargs"][key], self.cond["added_cond_kwargs"][key]])
            for key in ("text_embeds", "time_ids")
        }

        def guided_eps(latents: torch.Tensor, t: torch.Tensor, scale: float) -> torch.Tensor:
            out = self.unet(torch.cat([latents] * 2), t, encoder_hidden_states=embeds, added_cond_kwargs=added)
            eps_uncond, eps_cond = out.sample.chunk(2)
            return eps_uncond + scale * (eps_cond - eps_uncond)

        latents = self.latents.clone()
        with torch.no_grad():
            for i, t in enumerate(timesteps):
                next_latents = scheduler.step(guided_eps(latents, t, GAMMA_1), t, latents).prev_sample
                if i < lam:
                    for _ in range(t_max):
                        # zag: the UNet sees the level-(i+1) latent but is told t_i (eq. 4's approximation)
                        eps = guided_eps(next_latents, t, gamma_2)
                        if update == "released":  # as released: target t_{i+1}, source t_{i+1} − 1000/T
                            latents = inverse_scheduler.step(eps, timesteps[i + 1], next_latents).prev_sample
                        else:  # eq. 4: the DDIM step from t_{i+1} (= t_i − 1000/T) up to t_i
                            latents = inverse_scheduler.step(eps, t, next_latents).prev_sample
                        # zig: denoise t_i → t_{i+1} again at γ₁
                        next_latents = scheduler.step(guided_eps(latents, t, GAMMA_1), t, latents).prev_sample
                latents = next_latents
        return latents

    # --- ours ------------------------------------------------------------------------------------

    def ours(self, sampler, steps: int, **options) -> torch.Tensor:
        from diffusers import DDIMScheduler
        from k_diffusion.external import DiscreteEpsDDPMDenoiser

        alphas_cumprod = DDIMScheduler(**scheduler_config()).alphas_cumprod
        model = CFGDenoiser(DiscreteEpsDDPMDenoiser(UNetEps(self.unet), alphas_cumprod, quantize=True))
        sigmas = ddim_sigmas(alphas_cumprod, steps)
        z = self.latents * (1 + sigmas[0] ** 2) ** 0.5
        args = {"cond": self.cond, "uncond": self.uncond, "cond_scale": GAMMA_1}
        z = sampler(model, z, sigmas, args, disable=True, **options)
        return z / (1 + sigmas[-1] ** 2) ** 0.5


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


@pytest.fixture(scope="module")
def setup():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny UNet: one thread is fastest, and the CI machine's cores are shared
    yield Setup()
    torch.set_num_threads(threads)


def zigzag_error(setup: Setup, steps: int, lam: int, t_max: int, gamma_2: float, update: str) -> float:
    reference = setup.released(steps, lam, t_max, gamma_2, update)
    ours = setup.ours(
        sample_zigzag_ddim,
        steps,
        zigzag_steps=lam,
        zigzag_rounds=t_max,
        inversion_scale=gamma_2,
        inversion_update=update,
    )
    assert torch.isfinite(reference).all()
    return relative_error(ours, reference)


def grid(steps: int) -> list[tuple[int, int, float]]:
    """(λ, T_max, γ₂) over λ ∈ {0, 1, T/2, T−1}, T_max ∈ {1, 2}, γ₂ ∈ {0, 1} (λ = 0 once: nothing zigzags)."""
    combos = [(0, 1, 0.0)]
    for lam in (1, steps // 2, steps - 1):
        combos += [(lam, t_max, gamma_2) for t_max, gamma_2 in itertools.product((1, 2), (0.0, 1.0))]
    return combos


# T = 50 (the released default) is checked on the two configurations that between them exercise
# every code path at the released length: the released defaults (λ = 49, T_max = 1, γ₂ = 0: the
# unconditional branch only, the last zigzag step's ᾱ(0) special case) and λ = 25 with two rounds at
# γ₂ = 1 (the conditional branch only, repeated rounds, plain steps after λ); plain DDIM (λ = 0) at
# T = 50 is test_standard_ddim_is_our_euler_path_at_T50. The whole λ × T_max × γ₂ grid runs at
# T = 6, where λ ∈ {0, 1, 3, 5} covers none, the first, a middle and every zigzaggable step: the
# arithmetic per step does not depend on T, only the number of steps does (each UNet call costs
# ~20 ms on CI's cores, the grid at T = 50 ~5000 calls). The whole grid at T = 50 is in the table
# printed by running this file.
SMALL_T = 6
FULL_T = [(49, 1, 0.0), (25, 2, 1.0)]


@pytest.mark.parametrize("lam,t_max,gamma_2", FULL_T)
def test_released_mode_matches_released_loop_at_T50(setup, lam, t_max, gamma_2):
    assert zigzag_error(setup, 50, lam, t_max, gamma_2, "released") <= TOLERANCE


@pytest.mark.parametrize("update", ["released", "paper"])
def test_both_modes_match_their_loop_on_the_whole_grid_at_small_T(setup, update):
    errors = {combo: zigzag_error(setup, SMALL_T, *combo, update) for combo in grid(SMALL_T)}
    assert max(errors.values()) <= TOLERANCE, errors


def test_paper_mode_matches_eq4_loop_at_T50(setup):
    assert zigzag_error(setup, 50, 49, 1, 0.0, "paper") <= TOLERANCE


def test_the_two_updates_differ(setup):
    """The comparison can fail: the paper's and the released updates give different latents."""
    released = setup.released(SMALL_T, SMALL_T - 1, 1, 0.0, "released")
    ours_paper = setup.ours(sample_zigzag_ddim, SMALL_T, zigzag_steps=SMALL_T - 1, inversion_update="paper")
    assert relative_error(ours_paper, released) > 100 * TOLERANCE


def test_standard_ddim_is_our_euler_path_at_T50(setup):
    """Plain DDIM (η = 0) with diffusers' scheduler equals an Euler step in z on ``ddim_sigmas``."""
    reference = setup.released(50, 0, 1, 0.0)
    ours = setup.ours(sample_zigzag_euler, 50, zigzag_steps=0)
    assert relative_error(ours, reference) <= TOLERANCE


def test_inverse_scheduler_is_the_0_22_3_update():
    """The installed ``DDIMInverseScheduler.step(ε, t_{i+1}, x)`` is diffusers 0.22.3's update:
    source a_r = ᾱ(t_{i+1} − 1000/T) (ᾱ(0) when negative, since set_alpha_to_one=False), target
    ᾱ(t_{i+1}); x₀ = (x − sqrt(1 − a_r)·ε)/sqrt(a_r); out = sqrt(ᾱ(t_{i+1}))·x₀ + sqrt(1 − ᾱ(t_{i+1}))·ε."""
    from diffusers import DDIMInverseScheduler

    steps = 50
    scheduler = DDIMInverseScheduler(**scheduler_config())
    scheduler.set_timesteps(steps)
    alphas = scheduler.alphas_cumprod
    gen = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 16, generator=gen), torch.randn(2, 16, generator=gen)
    for target in scheduler.timesteps.tolist():
        source = target - 1000 // steps
        a_r = alphas[source] if source >= 0 else alphas[0]
        x0 = (x - (1 - a_r) ** 0.5 * eps) / a_r**0.5
        expected = alphas[target] ** 0.5 * x0 + (1 - alphas[target]) ** 0.5 * eps
        assert torch.allclose(scheduler.step(eps, target, x).prev_sample, expected, rtol=1e-6, atol=1e-6)


# --- the table (not a test) ------------------------------------------------------------------------


def print_table(steps: int = 50) -> None:
    """Max relative error per configuration at ``steps`` for both modes and plain DDIM."""
    torch.set_num_threads(1)
    setup = Setup()
    print(f"T = {steps}, γ₁ = {GAMMA_1}, tiny SDXL-architecture UNet, latent {LATENT}, float32 CPU")
    print("| mode | λ | T_max | γ₂ | max relative error |")
    print("|---|---:|---:|---:|---:|")
    start = time.perf_counter()
    worst = 0.0
    for update in ("released", "paper"):
        for lam, t_max, gamma_2 in grid(steps):
            error = zigzag_error(setup, steps, lam, t_max, gamma_2, update)
            worst = max(worst, error)
            print(f"| {update} | {lam} | {t_max} | {gamma_2:g} | {error:.2e} |", flush=True)
    error = relative_error(setup.ours(sample_zigzag_euler, steps, zigzag_steps=0), setup.released(steps, 0, 1, 0.0))
    worst = max(worst, error)
    print(f"| plain DDIM vs Euler path | 0 | – | – | {error:.2e} |")
    print(f"worst: {worst:.2e} (tolerance {TOLERANCE:g}); {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    print_table()
