"""The ComfyUI node pack against a real ComfyUI core (0.3.75) on CPU with a tiny SD1.5-architecture UNet.

Pass counts are ComfyUI's own batch bookkeeping (``cond_or_uncond`` of ``model_function_wrapper``),
per sampling step (steps end at the sampler's per-step callback). Cost per zigzag step with T_max = 1:
three UNet calls; conditional + unconditional rows 2 + 3 at γ₂ = 0 (the pack leaves the positive batch
out of a call at scale 0), 3 + 2 at γ₂ = 1 (ComfyUI skips the uncond batch at scale 1), 3 + 3 at other
γ₂; a plain step costs 1 + 1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from comfyui_harness import PACK_DIR, REPO_ROOT, comfyui_or_skip, conditioning, ui_workflow_to_prompt

import zigzag_kdiff
from zigzag_kdiff import GuidanceInterval

CFG = 5.0
STEPS = 6
POS = conditioning(0.5, seed=1)
NEG = conditioning(-0.5, seed=2)
ZIGZAG_DEFAULTS = dict(
    rule="euler",
    inversion_scale=0.0,
    zigzag_steps=1.0,
    zigzag_steps_unit="fraction",
    zigzag_rounds=1,
    guidance_interval=False,
    sigma_low=0.28,
    sigma_high=5.42,
)
ZIGZAG_STEP, LAST_STEP = (2, 3), (1, 1)  # (cond rows, uncond rows) per image at γ₂ = 0
INTERVAL_SIGMAS = [14.0, 10.0, 7.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.0]
INTERVAL = (1.5, 8.0)
# zigzag only on steps wholly inside [1.5, 8]; CFG (an uncond row) only where σ_i is inside
INTERVAL_ROWS = [(1, 0), (1, 0), ZIGZAG_STEP, ZIGZAG_STEP, ZIGZAG_STEP, (1, 1), (1, 0), (1, 0)]


@pytest.fixture(scope="session")
def comfyui():
    return comfyui_or_skip()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny UNet runs fastest on one thread on a shared 2-core machine; restored after this module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def counter(comfyui):
    comfyui.counter.reset()
    yield comfyui.counter
    comfyui.counter.on_call = None
    comfyui.counter.reset()


# --- helpers: the real nodes -----------------------------------------------------------------------


def latent(batch: int = 1, seed: int | None = None, **extra) -> dict:
    if seed is None:
        samples = torch.zeros(batch, 4, 8, 8)
    else:
        samples = torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    return {"samples": samples, **extra}


def zigzag_sampler(comfyui, **options):
    return comfyui.node["ZigzagSampler"].execute(**{**ZIGZAG_DEFAULTS, **options})[0]


def select(comfyui, name: str):
    return comfyui.node["KSamplerSelect"].execute(name)[0]


def schedule(comfyui, steps: int = STEPS, denoise: float = 1.0, model=None) -> torch.Tensor:
    return comfyui.node["BasicScheduler"].execute(model or comfyui.model, "normal", steps, denoise)[0]


def ksampler(comfyui, name: str, *, steps=STEPS, cfg=CFG, model=None, image=None, denoise=1.0, seed=0):
    comfyui.counter.reset()
    node = comfyui.nodes.KSampler()
    (out,) = node.sample(model or comfyui.model, seed, steps, cfg, name, "normal", POS, NEG, image or latent(), denoise)
    return out["samples"]


def sampler_custom(comfyui, sampler, sigmas, *, cfg=CFG, model=None, image=None, seed=0):
    comfyui.counter.reset()
    node = comfyui.node["SamplerCustom"]
    out = node.execute(model or comfyui.model, True, seed, cfg, POS, NEG, sampler, sigmas, image or latent())
    return out[0]["samples"]


def sampler_custom_advanced(comfyui, guider, sampler, sigmas, *, image=None, seed=0):
    comfyui.counter.reset()
    noise = comfyui.node["RandomNoise"].execute(seed)[0]
    out = comfyui.node["SamplerCustomAdvanced"].execute(noise, guider, sampler, sigmas, image or latent())
    return out[0]["samples"]


def cfg_guider(comfyui, cfg=CFG, model=None):
    return comfyui.node["CFGGuider"].execute(model or comfyui.model, POS, NEG, cfg)[0]


# --- loading and registration ----------------------------------------------------------------------


def test_pack_loads_with_comfyui_loader_and_fills_dropdowns_once(comfyui):
    import asyncio

    import comfy.k_diffusion.sampling

    nodes = comfyui.nodes
    assert {"ZigzagSampler", "ZigzagGuidanceInterval", "ZigzagGuidanceIntervalSigmas"} <= set(comfyui.node)
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS["ZigzagSampler"] == "Zigzag Sampler"
    assert asyncio.run(nodes.load_custom_node(str(PACK_DIR)))  # a second load (a reload) is idempotent
    ksampler_names = comfyui.node["KSampler"].INPUT_TYPES()["required"]["sampler_name"][0]
    select_names = comfyui.node["KSamplerSelect"].INPUT_TYPES()["required"]["sampler_name"][1]["options"]
    for names in (ksampler_names, select_names):
        assert all(names.count(name) == 1 for name in ("zigzag_euler", "zigzag_ddim", "zigzag_dpmpp_2m"))
    assert comfy.k_diffusion.sampling.sample_zigzag_euler.__wrapped__ is zigzag_kdiff.sample_zigzag_euler
    assert comfy.k_diffusion.sampling.sample_zigzag_ddim.__wrapped__ is zigzag_kdiff.sample_zigzag_ddim
    assert comfy.k_diffusion.sampling.sample_zigzag_dpmpp_2m.__wrapped__ is zigzag_kdiff.sample_zigzag_dpmpp_2m
    rules = comfyui.node["ZigzagSampler"].define_schema().inputs[0].options
    assert rules == ["euler", "ddim", "ddim_released", "dpmpp_2m"]


# --- KSampler dropdown ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["zigzag_euler", "zigzag_ddim", "zigzag_dpmpp_2m"])
def test_ksampler_dropdown_shape_determinism_passes_and_previews(comfyui, counter, name, monkeypatch):
    import comfy.cli_args

    monkeypatch.setattr(comfy.cli_args.args, "preview_method", comfy.cli_args.LatentPreviewMethod.Latent2RGB)
    samples = ksampler(comfyui, name, image=latent(batch=2))
    assert samples.shape == (2, 4, 8, 8) and torch.isfinite(samples).all()
    # defaults γ₂ = 0, λ = steps − 1, T_max = 1; batch 2 doubles every row count
    assert counter.per_step() == [(4, 6)] * (STEPS - 1) + [(2, 2)]
    assert counter.steps == list(range(STEPS))  # the sampler's callback, once per step
    assert counter.progress == [(i, STEPS, True) for i in range(1, STEPS + 1)]  # previews are never throttled
    assert torch.equal(samples, ksampler(comfyui, name, image=latent(batch=2)))
    assert not torch.allclose(samples, ksampler(comfyui, "euler", image=latent(batch=2)))


# --- Zigzag Sampler node: pass counts per step --------------------------------------------------------


@pytest.mark.parametrize(
    "options,rows",
    [
        ({}, [ZIGZAG_STEP] * 5 + [LAST_STEP]),
        ({"inversion_scale": 1.0}, [(3, 2)] * 5 + [LAST_STEP]),  # ComfyUI skips the uncond batch at scale 1
        ({"inversion_scale": 2.5}, [(3, 3)] * 5 + [LAST_STEP]),
        ({"zigzag_rounds": 2}, [(3, 5)] * 5 + [LAST_STEP]),
        ({"zigzag_steps": 0.5}, [ZIGZAG_STEP] * 3 + [LAST_STEP] * 3),  # round(0.5 · 6) = 3
        ({"zigzag_steps": 2.0, "zigzag_steps_unit": "steps"}, [ZIGZAG_STEP] * 2 + [LAST_STEP] * 4),
        ({"rule": "ddim_released", "inversion_scale": 1.0}, [(3, 2)] * 5 + [LAST_STEP]),
        ({"rule": "dpmpp_2m"}, [ZIGZAG_STEP] * 5 + [LAST_STEP]),
        ({"rule": "dpmpp_2m", "inversion_scale": 1.0, "zigzag_rounds": 2}, [(5, 3)] * 5 + [LAST_STEP]),
    ],
)
def test_zigzag_sampler_passes_per_step(comfyui, counter, options, rows):
    samples = sampler_custom(comfyui, zigzag_sampler(comfyui, **options), schedule(comfyui))
    assert torch.isfinite(samples).all()
    assert counter.per_step() == rows
    assert counter.steps == list(range(STEPS))
    values = [value for value, _, _ in counter.progress]  # ComfyUI >= 0.9 drops fast updates, never the last
    assert values[-1] == STEPS and values == sorted(set(values))


@pytest.mark.parametrize("rule", ["euler", "ddim"])
def test_lambda_zero_is_comfyui_euler_bit_for_bit(comfyui, counter, rule):
    no_zigzag = zigzag_sampler(comfyui, rule=rule, zigzag_steps=0.0, zigzag_steps_unit="steps")
    no_rounds = zigzag_sampler(comfyui, rule=rule, zigzag_rounds=0)
    euler = select(comfyui, "euler")
    for sigmas, image in [(schedule(comfyui), latent()), (schedule(comfyui, denoise=0.5), latent(seed=3))]:
        expected = sampler_custom(comfyui, euler, sigmas, image=image)
        assert torch.equal(sampler_custom(comfyui, no_zigzag, sigmas, image=image), expected)
        assert counter.per_step() == [LAST_STEP] * STEPS
        assert torch.equal(sampler_custom(comfyui, no_rounds, sigmas, image=image), expected)


@pytest.mark.parametrize("rule", ["dpmpp_2m"])
def test_lambda_zero_is_comfyui_dpmpp_2m_bit_for_bit(comfyui, counter, rule):
    no_zigzag = zigzag_sampler(comfyui, rule=rule, zigzag_steps=0.0, zigzag_steps_unit="steps")
    dpmpp_2m = select(comfyui, "dpmpp_2m")
    for sigmas, image in [(schedule(comfyui), latent()), (schedule(comfyui, denoise=0.5), latent(seed=3))]:
        expected = sampler_custom(comfyui, dpmpp_2m, sigmas, image=image)
        assert torch.equal(sampler_custom(comfyui, no_zigzag, sigmas, image=image), expected)
        assert counter.per_step() == [LAST_STEP] * STEPS
    zigzag = ksampler(comfyui, "zigzag_dpmpp_2m", image=latent(seed=3), denoise=0.5)  # img2img: 6 of 12 steps
    assert counter.per_step() == [ZIGZAG_STEP] * (STEPS - 1) + [LAST_STEP]
    assert not torch.allclose(zigzag, ksampler(comfyui, "dpmpp_2m", image=latent(seed=3), denoise=0.5))


def test_img2img_partial_sigmas_and_empty_split(comfyui, counter):
    image = latent(seed=3)
    samples = ksampler(comfyui, "zigzag_euler", image=image, denoise=0.5)  # 6 steps of a 12-step schedule
    assert torch.isfinite(samples).all()
    assert counter.per_step() == [ZIGZAG_STEP] * (STEPS - 1) + [LAST_STEP]
    assert not torch.allclose(samples, ksampler(comfyui, "euler", image=image, denoise=0.5))
    # a one-sigma schedule (SplitSigmas at the last step) samples nothing, as Euler
    tail = comfyui.node["SplitSigmas"].execute(schedule(comfyui), STEPS)[1]
    assert len(tail) == 1
    zigzag = sampler_custom(comfyui, zigzag_sampler(comfyui), tail, image=image)
    assert counter.calls == 0
    assert torch.equal(zigzag, sampler_custom(comfyui, select(comfyui, "euler"), tail, image=image))


@pytest.mark.parametrize("rule", ["euler", "dpmpp_2m"])
def test_inpainting_mask_keeps_the_unmasked_latent(comfyui, counter, rule):
    mask = torch.zeros(1, 8, 8)
    mask[:, :, :4] = 1.0  # regenerate the left half, keep the right half
    image = latent(seed=4, noise_mask=mask)
    keep = mask[0] == 0
    zigzag = sampler_custom(comfyui, zigzag_sampler(comfyui, rule=rule), schedule(comfyui), image=image)
    assert counter.per_step() == [ZIGZAG_STEP] * (STEPS - 1) + [LAST_STEP]
    euler = sampler_custom(comfyui, select(comfyui, rule), schedule(comfyui), image=image)  # the plain sampler
    for out in (zigzag, euler):
        torch.testing.assert_close(out[..., keep], image["samples"][..., keep], atol=1e-4, rtol=1e-4)
    assert (zigzag[..., ~keep] - image["samples"][..., ~keep]).abs().max() > 0.1
    assert not torch.allclose(zigzag[..., ~keep], euler[..., ~keep])


def test_batch_rows_match_single_runs_with_per_batch_seeds(comfyui, counter):
    """``batch_index`` gives each row its own seed stream (LatentFromBatch); rows sample independently."""
    batch = ksampler(comfyui, "zigzag_euler", image=latent(batch=2, batch_index=[0, 1]))
    for row in range(2):
        single = ksampler(comfyui, "zigzag_euler", image=latent(batch=1, batch_index=[row]))
        torch.testing.assert_close(batch[row : row + 1], single, atol=1e-4, rtol=1e-5)
    assert not torch.allclose(batch[0], batch[1])


def test_flow_sampling_zigzags_with_every_flow_rule_and_refuses_the_released_ddim(comfyui, counter):
    flow = comfyui.node["ModelSamplingSD3"]().patch(comfyui.model, 3.0)[0]  # CONST (flow) sampling, σ ≤ 1
    sigmas = schedule(comfyui, model=flow)
    for rule in ("euler", "ddim", "dpmpp_2m"):  # the engine's flow rules (flow=True for CONST sampling)
        samples = sampler_custom(comfyui, zigzag_sampler(comfyui, rule=rule), sigmas, model=flow)
        assert torch.isfinite(samples).all() and float(sigmas[0]) <= 1.0
        assert counter.per_step() == [ZIGZAG_STEP] * (STEPS - 1) + [LAST_STEP]
    with pytest.raises(ValueError, match=r"rule 'ddim_released' reproduces .* VP .* flow model \(CONST sampling\)"):
        sampler_custom(comfyui, zigzag_sampler(comfyui, rule="ddim_released"), sigmas, model=flow)
    assert counter.calls == 0


# --- one branch per inversion at γ₂ = 0 ---------------------------------------------------------------


def with_cfg_hook(model):
    """A clone with a post-CFG function that changes nothing: ComfyUI then evaluates both batches at scale 0."""
    hooked = model.clone()
    hooked.set_model_sampler_post_cfg_function(lambda args: args["denoised"])
    return hooked


def masked_negative(comfyui):
    """The negative prompt applied to the left half only (ConditioningSetMask), plus the plain negative."""
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1.0
    left = comfyui.node["ConditioningSetMask"]().append(NEG, mask, "default", 1.0)[0]
    return left + conditioning(-0.2, seed=5)


@pytest.mark.parametrize("case", ["txt2img", "ddim_batch", "inpainting", "masked_negative", "img2img"])
def test_inversion_at_scale_0_is_one_branch_with_todays_result(comfyui, counter, case):
    """At γ₂ = 0 ComfyUI's result is the unconditional prediction alone; leaving the positive batch out gives
    today's result (both batches, forced here by a CFG hook) to float rounding, and 5 rows per zigzag step not 6."""
    rule, image, negative, sigmas = "euler", latent(), NEG, schedule(comfyui)
    if case == "ddim_batch":
        rule, image = "ddim", latent(batch=2, seed=6)
    elif case == "inpainting":
        mask = torch.zeros(1, 8, 8)
        mask[:, :, :4] = 1.0
        image = latent(seed=4, noise_mask=mask)
    elif case == "masked_negative":
        negative = masked_negative(comfyui)
    elif case == "img2img":
        image, sigmas = latent(seed=3), schedule(comfyui, denoise=0.5)
    batch = image["samples"].shape[0]
    sampler = zigzag_sampler(comfyui, rule=rule)

    def run(model):
        guider = comfyui.node["CFGGuider"].execute(model, POS, negative, CFG)[0]
        return sampler_custom_advanced(comfyui, guider, sampler, sigmas, image=image)

    one_branch = run(comfyui.model)
    rows, chunks = counter.per_step(), list(counter.chunks)
    both = run(with_cfg_hook(comfyui.model))
    torch.testing.assert_close(one_branch, both, rtol=1e-5, atol=1e-5)
    negative_chunks = len(negative)  # ComfyUI batches each conditioning entry as its own chunk
    zigzag = (2 * batch, 3 * batch * negative_chunks) if case == "masked_negative" else (2 * batch, 3 * batch)
    assert rows[: STEPS - 1] == [zigzag] * (STEPS - 1)
    assert counter.per_step()[: STEPS - 1] == [(3 * batch, zigzag[1])] * (STEPS - 1)
    assert chunks[1] == (1,) * negative_chunks  # the inversion's rows keep their unconditional label


def test_rows_per_image_at_the_defaults_in_the_real_core(comfyui, counter):
    """T = 50, λ = 49, T_max = 1: 2T + 3λ = 247 UNet rows per image at γ₂ = 0 and at γ₂ = 1 (was 296 at γ₂ = 0);
    296 with a CFG hook that reads the positive prediction, as before."""
    sigmas = schedule(comfyui, steps=50)
    rows = {}
    for label, model, inversion_scale in [("0", None, 0.0), ("1", None, 1.0), ("0 hooked", "hooked", 0.0)]:
        model = with_cfg_hook(comfyui.model) if model else None
        sampler_custom(comfyui, zigzag_sampler(comfyui, inversion_scale=inversion_scale), sigmas, model=model)
        assert counter.steps == list(range(50))
        rows[label] = counter.rows_total()
    ksampler(comfyui, "zigzag_euler", steps=50)
    rows["dropdown"] = counter.rows_total()
    assert rows == {"0": 247, "1": 247, "0 hooked": 296, "dropdown": 247}


def test_rescale_cfg_keeps_both_batches_at_scale_0(comfyui, counter):
    rescaled = comfyui.node["RescaleCFG"]().patch(comfyui.model, 0.7)[0]  # a sampler_cfg_function
    sampler_custom(comfyui, zigzag_sampler(comfyui), schedule(comfyui), model=rescaled)
    assert counter.per_step() == [(3, 3)] * (STEPS - 1) + [LAST_STEP]


# --- the guider's scale switch: errors, interrupts, unsupported guiders -----------------------------------


def test_guider_cfg_restored_after_exception_mid_sampling(comfyui, counter):
    guider = cfg_guider(comfyui)
    seen = []

    def fail_in_first_inversion(counter):
        seen.append(guider.cfg)
        if counter.calls == 2:
            raise RuntimeError("failure inside the inversion call")

    counter.on_call = fail_in_first_inversion
    with pytest.raises(RuntimeError, match="inside the inversion call"):
        sampler_custom_advanced(comfyui, guider, zigzag_sampler(comfyui, inversion_scale=0.5), schedule(comfyui))
    assert seen == [CFG, 0.5]  # the denoising call at γ₁, then the inversion call at γ₂
    assert guider.cfg == CFG
    counter.on_call = None
    # the guider is intact: sampling with it again equals sampling with a fresh one
    again = sampler_custom_advanced(comfyui, guider, zigzag_sampler(comfyui), schedule(comfyui))
    fresh = sampler_custom_advanced(comfyui, cfg_guider(comfyui), zigzag_sampler(comfyui), schedule(comfyui))
    assert torch.equal(again, fresh)


@pytest.mark.parametrize("rule", ["euler", "dpmpp_2m"])
def test_interrupt_stops_sampling_and_restores_cfg(comfyui, counter, rule):
    import comfy.model_management as mm

    guider = cfg_guider(comfyui)

    def press_stop_during_inversion(counter):
        if counter.calls == 5:  # step 0: calls 1-3; step 1: denoise (4), inversion (5) at γ₂
            assert guider.cfg == 0.0
            mm.interrupt_current_processing(True)

    counter.on_call = press_stop_during_inversion
    with pytest.raises(mm.InterruptProcessingException):
        sampler_custom_advanced(comfyui, guider, zigzag_sampler(comfyui, rule=rule), schedule(comfyui))
    assert counter.calls == 5 and counter.steps == [0]  # stopped inside step 1's inversion call
    assert guider.cfg == CFG and not mm.processing_interrupted()


def test_guiders_it_cannot_drive_fail_clearly_before_any_call(comfyui, counter):
    basic = comfyui.node["BasicGuider"].execute(comfyui.model, POS)[0]
    with pytest.raises(ValueError, match=r"negative conditioning, but Guider_Basic has none \(BasicGuider\)"):
        sampler_custom_advanced(comfyui, basic, zigzag_sampler(comfyui), schedule(comfyui))
    assert counter.calls == 0
    dual = comfyui.node["DualCFGGuider"].execute(comfyui.model, POS, POS, NEG, CFG, CFG, "regular")[0]
    with pytest.raises(ValueError, match=r"Guider_DualCFG keeps its scales in cfg1/cfg2"):
        sampler_custom_advanced(comfyui, dual, zigzag_sampler(comfyui), schedule(comfyui))
    assert counter.calls == 0
    # without zigzag steps no scale switch is needed: BasicGuider samples as with Euler
    plain = zigzag_sampler(comfyui, zigzag_steps=0.0)
    assert torch.equal(
        sampler_custom_advanced(comfyui, basic, plain, schedule(comfyui)),
        sampler_custom_advanced(comfyui, basic, select(comfyui, "euler"), schedule(comfyui)),
    )


def test_bad_settings_raise_value_errors_naming_the_parameter(comfyui, counter):
    node = comfyui.node["ZigzagSampler"]
    with pytest.raises(ValueError, match=r"zigzag_steps as a fraction must be in \[0, 1\]"):
        node.execute(**{**ZIGZAG_DEFAULTS, "zigzag_steps": 1.5})
    with pytest.raises(ValueError, match=r"zigzag_steps as steps must be a whole number >= 0"):
        node.execute(**{**ZIGZAG_DEFAULTS, "zigzag_steps": 2.5, "zigzag_steps_unit": "steps"})
    with pytest.raises(ValueError, match=r"sigma_low <= sigma_high"):
        node.execute(**{**ZIGZAG_DEFAULTS, "guidance_interval": True, "sigma_low": 5.0, "sigma_high": 1.0})
    with pytest.raises(ValueError, match=r"start_percent <= end_percent"):
        comfyui.node["ZigzagGuidanceInterval"].execute(comfyui.model, 0.8, 0.2)
    guider = cfg_guider(comfyui)
    too_many = zigzag_sampler(comfyui, zigzag_steps=6.0, zigzag_steps_unit="steps")
    with pytest.raises(ValueError, match=r"zigzag_steps \(λ\) must be an integer in \[0, 5\]"):
        sampler_custom_advanced(comfyui, guider, too_many, schedule(comfyui))
    with pytest.raises(ValueError, match=r"inversion_scale \(γ₂\) must be <= the denoising scale"):
        sampler_custom_advanced(comfyui, guider, zigzag_sampler(comfyui, inversion_scale=6.0), schedule(comfyui))
    assert counter.calls == 0 and guider.cfg == CFG


# --- guidance interval ------------------------------------------------------------------------------


def test_guidance_interval_patch_skips_uncond_outside_with_plain_euler(comfyui, counter):
    steps = 8
    sigmas = schedule(comfyui, steps)
    patched = comfyui.node["ZigzagGuidanceIntervalSigmas"].execute(comfyui.model, *INTERVAL)[0]
    guided = ksampler(comfyui, "euler", steps=steps, model=patched)
    low, high = INTERVAL
    expected = [(1, int(low <= float(sigma) <= high)) for sigma in sigmas[:-1]]
    assert counter.per_step() == expected and 0 < sum(uncond for _, uncond in expected) < steps
    plain = ksampler(comfyui, "euler", steps=steps)
    assert counter.per_step() == [LAST_STEP] * steps
    assert not torch.allclose(guided, plain)


def test_guidance_interval_percent_matches_comfyui_percent_to_sigma(comfyui):
    import comfy.patcher_extension

    patched = comfyui.node["ZigzagGuidanceInterval"].execute(comfyui.model, 0.2, 0.9)[0]
    twice = comfyui.node["ZigzagGuidanceInterval"].execute(patched, 0.3, 0.8)[0]
    model_sampling = comfyui.model.get_model_object("model_sampling")
    wrappers = twice.get_all_wrappers(comfy.patcher_extension.WrappersMP.PREDICT_NOISE)
    assert len(wrappers) == 1  # a second patch replaces the first
    expected = GuidanceInterval(model_sampling.percent_to_sigma(0.8), model_sampling.percent_to_sigma(0.3))
    assert wrappers[0].interval == expected
    assert comfyui.model.get_all_wrappers(comfy.patcher_extension.WrappersMP.PREDICT_NOISE) == []  # a clone


def test_guidance_interval_with_zigzag_zigzags_only_inside(comfyui, counter):
    sigmas = torch.tensor(INTERVAL_SIGMAS)
    patched = comfyui.node["ZigzagGuidanceIntervalSigmas"].execute(comfyui.model, *INTERVAL)[0]
    via_patch = sampler_custom(comfyui, zigzag_sampler(comfyui), sigmas, model=patched)
    assert counter.per_step() == INTERVAL_ROWS
    low, high = INTERVAL
    own = zigzag_sampler(comfyui, guidance_interval=True, sigma_low=low, sigma_high=high)
    via_node = sampler_custom(comfyui, own, sigmas)
    assert counter.per_step() == INTERVAL_ROWS
    via_dropdown = sampler_custom(comfyui, select(comfyui, "zigzag_euler"), sigmas, model=patched)
    assert counter.per_step() == INTERVAL_ROWS
    assert torch.equal(via_patch, via_node) and torch.equal(via_patch, via_dropdown)


# --- install: example workflows, registry metadata, finding the engine -------------------------------


@pytest.mark.parametrize("name", sorted(path.name for path in (REPO_ROOT / "example_workflows").glob("*.json")))
def test_example_workflow_loads_and_validates(comfyui, tmp_path, name):
    from comfyui_harness import register_checkpoint_names, validate_prompt

    workflow = json.loads((REPO_ROOT / "example_workflows" / name).read_text())
    prompt = ui_workflow_to_prompt(workflow, comfyui.node)
    assert {"ZigzagSampler", "ZigzagGuidanceInterval", "KSampler"} & {node["class_type"] for node in prompt.values()}
    checkpoints = sorted({node["inputs"]["ckpt_name"] for node in prompt.values() if "ckpt_name" in node["inputs"]})
    register_checkpoint_names(tmp_path / "checkpoints", checkpoints)
    valid, error, outputs, node_errors = validate_prompt(prompt)
    assert valid, (error, node_errors)
    assert node_errors == {} and outputs


def test_pack_pyproject_parses_with_comfyui_config_parser(comfyui):
    from comfy_config import config_parser  # needs pydantic-settings (tools/install-dev.sh)

    config = config_parser.extract_node_configuration(str(PACK_DIR))
    assert config.project.name == "comfyui-zigzag"
    assert config.project.version == zigzag_kdiff.__version__
    assert config.project.dependencies == ["torch>=2.0", "tqdm"]  # PyPI only: the library ships with the pack
    assert config.project.supported_comfyui_version == ">=0.3.75"
    assert config.tool_comfy.publisher_id and config.tool_comfy.display_name


LOCATE_SCRIPT = """
import importlib.machinery, importlib.util, sys
ORIGINAL_PATH = list(sys.path)

class HideInstalledEngine:  # zigzag_kdiff is importable only from paths added after start-up
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "zigzag_kdiff":
            return None
        added = [entry for entry in sys.path if entry not in ORIGINAL_PATH]
        spec = importlib.machinery.PathFinder.find_spec(name, added)
        if spec is None:
            raise ModuleNotFoundError("No module named 'zigzag_kdiff'", name="zigzag_kdiff")
        return spec

sys.meta_path.insert(0, HideInstalledEngine)
spec = importlib.util.spec_from_file_location("pack_locate", sys.argv[1])
locate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(locate)
print(locate.import_zigzag_kdiff().__file__)
"""


def run_locate(pack: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    command = [sys.executable, "-c", LOCATE_SCRIPT, str(pack / "locate.py")]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_pack_finds_the_checkout_engine_through_a_symlink(tmp_path):
    custom_nodes = tmp_path / "custom_nodes"
    custom_nodes.mkdir()
    (custom_nodes / "comfyui_zigzag").symlink_to(PACK_DIR, target_is_directory=True)
    linked = run_locate(custom_nodes / "comfyui_zigzag", tmp_path)
    assert linked.returncode == 0, linked.stderr
    assert Path(linked.stdout.strip()) == REPO_ROOT / "zigzag_kdiff" / "__init__.py"
    shutil.copytree(PACK_DIR, tmp_path / "copied", ignore=shutil.ignore_patterns("__pycache__"))
    copied = run_locate(tmp_path / "copied", tmp_path)
    assert copied.returncode != 0 and "pip install zigzag-kdiff" in copied.stderr
