"""Every bad input raises a ValueError naming the parameter and the allowed range, before any call."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import guided_args, initial_noise, karras_sigmas

from zigzag_kdiff import CFGDenoiser, GuidanceInterval, sample_zigzag_ddim, sample_zigzag_dpmpp_2m, sample_zigzag_euler

SAMPLERS = [sample_zigzag_euler, sample_zigzag_ddim, sample_zigzag_dpmpp_2m]
GOOD = karras_sigmas(5)

BAD_CALLS = [
    ({"sigmas": GOOD[None]}, r"sigmas must be a 1-D tensor of at least 2"),
    ({"sigmas": GOOD[:1]}, r"sigmas must be a 1-D tensor of at least 2"),
    ({"sigmas": torch.tensor([10.0, math.nan, 0.0])}, r"sigmas must be finite and >= 0"),
    ({"sigmas": torch.tensor([10.0, math.inf, 0.0])}, r"sigmas must be finite and >= 0"),
    ({"sigmas": torch.tensor([10.0, -1.0])}, r"sigmas must be finite and >= 0"),
    ({"sigmas": torch.tensor([1.0, 2.0, 0.0])}, r"sigmas must be non-increasing .* sigmas\[1\]=2"),
    ({"zigzag_steps": 5}, r"zigzag_steps \(λ\) must be an integer in \[0, 4\]"),
    ({"zigzag_steps": -1}, r"zigzag_steps \(λ\) must be an integer in \[0, 4\]"),
    ({"zigzag_steps": 2.5}, r"zigzag_steps \(λ\) must be an integer in \[0, 4\]"),
    ({"zigzag_steps": True}, r"zigzag_steps \(λ\) must be an integer"),
    ({"zigzag_rounds": -1}, r"zigzag_rounds \(T_max\) must be an integer >= 0"),
    ({"zigzag_rounds": 1.5}, r"zigzag_rounds \(T_max\) must be an integer >= 0"),
    ({"inversion_scale": math.nan}, r"inversion_scale must be a finite number"),
    ({"inversion_scale": math.inf}, r"inversion_scale must be a finite number"),
    ({"inversion_scale": 6.0}, r"inversion_scale \(γ₂\) must be <= .* cond_scale \(γ₁\) = 5.5"),
    ({"cond_scale_in_args": math.nan}, r"cond_scale must be a finite number"),
    ({"guidance_interval": (2.0, 1.0)}, r"guidance_interval must have sigma_low <= sigma_high"),
    ({"guidance_interval": (-1.0, 1.0)}, r"guidance_interval must be \(sigma_low, sigma_high\) with 0 <="),
    ({"guidance_interval": (1.0,)}, r"guidance_interval must be a \(sigma_low, sigma_high\) pair"),
]


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("overrides,message", BAD_CALLS)
def test_bad_input_raises_before_any_model_call(counted, sampler, overrides, message):
    model, counter = counted
    overrides = dict(overrides)
    sigmas = overrides.pop("sigmas", GOOD)
    args = guided_args(2, 5.5)
    if "cond_scale_in_args" in overrides:
        args["cond_scale"] = overrides.pop("cond_scale_in_args")
    x = initial_noise(2, 2, torch.tensor(10.0))
    with pytest.raises(ValueError, match=message):
        sampler(model, x, sigmas, args, disable=True, **overrides)
    assert counter.calls == 0


def test_zigzag_needs_a_guided_model(mixture):
    with pytest.raises(ValueError, match="extra_args must hold 'cond_scale'"):
        sample_zigzag_euler(mixture, initial_noise(1, 2, GOOD[0]), GOOD, {"cond": torch.tensor([0])}, disable=True)
    # plain sampling through an unguided model is fine
    sample_zigzag_euler(
        mixture, initial_noise(1, 2, GOOD[0]), GOOD, {"cond": torch.tensor([0])}, disable=True, zigzag_steps=0
    )


def test_ddim_inversion_update_name_checked(counted):
    model, _ = counted
    with pytest.raises(ValueError, match=r"inversion_update must be one of \['paper', 'released'\]"):
        sample_zigzag_ddim(model, initial_noise(1, 2, GOOD[0]), GOOD, guided_args(1, 2.0), inversion_update="diffusers")


def test_cfg_denoiser_validates(mixture):
    with pytest.raises(ValueError, match="guidance_interval must have sigma_low <= sigma_high"):
        CFGDenoiser(mixture, guidance_interval=(3.0, 1.0))
    model = CFGDenoiser(mixture)
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="cond_scale must be a finite number"):
        model(x, torch.ones(1), cond=torch.tensor([0]), uncond=torch.tensor([-1]), cond_scale=math.inf)
    with pytest.raises(ValueError, match="uncond is required"):
        model(x, torch.ones(1), cond=torch.tensor([0]), cond_scale=2.0)
    assert GuidanceInterval.parse((0.28, 5.42)) == GuidanceInterval(0.28, 5.42)
