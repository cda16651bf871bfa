"""The Smoothed Energy Guidance nodes against the real ComfyUI core (0.3.75) on CPU, tiny SD1.5 UNet.

Rows are ComfyUI's own bookkeeping: each UNet call's ``cond_or_uncond`` (0 positive, 1 negative,
2 the blurred positive), counted per call and per sampling step (steps end at progress updates).
Cost per step (ComfyUI, batch 1): one UNet call with 3 rows (positive, negative, blurred) with CFG,
2 rows (positive, blurred) at cfg 1; outside the SEG interval 2 / 1; Zigzag inversion calls carry no
blurred row (a zigzag step with γ₂ = 0: 3 + 2 + 3 rows in 3 calls).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest
import torch
from comfyui_harness import TINY_UNET, comfyui_or_skip, conditioning, tiny_sd15

from zigzag_kdiff import CFGDenoiser, sample_zigzag_euler
from zigzag_kdiff.seg import SEGOptions, SEGState, blur_queries, combine

CFG = 5.0
STEPS = 6
POS = conditioning(0.5, seed=1)
NEG = conditioning(-0.5, seed=2)
INVERSION_KEY = "zigzag_kdiff_inversion"
ALL_LAYERS = "down,mid,up"


@dataclass(frozen=True)
class Call:
    rows: tuple[int, int, int]  # (positive, negative, blurred positive)
    sigma: float
    inversion: bool


class RowLog:
    """``model_function_wrapper``: every UNet call's rows by branch; a step ends at the sampler's per-step
    callback (a ``sampler_sample`` wrapper, as the harness's PassCounter: ComfyUI >= 0.9 throttles the
    global progress hook, which would merge fast steps)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.step_ends: list[int] = []
        self.fail_at: int | None = None  # raise inside this call (1-based), to test state after errors

    def reset(self) -> None:
        self.calls.clear()
        self.step_ends.clear()

    def __call__(self, apply_model, args: dict) -> torch.Tensor:
        chunks = args["cond_or_uncond"]
        rows = [0, 0, 0]
        for chunk in chunks:
            rows[chunk] += args["input"].shape[0] // len(chunks)
        inversion = bool(args["c"]["transformer_options"].get(INVERSION_KEY))
        self.calls.append(Call(tuple(rows), float(args["timestep"].max()), inversion))
        if self.fail_at == len(self.calls):
            raise RuntimeError("failure inside a UNet call")
        return apply_model(args["input"], args["timestep"], **args["c"])

    def __deepcopy__(self, memo: dict) -> RowLog:
        return self

    def sampler_sample(self, executor, guider, sigmas, extra_args, callback, *args):
        """WrappersMP.SAMPLER_SAMPLE wrapper: the sampler's per-step callback ends a step."""

        def step_done(step, x0, x, total_steps):
            self.step_ends.append(len(self.calls))
            if callback is not None:
                callback(step, x0, x, total_steps)

        return executor(guider, sigmas, extra_args, step_done, *args)

    def per_step(self) -> list[tuple[int, int, int]]:
        """Rows of each finished step, summed over its calls."""
        steps, start = [], 0
        for end in self.step_ends:
            steps.append(tuple(sum(call.rows[b] for call in self.calls[start:end]) for b in range(3)))
            start = end
        return steps


@pytest.fixture(scope="module")
def comfyui():
    return comfyui_or_skip(keep_progress_hook=True)


@pytest.fixture(scope="module")
def seg(comfyui):
    """This module's own tiny model (same weights as the harness's) counted by a RowLog."""

    log = RowLog()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = tiny_sd15(log)
    with torch.no_grad():  # norm gains near 1 as trained models have (at 0.01 every token looks alike: no blur shows)
        for module in model.model.diffusion_model.modules():
            if isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)) and module.weight is not None:
                module.weight.add_(1.0)
    yield type("SEG", (), {"log": log, "model": model, "node": comfyui.node, "nodes": comfyui.nodes})
    torch.set_num_threads(threads)


def pack(module: str):
    """A module of the node pack as ComfyUI's loader imported it (named by the pack's path)."""
    return next(m for name, m in sys.modules.items() if name.endswith(f"comfyui_zigzag.{module}"))


def latent(batch: int = 1, height: int = 8, width: int = 8, seed: int | None = None) -> dict:
    if seed is None:
        return {"samples": torch.zeros(batch, 4, height, width)}
    return {"samples": torch.randn(batch, 4, height, width, generator=torch.Generator().manual_seed(seed))}


def seg_model(seg, model=None, scale=3.0, blur=-1.0, layers="mid", start=0.0, end=1.0):
    return seg.node["ZigzagSmoothedEnergyGuidance"].execute(model or seg.model, scale, blur, layers, start, end)[0]


def seg_sigmas_model(seg, low, high, model=None, scale=3.0, blur=-1.0, layers="mid"):
    return seg.node["ZigzagSmoothedEnergyGuidanceSigmas"].execute(model or seg.model, scale, blur, layers, low, high)[0]


def ksampler(seg, model, name="euler", *, cfg=CFG, steps=STEPS, image=None, seed=0):
    seg.log.reset()
    node = seg.nodes.KSampler()
    (out,) = node.sample(model, seed, steps, cfg, name, "normal", POS, NEG, image or latent(), 1.0)
    return out["samples"]


def sampler_custom(seg, model, sampler, sigmas, *, cfg=CFG, image=None, seed=0):
    seg.log.reset()
    out = seg.node["SamplerCustom"].execute(model, True, seed, cfg, POS, NEG, sampler, sigmas, image or latent())
    return out[0]["samples"]


def schedule(seg, model=None, steps=STEPS):
    return seg.node["BasicScheduler"].execute(model or seg.model, "normal", steps, 1.0)[0]


# --- loading -------------------------------------------------------------------------------------------


def test_nodes_load_with_comfyui_loader(comfyui):
    for node_id, name in [
        ("ZigzagSmoothedEnergyGuidance", "Smoothed Energy Guidance"),
        ("ZigzagSmoothedEnergyGuidanceSigmas", "Smoothed Energy Guidance (Sigmas)"),
    ]:
        assert comfyui.nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id] == name
        node = comfyui.node[node_id]
        assert node.CATEGORY == "advanced/guidance" and list(node.RETURN_TYPES) == ["MODEL"]
        required = node.INPUT_TYPES()["required"]
        assert required["seg_scale"][1]["default"] == 3.0 and required["seg_blur_sigma"][1]["default"] == -1.0
        assert required["seg_applied_layers"][1]["default"] == "mid"


# --- output and bit-identity -----------------------------------------------------------------------------


def test_seg_changes_the_output_and_scale_zero_is_bit_identical(seg):
    plain = ksampler(seg, seg.model)
    assert all(call.rows == (1, 1, 0) for call in seg.log.calls)
    guided = ksampler(seg, seg_model(seg, layers=ALL_LAYERS))
    assert torch.isfinite(guided).all() and (guided - plain).abs().max() > 1e-3
    assert torch.equal(guided, ksampler(seg, seg_model(seg, layers=ALL_LAYERS)))  # deterministic
    off = seg_model(seg, scale=0.0, layers=ALL_LAYERS)
    assert "sampler_calc_cond_batch_function" not in off.model_options
    assert torch.equal(ksampler(seg, off), plain)
    assert all(call.rows == (1, 1, 0) for call in seg.log.calls)
    # a SEG node at scale 0 after a SEG node removes it
    assert torch.equal(ksampler(seg, seg_model(seg, model=seg_model(seg), scale=0.0)), plain)


def test_combination_is_the_librarys(seg):
    """The post-CFG sum equals zigzag_kdiff.seg.combine on ComfyUI's own branch predictions, bit for bit."""
    captured = {}
    patched = seg_model(seg, layers=ALL_LAYERS)
    seg_patch = patched.model_options["sampler_calc_cond_batch_function"].__self__
    own_post = patched.model_options["sampler_post_cfg_function"][-1]

    def spy(args):
        captured.update(pending=seg_patch._pending, args=args)
        out = own_post(args)
        captured["out"] = out
        return out

    patched.model_options["sampler_post_cfg_function"][-1] = spy
    for cfg in (CFG, 1.0):
        ksampler(seg, patched, cfg=cfg, steps=2)
        args, (_, scale, blurred) = captured["args"], captured["pending"]
        uncond = args["uncond_denoised"] if cfg != 1.0 else None
        expected = combine(uncond, args["cond_denoised"], blurred, cfg, scale)
        assert scale == 3.0 and torch.equal(captured["out"], expected)


# --- rows per step ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg,batch,rows", [(CFG, 1, (1, 1, 1)), (1.0, 1, (1, 0, 1)), (CFG, 2, (2, 2, 2))])
def test_rows_per_step_with_and_without_cfg(seg, cfg, batch, rows):
    ksampler(seg, seg_model(seg), cfg=cfg, image=latent(batch=batch))
    assert seg.log.per_step() == [rows] * STEPS
    assert len(seg.log.calls) == STEPS  # the blurred rows ride in the same UNet call


def test_rows_only_inside_the_interval_percent_and_sigmas(seg):
    model_sampling = seg.model.get_model_object("model_sampling")
    sigmas = schedule(seg)
    high, low = model_sampling.percent_to_sigma(0.2), model_sampling.percent_to_sigma(0.6)
    inside = [low <= float(s) <= high for s in sigmas[:-1]]
    assert 0 < sum(inside) < STEPS
    expected = [(1, 1, int(i)) for i in inside]
    ksampler(seg, seg_model(seg, start=0.2, end=0.6))
    assert seg.log.per_step() == expected
    ksampler(seg, seg_sigmas_model(seg, low, high))
    assert seg.log.per_step() == expected
    ksampler(seg, seg_model(seg, start=0.2, end=0.6), cfg=1.0)
    assert seg.log.per_step() == [(1, 0, int(i)) for i in inside]


def test_zigzag_inversion_calls_carry_no_blurred_row(seg):
    patched = seg_model(seg)
    ksampler(seg, patched, "zigzag_euler")
    # per zigzag step: denoise [pos, neg, blur], inversion at γ₂ = 0 [neg] alone (SEG's hooks do not keep the
    # adapter from its one-branch inversion), denoise again: 3 + 1 + 3 rows, as the library
    assert seg.log.per_step() == [(2, 3, 2)] * (STEPS - 1) + [(1, 1, 1)]
    inversions = [call for call in seg.log.calls if call.inversion]
    assert len(inversions) == STEPS - 1 and all(call.rows == (0, 1, 0) for call in inversions)
    assert all(call.rows == (1, 1, 1) for call in seg.log.calls if not call.inversion)
    zigzag_node = seg.node["ZigzagSampler"].execute("ddim", 1.0, 1.0, "fraction", 1, False, 0.28, 5.42)[0]
    sampler_custom(seg, patched, zigzag_node, schedule(seg))
    # γ₂ = 1: ComfyUI drops the negative in inversion calls; still no blurred row there
    assert [c.rows for c in seg.log.calls if c.inversion] == [(1, 0, 0)] * (STEPS - 1)


def test_composes_with_guidance_interval_and_cfg_guider(seg):
    model_sampling = seg.model.get_model_object("model_sampling")
    sigmas = schedule(seg)
    both = seg.node["ZigzagGuidanceInterval"].execute(seg_model(seg), 0.3, 1.0)[0]
    ksampler(seg, both)
    guided = [float(s) <= model_sampling.percent_to_sigma(0.3) for s in sigmas[:-1]]
    assert seg.log.per_step() == [(1, int(g), 1) for g in guided]  # SEG everywhere, CFG inside only
    guider = seg.node["CFGGuider"].execute(seg_model(seg), POS, NEG, CFG)[0]
    noise = seg.node["RandomNoise"].execute(0)[0]
    seg.log.reset()
    sampler = seg.node["KSamplerSelect"].execute("euler")[0]
    advanced = seg.node["SamplerCustomAdvanced"].execute(noise, guider, sampler, sigmas, latent())[0]["samples"]
    assert seg.log.per_step() == [(1, 1, 1)] * STEPS
    assert torch.equal(advanced, ksampler(seg, seg_model(seg)))


# --- state: no leak, cloning, non-square -------------------------------------------------------------------


def test_no_leak_into_a_later_run_without_the_node(seg):
    before = ksampler(seg, seg.model)
    options_before = repr(sorted(seg.model.model_options))
    ksampler(seg, seg_model(seg, layers=ALL_LAYERS), "zigzag_euler")
    assert repr(sorted(seg.model.model_options)) == options_before
    assert "patches_replace" not in seg.model.model_options.get("transformer_options", {})
    after = ksampler(seg, seg.model)
    assert torch.equal(before, after) and all(call.rows[2] == 0 for call in seg.log.calls)


def test_an_error_or_interrupt_inside_a_blurred_call_leaves_nothing_behind(seg):
    import comfy.model_management as mm

    patched = seg_model(seg, layers=ALL_LAYERS)
    expected, plain = ksampler(seg, patched), ksampler(seg, seg.model)
    seg.log.fail_at = 2
    try:
        with pytest.raises(RuntimeError, match="failure inside a UNet call"):
            ksampler(seg, patched)
        assert seg.log.calls[-1].rows == (1, 1, 1)
    finally:
        seg.log.fail_at = None
    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        ksampler(seg, patched)
    assert not mm.processing_interrupted()
    assert torch.equal(ksampler(seg, seg.model), plain) and all(call.rows[2] == 0 for call in seg.log.calls)
    assert torch.equal(ksampler(seg, patched), expected)


def test_another_nodes_batch_function_runs_unchanged_and_seg_adds_one_call(seg):
    import comfy.samplers

    seen = []

    def other_node(args):  # e.g. another extension's sampler_calc_cond_batch_function
        seen.append(len(args["conds"]))
        return comfy.samplers.calc_cond_batch(
            args["model"], args["conds"], args["input"], args["sigma"], args["model_options"]
        )

    base = seg.model.clone()
    base.set_model_sampler_calc_cond_batch_function(other_node)
    same_batch = ksampler(seg, seg_model(seg, layers=ALL_LAYERS))
    extra_call = ksampler(seg, seg_model(seg, model=base, layers=ALL_LAYERS))
    assert [call.rows for call in seg.log.calls] == [(1, 1, 0), (0, 0, 1)] * STEPS and seen == [2] * STEPS
    # the same guidance up to float32 rounding of other batch compositions (far below SEG's own effect)
    assert (extra_call - same_batch).abs().max() < 1e-5 * same_batch.abs().max()
    again = seg_model(seg, model=seg_model(seg, model=base), scale=0.0)  # SEG removed: the other node stays
    assert again.model_options["sampler_calc_cond_batch_function"] is other_node


def test_survives_model_cloning_and_later_patches(seg):
    patched = seg_model(seg, layers=ALL_LAYERS)
    expected = ksampler(seg, patched)
    clone = patched.clone()
    assert torch.equal(ksampler(seg, clone), expected) and seg.log.per_step() == [(1, 1, 1)] * STEPS
    shifted = seg.node["ModelSamplingDiscrete"]().patch(patched, "eps", False)[0]  # another node's clone
    assert torch.equal(ksampler(seg, shifted), expected) and seg.log.per_step() == [(1, 1, 1)] * STEPS


@pytest.mark.parametrize("height,width", [(8, 12), (6, 10)])
def test_non_square_latents(seg, height, width):
    image = latent(height=height, width=width)
    plain = ksampler(seg, seg.model, image=image)
    for blur in (-1.0, 1.0):
        guided = ksampler(seg, seg_model(seg, blur=blur, layers=ALL_LAYERS), image=image)
        assert guided.shape == (1, 4, height, width) and torch.isfinite(guided).all()
        assert seg.log.per_step() == [(1, 1, 1)] * STEPS and not torch.allclose(guided, plain)


def test_blurred_attention_is_the_librarys_blur_on_the_true_grid(seg):
    import comfy.ldm.modules.attention as attention

    BlurredSelfAttention = pack("seg_nodes").BlurredSelfAttention

    generator = torch.Generator().manual_seed(0)
    rows, height, width, heads, channels = 2, 3, 5, 2, 8
    q, k, v = (torch.randn(3 * rows, height * width, channels, generator=generator) for _ in range(3))
    options = {"cond_or_uncond": [2, 1, 0], "activations_shape": [3 * rows, 4, height, width], "n_heads": heads}
    out = BlurredSelfAttention(1.5)(q, k, v, options)
    blurred_q = torch.cat([blur_queries(q[:rows], height, width, 1.5), q[rows:]])
    assert torch.equal(out, attention.optimized_attention(blurred_q, k, v, heads))
    plain = attention.optimized_attention(q, k, v, heads)
    assert torch.equal(out[rows:], plain[rows:]) and not torch.allclose(out[:rows], plain[:rows])
    # without a blurred chunk the patch is ComfyUI's own attention
    assert torch.equal(BlurredSelfAttention(1.5)(q, k, v, {**options, "cond_or_uncond": [1, 0, 0]}), plain)


# --- layers ------------------------------------------------------------------------------------------------


SDXL_LIKE = {
    **TINY_UNET,
    "num_res_blocks": [1, 1],
    "transformer_depth": [0, 2],
    "transformer_depth_middle": 3,
    "transformer_depth_output": [0, 0, 2, 2],
}


def _official_to_comfy(config: dict) -> list[tuple[str, int, int]]:
    """Self-attention layers in the diffusers UNet's order, as ComfyUI's own diffusers key map places them."""
    import re

    import comfy.utils

    mapping = comfy.utils.unet_to_diffusers(config)
    pattern = re.compile(
        r"^(down_blocks|mid_block|up_blocks)\.(?:(\d+)\.)?attentions\.(\d+)\.transformer_blocks\.(\d+)"
        r"\.attn1\.to_q\.weight$"
    )
    official = sorted(
        ({"down_blocks": 0, "mid_block": 1, "up_blocks": 2}[m[1]], int(m[2] or 0), int(m[3]), int(m[4]), key)
        for key in mapping
        if (m := pattern.match(key))
    )
    layers = []
    for *_, key in official:
        parts = mapping[key].split(".")  # input_blocks.3.1.transformer_blocks.0…, middle_block.1.transformer_blocks.0…
        name = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}[parts[0]]
        index = int(parts[parts.index("transformer_blocks") + 1])
        layers.append((name, 0 if name == "middle" else int(parts[1]), index))
    return layers


@pytest.mark.parametrize("config", [TINY_UNET, SDXL_LIKE], ids=["sd15-like", "sdxl-like"])
def test_official_index_names_count_layers_as_diffusers(seg, config):
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops

    resolve_layers, unet_self_attention_layers = (
        pack("seg_nodes").resolve_layers,
        pack("seg_nodes").unet_self_attention_layers,
    )

    unet = openaimodel.UNetModel(**{**config, "num_head_channels": 32}, operations=comfy.ops.disable_weight_init)
    groups = unet_self_attention_layers(unet)
    official = _official_to_comfy(config)
    assert [key for g in ("down", "mid", "up") for key in groups[g]] == official
    counts = {g: len(groups[g]) for g in groups}
    names = [f"{g[0]}{i}" for g in ("down", "mid", "up") for i in range(counts[g])]
    assert [resolve_layers(unet, name)[0] for name in names] == official
    assert resolve_layers(unet, "mid") == resolve_layers(unet, "middle:0") == groups["mid"]
    assert resolve_layers(unet, "down,up") == groups["down"] + groups["up"]


def test_layer_names_on_the_tiny_model_and_bad_settings(seg):
    resolve_layers = pack("seg_nodes").resolve_layers

    unet = seg.model.get_model_object("diffusion_model")
    assert resolve_layers(unet, "d1, m0,u0") == [("input", 3, 0), ("middle", 0, 0), ("output", 0, 0)]
    assert resolve_layers(unet, "output:3.0,input:1") == [("input", 1, 0), ("output", 3, 0)]
    ksampler(seg, seg_model(seg, layers="d1,m0"))  # two layers: still one blurred row per step
    assert seg.log.per_step() == [(1, 1, 1)] * STEPS
    for layers, match in [
        ("m1", r"seg_applied_layers names m1, which does not exist; this model has 2 down"),
        ("input:2", r"seg_applied_layers names 'input:2', which has no self-attention layer"),
        ("left", r"seg_applied_layers has an unknown layer name 'left'"),
        (" , ", r"seg_applied_layers must name at least one layer"),
    ]:
        with pytest.raises(ValueError, match=match):
            seg_model(seg, layers=layers)
    for blur in (0.0, -0.5):
        with pytest.raises(ValueError, match=r"seg_blur_sigma must be -1 \(infinite blur\) or > 0"):
            seg_model(seg, blur=blur)
    with pytest.raises(ValueError, match=r"start_percent <= end_percent"):
        seg_model(seg, start=0.8, end=0.2)
    with pytest.raises(ValueError, match=r"must have sigma_low <= sigma_high"):
        seg_sigmas_model(seg, 5.0, 1.0)
    with pytest.raises(ValueError, match=r"seg_scale must be a finite number >= 0"):
        seg_model(seg, scale=-1.0)


# --- the same numbers as zigzag_kdiff ---------------------------------------------------------------------


def test_zigzag_with_seg_matches_zigzag_kdiff_end_to_end(seg):
    """ComfyUI (KSampler zigzag_euler + SEG node) against the library's CFGDenoiser + SEGState on the same UNet.

    The library side drives ComfyUI's BaseModel directly: its own attn1 replace blurs the rows that
    SEGState.blur_rows names (the library's [uncond, cond, cond_blur] layout), sample_zigzag_euler runs the
    engine with inversion calls without SEG (inversion_seg_scale 0). Without SEG the two paths already
    differ by float32 rounding (other batch order, ~4e-6 of the latent's range after 16 calls); with SEG the
    difference must stay at that level, far below SEG's own effect.
    """
    import comfy.ldm.modules.attention
    import comfy.samplers

    blur, layers, image = 2.0, "d1,m0,u2", latent(seed=5, height=8, width=12)
    keys = pack("seg_nodes").resolve_layers(seg.model.get_model_object("diffusion_model"), layers)
    state = SEGState(SEGOptions(seg_blur_sigma=blur).seg_blur_sigma)

    def replace(q, k, v, extra):
        rows = state.blur_rows
        if rows is not None:
            height, width = extra["activations_shape"][-2:]
            q = torch.cat([q[: rows.start], blur_queries(q[rows], height, width, state.blur_sigma), q[rows.stop :]])
        return comfy.ldm.modules.attention.optimized_attention(q, k, v, extra["n_heads"])

    def library(seg_scale: float) -> torch.Tensor:
        def sampler(model, x, sigmas, extra_args=None, callback=None, disable=None):
            guider = model.inner_model
            context = {n: guider.conds[n][0]["model_conds"]["c_crossattn"].cond for n in ("positive", "negative")}
            options = {"patches_replace": {"attn1": {key: replace for key in keys}}}

            def denoiser(x, sigma, cond):
                return guider.inner_model.apply_model(x, sigma, c_crossattn=cond, transformer_options=options)

            guided = CFGDenoiser(denoiser, seg_state=state)
            args = {
                "cond": context["positive"],
                "uncond": context["negative"],
                "cond_scale": CFG,
                "seg_scale": seg_scale,
            }
            return sample_zigzag_euler(guided, x, sigmas, args, callback, disable)

        return sampler_custom(seg, seg.model, comfy.samplers.KSAMPLER(sampler), schedule(seg), image=image)

    comfy_seg = ksampler(seg, seg_model(seg, blur=blur, layers=layers), "zigzag_euler", image=image)
    comfy_plain = ksampler(seg, seg.model, "zigzag_euler", image=image)
    rounding = (library(0.0) - comfy_plain).abs().max()
    difference = (library(3.0) - comfy_seg).abs().max()
    effect = (comfy_seg - comfy_plain).abs().max()
    # bit for bit: the same rows in the same batches (the inversions at γ₂ = 0 on the negative batch alone)
    assert rounding == 0 and difference == 0 and effect > 1.0
