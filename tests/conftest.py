"""Shared fixtures: an exact Gaussian-mixture model behind our CFG wrapper, counted."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zigzag_kdiff import CallCounter, CFGDenoiser
from zigzag_kdiff.bench.mixture import UNCONDITIONAL, GaussianMixture


def karras_sigmas(steps: int, sigma_min: float = 0.02, sigma_max: float = 20.0, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. sigmas ending in 0 (k-diffusion's ``get_sigmas_karras`` without importing it)."""
    ramp = torch.linspace(0, 1, steps)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def guided_args(batch: int, scale: float, label: int = 0) -> dict:
    labels = torch.full((batch,), label, dtype=torch.long)
    return {"cond": labels, "uncond": torch.full_like(labels, UNCONDITIONAL), "cond_scale": scale}


def initial_noise(batch: int, dim: int, sigma_max: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed)) * sigma_max


@pytest.fixture
def mixture() -> GaussianMixture:
    """Two classes of two overlapping components each in 2-D: p(c|x) is far from saturated."""
    return GaussianMixture.random(num_classes=2, components_per_class=2, dim=2, separation=0.5, variance=0.5, seed=0)


@pytest.fixture
def counted(mixture: GaussianMixture) -> tuple[CFGDenoiser, CallCounter]:
    counter = CallCounter(mixture)
    return CFGDenoiser(counter), counter


def sd_alphas_cumprod() -> torch.Tensor:
    """ᾱ of SD/SDXL's scaled-linear schedule (0.00085 … 0.012, 1000 steps), in float32."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    return torch.cumprod(1 - betas, dim=0)


class TinyEps(nn.Module):
    """A small conditional ε-model ``eps(x, t, cond)`` on 4-vectors with 3-wide conditioning."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4 + 1 + 3, 32), nn.SiLU(), nn.Linear(32, 4))

    def forward(self, x, t, cond):
        return self.net(torch.cat([x, t[:, None] / 1000, cond], dim=1))


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (tiny models: faster, and the same rounding on every machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipes() -> dict:
    """One tiny random pipeline of each kind (``zigzag_kdiff.tiny``), per module."""
    from zigzag_kdiff.tiny import TINY_KINDS, tiny_pipeline

    return {kind: tiny_pipeline(kind) for kind in TINY_KINDS}
