"""Adapters from diffusers UNets to the ε-model call k-diffusion's discrete wrappers make.

k-diffusion's ``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser`` call their inner model as
``inner(c_in·x, t, **kwargs)``; :class:`UNetEps` turns that into ``unet(x, t, **kwargs).sample``.
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
