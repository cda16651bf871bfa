"""Adapters from diffusers UNets to the ε-model call k-diffusion's discrete wrappers make.

k-diffusion's ``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser`` call their inner model as
``inner(c_in·x, t, **kwargs)``; :class:`UNetEps` turns that into ``unet(x, t, **kwargs).sample``.
For flow-matching transformers, :class:`zigzag_kdiff.flow.FlowDenoiser` calls ``inner(x, σ·timestep_scale,
**kwargs)`` and expects the velocity: :class:`SD3Velocity` (SD3's MMDiT, timestep σ·1000) and
:class:`FluxVelocity` (Flux's, timestep σ; it packs the latent into 2×2 patches, builds the image and
text position ids and unpacks the velocity, so the sampler sees ``[B, C, H, W]`` latents as for a UNet).
Requires the ``[diffusers]`` extra.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class UNetEps(nn.Module):
    """``forward(x, t, **kwargs) = unet(x, t, **kwargs).sample``, in the UNet's dtype."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        dtype = self.unet.dtype
        kwargs = {k: _to_dtype(v, dtype) for k, v in kwargs.items()}
        return self.unet(x.to(dtype), t, return_dict=False, **kwargs)[0].to(x.dtype)


class SD3Velocity(nn.Module):
    """``forward(x, t, encoder_hidden_states, pooled_projections)`` = SD3's transformer velocity at timestep
    ``t`` (= σ·1000, as ``StableDiffusion3Pipeline`` passes it), in the transformer's dtype."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor, pooled_projections: torch.Tensor
    ) -> torch.Tensor:
        dtype = self.transformer.dtype
        velocity = self.transformer(
            hidden_states=x.to(dtype),
            timestep=t,
            encoder_hidden_states=encoder_hidden_states.to(dtype),
            pooled_projections=pooled_projections.to(dtype),
            return_dict=False,
        )[0]
        return velocity.to(x.dtype)


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B, (H/2)·(W/2), 4·C]``: Flux's 2×2 patches (``FluxPipeline._pack_latents``)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`pack_latents` for a ``height × width`` latent."""
    b, _, channels = x.shape
    x = x.view(b, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels // 4, height, width)


def image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Flux's image position ids for a ``height × width`` latent: ``(0, row, column)`` per 2×2 patch."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] = torch.arange(height // 2)[:, None]
    ids[..., 2] = torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxVelocity(nn.Module):
    """``forward(x, t, encoder_hidden_states, pooled_projections, guidance=None)`` = Flux's transformer velocity
    for the unpacked latent ``x`` ``[B, C, H, W]`` at timestep ``t`` (= σ, as ``FluxPipeline`` passes it).

    ``guidance`` is the distilled guidance g (a number or one per row), given to the transformer as a float32
    tensor of one value per row on models with guidance embeddings (Flux dev); ``None`` on others (schnell).
    The text ids are zeros (as ``FluxPipeline.encode_prompt`` makes them), the image ids the patch grid.
    """

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        guidance: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        transformer = self.transformer
        dtype = transformer.dtype
        batch, _, height, width = x.shape
        if transformer.config.guidance_embeds:
            if guidance is None:
                raise ValueError("this Flux transformer has guidance embeddings: pass guidance (distilled guidance g)")
            guidance = torch.as_tensor(guidance, dtype=torch.float32, device=x.device).reshape(-1).expand(batch)
        elif guidance is not None:
            raise ValueError("guidance (distilled guidance) needs a Flux transformer with guidance embeddings")
        velocity = transformer(
            hidden_states=pack_latents(x.to(dtype)),
            timestep=t.to(dtype),
            guidance=guidance,
            pooled_projections=pooled_projections.to(dtype),
            encoder_hidden_states=encoder_hidden_states.to(dtype),
            txt_ids=torch.zeros(encoder_hidden_states.shape[1], 3, device=x.device, dtype=dtype),
            img_ids=image_ids(height, width, x.device, dtype),
            return_dict=False,
        )[0]
        return unpack_latents(velocity, height, width).to(x.dtype)


def _to_dtype(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, dict):
        return {k: _to_dtype(v, dtype) for k, v in value.items()}
    return value


def tiny_unet(
    cross_attention_dim: int = 32,
    sample_size: int = 16,
    seed: int = 0,
    sdxl: bool = False,
    text_embeds_dim: int | None = None,
    **config: Any,
) -> nn.Module:
    """A tiny ``UNet2DConditionModel`` with random weights.

    SD layout: cross-attention in both blocks. ``sdxl=True``: SDXL's layout, a first block without
    attention, two transformer layers in the next (and in the mid block), and the ``text_time``
    added embedding (pooled text embedding + six micro-conditioning ids).

    ``text_embeds_dim`` (SDXL): width of the pooled text embedding, default ``cross_attention_dim``
    (real SDXL: 2048-wide token embeddings, 1280-wide pooled ones). ``config`` overrides any other
    ``UNet2DConditionModel`` argument (e.g. ``use_linear_projection=True`` as SD 2.x).
    """
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    extra: dict[str, Any] = {}
    if sdxl:
        pooled = cross_attention_dim if text_embeds_dim is None else text_embeds_dim
        extra = {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": pooled + 6 * 8,
            "transformer_layers_per_block": (1, 2),
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        }
    settings: dict[str, Any] = {
        "sample_size": sample_size,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "layers_per_block": 1,
        "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": 8,
        "norm_num_groups": 8,
        **extra,
        **config,
    }
    return UNet2DConditionModel(**settings).eval()
