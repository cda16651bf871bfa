"""Real k-diffusion: registration, a DiscreteEpsDDPMDenoiser-wrapped ε-model, the DDIM schedule."""

from __future__ import annotations

import types

import pytest
import torch
from conftest import TinyEps, sd_alphas_cumprod

import zigzag_kdiff
from zigzag_kdiff import CFGDenoiser, ddim_sigmas, ddim_timesteps, register_k_diffusion, sample_zigzag_ddim


def test_registration_is_idempotent_and_matches_direct_call():
    import k_diffusion
    from k_diffusion.external import DiscreteEpsDDPMDenoiser

    names = ["sample_zigzag_euler", "sample_zigzag_ddim", "sample_zigzag_dpmpp_2m"]
    assert register_k_diffusion() == names
    assert register_k_diffusion() == names
    assert k_diffusion.sampling.sample_zigzag_euler is zigzag_kdiff.sample_zigzag_euler
    assert k_diffusion.sampling.sample_zigzag_dpmpp_2m is zigzag_kdiff.sample_zigzag_dpmpp_2m

    model = CFGDenoiser(DiscreteEpsDDPMDenoiser(TinyEps(), sd_alphas_cumprod(), quantize=True))
    sigmas = model.inner_model.get_sigmas(10)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    args = {"cond": torch.ones(2, 3), "uncond": torch.zeros(2, 3), "cond_scale": 5.5}
    for name in names:
        via_k = getattr(k_diffusion.sampling, name)(model, x, sigmas, args, disable=True, zigzag_steps=9)
        direct = getattr(zigzag_kdiff, name)(model, x, sigmas, args, disable=True, zigzag_steps=9)
        assert torch.equal(via_k, direct) and torch.isfinite(via_k).all()


def test_registration_refuses_foreign_attribute_and_sets_nothing():
    target = types.ModuleType("host.sampling")
    target.sample_zigzag_ddim = lambda *a, **k: None
    with pytest.raises(ValueError, match="already exists"):
        register_k_diffusion(target)
    assert not hasattr(target, "sample_zigzag_euler")


def test_ddim_sigmas_match_the_released_schedule():
    sigmas = ddim_sigmas(sd_alphas_cumprod(), 50)
    assert ddim_timesteps(1000, 50)[[0, 1, -2, -1]].tolist() == [981, 961, 21, 1]
    assert len(sigmas) == 51
    expected = [13.120423, 11.676058, 0.141463, 0.041314, 0.029168]
    assert sigmas[[0, 1, -3, -2, -1]].tolist() == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert ddim_sigmas(sd_alphas_cumprod(), 50, set_alpha_to_one=True)[-1] == 0


@pytest.mark.parametrize(
    "i,paper,released",
    [
        (0, (1, 1.44437), (1.00347, 1.40469)),
        (47, (1, 0.06033), (1.00100, 0.10116)),
        (48, (1, 0.10015), (1.00866, 0.01226)),
    ],
)
def test_ddim_inversion_coefficients_match_reference(i, paper, released):
    """The inversion is x̃ = a·x + b·ε; the paper's eq. 4 and the released diffusers-0.22.3 update
    give the reference file's (a, b) on the SDXL DDIM schedule."""
    from zigzag_kdiff.sampling import invert_ddim, invert_ddim_released

    sigmas = ddim_sigmas(sd_alphas_cumprod(), 50).double()
    one, zero = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)

    def no_noise(x, sigma):  # D(x) = x, so ε = 0 and x̃ = a·x
        return x

    def unit_noise(x, sigma):  # D(x) = x − σ, so ε = 1 and x̃(0) = b
        return x - sigma

    for rule, expected in ((invert_ddim, paper), (invert_ddim_released, released)):
        a, b = float(rule(no_noise, one, sigmas, i)), float(rule(unit_noise, zero, sigmas, i))
        assert (a, b) == pytest.approx(expected, abs=1e-5)


def test_ddim_through_k_diffusion_wrapper_is_finite_and_counts():
    from k_diffusion.external import DiscreteEpsDDPMDenoiser

    model = CFGDenoiser(DiscreteEpsDDPMDenoiser(TinyEps(), sd_alphas_cumprod(), quantize=True))
    sigmas = ddim_sigmas(sd_alphas_cumprod(), 20)
    x = torch.randn(1, 4, generator=torch.Generator().manual_seed(3)) * sigmas[0]
    args = {"cond": torch.ones(1, 3), "uncond": torch.zeros(1, 3), "cond_scale": 5.5}
    out = sample_zigzag_ddim(model, x, sigmas, args, disable=True, inversion_update="released")
    assert torch.isfinite(out).all()


def test_registration_of_host_adapters_is_idempotent_and_checked():
    """A host registers adapters that wrap our samplers (ComfyUI); foreign functions are refused."""
    import functools

    target = types.ModuleType("host.sampling")

    def adapter_for(function):
        @functools.wraps(function)
        def adapter(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
            return function(model, x, sigmas, extra_args, callback, disable, **options)

        return adapter

    adapters = {name: adapter_for(function) for name, function in zigzag_kdiff.SAMPLERS.items()}
    assert register_k_diffusion(target, adapters) == [
        "sample_zigzag_euler",
        "sample_zigzag_ddim",
        "sample_zigzag_dpmpp_2m",
    ]
    again = {name: adapter_for(function) for name, function in zigzag_kdiff.SAMPLERS.items()}
    register_k_diffusion(target, again)  # a reload of the host's pack replaces its own adapters
    assert target.sample_zigzag_euler is again["zigzag_euler"]
    register_k_diffusion(target)  # and the plain samplers replace adapters
    assert target.sample_zigzag_ddim is zigzag_kdiff.sample_zigzag_ddim

    named = r"samplers must be named from \['zigzag_ddim', 'zigzag_dpmpp_2m', 'zigzag_euler'\]"
    with pytest.raises(ValueError, match=named):
        register_k_diffusion(target, {"zigzag_heun": zigzag_kdiff.sample_zigzag_euler})
    with pytest.raises(ValueError, match=r"samplers\['zigzag_euler'\] must be a zigzag_kdiff sampler"):
        register_k_diffusion(target, {"zigzag_euler": lambda *a, **k: None})
    assert target.sample_zigzag_ddim is zigzag_kdiff.sample_zigzag_ddim  # nothing half-applied
