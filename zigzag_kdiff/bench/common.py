"""Benchmarks that print tables. ``zigzag-kdiff bench cost``: model calls, batch rows and wall time.

Numbers are ratios measured in one run, interleaving methods (these machines are noisy).

Also here, shared by the evidence benchmarks (:mod:`.gmm`, :mod:`.shapes`): :class:`Method`,
one sampler setting, and :func:`sample_method`, which runs it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..guidance import CallCounter, CFGDenoiser
from ..sampling import sample_zigzag_ddim, sample_zigzag_dpmpp_2m, sample_zigzag_euler
from ..seg import seg_attention


class ModelTimer(nn.Module):
    """Accumulates the wall time spent inside the wrapped model."""

    def __init__(self, inner_model: nn.Module) -> None:
        super().__init__()
        self.inner_model = inner_model
        self.seconds = 0.0

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        start = time.perf_counter()
        out = self.inner_model(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        return out


@dataclass(frozen=True)
class Method:
    """One sampler setting of a benchmark.

    ``rule``: "standard" (plain CFG, Euler/DDIM steps) or Z-Sampling's rule, "euler" or "ddim" (Euler
    steps, that inversion) or "dpmpp_2m" (DPM++ 2M steps, Euler inversion; with ``zigzag_steps=0``:
    plain CFG with DPM++ 2M steps). ``scale`` is the CFG scale (γ₁ for Z-Sampling), ``inversion_scale``
    γ₂, ``zigzag_steps`` λ (None: T − 1). ``family`` only groups runs in tables and plots; ``seeds`` (None: all of the
    benchmark's seeds) says on how many seeds a benchmark runs it.
    """

    family: str
    rule: str
    scale: float
    steps: int
    inversion_scale: float = 0.0
    zigzag_steps: int | None = None
    interval: tuple[float, float] | None = None
    seeds: int | None = None
    # Smoothed Energy Guidance (``bench shapes --seg``; zigzag_kdiff.seg): s_seg (0 = off), σ_blur, layers,
    # SEG interval, s_seg of Z-Sampling's inversion calls
    seg_scale: float = 0.0
    seg_blur_sigma: float = 9999999.0
    seg_layers: tuple[str, ...] = ("mid",)
    seg_interval: tuple[float, float] | None = None
    inversion_seg_scale: float = 0.0

    @property
    def lam(self) -> int:
        """λ: the number of zigzag steps (0 for standard sampling)."""
        if self.rule == "standard":
            return 0
        return self.steps - 1 if self.zigzag_steps is None else self.zigzag_steps

    @property
    def label(self) -> str:
        """The settings, e.g. ``Z ddim γ₁=3 γ₂=0 λ=19 T=20`` or ``CFG 3 T=20 interval [0.28, 5.42]``."""
        if self.lam == 0:
            parts = [f"CFG {self.scale:g}"] + (["DPM++ 2M"] if self.rule == "dpmpp_2m" else [])
        else:
            parts = [f"Z {self.rule} γ₁={self.scale:g} γ₂={self.inversion_scale:g} λ={self.lam}"]
        parts.append(f"T={self.steps}")
        if self.interval is not None:
            parts.append(f"interval [{self.interval[0]:g}, {self.interval[1]:g}]")
        if self.seg_scale > 0:
            blur = "∞" if self.seg_blur_sigma > 9999 else f"{self.seg_blur_sigma:g}"
            parts.append(f"+ SEG {self.seg_scale:g} σ={blur} {','.join(self.seg_layers)}")
            if self.seg_interval is not None:
                parts.append(f"SEG interval [{self.seg_interval[0]:g}, {self.seg_interval[1]:g}]")
            if self.inversion_seg_scale > 0:
                parts.append(f"inversion SEG {self.inversion_seg_scale:g}")
        return " ".join(parts)

    def seg_settings(self) -> tuple:
        """The SEG part of :meth:`settings` (empty when SEG is off, so those keys are unchanged)."""
        if self.seg_scale == 0:
            return ()
        seg = (self.seg_scale, self.seg_blur_sigma, self.seg_layers, self.seg_interval, self.inversion_seg_scale)
        return (("seg",) + seg,)

    def settings(self) -> tuple:
        """What determines the samples: :meth:`plain_settings` and, with SEG on, :meth:`seg_settings`."""
        return self.plain_settings() + self.seg_settings()

    def plain_settings(self) -> tuple:
        """What determines the samples (``family`` and ``seeds`` do not): runs with equal settings are shared."""
        if self.lam == 0:
            if self.rule == "dpmpp_2m":
                return ("standard dpmpp_2m", self.scale, self.steps, self.interval)
            return ("standard", self.scale, self.steps, self.interval)
        return (self.rule, self.scale, self.steps, self.inversion_scale, self.lam, self.interval)


ZIGZAG_SAMPLERS = {"euler": sample_zigzag_euler, "ddim": sample_zigzag_ddim, "dpmpp_2m": sample_zigzag_dpmpp_2m}
"""The engine's sampler for each ``Method.rule`` but "standard"."""


def sample_method(
    method: Method, guided: nn.Module, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict[str, Any]
) -> torch.Tensor:
    """Run ``method`` with a :class:`~zigzag_kdiff.guidance.CFGDenoiser` ``guided`` from ``x`` (at ``sigmas[0]``);
    ``extra_args`` carries ``cond``, ``uncond`` and ``cond_scale`` (= ``method.scale``)."""
    if method.lam == 0:  # standard sampling is the zigzag sampler with λ = 0 (bit for bit k-diffusion's)
        plain = sample_zigzag_dpmpp_2m if method.rule == "dpmpp_2m" else sample_zigzag_euler
        return plain(guided, x, sigmas, extra_args, disable=True, zigzag_steps=0)
    sampler = ZIGZAG_SAMPLERS[method.rule]
    return sampler(
        guided, x, sigmas, extra_args, disable=True, inversion_scale=method.inversion_scale, zigzag_steps=method.lam
    )


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Lay out, write and close a matplotlib figure; returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


@dataclass
class CostRow:
    method: str
    calls: int
    rows: float
    wall: float
    model: float


def cost_methods(k_sampling: Any, steps: int) -> dict[str, Callable[..., torch.Tensor]]:
    """The compared samplers: k-diffusion's Euler and DPM++ 2M, and zigzag settings (γ₁ = 5.5)."""

    def zigzag(rule: Callable[..., torch.Tensor], **options: Any) -> Callable[..., torch.Tensor]:
        return lambda model, x, sigmas, args: rule(model, x, sigmas, args, disable=True, **options)

    return {
        "Euler": lambda model, x, sigmas, args: k_sampling.sample_euler(model, x, sigmas, args, disable=True),
        "DPM++ 2M": lambda model, x, sigmas, args: k_sampling.sample_dpmpp_2m(model, x, sigmas, args, disable=True),
        "zigzag euler γ₂=0": zigzag(sample_zigzag_euler, inversion_scale=0.0),
        "zigzag euler γ₂=1": zigzag(sample_zigzag_euler, inversion_scale=1.0),
        "zigzag euler γ₂=2": zigzag(sample_zigzag_euler, inversion_scale=2.0),
        "zigzag ddim γ₂=0": zigzag(sample_zigzag_ddim, inversion_scale=0.0),
        "zigzag euler γ₂=0 T_max=2": zigzag(sample_zigzag_euler, inversion_scale=0.0, zigzag_rounds=2),
        f"zigzag euler γ₂=0 λ={steps // 2}": zigzag(sample_zigzag_euler, inversion_scale=0.0, zigzag_steps=steps // 2),
        "zigzag euler γ₂=0 interval": zigzag(sample_zigzag_euler, inversion_scale=0.0, guidance_interval=(0.28, 5.42)),
        # Smoothed Energy Guidance (s_seg = 3, mid, infinite blur): a blurred cond row in the same batch
        "Euler + SEG": lambda model, x, sigmas, args: k_sampling.sample_euler(
            model, x, sigmas, {**args, "seg_scale": 3.0}, disable=True
        ),
        "zigzag euler γ₂=0 + SEG": lambda model, x, sigmas, args: sample_zigzag_euler(
            model, x, sigmas, {**args, "seg_scale": 3.0}, disable=True
        ),
        "zigzag euler γ₂=0 + SEG in inversions": lambda model, x, sigmas, args: sample_zigzag_euler(
            model, x, sigmas, {**args, "seg_scale": 3.0, "inversion_seg_scale": 3.0}, disable=True
        ),
    }


def run_cost(steps: int = 50, repeats: int = 3, batch: int = 1) -> list[CostRow]:
    from k_diffusion import sampling as k_sampling
    from k_diffusion.external import DiscreteEpsDDPMDenoiser

    from ..models import UNetEps, tiny_unet

    torch.set_num_threads(1)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    unet = tiny_unet()
    timer = ModelTimer(UNetEps(unet))
    counter = CallCounter(DiscreteEpsDDPMDenoiser(timer, torch.cumprod(1 - betas, 0), quantize=True))
    model = CFGDenoiser(counter)
    sigmas = counter.inner_model.get_sigmas(steps)
    x = torch.randn(batch, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    emb = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(1))
    args = {"cond": {"encoder_hidden_states": emb}, "uncond": {"encoder_hidden_states": emb * 0}, "cond_scale": 5.5}
    methods = cost_methods(k_sampling, steps)
    walls: dict[str, list[float]] = {name: [] for name in methods}
    models: dict[str, list[float]] = {name: [] for name in methods}
    counts: dict[str, tuple[int, int]] = {}
    with torch.no_grad():
        for _ in range(repeats):  # interleave methods so drifts in machine speed hit all alike
            for name, sample in methods.items():
                counter.reset()
                timer.seconds = 0.0
                start = time.perf_counter()
                with seg_attention(unet, ["mid"]) if "SEG" in name else nullcontext() as state:  # SEG rows only
                    model.seg_state = state
                    sample(model, x, sigmas, args)
                walls[name].append(time.perf_counter() - start)
                models[name].append(timer.seconds)
                counts[name] = (counter.calls, counter.rows)
    return [
        CostRow(
            name,
            counts[name][0],
            counts[name][1] / batch,
            statistics.median(walls[name]),
            statistics.median(models[name]),
        )
        for name in methods
    ]


def format_cost(rows: list[CostRow], steps: int) -> str:
    base = rows[0]
    lines = [
        f"Cost at T={steps}, γ₁=5.5, tiny UNet (random weights), CPU, 1 thread; medians of interleaved runs.",
        "",
        "| method | model calls | batch rows / image | rows ratio | UNet-time ratio | wall ratio | overhead vs Euler |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        model_ratio, wall_ratio = row.model / base.model, row.wall / base.wall
        lines.append(
            f"| {row.method} | {row.calls} | {row.rows:g} | {row.rows / base.rows:.3f} | {model_ratio:.3f} "
            f"| {wall_ratio:.3f} | {wall_ratio / model_ratio - 1:+.2%} |"
        )
    lines += [
        "",
        f"Euler: {base.wall:.3f} s wall, {base.model:.3f} s in the UNet.",
        "overhead vs Euler = wall ratio / UNet-time ratio − 1: the cost of the sampler's own loop",
        "(inversion arithmetic, CFG combination) beyond its model evaluations, relative to Euler's.",
        "On a tiny UNet a call's fixed cost dominates, so the UNet-time ratio follows calls more than rows.",
    ]
    return "\n".join(lines)
