"""An exact model: a class-conditional Gaussian mixture with closed-form denoisers.

Data ``x₀ ~ Σ_k π_k N(μ_k, diag(v_k))``; each component belongs to one class. At noise level σ
(``x = x₀ + σ·n``) component k has density ``N(x; μ_k, diag(v_k + σ²))`` and the exact denoiser is

    E[x₀ | x, c] = Σ_k r_k(x) · (μ_k + v_k/(v_k + σ²)·(x − μ_k)),

with responsibilities ``r_k ∝ π_k N(x; μ_k, v_k + σ²)`` over the components of class c (all
components for the unconditional denoiser). Every quantity a benchmark needs (class posterior,
log-density, class moments, exact samples) is closed-form.

Flow models: :class:`FlowMixtureVelocity` is the exact velocity ``v = ε − x₀`` of the same mixture in
rectified-flow parameterisation (``x = (1 − σ)·x₀ + σ·ε``), through the VE view ``x/(1 − σ)``,
``σ/(1 − σ)``; wrap it in :class:`~zigzag_kdiff.flow.FlowDenoiser`. :class:`DistilledDenoiser` is an exact
guidance-distilled model: ``D_g = D_u + g·(D_c − D_u)`` as one call with ``guidance=g``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["UNCONDITIONAL", "GaussianMixture", "FlowMixtureVelocity", "DistilledDenoiser"]

UNCONDITIONAL = -1
"""The class label that selects the unconditional denoiser (use it as ``uncond``)."""


class GaussianMixture(nn.Module):
    """A class-conditional Gaussian mixture and its exact k-diffusion denoiser.

    ``forward(x, sigma, cond)``: ``x`` is ``[batch, dim]``, ``sigma`` ``[batch]``, ``cond`` a long
    tensor ``[batch]`` of class labels, :data:`UNCONDITIONAL` (-1) for the unconditional denoiser.
    Pass it to :class:`~zigzag_kdiff.guidance.CFGDenoiser` with ``cond=labels`` and
    ``uncond=torch.full_like(labels, -1)``.
    """

    def __init__(
        self, means: torch.Tensor, variances: torch.Tensor, weights: torch.Tensor, classes: torch.Tensor
    ) -> None:
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must be [components, dim], got shape {tuple(means.shape)}")
        variances = torch.as_tensor(variances, dtype=torch.float64)
        if variances.ndim == 1:  # one isotropic variance per component
            variances = variances[:, None]
        variances = variances.expand_as(means)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        classes = torch.as_tensor(classes, dtype=torch.long)
        if bool((variances <= 0).any()) or bool((weights <= 0).any()):
            raise ValueError("variances and weights must be > 0")
        if weights.shape != means.shape[:1] or classes.shape != means.shape[:1]:
            raise ValueError("weights and classes need one entry per component")
        self.register_buffer("means", means)
        self.register_buffer("variances", variances.contiguous())
        self.register_buffer("log_weights", (weights / weights.sum()).log())
        self.register_buffer("classes", classes)
        self.num_classes = int(classes.max()) + 1

    @classmethod
    def random(
        cls,
        num_classes: int = 2,
        components_per_class: int = 2,
        dim: int = 2,
        separation: float = 2.0,
        variance: float = 0.25,
        seed: int = 0,
    ) -> GaussianMixture:
        """A reproducible mixture: unit-scale random means times ``separation``, equal weights."""
        generator = torch.Generator().manual_seed(seed)
        k = num_classes * components_per_class
        means = torch.randn(k, dim, generator=generator, dtype=torch.float64) * separation
        variances = variance * (0.5 + torch.rand(k, dim, generator=generator, dtype=torch.float64))
        classes = torch.arange(num_classes).repeat_interleave(components_per_class)
        return cls(means, variances, torch.ones(k, dtype=torch.float64), classes)

    # --- densities --------------------------------------------------------------------------

    def _component_log_prob(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``log π_k + log N(x; μ_k, v_k + σ²)``, shape ``[batch, components]``, in float64."""
        x = x.to(torch.float64).reshape(x.shape[0], 1, -1)
        var = self.variances[None] + sigma.to(torch.float64).reshape(-1, 1, 1) ** 2
        log_n = -0.5 * (((x - self.means[None]) ** 2) / var + torch.log(2 * math.pi * var)).sum(-1)
        return log_n + self.log_weights

    def _class_mask(self, cond: torch.Tensor | None, batch: int) -> torch.Tensor:
        if cond is None:
            return torch.ones(batch, len(self.classes), dtype=torch.bool, device=self.means.device)
        cond = torch.as_tensor(cond, device=self.means.device).reshape(-1).expand(batch)
        return (self.classes[None] == cond[:, None]) | (cond[:, None] == UNCONDITIONAL)

    def log_prob(
        self, x: torch.Tensor, sigma: float | torch.Tensor = 0.0, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``log p_σ(x | c)`` (``cond=None`` or -1: the marginal), shape ``[batch]``."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(x.shape[0])
        logits = self._component_log_prob(x, sigma).masked_fill(~self._class_mask(cond, x.shape[0]), -math.inf)
        class_log_weight = self.log_weights.masked_fill(~self._class_mask(cond, x.shape[0]), -math.inf)
        return logits.logsumexp(-1) - class_log_weight.logsumexp(-1)

    def class_log_posterior(self, x: torch.Tensor, sigma: float | torch.Tensor = 0.0) -> torch.Tensor:
        """``log p(c | x)`` at noise level σ (default: the data), shape ``[batch, num_classes]``."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(x.shape[0])
        logits = self._component_log_prob(x, sigma)
        per_class = torch.stack([logits[:, self.classes == c].logsumexp(-1) for c in range(self.num_classes)], dim=-1)
        return per_class - per_class.logsumexp(-1, keepdim=True)

    def class_moments(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``[dim]`` and covariance ``[dim, dim]`` of class c's data distribution."""
        members = self.classes == c
        w = self.log_weights[members].softmax(0)
        mu, var = self.means[members], self.variances[members]
        mean = (w[:, None] * mu).sum(0)
        centred = mu - mean
        cov = torch.diag((w[:, None] * var).sum(0)) + (
            w[:, None, None] * centred[:, :, None] * centred[:, None, :]
        ).sum(0)
        return mean, cov

    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact data samples ``x₀ ~ p(x₀ | c)`` for each label, float64 ``[batch, dim]``."""
        labels = torch.as_tensor(labels, dtype=torch.long)
        logits = self.log_weights[None].masked_fill(~self._class_mask(labels, len(labels)), -math.inf)
        component = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
        noise = torch.randn(len(labels), self.means.shape[1], generator=generator, dtype=torch.float64)
        return self.means[component] + self.variances[component].sqrt() * noise

    def prior_mean(self, cond: torch.Tensor | None, batch: int) -> torch.Tensor:
        """``E[x₀ | c]`` per row, float64 ``[batch, dim]``: the denoiser's limit σ → ∞."""
        weights = self.log_weights[None].masked_fill(~self._class_mask(cond, batch), -math.inf).softmax(-1)
        return weights @ self.means

    # --- the denoiser -----------------------------------------------------------------------

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x64 = x.to(torch.float64).reshape(x.shape[0], -1)
        sigma64 = sigma.to(torch.float64).reshape(-1).expand(x.shape[0])
        mask = self._class_mask(cond, x.shape[0])
        out = torch.empty_like(x64)
        for level in sigma64.unique():  # samplers pass one σ per call
            rows = sigma64 == level
            out[rows] = self._denoise(x64[rows], level, mask[rows])
        return out.to(x.dtype).reshape(x.shape)

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``E[x₀ | x, c]`` at one σ with matrix products: with ``w = 1/(v + σ²)`` (``[K, D]``),
        ``Σ_d (x − μ)²·w = x²·wᵀ − 2x·(μw)ᵀ + Σ μ²w``; then ``r·(μ(1 − s)) + x ⊙ (r·s)``, ``s = v·w``."""
        w = 1 / (self.variances + sigma**2)
        quad = (x**2) @ w.T - 2 * x @ (self.means * w).T + (self.means**2 * w).sum(-1)
        log_n = -0.5 * (quad + torch.log(2 * math.pi / w).sum(-1)) + self.log_weights
        resp = log_n.masked_fill(~mask, -math.inf).softmax(-1)  # r_k, over the components of class c
        shrink = self.variances * w
        return resp @ (self.means * (1 - shrink)) + x * (resp @ shrink)


class FlowMixtureVelocity(nn.Module):
    """The exact velocity ``v(x, σ) = (x − E[x₀ | x, c])/σ`` of a :class:`GaussianMixture` in flow form.

    ``x = (1 − σ)·x₀ + σ·ε`` is the VE latent ``x/(1 − σ)`` at ``σ/(1 − σ)``, so the denoiser is the
    mixture's at that point; at σ = 1 it is its limit ``E[x₀ | c]``. ``forward(x, timestep, cond)`` takes
    ``timestep = σ·timestep_scale`` (as SD3's transformer, 1000, or Flux's, 1) and returns v; wrap it in
    :class:`~zigzag_kdiff.flow.FlowDenoiser` with the same ``timestep_scale``.
    """

    def __init__(self, mixture: GaussianMixture, timestep_scale: float = 1000.0) -> None:
        super().__init__()
        self.mixture = mixture
        self.timestep_scale = float(timestep_scale)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x64 = x.to(torch.float64).reshape(x.shape[0], -1)
        sigma = (timestep.to(torch.float64) / self.timestep_scale).reshape(-1).expand(x.shape[0])
        alpha = 1 - sigma
        noisy = alpha > 0
        denoised = self.mixture.prior_mean(cond, x.shape[0])  # σ = 1: no signal left
        if bool(noisy.any()):
            view = self.mixture(x64 / alpha[:, None], sigma / alpha, cond)  # the VE view, D unchanged
            denoised = torch.where(noisy[:, None], view, denoised)
        return ((x64 - denoised) / sigma[:, None]).to(x.dtype).reshape(x.shape)


class DistilledDenoiser(nn.Module):
    """An exact guidance-distilled denoiser: ``D_g = D_u + g·(D_c − D_u)`` as one call with ``guidance=g``.

    ``forward(x, sigma, cond, guidance)`` evaluates the inner class-conditional denoiser on
    ``[uncond, cond]`` (labels :data:`UNCONDITIONAL` and ``cond``) in one batch and combines the two
    predictions with the operations of :class:`~zigzag_kdiff.guidance.CFGDenoiser`, so that Z-Sampling with
    distilled guidance (g₁, g₂) and true CFG off is the true-CFG result at (γ₁, γ₂) = (g₁, g₂) exactly.
    """

    def __init__(self, inner_model: nn.Module) -> None:
        super().__init__()
        self.inner_model = inner_model

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, guidance: float) -> torch.Tensor:
        cond = torch.as_tensor(cond).reshape(-1).expand(x.shape[0])
        both = self.inner_model(
            torch.cat([x, x]), torch.cat([sigma, sigma]), cond=torch.cat([torch.full_like(cond, UNCONDITIONAL), cond])
        )
        denoised_uncond, denoised_cond = both.chunk(2)
        return denoised_uncond + (denoised_cond - denoised_uncond) * guidance
