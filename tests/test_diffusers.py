"""The diffusers integration on tiny random SD 1.5-, SD 2-v- and SDXL-architecture pipelines."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("k_diffusion")

from zigzag_kdiff import count_model_calls  # noqa: E402
from zigzag_kdiff.diffusers import (  # noqa: E402
    decode_latents,
    encode_prompts,
    generate,
    load_pipeline,
    single_file_pipeline_class,
)
from zigzag_kdiff.tiny import TINY_KINDS  # noqa: E402

STEPS = 5


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread for this module


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


def latents(pipe, **kwargs) -> torch.Tensor:
    options = {"steps": STEPS, "seed": 0, "output_type": "latent", "disable_progress": True, **kwargs}
    return generate(pipe, kwargs.pop("prompt", "a small yellow dog"), **options).latents


# --- the pipeline's own DDIM equals our Euler path on the ddim schedule -------------------------------


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_euler_on_ddim_schedule_equals_the_pipelines_ddim(pipes, kind):
    """diffusers' own pipeline with its DDIMScheduler (encode_prompt, SDXL zero-uncond and time ids,
    v-prediction) and our generate(sampler="euler", schedule="ddim") give the same latents."""
    from diffusers import DDIMScheduler

    pipe = pipes[kind]
    original = pipe.scheduler
    pipe.scheduler = DDIMScheduler.from_config(original.config, clip_sample=False, set_alpha_to_one=False)
    try:
        negative = "blurry" if kind == "sd15" else None
        noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
        reference = pipe(
            ["a small yellow dog", "a man on a bicycle"],
            negative_prompt=[negative] * 2 if negative else None,
            latents=noise.clone(),
            num_inference_steps=STEPS,
            guidance_scale=5.5,
            output_type="latent",
        ).images
        ours = generate(
            pipe,
            ["a small yellow dog", "a man on a bicycle"],
            negative_prompt=negative,
            sampler="euler",
            schedule="ddim",
            steps=STEPS,
            cfg_scale=5.5,
            noise=noise,
            output_type="latent",
            disable_progress=True,
        ).latents
    finally:
        pipe.scheduler = original
    assert relative_error(ours, reference) <= 1e-4


# --- shapes, determinism, branch rows -------------------------------------------------------------


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_prompts_times_images_per_prompt_give_pil_images_of_the_asked_size(pipes, kind):
    result = generate(
        pipes[kind],
        ["a dog", "a cat"],
        negative_prompt="blurry",
        num_images_per_prompt=2,
        height=48,
        width=64,
        steps=3,
        seed=7,
        sampler="zigzag_ddim",
        disable_progress=True,
    )
    assert len(result.images) == 4 and all(image.size == (64, 48) for image in result.images)
    assert result.latents.shape == (4, 4, 6, 8) and torch.isfinite(result.latents).all()
    assert result.seeds == [7, 8, 9, 10]


def test_same_seed_same_latents_and_images_per_seed(pipes):
    pipe = pipes["sdxl"]
    first = latents(pipe, seed=3)
    assert torch.equal(first, latents(pipe, seed=3))
    assert not torch.allclose(first, latents(pipe, seed=4))
    # seed s gives image k the seed s + k; rows do not influence each other (up to batched rounding)
    pair = latents(pipe, seed=3, num_images_per_prompt=2)
    assert relative_error(pair[:1], first) <= 1e-5
    assert relative_error(pair[1:], latents(pipe, seed=4)) <= 1e-5
    assert torch.equal(pair, latents(pipe, seed=[3, 4], num_images_per_prompt=2))


def test_zigzag_dpmpp_2m_by_name_and_without_zigzag_steps_is_dpmpp_2m(pipes):
    pipe = pipes["sd15"]
    plain = latents(pipe, sampler="dpmpp_2m", schedule="karras")
    assert torch.equal(
        latents(pipe, sampler="zigzag_dpmpp_2m", schedule="karras", sampler_options={"zigzag_steps": 0}), plain
    )
    assert not torch.allclose(latents(pipe, sampler="zigzag_dpmpp_2m", schedule="karras"), plain)


def test_ancestral_samplers_are_seeded_per_image(pipes):
    pipe = pipes["sd15"]
    first = latents(pipe, sampler="euler_ancestral", seed=1)
    assert torch.equal(first, latents(pipe, sampler="euler_ancestral", seed=1))
    assert not torch.allclose(first, latents(pipe, sampler="euler_ancestral", seed=2))


@pytest.mark.parametrize(
    "sampler,options,cfg,rows_per_image",
    [
        ("zigzag_euler", {"inversion_scale": 0.0}, 5.5, 2 * STEPS + 3 * (STEPS - 1)),  # uncond-only inversions
        ("zigzag_ddim", {"inversion_scale": 1.0, "zigzag_rounds": 2}, 5.5, 2 * STEPS + 3 * 2 * (STEPS - 1)),
        ("zigzag_euler", {"inversion_scale": 2.0, "zigzag_steps": 2}, 5.5, 2 * STEPS + 4 * 2),  # both branches
        ("zigzag_dpmpp_2m", {"inversion_scale": 0.0}, 5.5, 2 * STEPS + 3 * (STEPS - 1)),
        ("euler", {}, 5.5, 2 * STEPS),
        ("euler", {}, 1.0, STEPS),  # scale 1: the conditional branch only
    ],
)
def test_branch_rows_and_calls(pipes, sampler, options, cfg, rows_per_image):
    result = generate(
        pipes["sd2-v"],
        ["a dog", "a cat"],
        sampler=sampler,
        sampler_options=options,
        cfg_scale=cfg,
        steps=STEPS,
        seed=0,
        output_type="latent",
        disable_progress=True,
    )
    assert result.batch_rows == 2 * rows_per_image
    if sampler.startswith("zigzag"):
        expected = count_model_calls(result.sigmas, options.get("zigzag_steps"), options.get("zigzag_rounds", 1))
        assert result.model_calls == expected


def test_guidance_interval_skips_unconditional_rows_and_zigzags(pipes):
    pipe = pipes["sdxl"]
    full = generate(pipe, "a dog", steps=STEPS, seed=0, output_type="latent", disable_progress=True)
    sigmas = full.sigmas.tolist()
    interval = (sigmas[3] - 1e-4, sigmas[1] + 1e-4)  # σ₁, σ₂, σ₃ inside: steps 1 and 2 wholly inside
    narrow = generate(
        pipe, "a dog", steps=STEPS, seed=0, output_type="latent", disable_progress=True, guidance_interval=interval
    )
    # denoising at σ₁, σ₂, σ₃ guided (2 rows), at σ₀, σ₄ not (1 row); zigzag on steps 1 and 2 only,
    # each an uncond-only inversion (1 row) and a guided re-denoise (2 rows)
    assert narrow.model_calls == STEPS + 2 * 2
    assert narrow.batch_rows == 3 * 2 + 2 * 1 + 2 * (1 + 2)
    assert narrow.settings["guidance_interval"] == list(interval)


# --- conditioning -----------------------------------------------------------------------------------


def test_sdxl_zero_uncond_without_negative_prompt_and_micro_conditioning(pipes):
    pipe = pipes["sdxl"]
    cond, uncond = encode_prompts(pipe, ["a dog"], None, 1, 64, 48)
    assert not uncond["encoder_hidden_states"].any() and not uncond["added_cond_kwargs"]["text_embeds"].any()
    assert cond["encoder_hidden_states"].abs().sum() > 0
    assert cond["added_cond_kwargs"]["time_ids"].tolist() == [[64.0, 48.0, 0.0, 0.0, 64.0, 48.0]]
    _, uncond = encode_prompts(pipe, ["a dog"], ["blurry"], 1, 64, 64)
    assert uncond["encoder_hidden_states"].abs().sum() > 0
    cond, _ = encode_prompts(pipe, ["a dog"], None, 1, 64, 64, original_size=(128, 96), crops_coords_top_left=(4, 8))
    assert cond["added_cond_kwargs"]["time_ids"].tolist() == [[128.0, 96.0, 4.0, 8.0, 64.0, 64.0]]


def test_sd_uncond_is_the_empty_prompt_and_negative_prompt_changes_the_image(pipes):
    pipe = pipes["sd15"]
    _, uncond = encode_prompts(pipe, ["a dog"], None, 1, 64, 64)
    _, empty = encode_prompts(pipe, ["a dog"], [""], 1, 64, 64)
    assert torch.equal(uncond["encoder_hidden_states"], empty["encoder_hidden_states"])
    assert not torch.allclose(latents(pipe), latents(pipe, negative_prompt="blurry"))


# --- errors ---------------------------------------------------------------------------------------


def test_bad_arguments_raise_before_sampling(pipes):
    pipe = pipes["sd15"]
    with pytest.raises(ValueError, match="schedule must be one of"):
        generate(pipe, "a dog", schedule="linear")
    with pytest.raises(ValueError, match="sampler must be one of"):
        generate(pipe, "a dog", sampler="dpm_fast")  # takes sigma_min/sigma_max, not sigmas
    with pytest.raises(ValueError, match="inversion_scale"):
        generate(pipe, "a dog", cfg_scale=2.0, sampler_options={"inversion_scale": 3.0}, steps=2)
    with pytest.raises(ValueError, match="negative_prompt must be one string or 2"):
        generate(pipe, ["a", "b"], negative_prompt=["x", "y", "z"])
    with pytest.raises(ValueError, match="multiples of 8"):
        generate(pipe, "a dog", height=60)


def test_model_schedule_follows_the_pipelines_scheduler(pipes):
    from diffusers import HeunDiscreteScheduler, KDPM2DiscreteScheduler

    from zigzag_kdiff.diffusers import denoiser_for, sigmas_for

    pipe = pipes["sdxl"]  # Euler scheduler: its own sigmas, ending at 0
    own = type(pipe.scheduler).from_config(pipe.scheduler.config)
    own.set_timesteps(STEPS)
    assert torch.equal(sigmas_for(pipe, denoiser_for(pipe), "model", STEPS), own.sigmas.float())
    pipe = pipes["sd15"]  # PNDM: its timesteps (the repeated one dropped) and σ(0) at the end
    sigmas = sigmas_for(pipe, denoiser_for(pipe), "model", STEPS)
    assert len(sigmas) == STEPS + 1 and float(sigmas[-1]) == pytest.approx(0.029168, abs=1e-6)
    original = pipe.scheduler
    try:
        pipe.scheduler = HeunDiscreteScheduler.from_config(original.config)  # repeats: dropped
        assert len(sigmas_for(pipe, denoiser_for(pipe), "model", STEPS)) == STEPS + 1
        pipe.scheduler = KDPM2DiscreteScheduler.from_config(original.config)  # interpolated timesteps
        with pytest.raises(ValueError, match="schedule 'model'"):
            sigmas_for(pipe, denoiser_for(pipe), "model", STEPS)
    finally:
        pipe.scheduler = original


def test_sdxl_fp16_vae_is_upcast_for_decoding_and_restored_even_on_error(pipes):
    pipe = pipes["sdxl"]
    seen = []
    hook = pipe.vae.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    pipe.vae.to(torch.float16)
    try:
        image = decode_latents(pipe, latents(pipe), output_type="pt")
        assert seen == [torch.float32]  # decoded in float32, as StableDiffusionXLPipeline does
        assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()
        assert pipe.vae.dtype == torch.float16
        with pytest.raises(RuntimeError):
            decode_latents(pipe, torch.zeros(1, 3, 8, 8))  # wrong channel count fails inside the VAE
        assert pipe.vae.dtype == torch.float16
    finally:
        hook.remove()
        pipe.vae.to(torch.float32)


def test_bfloat16_pipeline_runs_with_a_float32_sampler_state():
    pipe = load_pipeline("tiny", dtype=torch.bfloat16)
    result = generate(pipe, "a dog", steps=2, seed=0, output_type="latent", disable_progress=True)
    assert pipe.unet.dtype == torch.bfloat16
    assert result.latents.dtype == torch.float32 and torch.isfinite(result.latents).all()


# --- loading ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_save_pretrained_round_trips_through_the_cli_loader(pipes, kind, tmp_path):
    pipe = pipes[kind]
    pipe.save_pretrained(tmp_path)
    weights = {p.suffix for p in tmp_path.rglob("*") if p.suffix in (".safetensors", ".bin", ".ckpt", ".pt")}
    assert weights == {".safetensors"}
    loaded = load_pipeline(str(tmp_path))
    assert type(loaded) is type(pipe)
    assert loaded.scheduler.config.prediction_type == pipe.scheduler.config.prediction_type
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is not None:
            saved, back = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
            assert saved.keys() == back.keys() and all(torch.equal(saved[k], back[k]) for k in saved)
    # equal weights; memory-mapped tensors are aligned differently, so BLAS may round differently
    assert relative_error(latents(loaded, steps=2), latents(pipe, steps=2)) <= 1e-4


def test_loader_refuses_pickles_without_reading_them(tmp_path):
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"not read")
    with pytest.raises(ValueError, match="only .safetensors"):
        load_pipeline(str(checkpoint))


def test_loader_fails_fast_for_a_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="needs network access"):
        load_pipeline("someone/some-model")
    with pytest.raises(ValueError, match="no such folder or file"):
        load_pipeline("./missing-folder")


def test_single_file_architecture_and_offline_config_message(tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from safetensors.torch import save_file

    sdxl = tmp_path / "xl.safetensors"
    save_file({"conditioner.embedders.1.model.text_projection": torch.zeros(2, 2)}, str(sdxl))
    sd = tmp_path / "sd.safetensors"
    save_file({"model.diffusion_model.out.0.weight": torch.zeros(2)}, str(sd))
    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2)}, str(other))
    assert single_file_pipeline_class(sdxl) is StableDiffusionXLPipeline
    assert single_file_pipeline_class(sd) is StableDiffusionPipeline
    with pytest.raises(ValueError, match="not an SD 1.x/2.x or SDXL checkpoint"):
        single_file_pipeline_class(other)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="--model-config"):
        load_pipeline(str(sd))


def test_pixel_space_pipeline_without_vae_round_trips_and_generates(tmp_path):
    """A VAE-less StableDiffusionPipeline (pixel space, like the bundled shapes model) saves, loads
    through the CLI's loader and samples images in [-1, 1] straight from the UNet."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from zigzag_kdiff.models import tiny_unet
    from zigzag_kdiff.tiny import _SD_SCHEDULE, tiny_text_encoder, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    pipe = StableDiffusionPipeline(
        vae=None,
        text_encoder=tiny_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        unet=tiny_unet(sample_size=8, in_channels=3, out_channels=3),
        scheduler=DDIMScheduler(**_SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(tmp_path / "pixel")
    loaded = load_pipeline(str(tmp_path / "pixel"))
    assert loaded.vae is None
    first = generate(loaded, "a red square", steps=4, seed=3, output_type="np", disable_progress=True)
    again = generate(loaded, "a red square", steps=4, seed=3, output_type="np", disable_progress=True)
    assert first.images.shape == (1, 8, 8, 3) and first.latents.shape == (1, 3, 8, 8)
    assert (first.images == again.images).all() and 0 <= first.images.min() <= first.images.max() <= 1
    assert first.model_calls == count_model_calls(first.sigmas, None, 1)
