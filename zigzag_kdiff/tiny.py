"""Tiny diffusers pipelines with random weights, built from configs (no downloads).

They have the *architecture* of SD 1.5 (ε-prediction, PNDM scheduler), SD 2.x-v (v-prediction, DDIM
scheduler) and SDXL (two text encoders, pooled embeddings, ``text_time`` micro-conditioning, Euler
scheduler, zero unconditional embeddings) at a few thousand parameters per component, for tests,
the ``--model tiny*`` choices of ``zigzag-kdiff compare``, and examples. Their images are noise-like:
the weights are random. Requires the ``[diffusers]`` extra.

The flow-matching kinds (:data:`FLOW_KINDS`): ``sd3`` (``StableDiffusion3Pipeline``: two CLIP encoders
with projections and a T5 encoder, an MMDiT with patch size 2, shift 3), ``sd3-no-t5`` (the same with
``text_encoder_3=None``: zero T5 embeddings), ``flux`` (``FluxPipeline`` of Flux dev: CLIP pooled + T5,
guidance embeddings, dynamic shift) and ``flux-schnell`` (no guidance embeddings, shift 1). Their VAEs
have SD3's/Flux's scaling and shift factors; the T5 tokenizer is built offline from a Unigram vocabulary.
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
"""UNet architectures :func:`tiny_pipeline` builds."""
FLOW_KINDS = ("sd3", "sd3-no-t5", "flux", "flux-schnell")
"""Flow-matching (transformer) architectures :func:`tiny_pipeline` builds."""

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


def tiny_t5_tokenizer() -> Any:
    """A character-level ``T5Tokenizer`` from a Unigram vocabulary (``<pad>``, ``</s>``, ``<unk>``, then
    lowercase letters, digits and punctuation, each alone and after the word-start marker ``▁``), no downloads."""
    from transformers import T5Tokenizer

    chars = list(string.ascii_lowercase + string.digits + ".,!?'-:;()")
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in chars] + [("\u2581" + c, -2.5) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_t5_encoder(vocab_size: int, d_model: int = 32, seed: int = 0) -> Any:
    """A two-layer ``T5EncoderModel`` (no dropout, in eval mode: identical runs give identical embeddings)."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_ff=37,
        d_kv=8,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval()


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
    """A tiny random-weight text-to-image pipeline of the given architecture (:data:`TINY_KINDS`, :data:`FLOW_KINDS`).

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

    if kind in FLOW_KINDS:
        return tiny_flow_pipeline(kind, sample_size, seed)
    if kind not in TINY_KINDS:
        raise ValueError(f"kind must be one of {list(TINY_KINDS + FLOW_KINDS)}, got {kind!r}")
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


def tiny_flow_pipeline(kind: str = "flux", sample_size: int = 8, seed: int = 0) -> Any:
    """A tiny random-weight SD3 or Flux pipeline (see :data:`FLOW_KINDS`); every module in eval mode.

    ``sample_size`` is the default latent size (images are ``8·sample_size`` pixels square; the Flux
    pipeline's ``default_sample_size`` is set to it). Same ``kind`` and ``seed`` give the same weights.
    """
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    if kind not in FLOW_KINDS:
        raise ValueError(f"kind must be one of {list(FLOW_KINDS)}, got {kind!r}")
    tokenizer = tiny_tokenizer()
    t5_tokenizer = tiny_t5_tokenizer()
    no_quant = {"use_quant_conv": False, "use_post_quant_conv": False}
    if kind.startswith("sd3"):
        torch.manual_seed(seed + 4)
        transformer = SD3Transformer2DModel(
            sample_size=sample_size,
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=64,  # the T5 width; CLIP-L ⊕ CLIP-G hidden states (32 + 32) are padded to it
            caption_projection_dim=32,
            pooled_projection_dim=64,  # CLIP-L ⊕ CLIP-G pooled projections (32 + 32)
            pos_embed_max_size=32,
        ).eval()
        with_t5 = kind == "sd3"
        return StableDiffusion3Pipeline(
            transformer=transformer,
            # SD3/SD3.5's scheduler config: static shift 3
            scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
            vae=tiny_vae(seed, scaling_factor=1.5305, shift_factor=0.0609, **no_quant),
            text_encoder=tiny_text_encoder(len(tokenizer), seed=seed + 1, projection_dim=32),
            tokenizer=tokenizer,
            text_encoder_2=tiny_text_encoder(len(tokenizer), seed=seed + 2, projection_dim=32, hidden_act="gelu"),
            tokenizer_2=tiny_tokenizer(),
            text_encoder_3=tiny_t5_encoder(len(t5_tokenizer), d_model=64, seed=seed + 3) if with_t5 else None,
            tokenizer_3=t5_tokenizer if with_t5 else None,
        )
    dev = kind == "flux"
    torch.manual_seed(seed + 4)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels packed 2×2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # the T5 width
        pooled_projection_dim=32,  # CLIP's pooled output
        guidance_embeds=dev,
        axes_dims_rope=(4, 4, 8),
    ).eval()
    # Flux dev's scheduler config (dynamic shift from the image's token count); schnell's: shift 1, no dynamic shift
    if dev:
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000,
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=tiny_vae(seed, scaling_factor=0.3611, shift_factor=0.1159, **no_quant),
        text_encoder=tiny_text_encoder(len(tokenizer), seed=seed + 1),
        tokenizer=tokenizer,
        text_encoder_2=tiny_t5_encoder(len(t5_tokenizer), d_model=32, seed=seed + 3),
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    pipe.default_sample_size = sample_size  # the pipeline's default is 128 (1024-pixel images)
    return pipe
