"""RF-Sampling (Reflective Flow Sampling, arXiv 2603.06165) as a rule of the engine: sample_rf_euler."""

from __future__ import annotations

import pytest
import torch

from zigzag_kdiff import (
    CallCounter,
    CFGDenoiser,
    FlowDenoiser,
    rf_text_embedding,
    sample_rf_euler,
    sample_zigzag_euler,
)
from zigzag_kdiff.bench.flow import flow_sigmas
from zigzag_kdiff.bench.gmm import class_logit
from zigzag_kdiff.bench.mixture import UNCONDITIONAL, DistilledDenoiser, FlowMixtureVelocity, GaussianMixture


@pytest.fixture
def mixture() -> GaussianMixture:
    return GaussianMixture.random(num_classes=2, components_per_class=2, dim=2, separation=0.5, variance=0.5, seed=0)


def flow_model(mixture: GaussianMixture, distilled: bool = False) -> tuple[CFGDenoiser, CallCounter]:
    """CFGDenoiser over a counted flow mixture (distilled: over the one-call distilled model)."""
    inner = FlowDenoiser(FlowMixtureVelocity(mixture, timestep_scale=1.0), timestep_scale=1.0)
    counter = CallCounter(DistilledDenoiser(inner) if distilled else inner)
    return CFGDenoiser(counter), counter


def start(batch: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    noise = torch.randn(batch, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return noise, torch.arange(batch) % 2


def cfg_args(labels: torch.Tensor, scale: float) -> dict:
    return {"cond": labels, "uncond": torch.full_like(labels, UNCONDITIONAL), "cond_scale": scale}


@pytest.mark.parametrize("schedule", ["linspace", "shift3"])
def test_full_reflection_without_a_high_condition_is_z_sampling_euler(mixture, schedule):
    """γ = 1, α = 1, high = normal, low = γ₂: the zigzag Euler rule, bit for bit (the merge is exact at γ = 1)."""
    model, _ = flow_model(mixture)
    x, labels = start()
    sigmas = flow_sigmas(10, schedule)
    args = cfg_args(labels, 4.0)
    zigzag = sample_zigzag_euler(model, x, sigmas, args, disable=True, inversion_scale=0.5)
    rf = sample_rf_euler(
        model, x, sigmas, args, disable=True, high_args={}, low_args={"cond_scale": 0.5}, merge_ratio=1.0
    )
    assert torch.equal(rf, zigzag)


def test_no_merge_is_plain_euler_and_each_reflective_step_costs_2_alpha_plus_1_calls(mixture):
    model, counter = flow_model(mixture, distilled=True)
    x, labels = start()
    sigmas = flow_sigmas(8)
    args = {**cfg_args(labels, 1.0), "guidance": 3.0}
    plain = sample_zigzag_euler(model, x, sigmas, args, disable=True, zigzag_steps=0)
    counter.reset()
    options = {"high_args": {"guidance": 6.0}, "low_args": {"guidance": 1.0}}
    rf = sample_rf_euler(model, x, sigmas, args, disable=True, merge_ratio=0.0, **options)
    assert torch.equal(rf, plain)
    assert counter.calls == 8 + 2 * 7 and counter.rows == 64 * counter.calls  # 7 reflective steps, one row each
    for alpha, reflective, expected in ((2, None, 8 + 4 * 6 + 2 * 1), (3, 2, 8 + 6 * 2), (1, 0, 8)):
        counter.reset()  # α shrinks near the end: a reflection never reaches σ = 0
        sample_rf_euler(model, x, sigmas, args, disable=True, alpha=alpha, reflective_steps=reflective, **options)
        assert counter.calls == expected


@pytest.mark.parametrize("merge_ratio", [0.5, 1.0])
def test_reflection_raises_the_exact_class_posterior_over_plain_sampling(mixture, merge_ratio):
    """A distilled flow model at g = 2: RF (high 4, low 1) ends with a higher true p(c|x) than plain sampling at
    g = 2, and a larger merge ratio γ moves further (the displacement is an ascent direction)."""
    model, _ = flow_model(mixture, distilled=True)
    x, labels = start(512)
    sigmas = flow_sigmas(12)
    args = {**cfg_args(labels, 1.0), "guidance": 2.0}

    def logit(out: torch.Tensor) -> float:
        return float(class_logit(mixture, out, labels).clamp(-50, 50).mean())

    plain = logit(sample_zigzag_euler(model, x, sigmas, args, disable=True, zigzag_steps=0))
    up = logit(
        sample_rf_euler(
            model,
            x,
            sigmas,
            args,
            disable=True,
            high_args={"guidance": 4.0},
            low_args={"guidance": 1.0},
            merge_ratio=merge_ratio,
        )
    )
    half = logit(
        sample_rf_euler(
            model,
            x,
            sigmas,
            args,
            disable=True,
            high_args={"guidance": 4.0},
            low_args={"guidance": 1.0},
            merge_ratio=merge_ratio / 2,
        )
    )
    assert up > half > plain + 0.05


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"merge_ratio": -0.1}, "merge_ratio"),
        ({"merge_ratio": float("nan")}, "merge_ratio"),
        ({"alpha": 0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"reflective_steps": 9}, "zigzag_steps"),
        ({"high_args": {"guidance": 1.0}, "low_args": {"guidance": 2.0}}, "low_args"),
        ({"high_args": {"cond_scale": 1.0}, "low_args": {"cond_scale": 3.0}}, "low_args"),
        ({"high_args": [("guidance", 2.0)]}, "high_args"),
    ],
)
def test_bad_options_raise_before_any_model_call(mixture, options, match):
    model, counter = flow_model(mixture)
    x, labels = start(8)
    kwargs = {"high_args": {}, "low_args": {"cond_scale": 0.0}, **options}
    with pytest.raises(ValueError, match=match):
        sample_rf_euler(model, x, flow_sigmas(8), cfg_args(labels, 3.0), disable=True, **kwargs)
    assert counter.calls == 0


def test_flow_sigmas_above_one_are_refused(mixture):
    model, counter = flow_model(mixture)
    x, labels = start(8)
    with pytest.raises(ValueError, match="flow latent"):
        sample_rf_euler(
            model,
            x,
            flow_sigmas(4) * 2,
            cfg_args(labels, 3.0),
            disable=True,
            high_args={},
            low_args={"cond_scale": 0.0},
        )
    assert counter.calls == 0


def test_text_embedding_states():
    """c_w(s, β) = c_text + s·(β·c_text + (1 − β)·c_uncond); the paper's FLUX-Dev states."""
    c, u = torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64).unbind()
    torch.testing.assert_close(rf_text_embedding(c, u, 0.0, 0.7), c)  # s_low = 0 (FLUX-Dev): the prompt itself
    torch.testing.assert_close(rf_text_embedding(c, u, 3.5, 0.7), c + 3.5 * (0.7 * c + 0.3 * u))
    torch.testing.assert_close(rf_text_embedding(c, u, -1.0, 0.3), 0.7 * c - 0.7 * u)  # FLUX-Lite's low state
    both = rf_text_embedding({"encoder_hidden_states": c, "ids": 3}, {"encoder_hidden_states": u, "ids": 3}, 1.0, 1.0)
    torch.testing.assert_close(both["encoder_hidden_states"], 2 * c)
    assert both["ids"] == 3
    with pytest.raises(ValueError, match="beta"):
        rf_text_embedding(c, u, 1.0, float("inf"))
    with pytest.raises(ValueError, match="c_uncond"):
        rf_text_embedding(c, u[:, :3], 1.0, 0.5)
