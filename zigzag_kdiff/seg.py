"""Smoothed Energy Guidance (SEG, Hong 2024): guidance from a self-attention pass with blurred queries.

SEG evaluates the conditional prediction a second time with the queries of chosen self-attention
layers blurred by a Gaussian of width σ_blur (``seg_blur_sigma``) on the token grid, and guides away
from it (the official SDXL pipeline, ``SusungHong/SEG-SDXL``, ``pipeline_seg.py``)::

    D = D_u + s·(D_c − D_u) + s_seg·(D_c − D_c^blur)        (CFG and SEG)
    D = D_c + s_seg·(D_c − D_c^blur)                         (s = 1: no unconditional branch)

The denoiser is affine in ε at fixed ``x`` and σ, so the official ε-combination holds for D as well.

This module is torch only, so host adapters (A1111/Forge/ComfyUI) reuse every piece without diffusers:

* the blur: :func:`blur_queries` (``[batch, tokens, channels]`` or ``[batch, channels, H, W]``),
  :func:`blur_grid`, :func:`blur_kernel_size`, :func:`is_infinite_blur`; the token grid of a layer:
  :func:`token_grid`;
* the layers: :func:`parse_layer_names` (``"down"``, ``"mid"``, ``"up"``, ``"d0"``, ``"m0"``, ``"u5"``),
  :func:`self_attention_layers` (the official count: modules named ``…attn1`` grouped by the first
  part of their name, in ``named_modules()`` order), :func:`select_layers`;
* the settings: :class:`SEGOptions` (validated; ``ValueError`` naming the parameter), :class:`SEGInterval`;
* the combination and the rows: :func:`seg_branches`, :func:`combine`;
* the state shared by the guidance wrapper and the attention patches: :class:`SEGState` (which rows of
  the current model batch are blurred, the latent size);
* diffusers (duck-typed, no import): :class:`SEGAttnProcessor` and the context manager
  :func:`seg_attention`, which installs it on a UNet and restores exactly the previous processors.

Differences from the official code, on purpose: the blur runs on the layer's true ``H×W`` grid (the
official code assumes a square grid and blurs a 4×16 layer as 8×8), the kernel is capped per axis to
its side (on a square grid: the official cap), and half-precision queries are blurred in float32.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .interval import GuidanceInterval

__all__ = [
    "INFINITE_BLUR_THRESHOLD",
    "DEFAULT_BLUR_SIGMA",
    "LAYER_GROUPS",
    "LayerName",
    "SEGInterval",
    "SEGOptions",
    "SEGState",
    "SEGAttnProcessor",
    "blur_grid",
    "blur_kernel_size",
    "blur_queries",
    "combine",
    "effective_seg_scale",
    "is_infinite_blur",
    "parse_layer_names",
    "seg_attention",
    "seg_branches",
    "select_layers",
    "self_attention_layers",
    "token_grid",
]

INFINITE_BLUR_THRESHOLD = 9999.0
"""σ_blur above this (exclusive, as the official ``inf_blur_threshold``) is the "infinite" blur: every
query is replaced by its mean over the tokens."""

DEFAULT_BLUR_SIGMA = 9999999.0
"""The official default ``seg_blur_sigma`` (infinite blur)."""

LAYER_GROUPS = ("down", "mid", "up")
"""Group names of ``seg_applied_layers``; index names are a group letter and a position: ``d0``, ``m0``, ``u5``."""

_INDEX_NAME = re.compile(r"^([dmu])(\d+)$")


# --- the blur ----------------------------------------------------------------------------------------


def is_infinite_blur(sigma: float) -> bool:
    """True if ``sigma`` means the infinite blur (``sigma > 9999``)."""
    return float(sigma) > INFINITE_BLUR_THRESHOLD


def blur_kernel_size(sigma: float, side: int | None = None) -> int:
    """The official kernel size: ``ceil(6σ)`` made odd (``+1`` when even), capped to a grid ``side``:
    ``side`` when it is odd, ``side + 1`` when even (the official cap on the grid's width)."""
    size = math.ceil(6 * sigma)
    size = size + 1 - size % 2
    if side is not None:
        size = min(size, side - (side % 2 - 1))
    return size


def _gaussian_taps(sigma: float, size: int) -> torch.Tensor:
    """Normalised taps ``exp(−x²/2σ²)`` on ``linspace(−(size−1)/2, (size−1)/2, size)``, float32."""
    half = (size - 1) * 0.5
    x = torch.linspace(-half, half, steps=size)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    return pdf / pdf.sum()


def _blur_axis(grid: torch.Tensor, sigma: float, dim: int) -> torch.Tensor:
    """One separable pass of the blur along ``dim`` (-1: width, -2: height) of ``[B, C, H, W]``."""
    size = blur_kernel_size(sigma, grid.shape[dim])
    if size <= 1:
        return grid
    taps = _gaussian_taps(sigma, size).to(device=grid.device, dtype=grid.dtype)
    channels, pad = grid.shape[1], size // 2
    if dim == -1:
        kernel = taps.view(1, 1, 1, size).expand(channels, 1, 1, size)
        padded = F.pad(grid, (pad, pad, 0, 0), mode="reflect")
    else:
        kernel = taps.view(1, 1, size, 1).expand(channels, 1, size, 1)
        padded = F.pad(grid, (0, 0, pad, pad), mode="reflect")
    return F.conv2d(padded, kernel, groups=channels)


def blur_grid(grid: torch.Tensor, sigma: float) -> torch.Tensor:
    """The official query blur of ``grid`` ``[batch, channels, H, W]``, per channel, on the true grid.

    ``sigma > 9999``: every value replaced by its mean over ``H×W``. Otherwise a separable Gaussian:
    taps ``exp(−x²/2σ²)`` normalised, kernel size :func:`blur_kernel_size` capped per axis to that
    axis's side (on a square grid the official cap), reflect padding of ``size // 2``. Half-precision
    input is blurred in float32 and returned in its own dtype.
    """
    if grid.ndim != 4:
        raise ValueError(f"grid must be [batch, channels, height, width], got shape {tuple(grid.shape)}")
    if not float(sigma) > 0:
        raise ValueError(f"seg_blur_sigma must be > 0 (allowed: 0 < seg_blur_sigma <= inf), got {sigma!r}")
    dtype = grid.dtype
    work = grid.float() if dtype in (torch.float16, torch.bfloat16) else grid
    if is_infinite_blur(sigma):
        out = work.mean(dim=(-2, -1), keepdim=True).expand_as(work)
    else:
        out = _blur_axis(_blur_axis(work, float(sigma), -1), float(sigma), -2)
    return out.to(dtype)


def blur_queries(queries: torch.Tensor, height: int, width: int, sigma: float) -> torch.Tensor:
    """Blur attention queries on their ``height × width`` token grid.

    ``queries``: ``[batch, tokens, channels]`` with ``tokens = height·width`` in row-major order (how
    diffusers and ComfyUI flatten an image), or ``[batch, channels, height, width]``. Heads need not be
    split: the blur acts on each channel alone. Returns a new tensor of the same shape and dtype.
    """
    if queries.ndim == 4:
        if tuple(queries.shape[-2:]) != (height, width):
            raise ValueError(f"queries of shape {tuple(queries.shape)} are not on a {height}×{width} grid")
        return blur_grid(queries, sigma)
    if queries.ndim != 3 or queries.shape[1] != height * width:
        raise ValueError(
            f"queries must be [batch, tokens, channels] with tokens = {height}·{width} = {height * width}, "
            f"got shape {tuple(queries.shape)}"
        )
    batch, tokens, channels = queries.shape
    grid = queries.transpose(1, 2).reshape(batch, channels, height, width)
    return blur_grid(grid, sigma).reshape(batch, channels, tokens).transpose(1, 2)


def token_grid(tokens: int, latent_height: int, latent_width: int) -> tuple[int, int]:
    """The ``(H, W)`` of a UNet layer with ``tokens`` tokens for a ``latent_height × latent_width`` input.

    A UNet level halves the grid with stride-2 convolutions (``ceil(side/2)``, padding 1), and the up
    path matches the down path's sizes, so the grid is the latent size halved until the token count
    fits. ``ValueError`` if no level matches.
    """
    height, width = int(latent_height), int(latent_width)
    while height * width > tokens and (height > 1 or width > 1):
        height, width = math.ceil(height / 2), math.ceil(width / 2)
    if height * width != tokens:
        raise ValueError(
            f"a layer with {tokens} tokens is no level of a {latent_height}×{latent_width} latent "
            "(expected the latent size halved, rounding up, per UNet level)"
        )
    return height, width


# --- the layers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerName:
    """A parsed layer name: a whole ``group`` (``index`` None) or one layer of it."""

    group: str
    index: int | None = None

    def __str__(self) -> str:
        return self.group if self.index is None else f"{self.group[0]}{self.index}"


def parse_layer_names(names: str | Iterable[str], parameter: str = "seg_applied_layers") -> tuple[LayerName, ...]:
    """Parse ``"mid"``, ``["down", "u0"]`` or ``"m0,u1"`` into :class:`LayerName` s (duplicates dropped).

    Allowed: the groups ``down``, ``mid``, ``up`` and index names ``d<k>``, ``m<k>``, ``u<k>`` (the
    official ``seg_applied_layers_index``). ``ValueError`` naming ``parameter`` otherwise.
    """
    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    allowed = "'down', 'mid', 'up' or index names such as 'd0', 'm0', 'u5'"
    if not items or not all(isinstance(n, str) and n.strip() for n in items):
        raise ValueError(f"{parameter} must be a non-empty list of layer names ({allowed}), got {names!r}")
    parsed: dict[LayerName, None] = {}
    for raw in items:
        name = raw.strip().lower()
        match = _INDEX_NAME.match(name)
        if name in LAYER_GROUPS:
            parsed[LayerName(name)] = None
        elif match:
            group = {"d": "down", "m": "mid", "u": "up"}[match.group(1)]
            parsed[LayerName(group, int(match.group(2)))] = None
        else:
            raise ValueError(f"{parameter} has an unknown layer name {raw!r}; allowed: {allowed}")
    return tuple(parsed)


def self_attention_layers(named_modules: Iterable[tuple[str, Any]]) -> dict[str, list[str]]:
    """The self-attention layers by group, counted as the official code does.

    Modules whose last name part is ``attn1`` (the official test, "``attn1`` in the name and not a
    ``to_*`` sublayer", selects exactly these in SD UNets), grouped by the first part of the name
    (``down_blocks…`` → down, ``mid_block…`` → mid, ``up_blocks…`` → up) in ``named_modules()`` order.
    Returns ``{"down": [names], "mid": [...], "up": [...]}``.
    """
    groups: dict[str, list[str]] = {group: [] for group in LAYER_GROUPS}
    for name, _ in named_modules:
        if name.split(".")[-1] != "attn1":
            continue
        group = name.split(".")[0].split("_")[0]
        if group in groups:
            groups[group].append(name)
    return groups


def select_layers(
    named_modules: Iterable[tuple[str, Any]], names: str | Iterable[str], parameter: str = "seg_applied_layers"
) -> list[str]:
    """Module names of the layers ``names`` selects (see :func:`parse_layer_names`), in model order.

    ``ValueError`` naming ``parameter`` and the available layers for an index that does not exist or
    a selection without any self-attention layer.
    """
    parsed = parse_layer_names(names, parameter)
    groups = self_attention_layers(named_modules)
    available = ", ".join(
        f"{len(groups[g])} {g}" + (f" (indices 0–{len(groups[g]) - 1})" if groups[g] else "") for g in LAYER_GROUPS
    )
    chosen: set[str] = set()
    for layer in parsed:
        members = groups[layer.group]
        if layer.index is None:
            chosen.update(members)
        elif layer.index < len(members):
            chosen.add(members[layer.index])
        else:
            raise ValueError(f"{parameter} names {layer}, which does not exist; this model has {available}")
    if not chosen:
        selected = [str(n) for n in parsed]
        raise ValueError(f"{parameter}={selected} selects no self-attention layer; this model has {available}")
    order = [name for group in LAYER_GROUPS for name in groups[group]]
    return [name for name in order if name in chosen]


# --- the settings -------------------------------------------------------------------------------------


class SEGInterval(GuidanceInterval):
    """The noise levels ``sigma_low ≤ σ ≤ sigma_high`` at which SEG is applied (k-diffusion's σ)."""

    parameter = "seg_interval"


@dataclass(frozen=True)
class SEGOptions:
    """Validated SEG settings, official names and defaults.

    Args:
        seg_scale: s_seg ``>= 0`` (official default 3; 0 turns SEG off).
        seg_blur_sigma: σ_blur ``> 0``; ``> 9999`` (default 9999999, or ``inf``) is the infinite blur.
        seg_applied_layers: layer names (:func:`parse_layer_names`), default ``("mid",)``.
        seg_interval: ``(sigma_low, sigma_high)``: SEG only for σ inside it (default: every σ).
        inversion_seg_scale: s_seg of Z-Sampling's inversion calls (default 0: inversion without SEG).
    """

    seg_scale: float = 3.0
    seg_blur_sigma: float = DEFAULT_BLUR_SIGMA
    seg_applied_layers: tuple[str, ...] = ("mid",)
    seg_interval: SEGInterval | tuple[float, float] | None = None
    inversion_seg_scale: float = 0.0
    layers: tuple[LayerName, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("seg_scale", "inversion_seg_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0 (0 = SEG off), got {value!r}")
            object.__setattr__(self, name, float(value))
        sigma = self.seg_blur_sigma
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or math.isnan(sigma) or not sigma > 0:
            raise ValueError(
                f"seg_blur_sigma must be > 0 (allowed: 0 < seg_blur_sigma <= inf; > {INFINITE_BLUR_THRESHOLD:g} "
                f"is the infinite blur), got {sigma!r}"
            )
        object.__setattr__(self, "seg_blur_sigma", float(sigma))
        layers = parse_layer_names(self.seg_applied_layers)
        object.__setattr__(self, "seg_applied_layers", tuple(str(layer) for layer in layers))
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "seg_interval", SEGInterval.parse(self.seg_interval))

    @property
    def enabled(self) -> bool:
        return self.seg_scale > 0 or self.inversion_seg_scale > 0

    def scale_at(self, sigma: float | torch.Tensor, inversion: bool = False) -> float:
        """s_seg in effect for a call at ``sigma``: 0 outside :attr:`seg_interval`."""
        scale = self.inversion_seg_scale if inversion else self.seg_scale
        return effective_seg_scale(scale, sigma, self.seg_interval)


def effective_seg_scale(scale: float, sigma: float | torch.Tensor, interval: GuidanceInterval | None) -> float:
    """``scale`` inside ``interval`` (or with none), else 0: no blurred row outside it."""
    if interval is None or interval.contains(sigma):
        return scale
    return 0.0


# --- the combination and the rows ------------------------------------------------------------------


def seg_branches(cfg_scale: float, seg_scale: float) -> tuple[str, ...]:
    """The branches a call evaluates, in batch order, of ``"uncond"``, ``"cond"``, ``"cond_blur"``.

    ``[uncond, cond, cond_blur]`` with CFG and SEG; ``[cond, cond_blur]`` at CFG scale 1;
    ``[uncond, cond]`` / ``[cond]`` / ``[uncond]`` without SEG (scale 0: no blurred row).
    """
    branches = []
    if cfg_scale != 1.0:
        branches.append("uncond")
    if cfg_scale != 0.0 or seg_scale != 0.0:
        branches.append("cond")
    if seg_scale != 0.0:
        branches.append("cond_blur")
    return tuple(branches)


def combine(
    denoised_uncond: torch.Tensor | None,
    denoised_cond: torch.Tensor,
    denoised_blur: torch.Tensor,
    cfg_scale: float,
    seg_scale: float,
) -> torch.Tensor:
    """``D_u + s·(D_c − D_u) + s_seg·(D_c − D_c^blur)``; at ``s = 1`` ``D_c + s_seg·(D_c − D_c^blur)``
    (``denoised_uncond`` may then be None). Works for ε as well (the official form)."""
    seg = (denoised_cond - denoised_blur) * seg_scale
    if cfg_scale == 1.0:
        return denoised_cond + seg
    if denoised_uncond is None:
        raise ValueError(f"the unconditional prediction is needed at cfg scale {cfg_scale} != 1")
    return denoised_uncond + (denoised_cond - denoised_uncond) * cfg_scale + seg


# --- the state shared by the wrapper and the attention patches --------------------------------------


class SEGState:
    """Which rows of the model batch now being evaluated have their queries blurred, and the input size.

    The guidance wrapper sets :attr:`blur_rows` around the one model call that carries a blurred
    branch (:meth:`blurring`); attention patches read it, and :meth:`grid` for a layer's token grid.
    ``latent_size`` (the model input's ``H, W``) is set by :func:`seg_attention`'s forward pre-hook, or
    by a host adapter before each model call. Outside :meth:`blurring` nothing is blurred.
    """

    def __init__(self, blur_sigma: float = DEFAULT_BLUR_SIGMA) -> None:
        self.blur_sigma = float(blur_sigma)
        self.blur_rows: slice | None = None
        self.latent_size: tuple[int, int] | None = None

    @contextmanager
    def blurring(self, rows: slice) -> Iterator[None]:
        previous, self.blur_rows = self.blur_rows, rows
        try:
            yield
        finally:
            self.blur_rows = previous

    def grid(self, tokens: int) -> tuple[int, int]:
        """``(H, W)`` of a layer with ``tokens`` tokens (:func:`token_grid`; square if the size is unknown)."""
        if self.latent_size is not None:
            return token_grid(tokens, *self.latent_size)
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"SEG needs the latent size for a non-square layer of {tokens} tokens (set latent_size)")
        return side, side


# --- diffusers: the attention processor and its installation -------------------------------------------


class SEGAttnProcessor:
    """Self-attention with the queries of the rows ``state.blur_rows`` blurred (the official processor).

    Rows outside ``state.blur_rows`` (all rows when it is None) go through ``base``, the processor that
    was installed before, unchanged. The blurred rows are computed as diffusers' ``AttnProcessor2_0``
    with the queries after ``to_q`` (and ``norm_q``) blurred on the layer's grid; keys and values are
    not touched. Install and remove it with :func:`seg_attention`.
    """

    def __init__(self, state: SEGState, base: Any) -> None:
        self.state = state
        self.base = base

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        rows = self.state.blur_rows
        if rows is None:
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        batch = hidden_states.shape[0]
        start, stop, _ = rows.indices(batch)
        parts = []
        for part in (slice(0, start), slice(start, stop), slice(stop, batch)):
            if part.start == part.stop:
                continue
            inputs = [_rows(v, part, batch) for v in (hidden_states, encoder_hidden_states, attention_mask, temb)]
            if part.start == start:
                parts.append(self._blurred(attn, *inputs))
            else:
                parts.append(self.base(attn, *inputs, *args, **kwargs))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _blurred(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        temb: torch.Tensor | None,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
            grid = (height, width)
        else:
            grid = self.state.grid(hidden_states.shape[1])
        batch, tokens, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)
        # the blur: all heads' channels on the layer's grid (per channel, so heads need not be split)
        flat = query.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        flat = blur_queries(flat, grid[0], grid[1], self.state.blur_sigma)
        query = flat.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _rows(value: Any, rows: slice, batch: int) -> Any:
    """``rows`` of a per-row tensor (anything else, e.g. a tensor broadcast over the batch, as it is)."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch:
        return value[rows]
    return value


@contextmanager
def seg_attention(
    unet: torch.nn.Module,
    applied_layers: str | Sequence[str] = ("mid",),
    blur_sigma: float = DEFAULT_BLUR_SIGMA,
    state: SEGState | None = None,
) -> Iterator[SEGState]:
    """Install :class:`SEGAttnProcessor` on the chosen self-attention layers of a diffusers UNet.

    Yields the :class:`SEGState` the processors read (pass it to the guidance wrapper). A forward
    pre-hook on ``unet`` records each call's input ``H, W`` in ``state.latent_size``. On exit (return,
    exception, ``KeyboardInterrupt``) exactly the processor objects that were there before are put back
    and the hook is removed. Invalid layers or σ raise ``ValueError`` before anything is installed.
    """
    layers = tuple(str(layer) for layer in parse_layer_names(applied_layers))
    options = SEGOptions(seg_blur_sigma=blur_sigma, seg_applied_layers=layers)
    modules = dict(unet.named_modules())
    names = select_layers(modules.items(), layers)
    state = SEGState(options.seg_blur_sigma) if state is None else state
    state.blur_sigma = options.seg_blur_sigma

    def record_size(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs.get("sample")
        if isinstance(sample, torch.Tensor) and sample.ndim == 4:
            state.latent_size = (int(sample.shape[-2]), int(sample.shape[-1]))

    previous = {name: modules[name].processor for name in names}
    handle = None
    try:
        handle = unet.register_forward_pre_hook(record_size, with_kwargs=True)
        for name in names:
            modules[name].set_processor(SEGAttnProcessor(state, previous[name]))
        yield state
    finally:
        for name, processor in previous.items():
            modules[name].set_processor(processor)
        if handle is not None:
            handle.remove()
