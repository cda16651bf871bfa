"""ComfyUI adapter over the zigzag engine: the guider's scale switch, sampler functions, guidance interval.

Inside a ComfyUI sampler function ``model`` is ``comfy.samplers.KSamplerX0Inpaint`` (it applies the
inpainting mask); its ``inner_model`` is the guider (``CFGGuider`` or one built on it), which reads
``guider.cfg`` on every call. One call is made at another CFG scale by setting ``cfg``, calling, and
restoring it in ``finally``. ComfyUI itself skips the unconditional batch when the scale is 1 (its
cfg1 optimisation, unless ``disable_cfg1_optimization`` is set); at scale 0 it would run both batches,
so a call at scale 0 also gets :class:`UnconditionalOnly`, which leaves the positive batch out.

Paper symbols: γ₁ is the guider's ``cfg`` (every denoising call), γ₂ the ``inversion_scale`` (every
inversion call), λ the zigzag steps, T_max the zigzag rounds.

Flow models (CONST model sampling: SD3, Flux) are sampled as flow latents (the engine's ``flow=True``).
Guidance-distilled models (Flux dev: a ``guidance`` input, set by FluxGuidance) add distilled guidance:
g₁ is the positive conditioning's guidance (what the denoising calls see), g₂ the ``inversion_guidance``
of every inversion call, put into that call alone by :class:`InversionGuidance`, a keyed APPLY_MODEL
wrapper on the call's own ``model_options`` copy.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any

import comfy.k_diffusion.sampling
import comfy.model_patcher
import comfy.model_sampling
import comfy.patcher_extension
import comfy.samplers
import torch

from zigzag_kdiff import register_k_diffusion
from zigzag_kdiff import sampling as engine
from zigzag_kdiff.flow import default_inversion_guidance
from zigzag_kdiff.guidance import GuidanceInterval, check_finite

SAMPLER_NAMES = ("zigzag_euler", "zigzag_ddim", "zigzag_dpmpp_2m")
"""Names added to the KSampler / KSamplerSelect dropdowns (γ₂ = 0, λ = steps − 1, T_max = 1; on guidance-distilled
models at cfg 1 γ₂ = 1 and g₂ = min(1, g₁): :func:`resolve_distilled_guidance`)."""

RULES = {
    "euler": (engine.sample_zigzag_euler, {}),
    "ddim": (engine.sample_zigzag_ddim, {"inversion_update": "paper"}),
    "ddim_released": (engine.sample_zigzag_ddim, {"inversion_update": "released"}),
    "dpmpp_2m": (engine.sample_zigzag_dpmpp_2m, {}),
}
"""Rules of the Zigzag Sampler node (denoising step and inversion): engine function and its fixed options."""

FLOW_REFUSED_RULES = ("ddim_released",)
"""Rules the engine does not define on flow latents (the released update rescales by a VP schedule's ᾱ)."""

INVERSION_GUIDANCE_KEY = "zigzag_kdiff_inversion_guidance"
"""Key of :class:`InversionGuidance` among one inversion call's APPLY_MODEL wrappers."""

GUIDANCE_INTERVAL_KEY = "zigzag_kdiff_guidance_interval"
"""Key of the Guidance Interval patch among the model's ``predict_noise`` wrappers."""

UNCONDITIONAL_ONLY_KEY = "zigzag_kdiff_unconditional_only"
"""Key of :class:`UnconditionalOnly` among one inversion call's ``calc_cond_batch`` wrappers."""

CFG_HOOKS = ("sampler_cfg_function", "sampler_pre_cfg_function", "sampler_post_cfg_function")
"""``model_options`` entries that read the conditional prediction (RescaleCFG, PAG, SAG, CFG++ samplers, ...):
while one is set, a call at scale 0 evaluates both batches, as ComfyUI does."""

INVERSION_NEUTRAL = "zigzag_kdiff_inversion_neutral"
"""Attribute of a CFG hook (function or method) that leaves Zigzag inversion calls unchanged, such as the SEG
node's (it adds nothing there): it does not keep a call at scale 0 from evaluating the negative batch alone."""

INVERSION_KEY = "zigzag_kdiff_inversion"
"""``transformer_options`` flag of Zigzag inversion calls (set by :class:`GuiderScaleSwitch`; SEG skips them)."""


# --- the guider ----------------------------------------------------------------------------------


def scalable_guider(guider: Any, purpose: str) -> Any:
    """Return ``guider`` if its CFG scale is a numeric ``cfg`` it reads on every call, else raise."""
    name = type(guider).__name__
    cfg = getattr(guider, "cfg", None)
    if isinstance(cfg, bool) or not isinstance(cfg, (int, float)):
        raise ValueError(
            f"{purpose} switches the guider's CFG scale, but {name} has no numeric 'cfg' attribute; "
            "use KSampler, SamplerCustom or the CFGGuider node"
        )
    if hasattr(guider, "cfg1") or hasattr(guider, "cfg2"):
        raise ValueError(
            f"{purpose} switches the guider's CFG scale 'cfg', but {name} keeps its scales in cfg1/cfg2 "
            "(DualCFGGuider); use KSampler, SamplerCustom or the CFGGuider node"
        )
    return guider


def drivable_guider(model: Any, inversion_scale: float | None = None) -> Any:
    """The guider behind ComfyUI's k-diffusion model, checked to support zigzag inversion calls.

    A guider without negative conditioning (BasicGuider) is accepted when the inversions run at
    ``inversion_scale`` 1 (the positive conditioning alone, as on guidance-distilled models).
    """
    guider = scalable_guider(getattr(model, "inner_model", None), "zigzag sampling")
    conds = getattr(guider, "conds", None) or {}
    if inversion_scale != 1.0 and not conds.get("negative"):
        scale = "its default" if inversion_scale is None else f"{inversion_scale:g}"
        raise ValueError(
            f"zigzag sampling evaluates inversion calls at inversion_scale (γ₂) = {scale} with the negative "
            f"conditioning, but {type(guider).__name__} has none (BasicGuider); use KSampler, SamplerCustom "
            "or the CFGGuider node with a negative prompt, or inversion_scale 1 (on a guidance-distilled model "
            "such as Flux dev the gap is then inversion_guidance, g₂), or zigzag steps 0 for plain sampling"
        )
    return guider


@contextlib.contextmanager
def guider_scale(guider: Any, scale: float) -> Iterator[Any]:
    """Set ``guider.cfg = scale`` for the ``with`` block; the previous value is restored even on errors."""
    previous = guider.cfg
    guider.cfg = scale
    try:
        yield guider
    finally:
        guider.cfg = previous


class UnconditionalOnly:
    """A ``calc_cond_batch`` wrapper (ComfyUI's WrappersMP.CALC_COND_BATCH): at cfg 0, the negative batch alone.

    ComfyUI's CFG result at scale 0 is ``u + (c − u)·0 = u``, so the positive batch is not needed: with
    conds ``[None, negative]`` ComfyUI evaluates the negative conditioning alone (its areas, masks, hooks,
    ControlNet and image conditioning as they are; its rows keep the unconditional label in
    ``cond_or_uncond``) and leaves the positive prediction all zeros. Acts only while the guider's
    ``cfg`` is 0 and the negative batch is present.
    """

    def __init__(self, guider: Any) -> None:
        self.guider = guider

    def __call__(self, executor: Any, model: Any, conds: list, x_in: torch.Tensor, timestep: Any, *args: Any) -> Any:
        if self.guider.cfg == 0 and len(conds) == 2 and conds[1] is not None:
            conds = [None, conds[1]]
        return executor(model, conds, x_in, timestep, *args)


def _cfg_hooks(model_options: dict) -> Iterator[Any]:
    """The functions of the :data:`CFG_HOOKS` entries (``sampler_cfg_function`` is one, the others lists)."""
    for key in CFG_HOOKS:
        value = model_options.get(key)
        if value:
            yield from value if isinstance(value, (list, tuple)) else [value]


def unconditional_only(guider: Any, extra_args: dict) -> dict:
    """``extra_args`` for one call at scale 0: its ``model_options`` cloned with :class:`UnconditionalOnly`.

    Unchanged while a :data:`CFG_HOOKS` function is set (those read the positive prediction), unless it is
    marked :data:`INVERSION_NEUTRAL`.
    """
    options = extra_args.get("model_options") or {}
    if any(not getattr(hook, INVERSION_NEUTRAL, False) for hook in _cfg_hooks(options)):
        return extra_args
    patched = comfy.model_patcher.create_model_options_clone(options)
    comfy.patcher_extension.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.CALC_COND_BATCH,
        UNCONDITIONAL_ONLY_KEY,
        UnconditionalOnly(guider),
        patched,
        is_model_options=True,
    )
    return {**extra_args, "model_options": patched}


class InversionGuidance:
    """An APPLY_MODEL wrapper (ComfyUI's WrappersMP.APPLY_MODEL): distilled guidance g₂ in inversion calls.

    In a call whose ``transformer_options`` carry :data:`INVERSION_KEY` it replaces the ``guidance`` keyword
    (Flux's ``c['guidance']``, one value per row of the batch, from FluxGuidance or the 3.5 default) by g₂ on
    every row; other calls pass through. Registered under :data:`INVERSION_GUIDANCE_KEY` on the inversion
    call's own ``model_options`` copy (:func:`with_inversion_guidance`), so it never outlives that call.
    """

    def __init__(self, guidance: float) -> None:
        self.guidance = guidance

    def __call__(
        self,
        executor: Any,
        x: torch.Tensor,
        t: torch.Tensor,
        c_concat: Any = None,
        c_crossattn: Any = None,
        control: Any = None,
        transformer_options: dict | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        options = transformer_options or {}
        if options.get(INVERSION_KEY):
            previous = kwargs.get("guidance")
            dtype = previous.dtype if isinstance(previous, torch.Tensor) else torch.float32
            kwargs["guidance"] = torch.full((x.shape[0],), self.guidance, dtype=dtype, device=x.device)
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)


def with_inversion_guidance(extra_args: dict, guidance: float) -> dict:
    """``extra_args`` for one inversion call: its ``model_options`` cloned with :class:`InversionGuidance`."""
    patched = comfy.model_patcher.create_model_options_clone(extra_args.get("model_options") or {})
    comfy.patcher_extension.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.APPLY_MODEL,
        INVERSION_GUIDANCE_KEY,
        InversionGuidance(guidance),
        patched,
        is_model_options=True,
    )
    return {**extra_args, "model_options": patched}


class GuiderScaleSwitch:
    """The engine's ``call_at_scale`` for ComfyUI: set the guider's cfg, call the model, restore the cfg.

    At scale 0 the call evaluates the negative batch alone (:func:`unconditional_only`): one branch, as
    ComfyUI's own cfg1 optimisation does at scale 1. With ``guidance`` (g₂, the engine's
    ``inversion_guidance``) the call's distilled guidance is g₂ (:class:`InversionGuidance`).
    """

    def __init__(self, guider: Any) -> None:
        self.guider = guider

    def __call__(
        self,
        model: Callable[..., torch.Tensor],
        x: torch.Tensor,
        sigma: torch.Tensor,
        extra_args: dict,
        scale: float,
        guidance: float | None = None,
    ) -> torch.Tensor:
        if scale == 0:
            extra_args = unconditional_only(self.guider, extra_args)
        if guidance is not None:
            extra_args = with_inversion_guidance(extra_args, guidance)
        with guider_scale(self.guider, scale):
            return model(x, sigma, **mark_inversion(extra_args))


def mark_inversion(extra_args: dict) -> dict:
    """A copy of ``extra_args`` whose ``model_options["transformer_options"]`` carry :data:`INVERSION_KEY`."""
    options = dict(extra_args.get("model_options", {}))
    options["transformer_options"] = {**options.get("transformer_options", {}), INVERSION_KEY: True}
    return {**extra_args, "model_options": options}


# --- guidance interval ---------------------------------------------------------------------------


def interval_from_percent(model_sampling: Any, start_percent: float, end_percent: float) -> GuidanceInterval:
    """ComfyUI's sampling percent (0 = first step, 1 = end) to ``[σ(end_percent), σ(start_percent)]``."""
    start = check_finite("start_percent", start_percent)
    end = check_finite("end_percent", end_percent)
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(
            "start_percent and end_percent must satisfy 0 <= start_percent <= end_percent <= 1, "
            f"got start_percent={start:g}, end_percent={end:g}"
        )
    return GuidanceInterval(model_sampling.percent_to_sigma(end), model_sampling.percent_to_sigma(start))


def call_in_interval(guider: Any, interval: GuidanceInterval, sigma: torch.Tensor, call: Callable[[], Any]) -> Any:
    """Run ``call`` with the guider's own scale inside the interval and at scale 1 outside it.

    At scale 1 ComfyUI evaluates the conditional batch only; a guider already at 1 is left alone.
    """
    scalable_guider(guider, "the guidance interval")
    if guider.cfg == 1.0 or interval.contains(float(sigma.max())):
        return call()
    with guider_scale(guider, 1.0):
        return call()


class GuidanceIntervalWrapper:
    """A ``predict_noise`` wrapper (ComfyUI's WrappersMP.PREDICT_NOISE): CFG only inside the interval."""

    def __init__(self, interval: GuidanceInterval) -> None:
        self.interval = interval

    def __call__(self, executor: Any, x: torch.Tensor, timestep: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return call_in_interval(
            executor.class_obj, self.interval, timestep, lambda: executor(x, timestep, *args, **kwargs)
        )


def patch_guidance_interval(model_patcher: Any, interval: GuidanceInterval) -> Any:
    """A clone of ``model_patcher`` whose guider applies CFG only inside ``interval`` (replaces an earlier one)."""
    patched = model_patcher.clone()
    wrapper_type = comfy.patcher_extension.WrappersMP.PREDICT_NOISE
    patched.remove_wrappers_with_key(wrapper_type, GUIDANCE_INTERVAL_KEY)
    patched.add_wrapper_with_key(wrapper_type, GUIDANCE_INTERVAL_KEY, GuidanceIntervalWrapper(interval))
    return patched


def patched_interval(model_options: dict) -> GuidanceInterval | None:
    """The interval of a Guidance Interval patch among the sampling run's wrappers, if any."""
    wrappers = comfy.patcher_extension.get_wrappers_with_key(
        comfy.patcher_extension.WrappersMP.PREDICT_NOISE, GUIDANCE_INTERVAL_KEY, model_options, is_model_options=True
    )
    return wrappers[-1].interval if wrappers else None


def intersect(first: GuidanceInterval | None, second: GuidanceInterval | None) -> GuidanceInterval | None:
    """Where both intervals guide; an empty intersection is ``[0, 0]`` (no step can zigzag there)."""
    if first is None or second is None:
        return first if second is None else second
    low, high = max(first.sigma_low, second.sigma_low), min(first.sigma_high, second.sigma_high)
    return GuidanceInterval(low, high) if low <= high else GuidanceInterval(0.0, 0.0)


class IntervalDenoiser:
    """ComfyUI's k-diffusion model with CFG only inside the Zigzag Sampler's own guidance interval."""

    def __init__(self, model: Any, interval: GuidanceInterval) -> None:
        self.model = model
        self.interval = interval

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return call_in_interval(self.model.inner_model, self.interval, sigma, lambda: self.model(x, sigma, **kwargs))


# --- samplers ------------------------------------------------------------------------------------


def resolve_zigzag_steps(
    steps: int, zigzag_steps: int | None = None, zigzag_fraction: float | None = None
) -> int | None:
    """λ from a count (checked by the engine) or a fraction f of the ``steps`` sampled: round(f·steps) ≤ steps − 1."""
    if zigzag_fraction is None:
        return zigzag_steps
    if zigzag_steps is not None:
        raise ValueError("give zigzag_steps (a count) or zigzag_fraction, not both")
    fraction = check_finite("zigzag_fraction", zigzag_fraction)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"zigzag_fraction must be in [0, 1] (share of the sampling steps), got {fraction:g}")
    return min(steps - 1, math.floor(fraction * steps + 0.5))


def is_flow_model(model: Any) -> bool:
    """True for ComfyUI's flow models (CONST model sampling: SD3, Flux, ModelSamplingSD3/Flux patches)."""
    guider = getattr(model, "inner_model", None)
    model_sampling = getattr(getattr(guider, "inner_model", None), "model_sampling", None)
    return isinstance(model_sampling, comfy.model_sampling.CONST)


def _check_rule_fits_model(rule: str, flow: bool) -> None:
    if flow and rule in FLOW_REFUSED_RULES:
        raise ValueError(
            f"rule {rule!r} reproduces the released code's VP (ᾱ) rescalings, which a flow model (CONST "
            "sampling) does not have; use rule 'ddim' (the paper's update, defined on flow), 'euler' or 'dpmpp_2m'"
        )


def has_distilled_guidance(model: Any) -> bool:
    """True if the diffusion model embeds a distilled ``guidance`` input (Flux dev; not schnell, SD3, UNets)."""
    guider = getattr(model, "inner_model", None)
    base = getattr(guider, "inner_model", None)
    unet_config = getattr(getattr(base, "model_config", None), "unet_config", None) or {}
    return unet_config.get("guidance_embed") is True


def distilled_guidance(model: Any) -> float | None:
    """g₁: the smallest distilled guidance of the positive conditioning as the model receives it (FluxGuidance,
    else the model's default, 3.5 on Flux); ``None`` on models without it or with it disabled."""
    if not has_distilled_guidance(model):
        return None
    values = []
    for cond in (getattr(model.inner_model, "conds", None) or {}).get("positive") or []:
        guidance = (cond.get("model_conds") or {}).get("guidance")
        if guidance is None:  # FluxDisableGuidance: the model sees no guidance
            return None
        values.append(float(guidance.cond.min()))
    return min(values) if values else None


def resolve_distilled_guidance(
    model: Any, inversion_guidance: float | None, inversion_scale: float | None
) -> tuple[float | None, float | None, float]:
    """``(g₁, g₂, γ₂)`` for a run: the defaults of guidance-distilled models, checked.

    ``inversion_guidance`` None: g₂ = :func:`~zigzag_kdiff.flow.default_inversion_guidance` on models with distilled
    guidance, none elsewhere; a value on a model without distilled guidance is a ``ValueError``.
    ``inversion_scale`` None: γ₂ = 1 on a guidance-distilled model with true CFG off (cfg 1: the inversion is
    one conditional row, the gap is g₁ − g₂), else 0 (the released code's unconditional inversion).
    """
    guider = model.inner_model
    g1 = distilled_guidance(model)
    if inversion_guidance is not None:
        value = check_finite("inversion_guidance", inversion_guidance)
        if g1 is None:
            why = "its guidance is disabled" if has_distilled_guidance(model) else "it has no guidance input"
            raise ValueError(
                f"inversion_guidance (g₂) sets the distilled guidance of inversion calls, but this model has "
                f"none ({why}; Flux dev has it, Flux schnell, SD3 and UNets do not): leave it at -1 (auto)"
            )
        if value < 0:
            raise ValueError(f"inversion_guidance (g₂) must be >= 0 (allowed: 0 <= g₂ <= g₁ = {g1:g}), got {value:g}")
        if value > g1:
            raise ValueError(
                f"inversion_guidance (g₂) must be <= the denoising distilled guidance g₁ = {g1:g} (the FluxGuidance "
                f"value of the positive conditioning) so the gap g₁ − g₂ is >= 0 (allowed: 0 <= g₂ <= {g1:g}), "
                f"got {value:g}"
            )
        g2 = value
    else:
        g2 = default_inversion_guidance(g1)
    if inversion_scale is None:
        inversion_scale = 1.0 if g1 is not None and guider.cfg == 1.0 else 0.0
    return g1, g2, inversion_scale


@torch.no_grad()
def sample_zigzag(
    model: Any,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callable[[dict], Any] | None = None,
    disable: bool | None = None,
    *,
    rule: str = "euler",
    inversion_scale: float | None = None,
    inversion_guidance: float | None = None,
    zigzag_steps: int | None = None,
    zigzag_fraction: float | None = None,
    zigzag_rounds: int = 1,
    guidance_interval: GuidanceInterval | tuple[float, float] | None = None,
) -> torch.Tensor:
    """Z-Sampling as a ComfyUI sampler function (``comfy.samplers.KSAMPLER`` signature).

    γ₁ is the guider's ``cfg``; inversion calls run at ``inversion_scale`` (γ₂) through
    :class:`GuiderScaleSwitch`. λ is ``zigzag_steps`` or ``zigzag_fraction`` of the steps sampled
    (default steps − 1); T_max is ``zigzag_rounds``. ``guidance_interval`` ``(sigma_low, sigma_high)``
    applies CFG only inside it; a Guidance Interval patch on the model does the same. Zigzag runs only
    on steps inside the interval(s), as the engine defines.

    On guidance-distilled models (Flux dev) the inversions run at distilled guidance ``inversion_guidance``
    (g₂, default min(1, g₁)) against g₁, the positive conditioning's FluxGuidance value; ``inversion_scale``
    defaults to 1 there at cfg 1 (one row per inversion), else to 0 (see :func:`resolve_distilled_guidance`).
    Flow models (CONST sampling) are sampled as flow latents.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {sorted(RULES)}, got {rule!r}")
    if len(sigmas) <= 1:  # nothing to sample (e.g. split sigmas), as ComfyUI's own samplers
        return x
    extra_args = {} if extra_args is None else extra_args
    zigzag_steps = resolve_zigzag_steps(len(sigmas) - 1, zigzag_steps, zigzag_fraction)
    own_interval = GuidanceInterval.parse(guidance_interval)
    interval = intersect(own_interval, patched_interval(extra_args.get("model_options", {})))
    denoiser = model if own_interval is None else IntervalDenoiser(model, own_interval)
    function, fixed = RULES[rule]
    flow = is_flow_model(model)
    _check_rule_fits_model(rule, flow)
    options: dict[str, Any] = dict(fixed, zigzag_steps=zigzag_steps, zigzag_rounds=zigzag_rounds, flow=flow)
    calls = engine.count_model_calls(sigmas, zigzag_steps, zigzag_rounds, interval)  # validates λ, T_max, sigmas
    if calls > len(sigmas) - 1:  # some step zigzags: inversion calls need the guider's scale switch
        scalable_guider(getattr(model, "inner_model", None), "zigzag sampling")
        g1, g2, inversion_scale = resolve_distilled_guidance(model, inversion_guidance, inversion_scale)
        guider = drivable_guider(model, inversion_scale)
        options.update(call_at_scale=GuiderScaleSwitch(guider), cond_scale=guider.cfg, guidance=g1)
        if g2 is not None:
            options.update(inversion_guidance=g2)
    options.update(inversion_scale=0.0 if inversion_scale is None else inversion_scale)
    return function(denoiser, x, sigmas, extra_args, callback, disable, guidance_interval=interval, **options)


def _dropdown_sampler(name: str, rule: str) -> Callable[..., torch.Tensor]:
    function = RULES[rule][0]

    @functools.wraps(function)  # marks it as wrapping the engine's sampler (register_k_diffusion checks)
    def sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        return sample_zigzag(model, x, sigmas, extra_args, callback, disable, rule=rule, **options)

    sampler.__doc__ = f"``{name}`` for ComfyUI's KSampler: :func:`sample_zigzag` with rule {rule!r}."
    sampler.__signature__ = inspect.signature(sampler, follow_wrapped=False)  # type: ignore[attr-defined]
    return sampler


sample_zigzag_euler = _dropdown_sampler("zigzag_euler", "euler")
sample_zigzag_ddim = _dropdown_sampler("zigzag_ddim", "ddim")
sample_zigzag_dpmpp_2m = _dropdown_sampler("zigzag_dpmpp_2m", "dpmpp_2m")


def register_samplers() -> list[str]:
    """Add ``zigzag_euler`` / ``zigzag_ddim`` / ``zigzag_dpmpp_2m`` to KSampler and KSamplerSelect (idempotent).

    Sets ``comfy.k_diffusion.sampling.sample_<name>`` (through ``register_k_diffusion``, which refuses a
    foreign attribute before setting anything), then appends the names to ``comfy.samplers.SAMPLER_NAMES``
    and ``comfy.samplers.KSampler.SAMPLERS`` (the same list in ComfyUI) where missing.
    """
    register_k_diffusion(
        comfy.k_diffusion.sampling,
        {
            "zigzag_euler": sample_zigzag_euler,
            "zigzag_ddim": sample_zigzag_ddim,
            "zigzag_dpmpp_2m": sample_zigzag_dpmpp_2m,
        },
    )
    dropdowns = {id(names): names for names in (comfy.samplers.SAMPLER_NAMES, comfy.samplers.KSampler.SAMPLERS)}
    for names in dropdowns.values():
        names.extend([name for name in SAMPLER_NAMES if name not in names])
    return list(SAMPLER_NAMES)
