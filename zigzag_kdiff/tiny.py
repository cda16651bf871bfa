"""Tiny diffusers pipelines with random weights, built from configs (no downloads).

They have the *architecture* of SD 1.5 (ε-prediction, PNDM scheduler), SD 2.x-v (v-prediction, DDIM
scheduler) and SDXL (two text encoders, pooled embeddings, ``text_time`` micro-conditioning, Euler
scheduler, zero unconditional embeddings) at a few thousand parameters per component, for tests,
the ``--model tiny*`` choices of ``zigzag-kdiff compare``, and examples. Their images are noise-like:
the weights are random. Requires the ``[diffusers]`` extra.
"""

from __future__ import annotations

import json
import os
import string
import tempfile
from typing import Any

import torch

from .models import tiny_unet

TINY_KINDS = ("sd15", "sd2-v", "sdxl")
"""Architectures :func:`tiny_pipeline` builds."""

# SD's and SDXL's training schedule (scaled-linear β, 1000 steps); the samplers here read ᾱ from it.
_SD_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
}


def tiny_tokenizer(model_max_length: int = 77) -> Any:
    """A character-level ``CLIPTokenizer`` (no merges) over lowercase letters, digits and punctuation.

    Built from a ``vocab.json`` and an empty ``merges.txt`` written to a temporary folder, so it
    loads the same way with any ``transformers`` version. Other characters map to the unknown token.
    """
    from transformers import CLIPTokenizer

    chars = list(string.ascii_lowercase + string.digits + ".,!?'-:;()")
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump({token: i for i, token in enumerate(tokens)}, f)
        with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=model_max_length)


def tiny_text_encoder(
    vocab_size: int, hidden_size: int = 32, seed: int = 0, projection_dim: int | None = None, **config: Any
) -> Any:
    """A two-layer ``CLIPTextModel`` (or ``CLIPTextModelWithProjection`` given ``projection_dim``)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    settings = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
        **config,
    }
    torch.manual_seed(seed)
    if projection_dim is None:
        return CLIPTextModel(CLIPTextConfig(**settings)).eval()
    return CLIPTextModelWithProjection(CLIPTextConfig(projection_dim=projection_dim, **settings)).eval()


def tiny_vae(seed: int = 0, scaling_factor: float = 0.18215, **config: Any) -> Any:
    """An ``AutoencoderKL`` with SD's 8× downsampling (four blocks) and 4 latent channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    settings = {
        "block_out_channels": (8, 8, 16, 16),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
        "sample_size": 64,
        "scaling_factor": scaling_factor,
        **config,
    }
    return AutoencoderKL(**settings).eval()


def tiny_pipeline(kind: str = "sd15", sample_size: int = 8, seed: int = 0) -> Any:
    """A tiny random-weight text-to-image pipeline of the given architecture (see :data:`TINY_KINDS`).

    ``sample_size`` is the UNet's default latent size (images are ``8·sample_size`` pixels square).
    Same ``kind`` and ``seed`` give the same weights.
    """
    from diffusers import (
        DDIMScheduler,
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    if kind not in TINY_KINDS:
        raise ValueError(f"kind must be one of {list(TINY_KINDS)}, got {kind!r}")
    tokenizer = tiny_tokenizer()
    vocab = len(tokenizer)
    if kind == "sdxl":
        return StableDiffusionXLPipeline(
            vae=tiny_vae(seed, scaling_factor=0.13025),
            text_encoder=tiny_text_encoder(vocab, seed=seed + 1),
            text_encoder_2=tiny_text_encoder(vocab, seed=seed + 2, projection_dim=32, hidden_act="gelu"),
            tokenizer=tokenizer,
            tokenizer_2=tiny_tokenizer(),
            unet=tiny_unet(
                cross_attention_dim=64, sample_size=sample_size, seed=seed + 3, sdxl=True, text_embeds_dim=32
            ),
            # SDXL's scheduler config, extra keys included (a DDIM scheduler made from it inherits them)
            scheduler=EulerDiscreteScheduler.from_config(
                {
                    **_SD_SCHEDULE,
                    "timestep_spacing": "leading",
                    "interpolation_type": "linear",
                    "set_alpha_to_one": False,
                    "clip_sample": False,
                    "sample_max_value": 1.0,
                }
            ),
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )
    if kind == "sd2-v":
        text_encoder = tiny_text_encoder(vocab, seed=seed + 1, hidden_act="gelu")
        unet = tiny_unet(sample_size=sample_size, seed=seed + 3, use_linear_projection=True)
        scheduler: Any = DDIMScheduler(
            **_SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, prediction_type="v_prediction"
        )
    else:
        text_encoder = tiny_text_encoder(vocab, seed=seed + 1)
        unet = tiny_unet(sample_size=sample_size, seed=seed + 3)
        scheduler = PNDMScheduler(**_SD_SCHEDULE, skip_prk_steps=True, set_alpha_to_one=False)
    return StableDiffusionPipeline(
        vae=tiny_vae(seed),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
