"""Denoiser wrappers: classifier-free guidance with branch skipping and a guidance interval.

All wrappers follow k-diffusion's denoiser convention: ``forward(x, sigma, **kwargs)`` returns the
denoised estimate ``D(x; σ)`` in the variance-exploding parameterisation (``x = x₀ + σ·n``).

CFG convention (the released Z-Sampling code's and diffusers'):
``D = D_uncond + s · (D_cond − D_uncond)``. Scale ``s = 1`` is the conditional prediction alone and
``s = 0`` the unconditional one. The paper writes ε = (1+γ)·u(c) − γ·u(∅), i.e. ``s = 1 + γ``.

Guidance interval (Kynkäänniemi et al., NeurIPS 2024): the scale applies only for σ inside
``[sigma_low, sigma_high]``; outside it the scale is 1 and the unconditional branch is not evaluated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .interval import GuidanceInterval, check_finite, effective_scale
from .seg import SEGInterval, SEGState, combine, effective_seg_scale, seg_branches

__all__ = ["CFGDenoiser", "CallCounter", "Conditioning", "GuidanceInterval", "check_finite", "effective_scale"]

Conditioning = torch.Tensor | Mapping[str, Any]


def _select_rows(value: Any, batch: int) -> Any:
    """Broadcast a batch-1 conditioning tensor (or nested mapping of them) to ``batch`` rows."""
    if isinstance(value, torch.Tensor):
        if value.ndim > 0 and value.shape[0] == 1 and batch != 1:
            return value.expand(batch, *value.shape[1:])
        return value
    if isinstance(value, Mapping):
        return {k: _select_rows(v, batch) for k, v in value.items()}
    return value


def _concat(first: Any, second: Any) -> Any:
    """Concatenate two conditionings along the batch dimension (leaves must match in shape)."""
    if isinstance(first, torch.Tensor):
        return torch.cat([first, second])
    if isinstance(first, Mapping):
        return {k: _concat(first[k], second[k]) for k in first}
    return first


def _batchable(first: Any, second: Any) -> bool:
    if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor):
        return first.shape[1:] == second.shape[1:] and first.dtype == second.dtype
    if isinstance(first, Mapping) and isinstance(second, Mapping):
        return first.keys() == second.keys() and all(_batchable(first[k], second[k]) for k in first)
    return not isinstance(first, (torch.Tensor, Mapping)) and first == second


def _as_kwargs(cond: Conditioning) -> dict[str, Any]:
    """A tensor is passed to the inner denoiser as ``cond=``; a mapping as its own keywords."""
    return dict(cond) if isinstance(cond, Mapping) else {"cond": cond}


class CFGDenoiser(nn.Module):
    """Classifier-free guidance over an inner k-diffusion denoiser, evaluating only needed branches.

    ``forward(x, sigma, cond, uncond, cond_scale)`` returns ``D_u + s·(D_c − D_u)``:

    * ``s == 1``: one call on the conditional branch only (no unconditional rows);
    * ``s == 0``: one call on the unconditional branch only;
    * otherwise: one batched call on ``[uncond, cond]`` (the released code's order).

    Smoothed Energy Guidance (:mod:`zigzag_kdiff.seg`): with ``seg_scale > 0`` (a keyword of ``forward``,
    i.e. of ``extra_args``) and a ``seg_state`` whose attention processors are installed, it returns
    ``D_u + s·(D_c − D_u) + s_seg·(D_c − D_c^blur)`` from one call on ``[uncond, cond, cond_blur]``
    (``[cond, cond_blur]`` at ``s == 1``), the blurred row only for σ inside ``seg_interval``. With
    ``seg_scale == 0`` nothing changes (bit for bit). ``inversion_seg_scale`` is read by
    :func:`~zigzag_kdiff.sampling.call_with_cond_scale` for Z-Sampling's inversion calls (default 0).

    ``cond``/``uncond`` is either a tensor (passed to the inner denoiser as ``cond=``) or a mapping of
    keyword arguments (e.g. ``{"encoder_hidden_states": ..., "added_cond_kwargs": {...}}`` for SDXL's
    pooled embeddings and time ids); nested tensors are batched per branch. Tensors with batch size 1
    are broadcast to the batch of ``x``. Other keyword arguments pass through to both branches.

    Args:
        inner_model: a k-diffusion denoiser ``D(x, sigma, **kwargs)``.
        guidance_interval: optional ``(sigma_low, sigma_high)``; outside it the scale is 1.
        seg_state: the :class:`~zigzag_kdiff.seg.SEGState` of installed SEG attention (needed for ``seg_scale > 0``).
        seg_interval: optional ``(sigma_low, sigma_high)``; outside it no blurred row (``seg_scale`` 0).
    """

    def __init__(
        self,
        inner_model: nn.Module,
        guidance_interval: GuidanceInterval | tuple[float, float] | None = None,
        seg_state: SEGState | None = None,
        seg_interval: GuidanceInterval | tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        self.inner_model = inner_model
        self.guidance_interval = GuidanceInterval.parse(guidance_interval)
        self.seg_state = seg_state
        self.seg_interval = SEGInterval.parse(seg_interval)

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        uncond: Conditioning | None = None,
        cond_scale: float = 1.0,
        seg_scale: float = 0.0,
        inversion_seg_scale: float = 0.0,
        **kwargs: Any,
    ) -> torch.Tensor:
        scale = effective_scale(check_finite("cond_scale", cond_scale), sigma.max(), self.guidance_interval)
        seg = self._seg_scale_at(seg_scale, inversion_seg_scale, sigma.max())
        if seg != 0.0:
            return self._forward_seg(x, sigma, cond, uncond, scale, seg, kwargs)
        batch = x.shape[0]
        if scale == 1.0:
            return self.inner_model(x, sigma, **_as_kwargs(_select_rows(cond, batch)), **kwargs)
        if uncond is None:
            raise ValueError(f"uncond is required for cond_scale != 1 (got cond_scale={scale})")
        uncond_kwargs = _as_kwargs(_select_rows(uncond, batch))
        if scale == 0.0:
            return self.inner_model(x, sigma, **uncond_kwargs, **kwargs)
        cond_kwargs = _as_kwargs(_select_rows(cond, batch))
        if _batchable(uncond_kwargs, cond_kwargs):
            both = self.inner_model(
                torch.cat([x, x]), torch.cat([sigma, sigma]), **_concat(uncond_kwargs, cond_kwargs), **kwargs
            )
            denoised_uncond, denoised_cond = both.chunk(2)
        else:  # e.g. prompts of different token lengths: two calls
            denoised_uncond = self.inner_model(x, sigma, **uncond_kwargs, **kwargs)
            denoised_cond = self.inner_model(x, sigma, **cond_kwargs, **kwargs)
        return denoised_uncond + (denoised_cond - denoised_uncond) * scale

    def _seg_scale_at(self, seg_scale: float, inversion_seg_scale: float, sigma: torch.Tensor) -> float:
        """s_seg in effect at ``sigma`` (0 outside the SEG interval); validates both SEG scales."""
        for name, value in (("seg_scale", seg_scale), ("inversion_seg_scale", inversion_seg_scale)):
            if check_finite(name, value) < 0:
                raise ValueError(f"{name} must be a finite number >= 0 (0 = SEG off), got {value!r}")
        seg = effective_seg_scale(float(seg_scale), sigma, self.seg_interval)
        if seg != 0.0 and self.seg_state is None:
            raise ValueError(
                "seg_scale > 0 needs a seg_state: install SEG attention with zigzag_kdiff.seg.seg_attention(unet, ...) "
                "and pass the state it yields as CFGDenoiser(..., seg_state=state)"
            )
        return seg

    def _forward_seg(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        uncond: Conditioning | None,
        scale: float,
        seg: float,
        kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """CFG + SEG on the batch ``[uncond, cond, cond_blur]`` (the official layout), or ``[cond, cond_blur]``
        at scale 1; an uncond that cannot be batched with cond (other token length) is a call of its own."""
        assert self.seg_state is not None
        batch = x.shape[0]
        cond_kwargs = _as_kwargs(_select_rows(cond, batch))
        denoised_uncond = None
        if "uncond" in seg_branches(scale, seg):
            if uncond is None:
                raise ValueError(f"uncond is required for cond_scale != 1 (got cond_scale={scale})")
            uncond_kwargs = _as_kwargs(_select_rows(uncond, batch))
            if _batchable(uncond_kwargs, cond_kwargs):
                with self.seg_state.blurring(slice(2 * batch, 3 * batch)):
                    out = self.inner_model(
                        torch.cat([x, x, x]),
                        torch.cat([sigma, sigma, sigma]),
                        **_concat(_concat(uncond_kwargs, cond_kwargs), cond_kwargs),
                        **kwargs,
                    )
                denoised_uncond, denoised_cond, denoised_blur = out.chunk(3)
                return combine(denoised_uncond, denoised_cond, denoised_blur, scale, seg)
            denoised_uncond = self.inner_model(x, sigma, **uncond_kwargs, **kwargs)
        with self.seg_state.blurring(slice(batch, 2 * batch)):
            out = self.inner_model(
                torch.cat([x, x]), torch.cat([sigma, sigma]), **_concat(cond_kwargs, cond_kwargs), **kwargs
            )
        denoised_cond, denoised_blur = out.chunk(2)
        return combine(denoised_uncond, denoised_cond, denoised_blur, scale, seg)


class CallCounter(nn.Module):
    """Counts the calls and batch rows that reach a denoiser (wrap the innermost model with it)."""

    def __init__(self, inner_model: nn.Module) -> None:
        super().__init__()
        self.inner_model = inner_model
        self.calls = 0
        self.rows = 0

    def reset(self) -> None:
        self.calls = 0
        self.rows = 0

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.calls += 1
        self.rows += x.shape[0]
        return self.inner_model(x, sigma, **kwargs)
