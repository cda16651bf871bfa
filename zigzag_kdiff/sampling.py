"""Zigzag Diffusion Sampling (Z-Sampling, Bai et al., ICLR 2025) as k-diffusion samplers.

The samplers take k-diffusion's signature ``(model, x, sigmas, extra_args, callback, disable)`` and
work in its variance-exploding parameterisation: ``x = x₀ + σ·n``, ``model(x, σ)`` returns the
denoised estimate, and for a discrete ε-model ``σ = sqrt((1 − ᾱ)/ᾱ)`` and ``x = x_vp / sqrt(ᾱ)``.
In this form a DDIM step with η = 0 (the paper's eq. 2) is exactly an Euler step.

Algorithm 1 of the paper, with its symbols, maps to the parameters as follows:

=========================  ======  ===========================================================
parameter                  paper   meaning
=========================  ======  ===========================================================
``extra_args["cond_scale"]``  γ₁     CFG scale of every denoising call (the caller's scale)
``inversion_scale``        γ₂      CFG scale of every inversion call (default 0: unconditional)
``zigzag_steps``           λ       zigzag on the first λ (noisiest) steps (default: steps − 1)
``zigzag_rounds``          T_max   zigzag rounds per step (default 1)
=========================  ======  ===========================================================

CFG convention: ``D = D_uncond + s·(D_cond − D_uncond)`` (the released code's and diffusers');
the paper's eq. 5 writes ``(1 + γ)·u(c) − γ·u(∅)``, which is ``s = 1 + γ``. The defaults follow the
released code, whose γ₂ = 0 means the *unconditional* prediction.

Design decisions:

* Guidance gap ``γ₁ − γ₂``. A negative gap drives the latent away from the prompt (the paper shows it
  breaks generation), so ``inversion_scale > cond_scale`` raises ``ValueError`` before any model call
  when the forward scale is known. A zero gap is allowed (Theorem 3: approximately standard sampling)
  but only costs model calls.
* Guidance interval. A zigzag step runs only if the whole step ``[σ_{i+1}, σ_i]`` lies inside the
  guidance interval, so both its denoising and inversion calls are guided and the gap is exactly
  ``γ₁ − γ₂ ≥ 0``; outside the interval there is no guidance and hence no gap to accumulate.
* Final step. A step whose target is ``σ = 0`` is never zigzagged: inverting from a clean sample is
  undefined for the Euler rule (``d = (x − D)/σ``). With the default ``λ = steps − 1`` the last step
  is a plain step in any case, as in the released code.
* Denoising step. Algorithm 1 does not fix the solver of Φ: the engine takes a step rule (Euler, the
  paper's eq. 2, or DPM-Solver++(2M)) as it takes an inversion rule. A multistep rule's history is the
  previous step's *final* denoised prediction (after its zigzag rounds), moved with the latent for the
  re-denoising of an inverted latent; see :func:`step_dpmpp_2m` and :func:`moved_history`.

Flow models (rectified flow: SD3/SD3.5, Flux; :mod:`zigzag_kdiff.flow`):

* Parameterisation. ``x_σ = (1 − σ)·x₀ + σ·ε`` with ``σ ∈ (0, 1]``; the network predicts the velocity
  ``v = ε − x₀`` and :class:`~zigzag_kdiff.flow.FlowDenoiser` returns ``D = x − σ·v``, so the derivative
  ``(x − D)/σ = v`` and the probability-flow ODE is ``dx/dσ = v``. The samplers take ``flow=True`` (default
  ``None``: :func:`~zigzag_kdiff.flow.is_flow` of the model) and then refuse sigmas above 1. The VE view of the
  same latent is ``x/(1 − σ)`` at ``σ/(1 − σ)`` with the same D.
* Euler rule: unchanged; an Euler step in σ is the flow Euler step, and the Euler inversion is exact in the
  same sense as on VE latents. With ``zigzag_steps=0``: k-diffusion's ``sample_euler`` bit for bit.
* DDIM rule: the DDIM step with η = 0 on a flow latent is the Euler step; the inversion keeps the released
  code's approximation, the model at σ_i on the level-(i+1) latent, with no rescaling (the network's input is
  the latent): ``x̃ = x + (σ_i − σ_{i+1})·(x − D(x; σ_i))/σ_i``. ``inversion_update="released"`` (the VP
  scheduler's ᾱ rescalings) is refused on flow.
* DPM++ 2M rule: the flow half-log-SNR ``λ = log((1 − σ)/σ)`` and signal scale ``α = 1 − σ``
  (:data:`FLOW`, :func:`step_dpmpp_2m`); with ``zigzag_steps=0`` it is k-diffusion's ``sample_dpmpp_2m`` on the
  VE view (to rounding; from σ_0 = 1, where the view is infinite, the first step is the Euler step).
* Distilled guidance (guidance-distilled models such as Flux dev: one call per step whose guidance g is an
  input of the network). g₁ is ``extra_args["guidance"]``, the caller's value, used by every denoising call;
  ``inversion_guidance`` is g₂, used by every inversion call (through :class:`CallAtScale`'s ``guidance``
  keyword); ``None`` keeps g₁. ``g₂ <= g₁`` is checked before any model call. True CFG (γ₁, γ₂) is
  independent; with true CFG off (``cond_scale = inversion_scale = 1``) every call is one batch row.
* Cost: ``T + 2λ`` model calls (``T_max = 1``), one row each on a distilled model with true CFG off; with
  true CFG (SD3) 2 rows per guided call and 1 per inversion at γ₂ ∈ {0, 1}.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Literal, Protocol

import torch
from tqdm.auto import trange

from .flow import is_flow
from .interval import GuidanceInterval, check_finite

__all__ = [
    "append_dims",
    "append_zero",
    "to_d",
    "ddim_timesteps",
    "ddim_sigmas",
    "call_with_cond_scale",
    "LatentSpace",
    "VE",
    "FLOW",
    "latent_space",
    "zigzag_plan",
    "count_model_calls",
    "sample_zigzag_euler",
    "sample_zigzag_ddim",
    "sample_zigzag_dpmpp_2m",
    "rf_text_embedding",
    "sample_rf_euler",
]


# --- small helpers (k-diffusion's conventions) -------------------------------------------------


def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """Append singleton dimensions to ``x`` until it has ``target_dims`` dimensions."""
    return x[(...,) + (None,) * (target_dims - x.ndim)]


def append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE derivative ``dx/dσ = (x − D(x; σ))/σ`` (for an ε-model: ε)."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def _alpha_bar(sigma: torch.Tensor) -> torch.Tensor:
    """ᾱ of a VE noise level: ``ᾱ = 1/(1 + σ²)``."""
    return 1 / (1 + sigma**2)


# --- latent spaces: x_σ = α(σ)·x₀ + σ·ε ------------------------------------------------------------


class LatentSpace(Protocol):
    """What a rule needs to know about the latent ``x_σ = α(σ)·x₀ + σ·ε`` besides ``D(x; σ)``."""

    name: str

    def half_log_snr(self, sigma: torch.Tensor) -> torch.Tensor:
        """λ = log(α/σ), DPM-Solver's time (k-diffusion's ``t_fn``)."""
        ...

    def sigma_at(self, half_log_snr: torch.Tensor) -> torch.Tensor:
        """σ from λ (k-diffusion's ``sigma_fn``)."""
        ...

    def alpha(self, sigma: torch.Tensor) -> torch.Tensor | float:
        """α(σ), the signal scale."""
        ...

    def previous_level_input(self, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        """The latent to pass at σ_i so the *network* sees the level-σ_{i+1} latent ``x`` (eq. 4's ε^t(x_{t−1}))."""
        ...


class _VarianceExploding:
    """k-diffusion's latent ``x = x₀ + σ·ε`` (α = 1, λ = −log σ); ε/v-models seen through ``c_in = 1/sqrt(σ² + 1)``."""

    name = "ve"

    def half_log_snr(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma.log().neg()

    def sigma_at(self, half_log_snr: torch.Tensor) -> torch.Tensor:
        return half_log_snr.neg().exp()

    def alpha(self, sigma: torch.Tensor) -> float:
        return 1.0

    def previous_level_input(self, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        # A discrete ε-model's denoiser feeds the network c_in(σ)·x = sqrt(ᾱ)·x; at σ_i on
        # x·sqrt(σ_i² + 1)/sqrt(σ_{i+1}² + 1) the network sees sqrt(ᾱ_{i+1})·x, the released code's VP latent.
        return x * ((sigma**2 + 1) / (sigma_next**2 + 1)) ** 0.5


class _RectifiedFlow:
    """The flow latent ``x = (1 − σ)·x₀ + σ·ε`` (α = 1 − σ, λ = log((1 − σ)/σ)); the network sees ``x`` (c_in = 1)."""

    name = "flow"

    def half_log_snr(self, sigma: torch.Tensor) -> torch.Tensor:
        return (-sigma).log1p() - sigma.log()  # −inf at σ = 1, +inf at σ = 0

    def sigma_at(self, half_log_snr: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(-half_log_snr)  # σ = 1/(1 + e^λ)

    def alpha(self, sigma: torch.Tensor) -> torch.Tensor:
        return 1 - sigma

    def previous_level_input(self, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return x


VE: LatentSpace = _VarianceExploding()
"""k-diffusion's variance-exploding latent (ε/v UNets through ``k_diffusion.external``)."""
FLOW: LatentSpace = _RectifiedFlow()
"""The rectified-flow latent (:class:`~zigzag_kdiff.flow.FlowDenoiser`; SD3, Flux)."""


def latent_space(model: object, flow: bool | None = None) -> LatentSpace:
    """:data:`FLOW` if ``flow`` (``None``: :func:`~zigzag_kdiff.flow.is_flow` of ``model``), else :data:`VE`."""
    if flow is None:
        flow = is_flow(model)
    elif not isinstance(flow, bool):
        raise ValueError(f"flow must be True, False or None (None = detect from the model), got {flow!r}")
    return FLOW if flow else VE


# --- DDIM schedule ------------------------------------------------------------------------------


def ddim_timesteps(num_train_timesteps: int, steps: int, steps_offset: int = 1) -> torch.Tensor:
    """The DDIM scheduler's timesteps with ``timestep_spacing="leading"`` (e.g. 981, 961, …, 1)."""
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be an integer in [1, {num_train_timesteps}], got {steps!r}")
    step_ratio = num_train_timesteps // steps
    timesteps = torch.arange(steps - 1, -1, -1, dtype=torch.long) * step_ratio + steps_offset
    if int(timesteps[0]) >= num_train_timesteps:
        raise ValueError(
            f"steps_offset must keep timesteps below {num_train_timesteps}, got steps_offset={steps_offset}"
        )
    return timesteps


def ddim_sigmas(
    alphas_cumprod: torch.Tensor,
    steps: int,
    *,
    steps_offset: int = 1,
    set_alpha_to_one: bool = False,
) -> torch.Tensor:
    """Sigmas that make the samplers here reproduce diffusers' ``DDIMScheduler`` (η = 0).

    Leading spacing plus ``steps_offset`` (SD/SDXL: 1) gives timesteps ``t_0 > … > t_{T−1}``; the
    sigmas are ``σ(t) = sqrt((1 − ᾱ_t)/ᾱ_t)`` computed in the dtype of ``alphas_cumprod`` (as
    k-diffusion's ``DiscreteSchedule``), followed by the end point: 0 when ``set_alpha_to_one``,
    else ``σ(0)`` (SDXL: 0.029168), where DDIM stops.
    """
    alphas_cumprod = torch.as_tensor(alphas_cumprod)
    if alphas_cumprod.ndim != 1 or len(alphas_cumprod) < 2:
        raise ValueError("alphas_cumprod must be a 1-D tensor of at least 2 values")
    all_sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    timesteps = ddim_timesteps(len(alphas_cumprod), steps, steps_offset)
    end = all_sigmas.new_zeros([1]) if set_alpha_to_one else all_sigmas[:1]
    return torch.cat([all_sigmas[timesteps], end])


# --- validation ---------------------------------------------------------------------------------


def _check_sigmas(sigmas: torch.Tensor) -> None:
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1 or len(sigmas) < 2:
        shape = tuple(sigmas.shape) if isinstance(sigmas, torch.Tensor) else type(sigmas).__name__
        raise ValueError(f"sigmas must be a 1-D tensor of at least 2 noise levels, got {shape}")
    if not bool(torch.isfinite(sigmas).all()) or bool((sigmas < 0).any()):
        raise ValueError(f"sigmas must be finite and >= 0 (allowed: 0 <= sigma < inf), got {sigmas.tolist()}")
    rising = torch.nonzero(sigmas[1:] > sigmas[:-1])
    if len(rising):
        i = int(rising[0])
        raise ValueError(
            "sigmas must be non-increasing (sigmas[i+1] <= sigmas[i]), got "
            f"sigmas[{i + 1}]={float(sigmas[i + 1]):.6g} > sigmas[{i}]={float(sigmas[i]):.6g}"
        )


def _check_zigzag_options(steps: int, zigzag_steps: int | None, zigzag_rounds: int) -> int:
    """Validate λ and T_max; return λ (default ``steps − 1``)."""
    if zigzag_steps is None:
        zigzag_steps = steps - 1
    if not isinstance(zigzag_steps, int) or isinstance(zigzag_steps, bool) or not 0 <= zigzag_steps <= steps - 1:
        raise ValueError(
            f"zigzag_steps (λ) must be an integer in [0, {steps - 1}] (steps − 1) for {steps} steps, "
            f"got {zigzag_steps!r}"
        )
    if not isinstance(zigzag_rounds, int) or isinstance(zigzag_rounds, bool) or zigzag_rounds < 0:
        raise ValueError(f"zigzag_rounds (T_max) must be an integer >= 0, got {zigzag_rounds!r}")
    return zigzag_steps


def zigzag_plan(
    sigmas: torch.Tensor,
    zigzag_steps: int | None = None,
    guidance_interval: GuidanceInterval | tuple[float, float] | None = None,
) -> list[bool]:
    """For each step ``i`` (σ_i → σ_{i+1}), whether it zigzags (see the module's design decisions)."""
    _check_sigmas(sigmas)
    steps = len(sigmas) - 1
    zigzag_steps = _check_zigzag_options(steps, zigzag_steps, 1)
    interval = GuidanceInterval.parse(guidance_interval)
    levels = sigmas.tolist()
    plan = []
    for i in range(steps):
        inside = interval is None or (interval.contains(levels[i]) and interval.contains(levels[i + 1]))
        plan.append(i < zigzag_steps and levels[i + 1] > 0 and inside)
    return plan


def count_model_calls(
    sigmas: torch.Tensor,
    zigzag_steps: int | None = None,
    zigzag_rounds: int = 1,
    guidance_interval: GuidanceInterval | tuple[float, float] | None = None,
) -> int:
    """Denoiser calls a zigzag sampler makes: one per step plus two per zigzag round.

    Hosts that schedule features by model calls (A1111's prompt editing) report this number.
    """
    steps = len(sigmas) - 1
    _check_zigzag_options(steps, zigzag_steps, zigzag_rounds)
    return steps + 2 * zigzag_rounds * sum(zigzag_plan(sigmas, zigzag_steps, guidance_interval))


# --- how a call at the inversion scale is made ---------------------------------------------------


class CallAtScale(Protocol):
    """Evaluate ``model`` at ``(x, sigma)`` with CFG scale ``scale`` instead of the caller's."""

    def __call__(
        self,
        model: Callable[..., torch.Tensor],
        x: torch.Tensor,
        sigma: torch.Tensor,
        extra_args: dict[str, Any],
        scale: float,
        guidance: float | None = None,
    ) -> torch.Tensor:
        """``guidance`` (g₂, distilled guidance) is passed only when the sampler's ``inversion_guidance`` is set."""
        ...


def call_with_cond_scale(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigma: torch.Tensor,
    extra_args: dict[str, Any],
    scale: float,
    guidance: float | None = None,
) -> torch.Tensor:
    """The default: call the model with a *copy* of ``extra_args`` whose ``cond_scale`` is replaced.

    Works with our :class:`~zigzag_kdiff.guidance.CFGDenoiser` and with A1111/Forge's ``CFGDenoiser``
    (the caller's dict is never mutated: hosts such as A1111's refiner switch mutate it themselves).
    With SEG (``seg_scale`` in ``extra_args``) the copy's ``seg_scale`` is ``extra_args["inversion_seg_scale"]``,
    default 0: inversion calls run without SEG unless asked (see :mod:`zigzag_kdiff.seg`).
    With ``guidance`` (g₂) the copy's ``guidance`` is replaced too: a distilled model's inversion guidance
    (a tensor of the same shape, dtype and device when the caller's g₁ is a tensor, else the float).
    """
    args = {**extra_args, "cond_scale": scale}
    if "seg_scale" in args:
        args["seg_scale"] = args.get("inversion_seg_scale", 0.0)
    if guidance is not None:
        current = args.get("guidance")
        args["guidance"] = torch.full_like(current, guidance) if isinstance(current, torch.Tensor) else guidance
    return model(x, sigma, **args)


# --- inversion rules: one zigzag "up" step σ_{i+1} → σ_i (the paper's Ψ^t, eq. 4) ----------------

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``denoise(x, sigma)``: the model at the inversion scale γ₂, sigma a 0-dim tensor."""


def invert_euler(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, i: int) -> torch.Tensor:
    """Euler inversion: evaluate at the latent's true level σ_{i+1}, step back up to σ_i."""
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    d = to_d(x, sigma_next, denoise(x, sigma_next))
    return x + d * (sigma - sigma_next)


def _eps_at_previous_level(
    denoise: Denoise, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, space: LatentSpace = VE
) -> torch.Tensor:
    """ε^t(x_{t−1}) of eq. 4: the model told level σ_i while its network sees the level-σ_{i+1} latent.

    VE (a discrete ε-model): the latent is rescaled so the UNet sees the released code's VP latent
    (:meth:`LatentSpace.previous_level_input`); flow: the network's input is the latent itself, no rescaling.
    """
    x_in = space.previous_level_input(x, sigma, sigma_next)
    return to_d(x_in, sigma, denoise(x_in, sigma))


def invert_ddim(
    denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, i: int, space: LatentSpace = VE
) -> torch.Tensor:
    """DDIM inversion as the paper's eq. 4 (and diffusers ≤ 0.21.4): ``x̃ = x + (σ_i − σ_{i+1})·ε``.

    On flow latents (``space=FLOW``): ``x̃ = x + (σ_i − σ_{i+1})·(x − D(x; σ_i))/σ_i``, the model at σ_i
    on the level-(i+1) latent, as the released code's approximation, with no rescaling.
    """
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    eps = _eps_at_previous_level(denoise, x, sigma, sigma_next, space)
    return x + eps * (sigma - sigma_next)


def invert_ddim_released(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, i: int) -> torch.Tensor:
    """DDIM inversion as the released code computes it with diffusers 0.22.3.

    Its ``DDIMInverseScheduler.step`` takes t_{i+1} as the target and t_{i+1} − 1000/T as the source,
    which on DDIM sigmas (:func:`ddim_sigmas`) is level σ_r = σ_{i+2} (σ(0) after the last step):
    ``x̃ = sqrt(ᾱ_{i+1}/ᾱ_i)·[sqrt(ᾱ_{i+1}/ᾱ_r)·x + (σ_{i+1} − σ_r)·ε]``. On other schedules the same
    rule is applied with σ_r = σ_{i+2}.
    """
    sigma, sigma_next, sigma_src = sigmas[i], sigmas[i + 1], sigmas[i + 2]
    eps = _eps_at_previous_level(denoise, x, sigma, sigma_next)
    a, a_next, a_src = _alpha_bar(sigma), _alpha_bar(sigma_next), _alpha_bar(sigma_src)
    return (a_next / a) ** 0.5 * ((a_next / a_src) ** 0.5 * x + eps * (sigma_next - sigma_src))


InversionRule = Callable[[Denoise, torch.Tensor, torch.Tensor, int], torch.Tensor]


# --- denoising step rules: one step σ_i → σ_{i+1} (the paper's Φ^t, eq. 2) ---------------------


class StepRule(Protocol):
    """``step(x, denoised, sigmas, i, old_denoised)``: the latent at σ_{i+1} from ``x`` at σ_i.

    ``denoised`` is the model at γ₁ on ``x`` at σ_i; ``old_denoised`` the history, the final denoised
    prediction of step ``i − 1`` (``None`` at the first step), which single-step rules ignore.
    """

    def __call__(
        self,
        x: torch.Tensor,
        denoised: torch.Tensor,
        sigmas: torch.Tensor,
        i: int,
        old_denoised: torch.Tensor | None,
    ) -> torch.Tensor: ...


def step_euler(
    x: torch.Tensor, denoised: torch.Tensor, sigmas: torch.Tensor, i: int, old_denoised: torch.Tensor | None
) -> torch.Tensor:
    """Euler step (k-diffusion's ``sample_euler``; on VE sigmas the paper's DDIM step, eq. 2)."""
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    return x + to_d(x, sigma, denoised) * (sigma_next - sigma)


def step_dpmpp_2m(
    x: torch.Tensor,
    denoised: torch.Tensor,
    sigmas: torch.Tensor,
    i: int,
    old_denoised: torch.Tensor | None,
    space: LatentSpace = VE,
) -> torch.Tensor:
    """DPM-Solver++(2M) step (Lu et al. 2022, Algorithm 2; k-diffusion's ``sample_dpmpp_2m`` update).

    For ``x_σ = α(σ)·x₀ + σ·ε`` with half-log-SNR ``λ = log(α/σ)``, ``h = λ_{i+1} − λ_i``:
    ``x' = (σ_{i+1}/σ_i)·x − α_{i+1}·(e^{−h} − 1)·D̂`` where ``D̂ = denoised`` (first order) at the
    first step and into σ = 0, else the multistep correction ``D̂ = (1 + 1/(2r))·D_i − (1/(2r))·D_{i−1}``
    with ``r = h_last/h`` and ``h_last = λ_i − λ_{i−1}``.

    * VE (``space=VE``): α = 1, λ = −log σ. The operations are k-diffusion's, in its order, so that
      ``zigzag_steps=0`` is bit for bit ``sample_dpmpp_2m``.
    * Flow (``space=FLOW``): α = 1 − σ, λ = log((1 − σ)/σ). This is the VE update on the VE view
      ``x/(1 − σ)``, ``σ/(1 − σ)`` multiplied by α_{i+1}, so ``zigzag_steps=0`` equals ``sample_dpmpp_2m``
      on that view (up to rounding) wherever the view exists (σ_0 < 1); from σ_0 = 1 (λ = −∞) the first
      step is the Euler step and the second is first order (r = ∞), the view's limit.

    Inside a zigzag step (the engine, :func:`moved_history`). The history of step ``i`` is the final
    denoised prediction of step ``i − 1``, made on the latent that step's last (re-)denoising started
    from, so it lies on the path that reached σ_i; the first denoise of step ``i`` (on that path, before
    the inversion) never becomes the history of step ``i + 1``, only the final one does. The
    re-denoising after an inversion starts again at σ_i and steps to σ_{i+1}, so ``h``, ``h_last`` and
    ``r`` are those of the plain step. But the inverted latent x̃_i lies off that path, displaced by the
    zigzag (O(h·(γ₁ − γ₂))): correcting ``D_i(x̃_i)`` with the plain history would extrapolate that
    displacement too, by the factor 1/(2r) (about 2 on the last steps of DDIM sigmas), and overshoot.
    The engine therefore moves the history with the latent, ``D_{i−1} + (D_i(x̃_i) − D_i(x_i))``, so the
    correction is the slope measured on the path where both predictions lie, ``(D_i(x_i) − D_{i−1})/(2r)``,
    added to the re-denoised prediction (no extra model call).
    """
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    t, t_next = space.half_log_snr(sigma), space.half_log_snr(sigma_next)
    h = t_next - t
    alpha_next = space.alpha(sigma_next)
    if old_denoised is None or sigma_next == 0:
        return (space.sigma_at(t_next) / space.sigma_at(t)) * x - alpha_next * (-h).expm1() * denoised
    h_last = t - space.half_log_snr(sigmas[i - 1])
    r = h_last / h
    denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
    return (space.sigma_at(t_next) / space.sigma_at(t)) * x - alpha_next * (-h).expm1() * denoised_d


def moved_history(
    old_denoised: torch.Tensor | None, first: torch.Tensor, denoised: torch.Tensor
) -> torch.Tensor | None:
    """The history for re-denoising x̃_i: ``D_{i−1} + (D_i(x̃_i) − D_i(x_i))``, ``first`` = ``D_i(x_i)``.

    It moves the previous prediction by the change the zigzag made to the prediction at σ_i, so a
    multistep correction sees the slope of the path both predictions lie on (see :func:`step_dpmpp_2m`).
    """
    return None if old_denoised is None else old_denoised + (denoised - first)


# --- the engine: Algorithm 1 ----------------------------------------------------------------------


def _check_distilled_guidance(
    inversion_guidance: float | None,
    guidance: float | torch.Tensor | None,
    extra_args: dict[str, Any],
    zigzags: bool,
    call_at_scale: CallAtScale,
) -> float | None:
    """Validate g₂ (``inversion_guidance``) against g₁ (``guidance``, else ``extra_args["guidance"]``); return g₂.

    g₁ may be a tensor of one value per row (then g₂ must not exceed its smallest value).
    """
    if guidance is None:
        guidance = extra_args.get("guidance")
    if isinstance(guidance, torch.Tensor):
        guidance = float(guidance.min()) if bool(torch.isfinite(guidance).all()) else math.nan
    if guidance is not None:
        guidance = check_finite("guidance", guidance)
    if inversion_guidance is None:
        return None
    inversion_guidance = check_finite("inversion_guidance", inversion_guidance)
    if zigzags and guidance is None and call_at_scale is call_with_cond_scale:
        raise ValueError(
            "inversion_guidance (g₂) needs the denoising calls' distilled guidance g₁: put 'guidance' in "
            "extra_args (or pass guidance=g₁)"
        )
    if zigzags and guidance is not None and inversion_guidance > guidance:
        raise ValueError(
            f"inversion_guidance (g₂) must be <= the denoising distilled guidance g₁ = {guidance:g} so the gap "
            f"g₁ − g₂ is >= 0 (allowed: -inf < inversion_guidance <= {guidance:g}), got {inversion_guidance:g}"
        )
    return inversion_guidance


def _sample_zigzag(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None,
    callback: Callable[[dict[str, Any]], Any] | None,
    disable: bool | None,
    step: StepRule,
    invert: InversionRule,
    inversion_scale: float,
    zigzag_steps: int | None,
    zigzag_rounds: int,
    guidance_interval: GuidanceInterval | tuple[float, float] | None,
    call_at_scale: CallAtScale | None,
    cond_scale: float | None,
    move_history: bool = True,  # False only for the diagnostic in bench.convergence
    *,
    space: LatentSpace = VE,
    inversion_guidance: float | None = None,
    guidance: float | None = None,
) -> torch.Tensor:
    extra_args = {} if extra_args is None else extra_args
    _check_sigmas(sigmas)
    if space is FLOW and float(sigmas[0]) > 1:
        raise ValueError(
            f"sigmas of a flow latent must lie in [0, 1] (x = (1 − σ)·x₀ + σ·ε), got sigmas[0]={float(sigmas[0]):.6g}"
        )
    steps = len(sigmas) - 1
    zigzag_steps = _check_zigzag_options(steps, zigzag_steps, zigzag_rounds)
    inversion_scale = check_finite("inversion_scale", inversion_scale)
    if guidance_interval is None:  # a CFGDenoiser (or a host adapter) carries its own interval
        guidance_interval = getattr(model, "guidance_interval", None)
    plan = zigzag_plan(sigmas, zigzag_steps, guidance_interval)
    zigzags = zigzag_rounds > 0 and any(plan)

    if call_at_scale is None:
        call_at_scale = call_with_cond_scale
        if zigzags and "cond_scale" not in extra_args:
            raise ValueError(
                "zigzag sampling needs a guided model: extra_args must hold 'cond_scale' (and the "
                "model must accept it), or pass call_at_scale; use zigzag_steps=0 for plain sampling"
            )
        if cond_scale is None:
            cond_scale = extra_args.get("cond_scale")
    if zigzags and cond_scale is not None:
        cond_scale = check_finite("cond_scale", cond_scale)
        if inversion_scale > cond_scale:
            raise ValueError(
                f"inversion_scale (γ₂) must be <= the denoising scale cond_scale (γ₁) = {cond_scale:g} "
                f"so the guidance gap γ₁ − γ₂ is >= 0, got inversion_scale={inversion_scale:g}"
            )
    inversion_guidance = _check_distilled_guidance(inversion_guidance, guidance, extra_args, zigzags, call_at_scale)

    s_in = x.new_ones([x.shape[0]])

    def denoise_at_inversion_scale(x_in: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if inversion_guidance is None:  # hooks written before distilled guidance keep working
            return call_at_scale(model, x_in, sigma * s_in, extra_args, inversion_scale)
        return call_at_scale(model, x_in, sigma * s_in, extra_args, inversion_scale, guidance=inversion_guidance)

    old_denoised = None  # a multistep rule's history: the final denoised prediction of step i − 1
    for i in trange(steps, disable=disable):
        sigma = sigmas[i]
        # Algorithm 1, line 5: x_{t−1} = Φ^t(x_t | c, γ₁), a denoising step (eq. 2 or DPM++ 2M).
        denoised = model(x, sigma * s_in, **extra_args)
        x_next = step(x, denoised, sigmas, i, old_denoised)
        if plan[i]:  # line 6: the first λ steps
            first = denoised
            for _ in range(zigzag_rounds):  # T_max rounds
                # line 8: x̃_t = Ψ^t(x_{t−1} | c, γ₂), inversion (eq. 4)
                x = invert(denoise_at_inversion_scale, x_next, sigmas, i)
                # line 9: x_{t−1} = Φ^t(x̃_t | c, γ₁), denoising again (σ_i → σ_{i+1}, the history moved along)
                denoised = model(x, sigma * s_in, **extra_args)
                history = moved_history(old_denoised, first, denoised) if move_history else old_denoised
                x_next = step(x, denoised, sigmas, i, history)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        x, old_denoised = x_next, denoised
    return x


_ZIGZAG_ARGS_DOC = """
    Args:
        model: a k-diffusion denoiser ``model(x, sigma, **extra_args)``; for zigzag steps it must be
            guided, e.g. :class:`zigzag_kdiff.guidance.CFGDenoiser` or A1111's ``CFGDenoiser``.
        x: the initial latent at ``sigmas[0]`` (noise already scaled by ``sigmas[0]``).
        sigmas: non-increasing noise levels, ``len(sigmas) − 1`` steps (the last may be 0).
        extra_args: keyword arguments for ``model``; ``cond_scale`` is γ₁.
        callback: called once per step with ``{"x", "i", "sigma", "sigma_hat", "denoised"}``.
        disable: disable the tqdm progress bar.
        inversion_scale: γ₂, CFG scale of inversion calls (0 = unconditional, the released default).
        zigzag_steps: λ, zigzag on steps ``0 … λ−1``; in ``[0, steps − 1]``, default ``steps − 1``.
        zigzag_rounds: T_max, zigzag rounds per step, integer ``>= 0``.
        guidance_interval: ``(sigma_low, sigma_high)``: zigzag only on steps inside it; default: the
            model's own ``guidance_interval`` attribute if it has one.
        call_at_scale: how to evaluate the model at γ₂ (see :class:`CallAtScale`); default
            :func:`call_with_cond_scale`. Host adapters (ComfyUI) supply their own.
        cond_scale: γ₁ for the gap check when it is not in ``extra_args`` (host adapters).
        flow: the latent is a flow latent ``(1 − σ)·x₀ + σ·ε`` (sigmas in [0, 1]); ``None``: detect
            with :func:`zigzag_kdiff.flow.is_flow` (a :class:`~zigzag_kdiff.flow.FlowDenoiser` inside ``model``).
        inversion_guidance: g₂, the distilled guidance of every inversion call (guidance-distilled models
            such as Flux dev); ``None``: the inversions keep the caller's ``extra_args["guidance"]``.
            Must be ``<= g₁``.
        guidance: g₁ for that check when it is not in ``extra_args["guidance"]`` (host adapters).
"""


@torch.no_grad()
def sample_zigzag_euler(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], Any] | None = None,
    disable: bool | None = None,
    *,
    inversion_scale: float = 0.0,
    zigzag_steps: int | None = None,
    zigzag_rounds: int = 1,
    guidance_interval: GuidanceInterval | tuple[float, float] | None = None,
    call_at_scale: CallAtScale | None = None,
    cond_scale: float | None = None,
    flow: bool | None = None,
    inversion_guidance: float | None = None,
    guidance: float | None = None,
) -> torch.Tensor:
    """Z-Sampling with Euler steps; the inversion evaluates the model at the latent's true level.

    Step i: denoise σ_i → σ_{i+1} at γ₁ (eq. 2). On zigzag steps, T_max times: invert σ_{i+1} → σ_i
    with an Euler step whose derivative is evaluated at γ₂ on the latent where it is, at σ_{i+1}, then
    denoise σ_i → σ_{i+1} at γ₁ again. With ``zigzag_steps=0`` this is k-diffusion's ``sample_euler``.
    The same rule on flow latents (an Euler step in σ is the flow Euler step).
    """
    space = latent_space(model, flow)
    return _sample_zigzag(
        model,
        x,
        sigmas,
        extra_args,
        callback,
        disable,
        step_euler,
        invert_euler,
        inversion_scale,
        zigzag_steps,
        zigzag_rounds,
        guidance_interval,
        call_at_scale,
        cond_scale,
        space=space,
        inversion_guidance=inversion_guidance,
        guidance=guidance,
    )


@torch.no_grad()
def sample_zigzag_ddim(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], Any] | None = None,
    disable: bool | None = None,
    *,
    inversion_scale: float = 0.0,
    zigzag_steps: int | None = None,
    zigzag_rounds: int = 1,
    guidance_interval: GuidanceInterval | tuple[float, float] | None = None,
    call_at_scale: CallAtScale | None = None,
    cond_scale: float | None = None,
    flow: bool | None = None,
    inversion_guidance: float | None = None,
    guidance: float | None = None,
    inversion_update: Literal["paper", "released"] = "paper",
) -> torch.Tensor:
    """Z-Sampling in the paper's DDIM formulation (Algorithm 1 with eqs. 2 and 4).

    The inversion evaluates the model at σ_i on the level-(i+1) latent, rescaled so a discrete ε-model
    sees exactly what the released code feeds its UNet (the ε^t(x_{t−1}) approximation of eq. 4).
    ``inversion_update="paper"`` updates with eq. 4, ``x̃ = x + (σ_i − σ_{i+1})·ε``;
    ``"released"`` reproduces the released code's diffusers-0.22.3 update
    (see :func:`invert_ddim_released`). Use :func:`ddim_sigmas` to reproduce the DDIM scheduler.

    On flow latents the inversion is the same approximation without rescaling (the network's input is
    the latent): ``x̃ = x + (σ_i − σ_{i+1})·(x − D(x; σ_i))/σ_i`` on the level-(i+1) latent; the
    denoising step is the Euler step (the flow DDIM step with η = 0). ``"released"`` is refused on flow:
    it reproduces the ᾱ rescalings of a VP scheduler, which a flow latent does not have.
    """
    space = latent_space(model, flow)
    rules: dict[str, InversionRule] = {"paper": partial(invert_ddim, space=space), "released": invert_ddim_released}
    if inversion_update not in rules:
        raise ValueError(f"inversion_update must be one of {sorted(rules)}, got {inversion_update!r}")
    if inversion_update == "released" and space is FLOW:
        raise ValueError(
            "inversion_update='released' reproduces the released code's VP DDIM inversion (diffusers 0.22.3) and "
            "is not defined on flow latents; use inversion_update='paper' (allowed on flow: 'paper')"
        )
    return _sample_zigzag(
        model,
        x,
        sigmas,
        extra_args,
        callback,
        disable,
        step_euler,
        rules[inversion_update],
        inversion_scale,
        zigzag_steps,
        zigzag_rounds,
        guidance_interval,
        call_at_scale,
        cond_scale,
        space=space,
        inversion_guidance=inversion_guidance,
        guidance=guidance,
    )


@torch.no_grad()
def sample_zigzag_dpmpp_2m(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], Any] | None = None,
    disable: bool | None = None,
    *,
    inversion_scale: float = 0.0,
    zigzag_steps: int | None = None,
    zigzag_rounds: int = 1,
    guidance_interval: GuidanceInterval | tuple[float, float] | None = None,
    call_at_scale: CallAtScale | None = None,
    cond_scale: float | None = None,
    flow: bool | None = None,
    inversion_guidance: float | None = None,
    guidance: float | None = None,
) -> torch.Tensor:
    """Z-Sampling with DPM-Solver++(2M) denoising steps and the Euler inversion.

    Step i: denoise σ_i → σ_{i+1} at γ₁ with :func:`step_dpmpp_2m`, whose history is the final denoised
    prediction of step i − 1. On zigzag steps, T_max times: invert σ_{i+1} → σ_i as
    :func:`sample_zigzag_euler` does (an Euler step at γ₂ evaluated at the latent's level σ_{i+1}; on VE
    sigmas the first-order DPM-Solver++ inversion is this same step), then denoise σ_i → σ_{i+1} again,
    the history moved with the latent (:func:`moved_history`); only the last denoised prediction of the
    step becomes the next step's history. With ``zigzag_steps=0`` this is k-diffusion's
    ``sample_dpmpp_2m`` bit for bit.

    Convergence to the T → ∞ limit (``zigzag-kdiff bench convergence``): first order, as the other
    rules, since the Euler inversion caps it (with an exactly solved inversion it is second order), but
    with about a third of the Euler rule's error at T = 20.

    On flow latents the step uses the flow half-log-SNR λ = log((1 − σ)/σ) (see :func:`step_dpmpp_2m`);
    with ``zigzag_steps=0`` it equals ``sample_dpmpp_2m`` on the VE view ``x/(1 − σ)``, ``σ/(1 − σ)``.
    Measured on exact flow GMMs (``zigzag-kdiff bench convergence --flow``): order 2.0–2.2 per doubling at
    T = 40 → 80 on ``linspace(1, 0.001)`` and SD3's shift-3 schedule. The VE λ = −log σ applied to flow sigmas
    is another exponential integrator of the same ODE (both first-order forms are the Euler step): also second
    order, with 1.1–1.8× the error at T = 10–20.
    """
    space = latent_space(model, flow)
    return _sample_zigzag(
        model,
        x,
        sigmas,
        extra_args,
        callback,
        disable,
        partial(step_dpmpp_2m, space=space),
        invert_euler,
        inversion_scale,
        zigzag_steps,
        zigzag_rounds,
        guidance_interval,
        call_at_scale,
        cond_scale,
        space=space,
        inversion_guidance=inversion_guidance,
        guidance=guidance,
    )


sample_zigzag_euler.__doc__ += _ZIGZAG_ARGS_DOC  # type: ignore[operator]
sample_zigzag_ddim.__doc__ += _ZIGZAG_ARGS_DOC  # type: ignore[operator]
sample_zigzag_dpmpp_2m.__doc__ += _ZIGZAG_ARGS_DOC  # type: ignore[operator]


# --- Reflective Flow Sampling (RF-Sampling, Zhou et al. 2026) -------------------------------------


def rf_text_embedding(
    c_text: torch.Tensor | Mapping[str, Any], c_uncond: torch.Tensor | Mapping[str, Any], s: float, beta: float
) -> torch.Tensor | dict[str, Any]:
    """RF-Sampling's text state ``c_w(s, β) = c_text + s·c_mix(β)``, ``c_mix(β) = β·c_text + (1 − β)·c_uncond``.

    ``beta`` is the interpolation weight β, ``s`` the amplification weight; the paper's high state is
    ``(s_high, β_high)``, its low state ``(s_low, β_low)``. Tensors, or mappings of them (e.g. a host's
    ``{"encoder_hidden_states": …, "pooled_projections": …}``), combined leaf by leaf; other leaves are kept
    from ``c_text``. Which encoder outputs to combine, and what ``c_uncond`` is on a model trained without an
    empty prompt, the paper does not state (see docs/evidence.md, "Flow models").
    """
    s, beta = check_finite("s", s), check_finite("beta", beta)
    if isinstance(c_text, Mapping):
        if not isinstance(c_uncond, Mapping) or c_uncond.keys() != c_text.keys():
            raise ValueError("c_text and c_uncond must both be tensors or mappings with the same keys")
        return {k: rf_text_embedding(c_text[k], c_uncond[k], s, beta) for k in c_text}
    if not isinstance(c_text, torch.Tensor):
        return c_text
    if not isinstance(c_uncond, torch.Tensor) or c_uncond.shape[1:] != c_text.shape[1:]:
        raise ValueError("c_uncond must be a tensor of the shape of c_text (batch dimension aside)")
    return c_text + s * (beta * c_text + (1 - beta) * c_uncond)


def _check_rf_options(
    high_args: Mapping[str, Any], low_args: Mapping[str, Any], merge_ratio: float, alpha: int
) -> float:
    for name, value in (("high_args", high_args), ("low_args", low_args)):
        if not isinstance(value, Mapping):
            raise ValueError(f"{name} must be a mapping of model keyword arguments, got {type(value).__name__}")
    merge_ratio = check_finite("merge_ratio", merge_ratio)
    if merge_ratio < 0:
        raise ValueError(f"merge_ratio (γ) must be a finite number >= 0 (the paper's default 0.5), got {merge_ratio:g}")
    if not isinstance(alpha, int) or isinstance(alpha, bool) or alpha < 1:
        raise ValueError(f"alpha (α) must be an integer >= 1 (ODE steps of the reflection), got {alpha!r}")
    for key in ("cond_scale", "guidance"):  # the reflection needs a weaker low condition (β_high > β_low)
        high, low = high_args.get(key), low_args.get(key)
        if isinstance(high, (int, float)) and isinstance(low, (int, float)) and low > high:
            raise ValueError(
                f"low_args[{key!r}] must be <= high_args[{key!r}] = {high:g} (a low-weight inversion after a "
                f"high-weight denoising), got {low:g}"
            )
    return merge_ratio


@torch.no_grad()
def sample_rf_euler(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], Any] | None = None,
    disable: bool | None = None,
    *,
    high_args: Mapping[str, Any],
    low_args: Mapping[str, Any],
    merge_ratio: float = 0.5,
    alpha: int = 1,
    reflective_steps: int | None = None,
    flow: bool | None = None,
) -> torch.Tensor:
    """Reflective Flow Sampling (RF-Sampling, Zhou et al. 2026, arXiv 2603.06165) with Euler steps and inversions.

    Reflective step i (x at σ_i), in the paper's three stages:

    1. high-weight denoising: α Euler steps σ_i → σ_{i+α} with the high condition (``{**extra_args, **high_args}``);
    2. low-weight inversion: α Euler inversions back to σ_i with the low condition, giving the reflected x̃;
    3. merge and normal denoising: ``x'' = x + γ·(x̃ − x)`` (γ = ``merge_ratio``; Theorem 1's ascent step
       along the reflective displacement), then one Euler step σ_i → σ_{i+1} with ``extra_args``.

    Non-reflective steps are plain Euler steps. ``2α + 1`` model calls per reflective step (α = 1: 3).
    The paper's conditions are text representations, ``c_high = c_w(s_high, β_high)`` and
    ``c_low = c_w(s_low, β_low)`` (:func:`rf_text_embedding`), which the caller builds with its text encoder and
    passes in ``high_args``/``low_args`` (e.g. ``{"cond": c_high}``); any other model keyword works the same way
    (``{"guidance": g}`` for a distilled model, ``{"cond_scale": γ}`` for CFG). The paper's defaults: β_high = 0.7,
    β_low = 0.3, γ = 0.5; FLUX-Dev s_high = 3.5, s_low = 0, α = 1 (50 steps); FLUX-Lite s_high = 9, s_low = −1,
    α = 2 (28 steps); all steps reflective. With γ = 1, α = 1, no high override and ``low_args={"cond_scale": γ₂}``
    this is :func:`sample_zigzag_euler` with ``inversion_scale=γ₂``; with γ = 0 it is plain Euler sampling.

    Args:
        model, x, sigmas, extra_args, callback, disable: as :func:`sample_zigzag_euler` (``extra_args`` is the
            normal condition of stage 3 and of the plain steps).
        high_args: model keyword arguments that replace ``extra_args``' in the high-weight denoising calls.
        low_args: the same for the low-weight inversion calls.
        merge_ratio: γ, the step along the reflection, finite and ``>= 0`` (default 0.5, the paper's).
        alpha: α, ODE steps of the denoising and of the inversion, integer ``>= 1``; fewer near the end of
            the schedule (a reflection never reaches σ = 0, where the Euler inversion is undefined).
        reflective_steps: reflect on steps ``0 … n−1``, in ``[0, steps − 1]``; default ``steps − 1`` (all steps
            whose target is not σ = 0, the paper's best setting).
        flow: as :func:`sample_zigzag_euler` (the Euler rule is the same on flow and VE latents; flow sigmas
            must lie in [0, 1]).
    """
    extra_args = {} if extra_args is None else extra_args
    _check_sigmas(sigmas)
    if latent_space(model, flow) is FLOW and float(sigmas[0]) > 1:
        raise ValueError(
            f"sigmas of a flow latent must lie in [0, 1] (x = (1 − σ)·x₀ + σ·ε), got sigmas[0]={float(sigmas[0]):.6g}"
        )
    steps = len(sigmas) - 1
    reflective_steps = _check_zigzag_options(steps, reflective_steps, 1)
    merge_ratio = _check_rf_options(high_args, low_args, merge_ratio, alpha)
    plan = zigzag_plan(sigmas, reflective_steps)
    high, low = {**extra_args, **high_args}, {**extra_args, **low_args}
    last_noisy = max(j for j in range(steps + 1) if float(sigmas[j]) > 0) if float(sigmas[0]) > 0 else 0
    s_in = x.new_ones([x.shape[0]])
    for i in trange(steps, disable=disable):
        sigma = sigmas[i]
        if plan[i]:
            sub_steps = min(alpha, last_noisy - i)  # σ_{i+α} > 0
            x_high = x
            for j in range(i, i + sub_steps):  # stage 1: high-weight denoising
                x_high = step_euler(x_high, model(x_high, sigmas[j] * s_in, **high), sigmas, j, None)
            reflected = x_high
            for j in reversed(range(i, i + sub_steps)):  # stage 2: low-weight inversion, back to σ_i
                reflected = invert_euler(lambda x_in, s: model(x_in, s * s_in, **low), reflected, sigmas, j)
            x = torch.lerp(x, reflected, merge_ratio)  # stage 3: x'' = x + γ·(x̃ − x) (exact at γ = 0 and 1)
        denoised = model(x, sigma * s_in, **extra_args)  # stage 3 (or a plain step): normal denoising
        x_next = step_euler(x, denoised, sigmas, i, None)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        x = x_next
    return x
