"""SEG through ``zigzag_kdiff.diffusers.generate`` on tiny SD 1.5-, SD 2-v- and SDXL-architecture pipelines."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("k_diffusion")

from zigzag_kdiff.diffusers import generate  # noqa: E402
from zigzag_kdiff.seg import SEGAttnProcessor, seg_attention, self_attention_layers  # noqa: E402
from zigzag_kdiff.tiny import TINY_KINDS, tiny_pipeline  # noqa: E402

STEPS = 4


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread for this module


def run(pipe, prompt="a dog", **kwargs):
    options = {"steps": STEPS, "seed": 0, "output_type": "latent", "disable_progress": True, **kwargs}
    return generate(pipe, prompt, **options)


def processors(pipe) -> dict:
    return dict(pipe.unet.attn_processors)


def same_objects(before: dict, after: dict) -> bool:
    return before.keys() == after.keys() and all(before[k] is after[k] for k in before)


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_seg_scale_zero_is_bit_identical_and_seg_changes_the_result(pipes, kind):
    pipe = pipes[kind]
    plain = run(pipe, sampler="euler")
    off = run(pipe, sampler="euler", seg_scale=0.0, seg_blur_sigma=1.0, seg_applied_layers=("up",))
    assert torch.equal(plain.latents, off.latents) and off.batch_rows == plain.batch_rows == 2 * STEPS
    assert "seg" not in off.settings
    seg = run(pipe, sampler="euler", seg_scale=3.0, seg_applied_layers=("down", "mid", "up"))
    assert seg.batch_rows == 3 * STEPS and seg.model_calls == STEPS
    assert not torch.allclose(seg.latents, plain.latents)
    assert seg.settings["seg"]["seg_applied_layers"] == ["down", "mid", "up"]


@pytest.mark.parametrize(
    "sampler,options,cfg,rows",
    [
        ("euler", {}, 5.5, 3 * STEPS),
        ("euler", {}, 1.0, 2 * STEPS),  # [cond, cond_blur]
        ("dpmpp_2m", {}, 5.5, 3 * STEPS),
        ("heun", {}, 5.5, 3 * (2 * STEPS - 1)),  # k-diffusion's Heun: 2 calls per step but the last
        ("zigzag_euler", {}, 5.5, 3 * STEPS + (1 + 3) * (STEPS - 1)),  # 3 + 1 + 3 per zigzag step
        ("zigzag_ddim", {"inversion_scale": 1.0}, 5.5, 3 * STEPS + (1 + 3) * (STEPS - 1)),  # γ₂ = 1: cond only
        ("zigzag_euler", {"inversion_scale": 2.0}, 5.5, 3 * STEPS + (2 + 3) * (STEPS - 1)),
    ],
)
def test_rows_per_sampler(pipes, sampler, options, cfg, rows):
    result = run(
        pipes["sd15"], ["a dog", "a cat"], sampler=sampler, sampler_options=options, cfg_scale=cfg, seg_scale=3.0
    )
    assert result.batch_rows == 2 * rows


def test_seg_in_inversion_calls_and_the_seg_interval(pipes):
    pipe = pipes["sdxl"]
    both = run(pipe, sampler="zigzag_euler", seg_scale=3.0, inversion_seg_scale=3.0)
    assert both.batch_rows == 3 * STEPS + (3 + 3) * (STEPS - 1)
    sigmas = both.sigmas.tolist()
    interval = (sigmas[2] - 1e-4, sigmas[1] + 1e-4)  # the denoising calls at σ₁ and σ₂ get the blurred row
    narrow = run(pipe, sampler="zigzag_euler", seg_scale=3.0, seg_interval=interval)
    # denoising: σ₀ (2 rows, ×2 with its zigzag), σ₁ and σ₂ (3 rows, ×2), σ₃ (2 rows); inversions 1 row each
    assert narrow.batch_rows == 2 * 2 + 3 * 2 + 3 * 2 + 2 + 3 * 1
    assert narrow.settings["seg"]["seg_interval"] == list(interval)


def test_non_square_sdxl_with_batch_and_negative_prompt(pipes):
    pipe = pipes["sdxl"]
    result = run(
        pipe, ["a dog", "a cat"], negative_prompt="blurry", width=96, height=64, num_images_per_prompt=2,
        sampler="dpmpp_2m", schedule="karras", seg_scale=3.0, seg_blur_sigma=1.0, seg_applied_layers=("d0", "up"),
    )  # fmt: skip
    assert result.latents.shape == (4, 4, 8, 12) and torch.isfinite(result.latents).all()
    assert result.batch_rows == 4 * 3 * STEPS


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_processors_restored_after_an_error_inside_the_unet(pipes, error):
    pipe = pipes["sdxl"]
    before = processors(pipe)
    calls = []

    def fail_on_third_call(module, args):
        calls.append(1)
        if len(calls) == 3:
            assert any(isinstance(p, SEGAttnProcessor) for p in pipe.unet.attn_processors.values())
            raise error("stop")

    handle = pipe.unet.mid_block.register_forward_pre_hook(fail_on_third_call)
    try:
        with pytest.raises(error):
            run(pipe, sampler="zigzag_euler", seg_scale=3.0, seg_applied_layers=("down", "mid", "up"))
    finally:
        handle.remove()
    assert same_objects(before, processors(pipe))
    assert not pipe.unet._forward_pre_hooks  # the latent-size hook is gone too


def test_custom_processors_are_restored_exactly_and_used_for_the_other_rows(pipes):
    """A processor installed before (here: a counting wrapper) comes back as the same object, and it still
    computes the unblurred rows while SEG is on."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe = pipes["sd15"]
    original = processors(pipe)

    class Counting(AttnProcessor2_0):
        rows = 0

        def __call__(self, attn, hidden_states, *args, **kwargs):
            Counting.rows += hidden_states.shape[0]
            return super().__call__(attn, hidden_states, *args, **kwargs)

    custom = {name: Counting() for name in original}
    pipe.unet.set_attn_processor(dict(custom))  # it pops from the dict it is given
    try:
        run(pipe, sampler="euler", seg_scale=3.0, seg_applied_layers=("mid",))
        assert same_objects(custom, processors(pipe))
        mid = len(self_attention_layers(pipe.unet.named_modules())["mid"])
        layers = len(custom)
        # every layer sees 3 rows per step except the SEG'd mid self-attention, whose base sees [uncond, cond]
        assert Counting.rows == STEPS * (3 * layers - mid)
    finally:
        pipe.unet.set_attn_processor(dict(original))


def test_bad_input_raises_before_any_model_call(pipes):
    pipe = pipes["sdxl"]
    before = processors(pipe)
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *a: calls.append(1)) for m in (pipe.unet, pipe.text_encoder)]
    try:
        cases = [
            ({"seg_scale": -1.0}, r"seg_scale must be a finite number >= 0"),
            ({"seg_scale": 3.0, "seg_blur_sigma": 0.0}, r"seg_blur_sigma must be > 0"),
            ({"seg_scale": 3.0, "seg_applied_layers": ("middle",)}, r"seg_applied_layers has an unknown layer name"),
            ({"seg_scale": 3.0, "seg_applied_layers": ("m7",)}, r"m7, which does not exist; .* 2 mid \(indices 0–1\)"),
            ({"seg_scale": 3.0, "seg_applied_layers_index": ("u99",)}, r"u99, which does not exist"),
            ({"seg_scale": 3.0, "seg_interval": (5.0, 1.0)}, r"seg_interval must have sigma_low <= sigma_high"),
            ({"inversion_seg_scale": -2.0}, r"inversion_seg_scale must be a finite number >= 0"),
        ]
        for kwargs, match in cases:
            with pytest.raises(ValueError, match=match):
                run(pipe, sampler="zigzag_euler", **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == [] and same_objects(before, processors(pipe))


def test_official_index_list_takes_precedence(pipes):
    pipe = pipes["sdxl"]
    by_index = run(pipe, sampler="euler", seg_scale=3.0, seg_applied_layers=("mid",), seg_applied_layers_index=("u1",))
    by_name = run(pipe, sampler="euler", seg_scale=3.0, seg_applied_layers=("u1",))
    assert torch.equal(by_index.latents, by_name.latents)


def test_context_manager_records_the_latent_size_and_restores(pipes):
    pipe = pipes["sd15"]
    before = processors(pipe)
    with seg_attention(pipe.unet, ["mid"], 2.0) as state:
        assert state.blur_sigma == 2.0 and state.blur_rows is None
        x = torch.randn(1, 4, 8, 12)
        pipe.unet(x, torch.tensor([10]), encoder_hidden_states=torch.zeros(1, 77, 32))
        assert state.latent_size == (8, 12)
    assert same_objects(before, processors(pipe))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_pipelines(dtype):
    pipe = tiny_pipeline("sdxl").to(dtype=dtype)
    result = run(pipe, sampler="euler", seg_scale=3.0, seg_blur_sigma=1.0, steps=2)
    assert torch.isfinite(result.latents).all() and result.batch_rows == 6


@pytest.mark.parametrize("schedule", ["ddim", "karras", "exponential", "model"])
def test_every_schedule_on_v_prediction(pipes, schedule):
    result = run(pipes["sd2-v"], sampler="euler", schedule=schedule, seg_scale=3.0, seg_applied_layers=("up",))
    plain = run(pipes["sd2-v"], sampler="euler", schedule=schedule)
    assert torch.isfinite(result.latents).all() and result.batch_rows == 3 * STEPS
    assert not torch.equal(result.latents, plain.latents)
