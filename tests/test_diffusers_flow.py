"""generate() on flow-matching pipelines: tiny random StableDiffusion3Pipeline (with and without T5) and
FluxPipeline (dev: guidance embeddings; schnell: none), against the pipelines' own ``__call__``."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("k_diffusion")

from zigzag_kdiff import count_model_calls  # noqa: E402
from zigzag_kdiff.diffusers import (  # noqa: E402
    DEFAULT_INVERSION_GUIDANCE,
    decode_latents,
    denoiser_for,
    encode_prompts,
    generate,
    load_pipeline,
    model_family,
    sigmas_for,
    single_file_pipeline_class,
)
from zigzag_kdiff.models import pack_latents, unpack_latents  # noqa: E402
from zigzag_kdiff.tiny import FLOW_KINDS, tiny_pipeline  # noqa: E402

STEPS = 4
TOKENS = 16  # T5 tokens (max_sequence_length): short, for speed; the pipelines get the same
PROMPTS = ["a small yellow dog", "a man on a bicycle"]

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread for this module


@pytest.fixture(scope="module")
def flow_pipes() -> dict:
    return {kind: tiny_pipeline(kind) for kind in FLOW_KINDS}


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


def run(pipe, prompt="a small yellow dog", **kwargs):
    options = {"steps": STEPS, "seed": 0, "output_type": "latent", "disable_progress": True}
    options["max_sequence_length"] = TOKENS
    return generate(pipe, prompt, **{**options, **kwargs})


class TransformerCalls:
    """Records, per transformer call, its batch rows and the distilled guidance it was given."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.rows: list[int] = []
        self.guidance: list[list[float] | None] = []
        self.handle = transformer.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        self.rows.append(int(kwargs["hidden_states"].shape[0]))
        guidance = kwargs.get("guidance")
        self.guidance.append(None if guidance is None else guidance.tolist())

    def __enter__(self) -> TransformerCalls:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


# --- parity: generate(sampler="euler", schedule="model") equals the pipeline's own __call__ ---------------

PARITY = {
    # kind: (pipeline keywords, generate keywords), non-square 48×80 images (Flux: mu from 3·5 = 15 tokens)
    "sd3": (
        {"guidance_scale": 5.0, "negative_prompt": ["blurry"] * 2},
        {"cfg_scale": 5.0, "negative_prompt": "blurry"},
    ),
    "sd3-no-t5": ({"guidance_scale": 4.0}, {"cfg_scale": 4.0}),
    "flux": ({"guidance_scale": 2.5}, {"distilled_guidance": 2.5}),
    "flux-schnell": ({}, {}),
    "flux-true-cfg": (
        {"true_cfg_scale": 3.0, "negative_prompt": ["blurry"] * 2},
        {"cfg_scale": 3.0, "negative_prompt": "blurry"},
    ),
}


@pytest.mark.parametrize("case", list(PARITY))
def test_euler_on_the_model_schedule_equals_the_pipelines_own_call(flow_pipes, case):
    kind = "flux" if case == "flux-true-cfg" else case
    pipe = flow_pipes[kind]
    theirs, ours = PARITY[case]
    noise = torch.randn(2, 4, 6, 10, generator=torch.Generator().manual_seed(5))
    flux = kind.startswith("flux")
    reference = pipe(
        PROMPTS,
        latents=pack_latents(noise) if flux else noise.clone(),
        height=48,
        width=80,
        num_inference_steps=STEPS,
        max_sequence_length=TOKENS,
        output_type="latent",
        **theirs,
    ).images
    if flux:
        reference = unpack_latents(reference, 6, 10)
    result = generate(
        pipe,
        PROMPTS,
        sampler="euler",
        schedule="model",
        steps=STEPS,
        noise=noise,
        height=48,
        width=80,
        max_sequence_length=TOKENS,
        output_type="latent",
        disable_progress=True,
        **ours,
    )
    error = relative_error(result.latents, reference)
    print(f"parity {case}: max|Δ|/max|ref| = {error:.3g}")
    assert error <= 1e-5
    true_cfg = "cfg_scale" in ours
    assert result.model_calls == STEPS and result.batch_rows == STEPS * 2 * (2 if true_cfg else 1)
    # and the decoded images: VAE with its scaling and shift factors, as the pipeline decodes
    images = decode_latents(pipe, result.latents, output_type="np")
    vae_input = reference / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor  # as the pipelines
    with torch.no_grad():
        decoded = pipe.vae.decode(vae_input, return_dict=False)[0]
    decoded = pipe.image_processor.postprocess(decoded, output_type="np")
    assert images.shape == (2, 48, 80, 3) and float(abs(images - decoded).max()) <= 1e-4


def test_default_scales_are_the_familys(flow_pipes):
    sd3 = run(flow_pipes["sd3"], sampler="euler")
    assert sd3.settings["cfg_scale"] == 7.0 and sd3.settings["schedule"] == "model"  # StableDiffusion3Pipeline's
    assert sd3.batch_rows == 2 * STEPS and "distilled_guidance" not in sd3.settings
    flux = run(flow_pipes["flux"], sampler="euler")
    assert flux.settings["cfg_scale"] == 1.0 and flux.settings["distilled_guidance"] == 3.5  # FluxPipeline's
    assert flux.batch_rows == STEPS
    zigzag = run(flow_pipes["flux"])
    assert zigzag.settings["sampler_options"] == {
        "inversion_guidance": DEFAULT_INVERSION_GUIDANCE,
        "inversion_scale": 1.0,
    }
    assert run(flow_pipes["flux"], distilled_guidance=0.5).settings["sampler_options"]["inversion_guidance"] == 0.5
    schnell = run(flow_pipes["flux-schnell"])
    assert schnell.settings["sampler_options"] == {"inversion_scale": 1.0}


def test_flux_model_schedule_shifts_with_the_token_count_and_sd3_is_static(flow_pipes):
    flux = flow_pipes["flux"]
    denoiser = denoiser_for(flux)
    small = sigmas_for(flux, denoiser, "model", 8, latent_size=(8, 8))
    large = sigmas_for(flux, denoiser, "model", 8, latent_size=(64, 64))
    assert small[0] == 1 and small[-1] == 0 and len(small) == 9
    assert (large[1:-1] > small[1:-1]).all()  # mu grows with (h/2)·(w/2): more time at high noise
    sd3 = flow_pipes["sd3"]
    sigmas = sigmas_for(sd3, denoiser_for(sd3), "model", 8, latent_size=(64, 64))
    assert torch.equal(sigmas, sigmas_for(sd3, denoiser_for(sd3), "model", 8, latent_size=(8, 8)))
    # shift 3 of linear timesteps from 1 to the (already shifted) σ_min: diffusers shifts σ_min twice
    sigma_min = 3 * 1e-3 / (1 + 2 * 1e-3)
    plain = torch.linspace(1, sigma_min, 8)
    assert torch.allclose(sigmas[:-1], 3 * plain / (1 + 2 * plain), atol=1e-6) and sigmas[-1] == 0
    karras = sigmas_for(sd3, denoiser_for(sd3), "karras", 8)
    assert karras[0] == 1 and karras[-2] == pytest.approx(3 * 1e-3 / (1 + 2e-3), rel=1e-5)


# --- zigzag: calls and rows, distilled guidance per call --------------------------------------------------


ZIGZAG_CASES = [(kind, "zigzag_euler") for kind in FLOW_KINDS]
ZIGZAG_CASES += [(kind, sampler) for kind in ("flux", "sd3") for sampler in ("zigzag_ddim", "zigzag_dpmpp_2m")]


@pytest.mark.parametrize("kind,sampler", ZIGZAG_CASES)
def test_zigzag_samplers_calls_and_rows(flow_pipes, kind, sampler):
    pipe = flow_pipes[kind]
    lam = 2
    true_cfg = kind.startswith("sd3")
    options = {"zigzag_steps": lam, **({"inversion_scale": 2.0} if true_cfg else {})}
    with TransformerCalls(pipe.transformer) as calls:
        result = run(pipe, sampler=sampler, sampler_options=options)
    assert torch.isfinite(result.latents).all() and result.latents.shape == (1, 4, 8, 8)
    assert result.model_calls == STEPS + 2 * lam == count_model_calls(result.sigmas, lam, 1)
    rows = 2 if true_cfg else 1  # SD3 at γ₁ = 7, γ₂ = 2: both rows; Flux with true CFG off: one row per call
    assert calls.rows == [rows] * (STEPS + 2 * lam) and result.batch_rows == rows * (STEPS + 2 * lam)


@pytest.mark.parametrize(
    "given,g1,g2",
    [({}, 3.5, DEFAULT_INVERSION_GUIDANCE), ({"distilled_guidance": 4.0, "inversion_guidance": 2.0}, 4.0, 2.0)],
)
def test_distilled_guidance_seen_by_the_transformer_per_call(flow_pipes, given, g1, g2):
    pipe = flow_pipes["flux"]
    options = {"zigzag_steps": STEPS - 1}
    if "inversion_guidance" in given:
        options["inversion_guidance"] = given["inversion_guidance"]
    with TransformerCalls(pipe.transformer) as calls:
        run(pipe, ["a dog", "a cat"], distilled_guidance=given.get("distilled_guidance"), sampler_options=options)
    # step i: denoise at g₁; on the zigzag steps (the first λ = T − 1) invert at g₂ and re-denoise at g₁
    expected = [v for i in range(STEPS) for v in ([g1, g2, g1] if i < STEPS - 1 else [g1])]
    assert calls.guidance == [[v, v] for v in expected]


def test_schnell_and_sd3_get_no_guidance_input(flow_pipes):
    for kind in ("flux-schnell", "sd3"):
        with TransformerCalls(flow_pipes[kind].transformer) as calls:
            run(flow_pipes[kind], steps=2)
        assert calls.guidance == [None] * 4


def test_distilled_and_true_cfg_together_on_flux(flow_pipes):
    """Both gaps at once: γ₁ = 3, γ₂ = 1 (true CFG) and g₁ = 3.5, g₂ = 1 (distilled)."""
    pipe = flow_pipes["flux"]
    with TransformerCalls(pipe.transformer) as calls:
        result = run(pipe, cfg_scale=3.0, negative_prompt="blurry", sampler_options={"inversion_scale": 1.0})
    # γ₂ = 1: the inversions evaluate the prompt only (one row); denoising calls two rows
    assert calls.rows == [2, 1, 2] * (STEPS - 1) + [2]
    assert [g[0] for g in calls.guidance] == [3.5, 1.0, 3.5] * (STEPS - 1) + [3.5]
    assert result.batch_rows == sum(calls.rows)


def test_guidance_interval_on_flow_sigmas(flow_pipes):
    pipe = flow_pipes["sd3"]
    full = run(pipe, steps=5)
    sigmas = full.sigmas.tolist()
    interval = (sigmas[3] - 1e-4, sigmas[1] + 1e-4)  # σ₁, σ₂, σ₃ inside: steps 1 and 2 wholly inside
    narrow = run(pipe, steps=5, guidance_interval=interval)
    # denoising at σ₁..σ₃ guided (2 rows), at σ₀, σ₄ not (1 row); zigzag on steps 1 and 2 only (γ₂ = 0: 1 row)
    assert narrow.model_calls == 5 + 2 * 2
    assert narrow.batch_rows == 3 * 2 + 2 * 1 + 2 * (1 + 2)
    flux = run(flow_pipes["flux"], steps=5, guidance_interval=interval)
    assert flux.model_calls == 5 + 2 * 2 and flux.batch_rows == flux.model_calls


# --- other samplers, determinism, shapes ------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "heun", "euler_ancestral"])
def test_k_diffusion_samplers_run_on_flow_latents(flow_pipes, sampler):
    for kind in ("flux", "sd3"):
        first = run(flow_pipes[kind], sampler=sampler, schedule="karras", seed=1, steps=2)
        assert torch.isfinite(first.latents).all() and first.model_calls == (3 if sampler == "heun" else 2)
    if sampler == "euler_ancestral":  # seeded per image through the noise sampler
        again = run(flow_pipes["sd3"], sampler=sampler, schedule="karras", seed=1, steps=2)
        assert torch.equal(first.latents, again.latents)
        assert not torch.equal(
            first.latents, run(flow_pipes["sd3"], sampler=sampler, schedule="karras", seed=2, steps=2).latents
        )


def test_same_seed_same_latents_and_images_per_seed(flow_pipes):
    pipe = flow_pipes["flux"]
    first = run(pipe, seed=3).latents
    assert torch.equal(first, run(pipe, seed=3).latents)
    assert not torch.allclose(first, run(pipe, seed=4).latents)
    pair = run(pipe, seed=3, num_images_per_prompt=2)
    assert pair.seeds == [3, 4] and pair.latents.shape == (2, 4, 8, 8)
    assert relative_error(pair.latents[:1], first) <= 1e-5
    assert relative_error(pair.latents[1:], run(pipe, seed=4).latents) <= 1e-5


def test_pil_images_of_the_asked_size(flow_pipes):
    for kind in FLOW_KINDS:
        result = run(flow_pipes[kind], ["a dog", "a cat"], height=32, width=48, output_type="pil", steps=2)
        assert [image.size for image in result.images] == [(48, 32)] * 2 and result.latents.shape == (2, 4, 4, 6)


def test_encode_prompts_uses_the_pipelines_encoders(flow_pipes):
    cond, uncond = encode_prompts(flow_pipes["sd3"], ["a dog"], None, 1, 64, 64)
    assert cond["encoder_hidden_states"].shape == (1, 77 + 256, 64) and cond["pooled_projections"].shape == (1, 64)
    _, no_t5 = encode_prompts(flow_pipes["sd3-no-t5"], ["a dog"], None, 1, 64, 64, max_sequence_length=8)
    assert not no_t5["encoder_hidden_states"][:, 77:].any()  # zeros in place of T5
    cond, uncond = encode_prompts(flow_pipes["flux"], ["a dog"], None, 1, 64, 64)
    assert cond["encoder_hidden_states"].shape == (1, 512, 32) and cond["pooled_projections"].shape == (1, 32)
    empty, _ = encode_prompts(flow_pipes["flux"], [""], None, 1, 64, 64)
    assert torch.equal(uncond["encoder_hidden_states"], empty["encoder_hidden_states"])


# --- errors before any model call -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,kwargs,message",
    [
        ("sd3", {"distilled_guidance": 3.5}, "distilled_guidance must be None"),
        ("flux-schnell", {"distilled_guidance": 3.5}, "distilled_guidance must be None"),
        ("flux", {"distilled_guidance": math.nan}, "distilled_guidance must be a finite"),
        ("flux-schnell", {"sampler_options": {"inversion_guidance": 1.0}}, "inversion_guidance"),
        ("flux", {"sampler_options": {"inversion_guidance": 4.0}}, r"inversion_guidance \(g₂\) must be <="),
        ("flux", {"seg_scale": 3.0}, "seg_scale must be 0 .*joint text-image attention"),
        ("sd3", {"seg_scale": 3.0}, "seg_scale must be 0"),
        ("sd3", {"inversion_seg_scale": 1.0}, "seg_scale must be 0"),
        ("sd3", {"schedule": "ddim"}, "schedule 'ddim' needs a DDPM scheduler"),
        ("flux", {"height": 40}, "multiples of 16"),
        ("sd3", {"cfg_scale": math.inf}, "cfg_scale must be a finite"),
        ("sd3", {"cfg_scale": 2.0, "sampler_options": {"inversion_scale": 3.0}}, "inversion_scale"),
        ("flux", {"sampler": "zigzag_ddim", "sampler_options": {"inversion_update": "released"}}, "inversion_update"),
        ("flux", {"noise": torch.zeros(1, 16, 8, 8)}, "noise must have shape"),
    ],
)
def test_bad_values_fail_before_any_model_call(flow_pipes, kind, kwargs, message):
    pipe = flow_pipes[kind]
    with TransformerCalls(pipe.transformer) as calls, pytest.raises(ValueError, match=message):
        run(pipe, **kwargs)
    assert calls.rows == []


def test_max_sequence_length_is_refused_on_unet_models():
    with pytest.raises(ValueError, match="max_sequence_length"):
        generate(load_pipeline("tiny"), "a dog", max_sequence_length=16)


# --- loading --------------------------------------------------------------------------------------------


def test_tiny_flow_pipelines_are_deterministic_from_their_seed(flow_pipes):
    def weights(pipe):
        return {
            f"{n}.{k}": v
            for n, m in pipe.components.items()
            if isinstance(m, torch.nn.Module)
            for k, v in m.state_dict().items()
        }

    again, other = weights(tiny_pipeline("flux")), weights(tiny_pipeline("flux", seed=1))
    first = weights(flow_pipes["flux"])
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["transformer.proj_out.weight"], other["transformer.proj_out.weight"])
    assert all(not m.training for m in flow_pipes["sd3"].components.values() if isinstance(m, torch.nn.Module))


def test_tiny_model_names_load_flow_pipelines():
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    pipe = load_pipeline("tiny-sd3-no-t5")
    assert isinstance(pipe, StableDiffusion3Pipeline) and pipe.text_encoder_3 is None
    assert model_family(pipe) == "sd3"
    schnell = load_pipeline("tiny-flux-schnell", dtype=torch.bfloat16)
    assert isinstance(schnell, FluxPipeline) and not schnell.transformer.config.guidance_embeds
    assert schnell.transformer.dtype == torch.bfloat16
    result = run(schnell, steps=2)
    assert result.latents.dtype == torch.float32 and torch.isfinite(result.latents).all()


@pytest.mark.parametrize("kind", ["sd3-no-t5", "flux"])
def test_save_pretrained_folders_round_trip_through_the_loader(flow_pipes, kind, tmp_path):
    pipe = flow_pipes[kind]
    pipe.save_pretrained(tmp_path)
    weights = {p.suffix for p in tmp_path.rglob("*") if p.suffix in (".safetensors", ".bin", ".ckpt", ".pt")}
    assert weights == {".safetensors"}
    loaded = load_pipeline(str(tmp_path))
    assert type(loaded) is type(pipe) and model_family(loaded) == model_family(pipe)
    saved, back = pipe.transformer.state_dict(), loaded.transformer.state_dict()
    assert saved.keys() == back.keys() and all(torch.equal(saved[k], back[k]) for k in saved)
    size = {"height": 64, "width": 64}  # a loaded Flux folder has FluxPipeline's default size (1024 pixels)
    assert relative_error(run(loaded, steps=2, **size).latents, run(pipe, steps=2, **size).latents) <= 1e-4


def test_single_file_flow_checkpoints_need_a_local_diffusers_folder(tmp_path):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline
    from safetensors.torch import save_file

    sd3 = tmp_path / "sd3.safetensors"
    save_file({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(2)}, str(sd3))
    flux = tmp_path / "flux.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(2)}, str(flux))
    assert single_file_pipeline_class(sd3) is StableDiffusion3Pipeline
    assert single_file_pipeline_class(flux) is FluxPipeline
    with pytest.raises(ValueError, match="only with --model-config.*diffusers folder"):
        load_pipeline(str(flux))  # never the hub, even online
    with pytest.raises(ValueError, match="could not build a StableDiffusion3Pipeline.*diffusers folder"):
        load_pipeline(str(sd3), config=str(tmp_path / "no-such-folder"))


def test_compare_runs_on_a_tiny_flux(tmp_path):
    from zigzag_kdiff.cli import main

    out = tmp_path / "out"
    argv = ["compare", "--model", "tiny-flux", "--steps", "2", "--methods", "euler,zigzag_euler", "--quiet"]
    assert main(argv + ["--out", str(out)]) == 0
    assert (out / "grid.png").is_file() and len(list(out.glob("p00-*.png"))) == 2


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_generate_defaults_are_the_pipelines_defaults(flow_pipes, kind):
    """Nothing but the prompt, noise and steps given: SD3 CFG 7 with the empty negative prompt, 256 T5 tokens;
    Flux distilled guidance 3.5, true CFG off, 512 T5 tokens; both on their own shifted schedule."""
    pipe = flow_pipes[kind]
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    flux = kind == "flux"
    reference = pipe(
        "a dog", latents=pack_latents(noise) if flux else noise.clone(), num_inference_steps=2, output_type="latent"
    ).images
    reference = unpack_latents(reference, 8, 8) if flux else reference
    ours = generate(pipe, "a dog", sampler="euler", steps=2, noise=noise, output_type="latent", disable_progress=True)
    assert relative_error(ours.latents, reference) <= 1e-5
