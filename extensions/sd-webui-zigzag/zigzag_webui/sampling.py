"""The sampler function: :mod:`zigzag_kdiff`'s zigzag samplers on the host's ``CFGDenoiser``.

Host behaviour this module relies on (read in A1111 1.10.1, Forge, reForge, Forge Classic/Neo):

* The sampler function is called as ``func(model, x, sigmas=..., extra_args=..., callback=...,
  disable=False)`` where ``model`` is the host's ``CFGDenoiser`` (``forward(x, sigma, uncond, cond,
  cond_scale, s_min_uncond, image_cond)``, no ``**kwargs`` on A1111/Forge) with ``model.p`` and
  ``model.total_steps`` (denoiser calls expected, from ``SamplerData.total_steps``).
* Forge, reForge and Neo replace ``cond_scale`` by ``p.hr_cfg`` inside the denoiser during the
  hires pass; A1111 1.10 and old Forge Classic have no ``hr_cfg``.
* Forge and Neo pass ``uncond=None`` when the CFG scale is 1 (and in the hires pass when
  ``hr_cfg`` is 1); a call at another scale would then mix in an all-zero "unconditional" result.
* Forge's denoiser reads ``inner_model.inner_model.forge_objects.unet.model_options`` on every call
  and runs its ``sampler_pre_cfg_function`` list as ``fn(model, cond, uncond, x, timestep,
  model_options)`` after dropping ``uncond`` at scale 1, before evaluating the branches
  (``backend/sampling/sampling_function.py``); an empty ``cond`` list evaluates the unconditional
  branch alone and leaves the conditional prediction all zeros.
* With "Negative Guidance minimum sigma" (``s_min_uncond`` > 0) A1111 and Forge skip the
  unconditional branch on odd call indices below that σ (NGMS).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from zigzag_kdiff import SAMPLERS, count_model_calls
from zigzag_kdiff.guidance import GuidanceInterval, effective_scale

from .forge import (
    INVERSION_GUIDANCE_ATTR,
    distilled_guidance,
    hires_cfg,
    hires_distilled_guidance,
    reads_hires_cfg,
    unconditional_branch_only,
)
from .infotext import notify, record_infotext
from .names import SAMPLER_NAMES, our_sampler_labels
from .settings import SETTINGS_BY_KEY, ZigzagSettings, zigzag_steps_for

INVERSION_ATTR = "zigzag_kdiff_inversion"
"""Set on the host's ``CFGDenoiser`` during Zigzag inversion calls (read by ``seg_webui``)."""


def call_host_at_scale(host_model: Any, x: torch.Tensor, sigma: torch.Tensor, extra_args: dict, scale: float):
    """One call of the host's ``CFGDenoiser`` at CFG ``scale``: ``cond_scale`` replaced in a *copy* of
    ``extra_args``; in a Forge-family hires pass ``p.hr_cfg`` is set for this call and restored; at
    scale 0 Forge evaluates the unconditional branch alone (:func:`unconditional_branch_only`)."""
    p = getattr(host_model, "p", None)
    with contextlib.ExitStack() as stack:
        if scale == 0:
            stack.enter_context(unconditional_branch_only(host_model))
        if reads_hires_cfg(p):
            stack.enter_context(hires_cfg(p, scale))
        return host_model(x, sigma, **{**extra_args, "cond_scale": scale})


class HostGuidedModel:
    """The host's ``CFGDenoiser`` as the engine sees it.

    Denoising calls run at γ₁ inside the guidance interval (the host's own call, untouched) and at
    scale 1 outside it; :meth:`call_at_scale` is the engine's hook for the inversion calls (γ₂).
    """

    def __init__(self, host_model: Any, cond_scale: float, guidance_interval: tuple[float, float] | None) -> None:
        self.host_model = host_model
        self.cond_scale = cond_scale
        self.guidance_interval = GuidanceInterval.parse(guidance_interval)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args: Any) -> torch.Tensor:
        scale = effective_scale(self.cond_scale, sigma.max(), self.guidance_interval)
        if scale == self.cond_scale:
            return self.host_model(x, sigma, **extra_args)
        return call_host_at_scale(self.host_model, x, sigma, extra_args, scale)

    def call_at_scale(
        self,
        model: Any,
        x: torch.Tensor,
        sigma: torch.Tensor,
        extra_args: dict,
        scale: float,
        guidance: float | None = None,
    ):
        """An inversion call at γ₂ (and, with ``guidance``, at the distilled guidance g₂). NGMS is kept out of it
        (``s_min_uncond`` 0 for this call): the webui would otherwise run some inversions on the conditional
        branch alone, i.e. at scale 1. The host model is marked for this call: SEG (``seg_webui``) runs inversion
        calls without SEG, and :func:`~zigzag_webui.forge.apply_inversion_guidance` (an ``on_cfg_denoiser``
        callback) replaces the call's distilled guidance by ``guidance``."""
        if extra_args.get("s_min_uncond"):
            extra_args = {**extra_args, "s_min_uncond": 0.0}
        setattr(self.host_model, INVERSION_ATTR, True)
        setattr(self.host_model, INVERSION_GUIDANCE_ATTR, guidance)
        try:
            return call_host_at_scale(self.host_model, x, sigma, extra_args, scale)
        finally:
            setattr(self.host_model, INVERSION_ATTR, False)
            setattr(self.host_model, INVERSION_GUIDANCE_ATTR, None)


def is_flow_schedule(host_model: Any) -> bool:
    """Whether the model's own noise levels stay within [0, 1] (rectified flow: Forge's Flux, SD3.5, Chroma and
    A1111 1.10's SD3, whose denoisers return ``D = x − σ·v`` on the flow latent ``x``): the engine then samples
    with ``flow=True``."""
    try:
        sigmas = host_model.inner_model.sigmas
    except Exception:  # not a k-diffusion style wrapper: assume a VP model
        return False
    return isinstance(sigmas, torch.Tensor) and sigmas.numel() > 0 and float(sigmas.max()) <= 1.0 + 1e-6


def check_hires_scale(p: Any, settings: ZigzagSettings) -> None:
    """In the first pass, before any model call: refuse γ₂ above the Hires CFG Scale of a coming hires pass.

    Only hosts with ``p.hr_cfg`` (Forge family) give the hires pass its own scale (A1111 uses the CFG
    Scale, checked with the first pass); at Hires CFG Scale 1 Forge drops the negative prompt and the
    hires inversions run at scale 1 (noted then). The hires sampler is ``hr_sampler_name`` or the
    first pass's sampler.
    """
    if p is None or not getattr(p, "enable_hr", False) or not hasattr(p, "hr_cfg") or reads_hires_cfg(p):
        return
    hires_sampler = getattr(p, "hr_sampler_name", None)
    if not hires_sampler or hires_sampler == "Use same sampler":
        hires_sampler = getattr(p, "sampler_name", None)
    if hires_sampler not in our_sampler_labels() or settings.rounds == 0 or settings.steps_fraction == 0:
        return
    hires_guidance = hires_distilled_guidance(p)
    if hires_guidance is not None and settings.inversion_guidance > hires_guidance:
        raise ValueError(
            f"Zigzag inversion guidance g₂ = {settings.inversion_guidance:g} must not exceed the Hires Distilled CFG "
            f"Scale g₁ = {hires_guidance:g} of the hires pass (a negative guidance gap breaks generation); lower "
            "setting zigzag_inversion_guidance or raise the Hires Distilled CFG Scale"
        )
    hires_scale = float(p.hr_cfg)
    if hires_scale != 1 and settings.inversion_scale > hires_scale:
        raise ValueError(
            f"Zigzag inversion scale γ₂ = {settings.inversion_scale:g} must not exceed the Hires CFG Scale "
            f"γ₁ = {hires_scale:g} of the hires pass (a negative guidance gap breaks generation); lower setting "
            "zigzag_inversion_scale or raise the Hires CFG Scale"
        )


def sample_in_host(
    rule: str,
    settings: ZigzagSettings,
    model: Any,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callable[[dict], Any] | None = None,
    disable: bool | None = None,
) -> torch.Tensor:
    """Run the ``rule`` zigzag sampler of :mod:`zigzag_kdiff` on the host's ``CFGDenoiser``."""
    extra_args = {} if extra_args is None else extra_args
    p = getattr(model, "p", None)
    hires_cfg_pass = reads_hires_cfg(p)
    cond_scale = float(p.hr_cfg if hires_cfg_pass else extra_args.get("cond_scale", 1.0))
    scale_label = "Hires CFG Scale" if hires_cfg_pass else "CFG Scale"
    steps = len(sigmas) - 1
    zigzag_steps = zigzag_steps_for(steps, settings.steps_fraction)
    interval = settings.guidance_interval
    calls = count_model_calls(sigmas, zigzag_steps, settings.rounds, interval)  # also validates the sigmas
    zigzags = calls > steps
    inversion_scale = settings.inversion_scale
    no_uncond = zigzags and "uncond" in extra_args and extra_args["uncond"] is None
    if zigzags and not no_uncond and inversion_scale > cond_scale:
        raise ValueError(
            f"Zigzag inversion scale γ₂ = {inversion_scale:g} must not exceed the {scale_label} γ₁ = {cond_scale:g} "
            "(a negative guidance gap breaks generation); lower setting zigzag_inversion_scale or raise the "
            f"{scale_label}"
        )
    flow = is_flow_schedule(model)
    if flow and float(sigmas[0]) > 1.0:  # seen in Forge with Flux at Schedule type Automatic: timesteps 9999 … 0
        raise ValueError(
            f"{SAMPLER_NAMES[rule]}: this is a flow model (noise levels in [0, 1]) but the Schedule type gave "
            f"σ₀ = {float(sigmas[0]):g} (Forge's 'Automatic' passes timesteps for it): choose Schedule type 'Simple' "
            "(Forge's default for Flux) or another schedule"
        )
    if rule == "ddim" and flow and settings.ddim_update == "released":  # the engine refuses it on flow too
        raise ValueError(
            f"{SAMPLER_NAMES['ddim']} with setting zigzag_ddim_inversion_update = 'released' reproduces the released "
            "code's variance-preserving DDIM update; this model's noise levels stay in [0, 1] (rectified flow): "
            "set it to 'paper' (the flow DDIM inversion) or use another Zigzag entry"
        )
    guidance = distilled_guidance(p)  # g₁ of a model with distilled guidance (Forge's Flux dev), else None
    guidance_label = "Hires Distilled CFG Scale" if getattr(p, "is_hr_pass", False) else "Distilled CFG Scale"
    if zigzags and guidance is not None and settings.inversion_guidance > guidance:
        raise ValueError(
            f"Zigzag inversion guidance g₂ = {settings.inversion_guidance:g} must not exceed the {guidance_label} "
            f"g₁ = {guidance:g} (a negative guidance gap breaks generation); lower setting zigzag_inversion_guidance "
            f"or raise the {guidance_label}"
        )
    check_hires_scale(p, settings)
    record_infotext(p, settings)

    if no_uncond:
        # Forge/Neo at CFG 1: there is no unconditional prediction to invert with.
        inversion_scale = cond_scale
    if no_uncond and guidance is None:
        notify(
            p,
            f"{scale_label} {cond_scale:g} runs without a negative prompt, so the inversion uses the same "
            "scale: guidance gap 0, zigzag cannot strengthen the prompt (raise the CFG scale)",
            f"gap 0 ({scale_label} {cond_scale:g})",
        )
    default_guidance = SETTINGS_BY_KEY["zigzag_inversion_guidance"].default
    if zigzags and guidance is None and settings.inversion_guidance != default_guidance:
        notify(
            p,
            f"this model has no distilled guidance (Distilled CFG Scale), so setting zigzag_inversion_guidance "
            f"= {settings.inversion_guidance:g} has no effect; the guidance gap is the CFG Scale's",
            "inversion guidance unused",
        )
    planned = getattr(model, "total_steps", None)
    if isinstance(planned, int) and planned != calls:
        # total_steps(steps) knows neither the sigmas (guidance interval) nor the schedule's own step count
        model.total_steps = calls
        requested = getattr(model, "steps", None)
        reasons = []
        if isinstance(requested, int) and requested != steps:
            reasons.append(f"the schedule has {steps} steps for the {requested} requested")
        if interval is not None and calls != count_model_calls(sigmas, zigzag_steps, settings.rounds):
            reasons.append("only steps inside the guidance interval zigzag")
        notify(
            p,
            f"{calls} model calls instead of the planned {planned} ({'; '.join(reasons) or f'{steps} steps'}); "
            "prompt editing stays scheduled on the planned count",
            f"{calls} model calls (planned {planned})",
        )

    guided = HostGuidedModel(model, cond_scale, interval)
    options: dict[str, Any] = {
        "inversion_scale": inversion_scale,
        "zigzag_steps": zigzag_steps,
        "zigzag_rounds": settings.rounds,
        "guidance_interval": interval,
        "call_at_scale": guided.call_at_scale,
        "cond_scale": cond_scale,
        "flow": flow,
    }
    if guidance is not None:  # distilled guidance: g₁ for the gap check, g₂ through call_at_scale's guidance
        options["guidance"] = guidance
        options["inversion_guidance"] = settings.inversion_guidance
    if rule == "ddim":
        options["inversion_update"] = settings.ddim_update
    return SAMPLERS[f"zigzag_{rule}"](guided, x, sigmas, extra_args, callback, disable, **options)
