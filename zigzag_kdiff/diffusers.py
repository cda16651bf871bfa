"""Generate with a loaded diffusers pipeline through k-diffusion samplers, zigzag ones included.

Works with any pipeline that has a ``unet`` (``UNet2DConditionModel``), a ``scheduler`` with
``alphas_cumprod`` (ε- or v-prediction), ``encode_prompt``, a ``vae`` and an ``image_processor``:
SD 1.x, SD 2.x (including v-prediction) and SDXL. A pipeline whose ``vae`` is ``None`` is a
pixel-space model (the bundled shapes model): its UNet samples images in [-1, 1] directly.
What diffusers does is left to diffusers: the
pipeline's own ``encode_prompt`` (so SDXL's zero unconditional embeddings when no negative prompt is
given, ``force_zeros_for_empty_prompt``, exactly as the released Z-Sampling code),
``_get_add_time_ids`` (SDXL micro-conditioning), VAE decode, safety checker, watermark and image
processor. The UNet becomes a k-diffusion denoiser through k-diffusion's own
``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser`` and :class:`zigzag_kdiff.models.UNetEps`;
CFG (branch skipping at scale 0 and 1, the guidance interval) is :class:`zigzag_kdiff.CFGDenoiser`.

Conventions. The sampler state is float32 in k-diffusion's variance-exploding form on the pipeline's
execution device; the UNet runs in its own dtype (fp16 on CUDA for real models). Initial noise is
drawn on the CPU in float32 from one generator per image (the same seed gives the same noise on any
device) and scaled by ``sqrt(1 + σ₀²)``, the VE form of diffusers' unit-variance latent at σ₀. The
final latent ``z`` at ``σ_end`` is decoded in the VP form ``z / sqrt(1 + σ_end²)`` (the DDIM
schedule ends at σ(0) > 0, as the released code). Requires the ``[diffusers]`` and ``[kdiffusion]``
extras.

Flow models (:func:`model_family` ``"sd3"``: ``StableDiffusion3Pipeline``, SD3/SD3.5 with or without T5;
``"flux"``: ``FluxPipeline``, Flux dev with guidance embeddings and schnell without). The transformer becomes
a :class:`zigzag_kdiff.flow.FlowDenoiser` (``D = x − σ·v``) over :class:`zigzag_kdiff.models.SD3Velocity`
(timestep σ·1000) or :class:`zigzag_kdiff.models.FluxVelocity` (timestep σ; packing, image and text ids
inside), so the sampler state is the flow latent ``x_σ = (1 − σ)·x₀ + σ·ε`` in float32, ``[B, C, H/8, W/8]``
unpacked for Flux too. The initial latent is the unit-variance noise itself (every flow schedule starts at
σ₀ = 1, as the pipelines); the final latent (σ = 0) is decoded with the VAE's scaling and shift factors.
Text comes from the pipelines' own ``encode_prompt``. ``cfg_scale`` is true CFG γ₁ (two rows per call),
``distilled_guidance`` is Flux dev's guidance input g₁ (one row), ``sampler_options["inversion_guidance"]``
its inversion value g₂. SEG is refused on these models (joint attention, not UNet self-attention).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import random
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .flow import DEFAULT_INVERSION_GUIDANCE, FlowDenoiser, default_inversion_guidance
from .guidance import CallCounter, CFGDenoiser, GuidanceInterval, check_finite
from .kdiffusion import SAMPLERS
from .models import FluxVelocity, SD3Velocity, UNetEps
from .sampling import ddim_sigmas
from .seg import DEFAULT_BLUR_SIGMA, SEGOptions, seg_attention, select_layers

__all__ = [
    "SCHEDULES",
    "FAMILY_CFG_SCALE",
    "DEFAULT_INVERSION_GUIDANCE",
    "FAMILY_SCHEDULE",
    "guidance_defaults",
    "Generation",
    "model_family",
    "denoiser_for",
    "sigmas_for",
    "resolve_sampler",
    "encode_prompts",
    "initial_noise",
    "decode_latents",
    "generate",
    "load_pipeline",
]

SCHEDULES = ("ddim", "karras", "exponential", "model")
"""Sigma schedules: ``ddim`` (leading spacing with the model's steps offset, ending at σ(0) as
diffusers' ``DDIMScheduler`` with ``set_alpha_to_one=False``), ``karras`` and ``exponential``
(k-diffusion's, between the model's σ_min and σ_max, ending at 0), ``model`` (the pipeline's own
scheduler's noise levels for this step count; for SD3 its static shift, for Flux the dynamic shift mu from
the image's packed token count, as the pipelines compute them). Flow models: ``model`` (their default),
``karras`` and ``exponential``; ``ddim`` needs a DDPM scheduler."""

FAMILY_CFG_SCALE = {"sd": 5.5, "sd3": None, "flux": 1.0}
"""``generate()``'s default true-CFG scale γ₁ per :func:`model_family`: 5.5 for SD 1.x/2.x/SDXL (the
released code's), the pipeline's own ``guidance_scale`` default for SD3 (``None`` here: 7.0 in diffusers
0.42), 1 (off: one row per call) for Flux, whose guidance is distilled (``distilled_guidance``)."""

FAMILY_SCHEDULE = {"sd": "karras", "sd3": "model", "flux": "model"}
"""``generate()``'s default ``schedule`` per :func:`model_family`: Karras for SD/SDXL, the pipeline's own shifted
sigmas for SD3 and Flux."""


TINY_MODELS = {
    "tiny": "sd15",
    "tiny-sd15": "sd15",
    "tiny-sd2-v": "sd2-v",
    "tiny-sdxl": "sdxl",
    "tiny-sd3": "sd3",
    "tiny-sd3-no-t5": "sd3-no-t5",
    "tiny-flux": "flux",
    "tiny-flux-schnell": "flux-schnell",
}
BUNDLED_MODELS = {
    "shapes": Path(__file__).parent / "models_data" / "shapes16",
    "shapes-flow": Path(__file__).parent / "models_data" / "shapes16-flow",
}
"""Models shipped inside the package (safetensors), both 16×16 pixel-space coloured-squares models (see
:mod:`zigzag_kdiff.bench.shapes_task`): ``shapes``, an ε-prediction UNet (``StableDiffusionPipeline``, trained by
``tools/train_shapes.py``), and ``shapes-flow``, a rectified-flow MMDiT (``StableDiffusion3Pipeline``, trained by
``tools/train_shapes_flow.py``)."""
"""``--model`` names that build a tiny random-weight pipeline (:mod:`zigzag_kdiff.tiny`)."""


# --- the model as a k-diffusion denoiser ---------------------------------------------------------


def model_family(pipe: Any) -> str:
    """``"sd"`` (a UNet: SD 1.x/2.x/SDXL), ``"sd3"`` (an ``SD3Transformer2DModel``) or ``"flux"`` (a
    ``FluxTransformer2DModel``); ``ValueError`` for any other denoising model."""
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None:
        from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

        if isinstance(transformer, SD3Transformer2DModel):
            return "sd3"
        if isinstance(transformer, FluxTransformer2DModel):
            return "flux"
        raise ValueError(
            f"the pipeline's transformer ({type(transformer).__name__}) is not supported: flow models are "
            "SD3Transformer2DModel (StableDiffusion3Pipeline) and FluxTransformer2DModel (FluxPipeline)"
        )
    if getattr(pipe, "unet", None) is not None:
        return "sd"
    raise ValueError(f"{type(pipe).__name__} has neither a unet nor a transformer")


def _denoising_module(pipe: Any) -> torch.nn.Module:
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def _has_guidance_embeds(pipe: Any) -> bool:
    return model_family(pipe) == "flux" and bool(pipe.transformer.config.get("guidance_embeds", False))


def _call_default(pipe: Any, name: str) -> Any:
    """The default of the pipeline's own ``__call__`` argument ``name`` (e.g. ``guidance_scale``)."""
    return inspect.signature(type(pipe).__call__).parameters[name].default


def _device_of(pipe: Any) -> torch.device:
    device = getattr(pipe, "_execution_device", None)
    return torch.device(device) if device is not None else _denoising_module(pipe).device


def denoiser_for(pipe: Any) -> torch.nn.Module:
    """A k-diffusion denoiser for the pipeline's model: k-diffusion's discrete denoiser for a UNet (ε- or
    v-prediction, quantized t); a :class:`~zigzag_kdiff.flow.FlowDenoiser` for SD3's (timestep σ·1000) and
    Flux's (timestep σ) transformers, with σ_min of the pipeline's scheduler and σ_max = 1."""
    from k_diffusion.external import DiscreteEpsDDPMDenoiser, DiscreteVDDPMDenoiser

    family = model_family(pipe)
    if family != "sd":
        own = type(pipe.scheduler).from_config(pipe.scheduler.config)  # its σ range, the pipeline's untouched
        sigma_min = float(getattr(own, "sigma_min", 0.0) or 0.0)
        velocity = SD3Velocity(pipe.transformer) if family == "sd3" else FluxVelocity(pipe.transformer)
        scale = 1000.0 if family == "sd3" else 1.0
        return FlowDenoiser(velocity, timestep_scale=scale, sigma_min=sigma_min, sigma_max=1.0).to(_device_of(pipe))

    alphas_cumprod = getattr(pipe.scheduler, "alphas_cumprod", None)
    if alphas_cumprod is None:
        raise ValueError(
            f"the pipeline's scheduler ({type(pipe.scheduler).__name__}) has no alphas_cumprod: only "
            "discrete-time DDPM models (SD 1.x, SD 2.x, SDXL) are supported"
        )
    prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    wrappers = {"epsilon": DiscreteEpsDDPMDenoiser, "v_prediction": DiscreteVDDPMDenoiser}
    if prediction not in wrappers:
        raise ValueError(f"prediction_type must be one of {sorted(wrappers)}, got {prediction!r}")
    alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float32)
    return wrappers[prediction](UNetEps(pipe.unet), alphas_cumprod, quantize=True).to(_device_of(pipe))


def sigmas_for(
    pipe: Any, denoiser: torch.nn.Module, schedule: str, steps: int, *, latent_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """The ``steps + 1`` noise levels of ``schedule`` (see :data:`SCHEDULES`), float32 on the CPU.

    ``latent_size`` ``(height, width)`` of the (unpacked) latent: Flux's ``model`` schedule shifts by the
    image's token count (default: the pipeline's default image size)."""
    from k_diffusion import sampling as k_sampling

    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    config = pipe.scheduler.config
    sigma_min, sigma_max = float(denoiser.sigma_min), float(denoiser.sigma_max)
    flow = model_family(pipe) != "sd"
    if flow and schedule == "ddim":
        raise ValueError(
            "schedule 'ddim' needs a DDPM scheduler (alphas_cumprod); flow models (SD3, Flux) take the schedules "
            "'model' (the pipeline's, their default), 'karras' and 'exponential'"
        )
    if flow and schedule == "model":
        return _flow_model_sigmas(pipe, steps, latent_size)
    if schedule == "ddim":
        return ddim_sigmas(
            torch.as_tensor(pipe.scheduler.alphas_cumprod, dtype=torch.float32).cpu(),
            steps,
            steps_offset=int(config.get("steps_offset", 0)),
            set_alpha_to_one=bool(config.get("set_alpha_to_one", False)),
        ).float()
    if schedule == "karras":
        return k_sampling.get_sigmas_karras(steps, sigma_min, sigma_max).float()
    if schedule == "exponential":
        return k_sampling.get_sigmas_exponential(steps, sigma_min, sigma_max).float()
    if schedule == "model":
        return _model_sigmas(pipe.scheduler, denoiser, steps)
    raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")


def _flow_model_sigmas(pipe: Any, steps: int, latent_size: tuple[int, int] | None) -> torch.Tensor:
    """The flow pipeline's own sigmas (a copy of its scheduler, set up as its ``__call__`` does): SD3 static
    shift (or its dynamic shift from ``(h/patch)·(w/patch)`` tokens if the scheduler asks for one); Flux
    ``sigmas = linspace(1, 1/N, N)`` shifted with ``mu = calculate_shift(packed tokens (h/2)·(w/2))``."""
    import numpy as np
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    own = type(pipe.scheduler).from_config(pipe.scheduler.config)  # a copy: the pipeline's scheduler is untouched
    config = own.config
    if latent_size is None:
        side = int(pipe.default_sample_size)  # the pipeline's default image size, in latent cells
        latent_size = (side, side)
    height, width = latent_size
    family = model_family(pipe)
    kwargs: dict[str, Any] = {}
    if family == "flux":
        sigmas = None if config.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / steps, steps)
        shift_defaults = (256, 4096, 0.5, 1.15)
        tokens = (height // 2) * (width // 2)
        kwargs["mu"] = calculate_shift(tokens, *_shift_config(config, shift_defaults))
        retrieve_timesteps(own, steps, "cpu", sigmas=sigmas, **kwargs)
    else:
        if config.get("use_dynamic_shifting", False):
            patch = int(pipe.transformer.config.patch_size)
            tokens = (height // patch) * (width // patch)
            kwargs["mu"] = calculate_shift(tokens, *_shift_config(config, (256, 4096, 0.5, 1.16)))
        retrieve_timesteps(own, steps, "cpu", **kwargs)
    sigmas = getattr(own, "sigmas", None)
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1 or len(sigmas) != steps + 1:
        raise ValueError(
            f"schedule 'model': {type(pipe.scheduler).__name__} does not give {steps + 1} sigmas for {steps} steps; "
            "use the schedule 'karras' or 'exponential'"
        )
    return sigmas.float().cpu()


def _shift_config(config: Any, defaults: tuple[int, int, float, float]) -> tuple[Any, ...]:
    names = ("base_image_seq_len", "max_image_seq_len", "base_shift", "max_shift")
    return tuple(config.get(name, default) for name, default in zip(names, defaults))


def _model_sigmas(scheduler: Any, denoiser: torch.nn.Module, steps: int) -> torch.Tensor:
    """The pipeline's own scheduler's noise levels: its ``sigmas`` if it keeps them (Euler, DPM-Solver),
    else σ of its timesteps (repeats dropped, as PNDM's) and its end point (``final_alpha_cumprod``)."""
    own = type(scheduler).from_config(scheduler.config)  # a copy: the pipeline's scheduler is untouched
    own.set_timesteps(steps, device="cpu")
    sigmas = getattr(own, "sigmas", None)
    if isinstance(sigmas, torch.Tensor) and sigmas.ndim == 1 and len(sigmas) == steps + 1:
        return sigmas.float().cpu()
    timesteps = torch.unique_consecutive(own.timesteps.cpu().float())
    if len(timesteps) != steps:
        raise ValueError(
            f"schedule 'model': {type(scheduler).__name__} gives {len(timesteps)} distinct timesteps for "
            f"{steps} steps; use one of the schedules {[s for s in SCHEDULES if s != 'model']}"
        )
    levels = denoiser.t_to_sigma(timesteps.to(denoiser.sigmas.device)).cpu()
    final = getattr(own, "final_alpha_cumprod", None)
    end = 0.0 if final is None else float(((1 - final) / final) ** 0.5)
    return torch.cat([levels, levels.new_tensor([end])]).float()


# --- samplers ------------------------------------------------------------------------------------


def resolve_sampler(sampler: str | Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """A sampler function from a name: ours (``zigzag_euler``, ``zigzag_ddim``, ``zigzag_dpmpp_2m``) or any of
    k-diffusion's that take ``sigmas`` (``euler``, ``dpmpp_2m``, ``sample_heun``, …), or a callable."""
    if callable(sampler):
        return sampler
    from k_diffusion import sampling as k_sampling

    name = str(sampler).removeprefix("sample_")
    function = SAMPLERS.get(name) or getattr(k_sampling, f"sample_{name}", None)
    if function is None or "sigmas" not in inspect.signature(function).parameters:
        choices = sorted(SAMPLERS) + sorted(
            n.removeprefix("sample_")
            for n, f in vars(k_sampling).items()
            if n.startswith("sample_") and callable(f) and "sigmas" in inspect.signature(f).parameters
        )
        raise ValueError(f"sampler must be one of {choices} or a callable, got {sampler!r}")
    return function


def _noise_sampler(generators: Sequence[torch.Generator], like: torch.Tensor) -> Callable[..., torch.Tensor]:
    """Per-image seeded noise for ancestral/SDE samplers (instead of the global RNG)."""

    def sample(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        noise = [torch.randn(like.shape[1:], generator=g, device=g.device) for g in generators]
        return torch.stack([n.to(like) for n in noise])

    return sample


# --- conditioning --------------------------------------------------------------------------------


def _as_list(value: str | Sequence[str], name: str) -> list[str]:
    values = [value] if isinstance(value, str) else list(value)
    if not values or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{name} must be a string or a non-empty list of strings, got {value!r}")
    return values


def encode_prompts(
    pipe: Any,
    prompts: list[str],
    negative_prompts: list[str] | None,
    num_images_per_prompt: int,
    height: int,
    width: int,
    *,
    original_size: tuple[int, int] | None = None,
    crops_coords_top_left: tuple[int, int] = (0, 0),
    target_size: tuple[int, int] | None = None,
    max_sequence_length: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(cond, uncond)`` keyword dicts for the UNet or transformer, one row per image (prompt-major order).

    SD3 and Flux: ``encoder_hidden_states`` and ``pooled_projections`` from the pipeline's own
    ``encode_prompt`` (SD3: CLIP-L ⊕ CLIP-G padded and T5 — zeros without T5 —, the negative prompt
    default ``""``; Flux: T5 and CLIP pooled, the unconditional side is the negative prompt, default ``""``),
    T5 at ``max_sequence_length`` tokens (default: the pipeline's ``__call__`` default, 256 for SD3, 512
    for Flux).

    Text comes from the pipeline's own ``encode_prompt``; for UNets with SDXL's ``text_time``
    embedding the pooled embeddings and the micro-conditioning ids (``original_size``,
    ``crops_coords_top_left``, ``target_size``; default: the image size, (0, 0)) are added as
    ``added_cond_kwargs``, from the pipeline's ``_get_add_time_ids``.
    """
    device = _device_of(pipe)
    family = model_family(pipe)
    if family != "sd":
        length = _call_default(pipe, "max_sequence_length") if max_sequence_length is None else max_sequence_length
        return _encode_flow_prompts(pipe, family, prompts, negative_prompts, num_images_per_prompt, device, length)
    encoded = pipe.encode_prompt(
        prompt=prompts,
        device=device,
        num_images_per_prompt=num_images_per_prompt,
        do_classifier_free_guidance=True,
        negative_prompt=negative_prompts,
    )
    cond: dict[str, Any] = {"encoder_hidden_states": encoded[0]}
    uncond: dict[str, Any] = {"encoder_hidden_states": encoded[1]}
    if pipe.unet.config.get("addition_embed_type") == "text_time":
        if len(encoded) != 4:
            raise ValueError("a UNet with SDXL's text_time embedding needs a pipeline whose encode_prompt pools")
        pooled, negative_pooled = encoded[2], encoded[3]
        text_encoder_2 = getattr(pipe, "text_encoder_2", None)
        projection_dim = int(pooled.shape[-1]) if text_encoder_2 is None else int(text_encoder_2.config.projection_dim)
        time_ids = pipe._get_add_time_ids(
            tuple(original_size or (height, width)),
            tuple(crops_coords_top_left),
            tuple(target_size or (height, width)),
            dtype=encoded[0].dtype,
            text_encoder_projection_dim=projection_dim,
        ).to(device)
        time_ids = time_ids.repeat(encoded[0].shape[0], 1)
        cond["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
        uncond["added_cond_kwargs"] = {"text_embeds": negative_pooled, "time_ids": time_ids}
    return cond, uncond


def _encode_flow_prompts(
    pipe: Any,
    family: str,
    prompts: list[str],
    negative_prompts: list[str] | None,
    num_images_per_prompt: int,
    device: torch.device,
    max_sequence_length: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    if family == "sd3":
        embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=True,
            negative_prompt=negative_prompts,
            max_sequence_length=max_sequence_length,
        )
    else:
        embeds, pooled, _ = pipe.encode_prompt(
            prompt=prompts,
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=max_sequence_length,
        )
        negative_embeds, negative_pooled, _ = pipe.encode_prompt(
            prompt=negative_prompts or [""] * len(prompts),
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=max_sequence_length,
        )
    cond = {"encoder_hidden_states": embeds, "pooled_projections": pooled}
    uncond = {"encoder_hidden_states": negative_embeds, "pooled_projections": negative_pooled}
    return cond, uncond


# --- noise and decoding ---------------------------------------------------------------------------


def _generators(
    count: int, seed: int | Sequence[int] | None, generator: torch.Generator | Sequence[torch.Generator] | None
) -> tuple[list[torch.Generator], list[int] | None]:
    """One CPU generator per image: seed ``s`` gives images ``s, s+1, …`` (A1111's batch convention)."""
    if generator is not None and seed is not None:
        raise ValueError("pass either seed or generator, not both")
    if generator is not None:
        generators = [generator] if isinstance(generator, torch.Generator) else list(generator)
        if len(generators) not in (1, count):
            raise ValueError(f"generator must be one generator or a list of {count} (one per image)")
        return generators, None
    if seed is None:
        seed = random.randrange(2**32)
    seeds = [int(seed) + k for k in range(count)] if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != count:
        raise ValueError(f"seed must be an integer or a list of {count} integers (one per image), got {seed!r}")
    return [torch.Generator("cpu").manual_seed(s) for s in seeds], seeds


def initial_noise(shape: Sequence[int], generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Unit-variance float32 noise (returned on the CPU): one generator for the batch or one per image.

    Drawn on each generator's own device; CPU generators give the same noise on every machine."""
    if len(generators) == 1:
        return torch.randn(tuple(shape), generator=generators[0], device=generators[0].device).cpu()
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=g.device).cpu() for g in generators])


def latent_scale_factor(pipe: Any) -> int:
    """Pixels per latent cell: the VAE's downsampling factor, or 1 for a pixel-space model (no VAE)."""
    if getattr(pipe, "vae", None) is None:
        return 1
    return int(getattr(pipe, "vae_scale_factor", 8))


@torch.no_grad()
def decode_latents(pipe: Any, latents: torch.Tensor, output_type: str = "pil") -> Any:
    """The pipeline's own decode path: VAE (in SDXL pipelines an fp16 VAE with ``force_upcast`` runs in
        float32 and is put back afterwards, even on error), safety checker and watermark if the pipeline
        has them, then its image processor. ``latents`` are VP latents (flow models: the final flow latent,
    unpacked, decoded as ``latents / scaling_factor + shift_factor``); ``output_type="latent"`` returns them
    unchanged."""
    if output_type == "latent":
        return latents
    vae = getattr(pipe, "vae", None)
    if vae is None:  # a pixel-space model: the UNet's samples are the images, in [-1, 1]
        return pipe.image_processor.postprocess(latents.float(), output_type=output_type)
    # as the pipelines do: SDXL's (which have upcast_vae) decode fp16 VAEs with force_upcast in float32
    upcast = hasattr(pipe, "upcast_vae") and vae.dtype == torch.float16 and bool(vae.config.get("force_upcast"))
    mean, std = vae.config.get("latents_mean"), vae.config.get("latents_std")
    if mean is not None and std is not None:
        channels = latents.shape[1]
        mean_t = torch.tensor(mean).view(1, channels, 1, 1).to(latents)
        std_t = torch.tensor(std).view(1, channels, 1, 1).to(latents)
        latents = latents * std_t / vae.config.scaling_factor + mean_t
    else:
        latents = latents / vae.config.scaling_factor
        if vae.config.get("shift_factor") is not None:  # SD3's and Flux's VAEs
            latents = latents + vae.config.shift_factor
    try:
        if upcast:
            vae.to(dtype=torch.float32)
        image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
    finally:
        if upcast:
            vae.to(dtype=torch.float16)
    do_denormalize = None
    if getattr(pipe, "safety_checker", None) is not None and hasattr(pipe, "run_safety_checker"):
        image, nsfw = pipe.run_safety_checker(image, _device_of(pipe), _denoising_module(pipe).dtype)
        if nsfw is not None:
            do_denormalize = [not flagged for flagged in nsfw]
    if getattr(pipe, "watermark", None) is not None:
        image = pipe.watermark.apply_watermark(image)
    if do_denormalize is None:
        return pipe.image_processor.postprocess(image, output_type=output_type)
    return pipe.image_processor.postprocess(image, output_type=output_type, do_denormalize=do_denormalize)


# --- generation -------------------------------------------------------------------------------------


@dataclass
class Generation:
    """What :func:`generate` returns: images (per ``output_type``), VP latents, the seeds used (``None``
    when generators or noise were given), the sigmas, and the cost: denoiser calls, UNet batch rows,
    and the sampling wall time in seconds (without text encoding and decoding)."""

    images: Any
    latents: torch.Tensor
    seeds: list[int] | None
    sigmas: torch.Tensor
    model_calls: int
    batch_rows: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def generate(
    pipe: Any,
    prompt: str | Sequence[str],
    *,
    negative_prompt: str | Sequence[str] | None = None,
    sampler: str | Callable[..., torch.Tensor] = "zigzag_euler",
    steps: int = 30,
    cfg_scale: float | None = None,
    distilled_guidance: float | None = None,
    schedule: str | None = None,
    num_images_per_prompt: int = 1,
    height: int | None = None,
    width: int | None = None,
    seed: int | Sequence[int] | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    noise: torch.Tensor | None = None,
    guidance_interval: GuidanceInterval | tuple[float, float] | None = None,
    sampler_options: Mapping[str, Any] | None = None,
    original_size: tuple[int, int] | None = None,
    crops_coords_top_left: tuple[int, int] = (0, 0),
    target_size: tuple[int, int] | None = None,
    max_sequence_length: int | None = None,
    output_type: str = "pil",
    disable_progress: bool | None = None,
    seg_scale: float = 0.0,
    seg_blur_sigma: float = DEFAULT_BLUR_SIGMA,
    seg_applied_layers: Sequence[str] = ("mid",),
    seg_applied_layers_index: Sequence[str] | None = None,
    seg_interval: tuple[float, float] | None = None,
    inversion_seg_scale: float = 0.0,
) -> Generation:
    """Text-to-image with ``pipe``'s models and a k-diffusion (or zigzag) sampler.

    Args:
        pipe: a loaded diffusers pipeline (SD 1.x, SD 2.x, SDXL, SD3/SD3.5, Flux; see the module docstring).
        prompt: one prompt or a list; ``num_images_per_prompt`` images each (prompt-major order).
        negative_prompt: one for all prompts or one per prompt; ``None`` is the pipeline's default
            (``""`` for SD, SD3 and Flux, zero embeddings for SDXL with ``force_zeros_for_empty_prompt``).
        sampler: ``"zigzag_euler"``, ``"zigzag_ddim"``, ``"zigzag_dpmpp_2m"``, a k-diffusion sampler name or a
            callable.
        steps: T, sampling steps.
        cfg_scale: γ₁, true CFG scale ``uncond + s·(cond − uncond)`` of every denoising call; ``None`` (default):
            the model family's (:data:`FAMILY_CFG_SCALE`: 5.5 for SD/SDXL, the pipeline's ``guidance_scale``
            default for SD3, 1 = off for Flux). At 1 only the conditional row is evaluated.
        distilled_guidance: g₁, the guidance input of a guidance-distilled model (Flux dev, the pipeline's
            ``guidance_scale``) for every denoising call; ``None``: the pipeline's default (3.5). Refused
            (``ValueError``) on models without guidance embeddings. Its inversion value g₂ is
            ``sampler_options["inversion_guidance"]`` (default ``min(1, g₁)``, :data:`DEFAULT_INVERSION_GUIDANCE`).
        schedule: one of :data:`SCHEDULES`; ``None`` (default): ``"karras"`` for SD/SDXL, ``"model"`` (the
            pipeline's own shifted sigmas) for SD3 and Flux.
        seed: an integer (image k gets ``seed + k``) or one per image; or pass ``generator`` (one, or
            one per image) or ``noise`` (unit-variance initial latents, ``[images, C, H/8, W/8]``; Flux:
            unpacked).
        guidance_interval: ``(sigma_low, sigma_high)``: CFG only there (and zigzag only there).
        sampler_options: keyword arguments for the sampler, e.g. ``{"inversion_scale": 0.0,
            "zigzag_steps": 29, "zigzag_rounds": 1}`` (γ₂, λ, T_max) for the zigzag samplers, and
            ``"inversion_guidance"`` (g₂) on guidance-distilled models. With true CFG off (``cfg_scale`` 1)
            on SD3/Flux, ``inversion_scale`` defaults to 1, so every call is one row.
        original_size, crops_coords_top_left, target_size: SDXL micro-conditioning.
        max_sequence_length: T5 tokens (SD3, Flux); default: the pipeline's (256 for SD3, 512 for Flux).
        output_type: ``"pil"``, ``"np"``, ``"pt"`` (the image processor's) or ``"latent"``.
        seg_scale: Smoothed Energy Guidance scale s_seg ``>= 0`` (default 0: off; the official default is 3):
            ``D = D_u + s·(D_c − D_u) + s_seg·(D_c − D_c^blur)`` on the batch ``[uncond, cond, cond_blur]``.
            UNet models only: refused on SD3/Flux (their transformers use joint attention).
        seg_blur_sigma: σ of the query blur, ``> 0``; above 9999 (the default 9999999) the infinite blur.
        seg_applied_layers: self-attention layers to blur: ``"down"``, ``"mid"``, ``"up"`` and index names
            ``"d0"``, ``"m0"``, ``"u5"`` (default ``("mid",)``); ``seg_applied_layers_index``, the official
            index list, takes precedence when given.
        seg_interval: ``(sigma_low, sigma_high)``: the blurred row only for σ inside it (default: all σ).
        inversion_seg_scale: s_seg of Z-Sampling's inversion calls (default 0: inversion without SEG).
        SEG processors are installed on ``pipe.unet`` for this call only; exactly the processors that were
        there before are put back on return, on an exception and on ``KeyboardInterrupt``.
    """
    family = model_family(pipe)
    flow = family != "sd"
    prompts = _as_list(prompt, "prompt")
    negatives = None
    if negative_prompt is not None:
        negatives = _as_list(negative_prompt, "negative_prompt")
        if len(negatives) == 1:
            negatives = negatives * len(prompts)
        if len(negatives) != len(prompts):
            raise ValueError(f"negative_prompt must be one string or {len(prompts)} (one per prompt)")
    if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be an integer >= 1, got {num_images_per_prompt!r}")
    function = resolve_sampler(sampler)
    cfg_scale, guidance, default_inversion_scale, default_inversion_guidance = guidance_defaults(
        pipe, cfg_scale, distilled_guidance
    )
    if schedule is None:
        schedule = FAMILY_SCHEDULE[family]
    options = dict(sampler_options or {})
    accepted = inspect.signature(function).parameters
    if options.get("inversion_guidance") is not None and guidance is None:
        raise ValueError(
            "inversion_guidance (g₂, distilled guidance of the inversions) needs a guidance-distilled model with "
            f"guidance embeddings (Flux dev); this {type(pipe).__name__} has none"
        )
    if "inversion_guidance" in accepted and options.get("inversion_guidance") is None:
        if default_inversion_guidance is not None:
            options["inversion_guidance"] = default_inversion_guidance
    if default_inversion_scale is not None and "inversion_scale" in accepted and "inversion_scale" not in options:
        options["inversion_scale"] = default_inversion_scale
    if flow and (seg_scale != 0 or inversion_seg_scale != 0):
        raise ValueError(
            f"seg_scale must be 0 on {type(pipe).__name__} (got seg_scale={seg_scale!r}, inversion_seg_scale="
            f"{inversion_seg_scale!r}): Smoothed Energy Guidance blurs the queries of a UNet's self-attention; "
            "SD3's and Flux's transformers use joint text-image attention, for which SEG is not defined"
        )
    if not flow and max_sequence_length is not None:
        raise ValueError("max_sequence_length (T5 tokens) is for SD3 and Flux pipelines only")
    seg = SEGOptions(
        seg_scale=seg_scale,
        seg_blur_sigma=seg_blur_sigma,
        seg_applied_layers=tuple(seg_applied_layers_index or seg_applied_layers),
        seg_interval=seg_interval,
        inversion_seg_scale=inversion_seg_scale,
    )
    if seg.enabled:  # layer names and indices against this UNet, before any model call
        select_layers(pipe.unet.named_modules(), seg.seg_applied_layers)
    scale_factor = latent_scale_factor(pipe)
    if flow:  # SD3: patch size 2; Flux: 2×2 packing
        multiple = scale_factor * 2
        default_size = int(pipe.default_sample_size) * scale_factor
        channels = int(pipe.transformer.config.in_channels) // (4 if family == "flux" else 1)
    else:
        multiple = scale_factor
        default_size = int(pipe.unet.config.sample_size) * scale_factor
        channels = int(pipe.unet.config.in_channels)
    height = height or default_size
    width = width or default_size
    if height % multiple or width % multiple or height < multiple or width < multiple:
        raise ValueError(f"height and width must be positive multiples of {multiple}, got {height}x{width}")
    count = len(prompts) * num_images_per_prompt
    shape = (count, channels, height // scale_factor, width // scale_factor)

    device = _device_of(pipe)
    denoiser = denoiser_for(pipe)
    sigmas = sigmas_for(pipe, denoiser, schedule, steps, latent_size=shape[2:])
    counter = CallCounter(denoiser)
    model = CFGDenoiser(counter, guidance_interval=guidance_interval, seg_interval=seg.seg_interval)

    generators, seeds = _generators(count, seed, generator) if noise is None else ([], None)
    if noise is None:
        noise = initial_noise(shape, generators)
    elif tuple(noise.shape) != shape:
        raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
    if flow:  # x_σ₀ = (1 − σ₀)·x₀ + σ₀·ε is the noise itself at σ₀ = 1, as the pipelines start
        x = noise.to(device=device, dtype=torch.float32)
    else:
        x = noise.to(device=device, dtype=torch.float32) * math.sqrt(1 + float(sigmas[0]) ** 2)
    if generators and "noise_sampler" in accepted and "noise_sampler" not in options:
        options["noise_sampler"] = _noise_sampler(generators, x)

    cond, uncond = encode_prompts(
        pipe,
        prompts,
        negatives,
        num_images_per_prompt,
        height,
        width,
        original_size=original_size,
        crops_coords_top_left=crops_coords_top_left,
        target_size=target_size,
        max_sequence_length=max_sequence_length,
    )
    extra_args: dict[str, Any] = {"cond": cond, "uncond": uncond, "cond_scale": cfg_scale}
    if guidance is not None:
        extra_args["guidance"] = guidance
    if seg.enabled:
        extra_args.update(seg_scale=seg.seg_scale, inversion_seg_scale=seg.inversion_seg_scale)
    installed = seg_attention(pipe.unet, seg.seg_applied_layers, seg.seg_blur_sigma) if seg.enabled else nullcontext()
    start = time.perf_counter()
    with installed as state:
        model.seg_state = state
        x = function(model, x, sigmas.to(device), extra_args=extra_args, disable=disable_progress, **options)
    latents = x if flow else x / math.sqrt(1 + float(sigmas[-1]) ** 2)
    seconds = time.perf_counter() - start
    images = decode_latents(pipe, latents, output_type)
    interval = model.guidance_interval
    settings = {
        "family": family,
        "sampler": getattr(sampler, "__name__", sampler),
        "steps": steps,
        "cfg_scale": cfg_scale,
        "schedule": schedule,
        "size": [width, height],
        "guidance_interval": None if interval is None else [interval.sigma_low, interval.sigma_high],
        "sampler_options": {k: v for k, v in options.items() if k != "noise_sampler"},
    }
    if guidance is not None:
        settings["distilled_guidance"] = guidance
    if seg.enabled:
        window = seg.seg_interval
        settings["seg"] = {
            "seg_scale": seg.seg_scale,
            "seg_blur_sigma": seg.seg_blur_sigma,
            "seg_applied_layers": list(seg.seg_applied_layers),
            "seg_interval": None if window is None else [window.sigma_low, window.sigma_high],
            "inversion_seg_scale": seg.inversion_seg_scale,
        }
    return Generation(images, latents, seeds, sigmas, counter.calls, counter.rows, seconds, settings)


def guidance_defaults(
    pipe: Any, cfg_scale: float | None = None, distilled_guidance: float | None = None
) -> tuple[float, float | None, float | None, float | None]:
    """:func:`generate`'s guidance for ``pipe``: ``(γ₁, g₁, γ₂, g₂)``. γ₁ is ``cfg_scale`` or the family's
    (:data:`FAMILY_CFG_SCALE`), g₁ ``distilled_guidance`` or the pipeline's on models with guidance embeddings
    (``None`` on others; a value given to them is a ``ValueError``); the defaults of the inversions: γ₂ = 1 when
    true CFG is off (γ₁ = 1) on SD3/Flux, so every call is one row, else ``None`` (the sampler's 0), and
    g₂ = ``min(1, g₁)`` (:data:`DEFAULT_INVERSION_GUIDANCE`; ``None`` without g₁)."""
    family = model_family(pipe)
    if cfg_scale is None:
        cfg_scale = FAMILY_CFG_SCALE[family]
        if cfg_scale is None:
            cfg_scale = float(_call_default(pipe, "guidance_scale"))
    cfg_scale = check_finite("cfg_scale", cfg_scale)
    guidance = _distilled_guidance(pipe, family, distilled_guidance)
    inversion_scale = 1.0 if family != "sd" and cfg_scale == 1 else None  # true CFG off: the prompt, one row
    inversion_guidance = default_inversion_guidance(guidance)
    return cfg_scale, guidance, inversion_scale, inversion_guidance


def _distilled_guidance(pipe: Any, family: str, distilled_guidance: float | None) -> float | None:
    """g₁ for a model with guidance embeddings (default: the pipeline's ``guidance_scale``), else ``None``;
    ``ValueError`` for a value given to a model without them."""
    if not _has_guidance_embeds(pipe):
        if distilled_guidance is not None:
            raise ValueError(
                f"distilled_guidance must be None for {type(pipe).__name__}: this model has no guidance embeddings "
                "(only guidance-distilled models such as Flux dev take it; use cfg_scale for true CFG)"
            )
        return None
    if distilled_guidance is None:
        distilled_guidance = _call_default(pipe, "guidance_scale")
    return check_finite("distilled_guidance", distilled_guidance)


# --- loading ----------------------------------------------------------------------------------------


def _offline() -> bool:
    """True if the Hugging Face hub cannot be reached (``HF_HUB_OFFLINE`` set, or no connection)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        return True
    return False


def single_file_pipeline_class(path: str | os.PathLike[str]) -> Any:
    """The text-to-image pipeline class for an original-format ``.safetensors`` checkpoint, from its
    tensor names only (nothing is loaded): SD3 (MMDiT ``joint_blocks``), Flux (``double_blocks``), SDXL
    base, or SD 1.x/2.x."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    if any(k.startswith(("model.diffusion_model.joint_blocks.", "joint_blocks.")) for k in keys):
        return StableDiffusion3Pipeline
    if any(k.startswith(("model.diffusion_model.double_blocks.", "double_blocks.")) for k in keys):
        return FluxPipeline
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return StableDiffusionXLPipeline
    if any(k.startswith("conditioner.") for k in keys):
        raise ValueError(f"{path} looks like an SDXL refiner (image-to-image only); use a text-to-image model")
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return StableDiffusionPipeline
    raise ValueError(
        f"{path} is not an SD 1.x/2.x or SDXL checkpoint, nor SD3 or Flux (no model.diffusion_model.* tensors)"
    )


OPTIONAL_COMPONENTS = ("vae", "safety_checker", "feature_extractor", "image_encoder")
"""Components a folder may leave out (``save_pretrained`` skips ``None`` ones): no VAE = pixel space."""
NULLABLE_COMPONENTS = ("text_encoder_3", "tokenizer_3")
"""Components set to ``None`` when the folder's ``model_index.json`` nulls them: SD3 without T5."""


def _absent_components(folder: Path) -> dict[str, None]:
    """``None`` for each optional component that the folder's ``model_index.json`` omits or nulls."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        return {}
    index = json.loads(index_file.read_text(encoding="utf-8"))
    import diffusers

    pipeline_class = getattr(diffusers, str(index.get("_class_name")), None)
    accepted = inspect.signature(pipeline_class.__init__).parameters if pipeline_class is not None else None
    absent = {
        name: None
        for name in OPTIONAL_COMPONENTS
        if index.get(name) in (None, [None, None]) and (accepted is None or name in accepted)
    }
    absent.update({name: None for name in NULLABLE_COMPONENTS if name in index and index[name] in (None, [None, None])})
    return absent


def load_pipeline(
    model: str,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    config: str | None = None,
) -> Any:
    """Load a text-to-image pipeline for ``--model``; safetensors weights only, never pickle.

    ``model`` is a local diffusers folder (``save_pretrained``), a single-file ``.safetensors``
    checkpoint (``from_single_file``; ``config``: a local diffusers folder of the same architecture,
    needed offline; SD3/Flux single files only with ``config``, else a diffusers folder), a hub id
    (needs network access; fails fast with a clear message offline unless
    it is already in the local cache), or one of :data:`TINY_MODELS` (``tiny``, ``tiny-sd15``, ``tiny-sd2-v``,
    ``tiny-sdxl``, ``tiny-sd3``, ``tiny-sd3-no-t5``, ``tiny-flux``, ``tiny-flux-schnell``), a tiny random-weight
    pipeline for trying things out.
    """
    from diffusers import DiffusionPipeline

    kwargs: dict[str, Any] = {} if dtype is None else {"torch_dtype": dtype}
    path = Path(model).expanduser()
    if model in BUNDLED_MODELS:
        path = BUNDLED_MODELS[model]
        if not (path / "model_index.json").is_file():
            raise ValueError(f"--model {model}: the bundled model is missing from {path}; reinstall zigzag-kdiff")
    if model in TINY_MODELS:
        from .tiny import tiny_pipeline

        pipe = tiny_pipeline(TINY_MODELS[model])
        if dtype is not None and dtype != _denoising_module(pipe).dtype:
            pipe = pipe.to(dtype=dtype)
    elif path.is_dir():
        kwargs.update(_absent_components(path))
        pipe = DiffusionPipeline.from_pretrained(str(path), use_safetensors=True, local_files_only=True, **kwargs)
    elif path.is_file():
        if path.suffix.lower() != ".safetensors":
            raise ValueError(
                f"--model {model}: only .safetensors single-file checkpoints are loaded (.ckpt/.pt/.bin files "
                "are pickles, which can run code when loaded); convert it to safetensors first"
            )
        pipeline_class = single_file_pipeline_class(path)
        if pipeline_class.__name__ in ("StableDiffusion3Pipeline", "FluxPipeline"):
            return _load_flow_single_file(model, path, pipeline_class, config, device, kwargs)
        offline = config is None and _offline()
        try:
            pipe = pipeline_class.from_single_file(str(path), config=config, local_files_only=offline, **kwargs)
        except Exception as error:
            if config is not None:
                raise
            raise ValueError(
                f"--model {model}: loading a single-file checkpoint needs the diffusers config of its "
                f"architecture ({pipeline_class.__name__}), which is fetched from the hub and not cached here; "
                "pass --model-config with a local diffusers folder of the same architecture"
            ) from error
    elif "/" in model and not model.startswith((".", "/", "~")) and model.count("/") == 1:
        try:
            pipe = DiffusionPipeline.from_pretrained(model, use_safetensors=True, local_files_only=True, **kwargs)
        except Exception as error:
            if _offline():
                raise ValueError(
                    f"--model {model}: not a local folder or file, and not in the Hugging Face cache; downloading "
                    "it needs network access, which is not available here. Pass a local diffusers folder or a "
                    ".safetensors file (or try --model tiny)"
                ) from error
            pipe = DiffusionPipeline.from_pretrained(model, use_safetensors=True, **kwargs)
    else:
        raise ValueError(
            f"--model {model}: no such folder or file (expected a local diffusers folder, a .safetensors file, "
            f"a hub id owner/name, or one of {[*BUNDLED_MODELS, *TINY_MODELS]})"
        )
    return _checked(model, pipe, device)


def _checked(model: str, pipe: Any, device: str | torch.device | None) -> Any:
    denoising = "transformer" if getattr(pipe, "transformer", None) is not None else "unet"
    missing = [name for name in (denoising, "scheduler") if getattr(pipe, name, None) is None]  # no vae: pixel space
    if missing or not hasattr(pipe, "encode_prompt"):
        raise ValueError(f"--model {model}: {type(pipe).__name__} lacks {missing or ['encode_prompt']}")
    try:
        model_family(pipe)
    except ValueError as error:
        raise ValueError(f"--model {model}: {error}") from None
    return pipe.to(device) if device is not None else pipe


def _load_flow_single_file(
    model: str, path: Path, pipeline_class: Any, config: str | None, device: Any, kwargs: dict[str, Any]
) -> Any:
    """SD3/Flux single files: only with a local diffusers folder as ``config`` (never the hub); they often hold
    the transformer alone, so anything diffusers cannot build offline ends in a clear error."""
    advice = (
        f"use a local diffusers folder of the model (model_index.json, e.g. from {pipeline_class.__name__}"
        ".save_pretrained) as --model"
    )
    if config is None:
        raise ValueError(
            f"--model {model}: a single-file {pipeline_class.__name__} checkpoint is loaded only with --model-config "
            f"(a local diffusers folder of the same architecture; the hub is never asked); or {advice}"
        )
    try:
        pipe = pipeline_class.from_single_file(str(path), config=config, local_files_only=True, **kwargs)
    except Exception as error:
        raise ValueError(
            f"--model {model}: diffusers could not build a {pipeline_class.__name__} from this single file with "
            f"--model-config {config} offline ({type(error).__name__}: {error}); {advice}"
        ) from error
    return _checked(model, pipe, device)
