"""Flow-matching models (rectified flow: SD3/SD3.5, Flux) as k-diffusion denoisers.

Rectified flow: ``x_σ = (1 − σ)·x₀ + σ·ε`` with ``σ ∈ (0, 1]``; the network predicts the velocity
``v = ε − x₀``, so the denoised estimate is ``D(x; σ) = x − σ·v`` and k-diffusion's derivative
``(x − D)/σ = v``: an Euler step in σ is the flow Euler step. :class:`FlowDenoiser` wraps a velocity
model the way ``k_diffusion.external`` wraps ε/v models; the samplers of :mod:`zigzag_kdiff.sampling`
detect it with :func:`is_flow` and treat the latent as a flow latent (see that module's "Flow models").

The equivalent variance-exploding view is ``x_VE = x/(1 − σ)``, ``σ_VE = σ/(1 − σ)`` with the same ``D``.

This module is torch only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["DEFAULT_INVERSION_GUIDANCE", "FlowDenoiser", "default_inversion_guidance", "is_flow"]

DEFAULT_INVERSION_GUIDANCE = 1.0
"""g₂, the distilled guidance of the inversion calls on guidance-distilled models (Flux dev), where a host's user
does not set it (every host uses this default): in the idealised D_g = D_u + g·(D_c − D_u), g = 1 is the
conditional prediction, the lowest value Flux dev is normally run at; RF-Sampling (the Z-Sampling authors' flow
method) gives no lower value. Capped at g₁ by :func:`default_inversion_guidance`."""


def default_inversion_guidance(guidance: float | None) -> float | None:
    """The default g₂ for a model whose denoising calls run at distilled guidance g₁ = ``guidance``:
    ``min(DEFAULT_INVERSION_GUIDANCE, g₁)`` (so the gap g₁ − g₂ is never negative); ``None`` without g₁."""
    return None if guidance is None else min(DEFAULT_INVERSION_GUIDANCE, float(guidance))


class FlowDenoiser(nn.Module):
    """A k-diffusion denoiser ``D(x; σ) = x − σ·v(x, σ·timestep_scale)`` of a velocity model.

    ``forward(x, sigma, **kwargs)`` calls ``inner_model(x, sigma * timestep_scale, **kwargs)`` (``sigma``
    of shape ``[batch]``, broadcast over ``x``'s dimensions) and returns ``x − σ·v``. Keyword arguments
    (conditioning tensors, Flux's distilled ``guidance`` g, …) pass through unchanged.

    Args:
        inner_model: the velocity model ``v = inner_model(x, timestep, **kwargs)``.
        timestep_scale: the network's timestep per unit σ: 1000 for SD3's transformer (timestep σ·1000),
            1 for Flux's (timestep σ).
        sigma_min: the smallest noise level of the model's schedule (``0 <= sigma_min < sigma_max``).
        sigma_max: the largest (``<= 1``; the pure-noise level of rectified flow is 1).
    """

    flow = True
    """Marks a flow denoiser for :func:`is_flow` (host adapters may set it on their own wrappers)."""

    def __init__(
        self,
        inner_model: nn.Module,
        timestep_scale: float = 1000.0,
        sigma_min: float = 1e-3,
        sigma_max: float = 1.0,
    ) -> None:
        super().__init__()
        scale = float(timestep_scale)
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"timestep_scale must be a finite number > 0, got {timestep_scale!r}")
        low, high = float(sigma_min), float(sigma_max)
        if not (0 <= low < high <= 1):
            raise ValueError(
                "sigma_min and sigma_max must satisfy 0 <= sigma_min < sigma_max <= 1, "
                f"got ({sigma_min!r}, {sigma_max!r})"
            )
        self.inner_model = inner_model
        self.timestep_scale = scale
        self.sigma_min = low
        self.sigma_max = high

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        velocity = self.inner_model(x, sigma * self.timestep_scale, **kwargs)
        sigma = sigma.reshape(sigma.shape + (1,) * (x.ndim - sigma.ndim))
        return x - sigma * velocity


def is_flow(model: object) -> bool:
    """True if ``model`` or any ``.inner_model`` below it has the attribute ``flow = True``."""
    seen: set[int] = set()
    while model is not None and id(model) not in seen:
        if getattr(model, "flow", False) is True:
            return True
        seen.add(id(model))
        model = getattr(model, "inner_model", None)
    return False
