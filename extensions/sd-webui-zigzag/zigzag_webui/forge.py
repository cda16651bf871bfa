"""Forge-family hooks: the hires pass's own scale, an inversion at scale 0 on one branch, and the distilled
guidance (Flux dev's "Distilled CFG Scale") of the inversion calls."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch


def reads_hires_cfg(p: Any) -> bool:
    """Whether the host's denoiser takes its scale from ``p.hr_cfg`` now (Forge/reForge/Neo hires)."""
    return p is not None and bool(getattr(p, "is_hr_pass", False)) and hasattr(p, "hr_cfg")


FORGE_CFG_HOOKS = (
    "sampler_cfg_function",
    "sampler_pre_cfg_function",
    "sampler_post_cfg_function",
    "conditioning_modifiers",
)
"""Forge ``model_options`` entries that see the branches or the scale (dynamic thresholding, SAG, reference
and inpaint ControlNets, ...): while one is set, a call at scale 0 evaluates both branches as before."""

INVERSION_NEUTRAL = "zigzag_kdiff_inversion_neutral"
"""Attribute (true) of a Forge CFG hook that leaves Zigzag inversion calls unchanged (``seg_webui``'s post-CFG
function without inversion SEG): it does not keep an inversion at scale 0 from running one branch."""


def _forge_hooks_see_branches(options: dict) -> bool:
    """Whether a :data:`FORGE_CFG_HOOKS` function that is not :data:`INVERSION_NEUTRAL` is set."""
    for key in FORGE_CFG_HOOKS:
        value = options.get(key)
        hooks = value if isinstance(value, (list, tuple)) else [value] if value else []
        if any(not getattr(hook, INVERSION_NEUTRAL, False) for hook in hooks):
            return True
    return False


def forge_unet(host_model: Any) -> Any | None:
    """Forge's UNet patcher behind the host's ``CFGDenoiser`` (``inner_model.inner_model.forge_objects.unet``,
    read by Forge's ``sampling_function`` on every call), or ``None`` where there is none (A1111)."""
    try:
        unet = host_model.inner_model.inner_model.forge_objects.unet
    except Exception:  # A1111's denoiser has no forge_objects; any failure means: not Forge
        return None
    return unet if isinstance(getattr(unet, "model_options", None), dict) else None


def skip_conditional_branch(*args: Any) -> Any:
    """Forge ``sampler_pre_cfg_function``: with the unconditional batch present (scale ≠ 1), evaluate it alone.

    At scale 0 the CFG result ``u + (c − u)·0`` is ``u`` for any ``c``, so the conditional batch is
    not needed (Forge leaves ``c`` all zeros); the unconditional rows keep their own label, image
    conditioning and ControlNet. Called ComfyUI-style (one ``args`` dict after the branches ran,
    as reForge and Forge Classic do) it changes nothing.
    """
    if len(args) != 6:
        return args[0]["conds_out"]
    model, cond, uncond, x, timestep, model_options = args
    return model, ([] if uncond is not None else cond), uncond, x, timestep, model_options


@contextlib.contextmanager
def unconditional_branch_only(host_model: Any) -> Iterator[bool]:
    """For one call at scale 0: Forge evaluates the unconditional branch alone (one batch of rows, not two).

    Installs :func:`skip_conditional_branch` in a copy of the UNet patcher's ``model_options`` and puts
    the original dict back afterwards, also on errors and interrupts. Yields whether it did: not on
    hosts without Forge's patcher, nor while a :data:`FORGE_CFG_HOOKS` function (other than an
    :data:`INVERSION_NEUTRAL` one) or ``disable_cfg1_optimization`` is set (then both branches run, as before).
    """
    unet = forge_unet(host_model)
    options = None if unet is None else unet.model_options
    if options is None or options.get("disable_cfg1_optimization") or _forge_hooks_see_branches(options):
        yield False
        return
    pre_cfg = [*(options.get("sampler_pre_cfg_function") or []), skip_conditional_branch]
    unet.model_options = {**options, "sampler_pre_cfg_function": pre_cfg}
    try:
        yield True
    finally:
        unet.model_options = options


@contextlib.contextmanager
def hires_cfg(p: Any, scale: float) -> Iterator[None]:
    """Set ``p.hr_cfg = scale`` for one call of a Forge-family hires pass; restored afterwards."""
    saved = p.hr_cfg
    p.hr_cfg = scale
    try:
        yield
    finally:
        p.hr_cfg = saved


# --- distilled guidance (Flux dev) --------------------------------------------------------------------------

FORGE_DEFAULT_DISTILLED_GUIDANCE = 3.5
"""What Forge's Flux engine uses for a Distilled CFG Scale of 0 or None (``distilled_cfg_scale or 3.5``)."""

INVERSION_GUIDANCE_ATTR = "zigzag_kdiff_inversion_guidance"
"""Set on the host's ``CFGDenoiser`` to g₂ during a Zigzag inversion call with distilled guidance (else None)."""


def distilled_guidance(p: Any) -> float | None:
    """g₁, the distilled guidance of the current pass's denoising calls, or None if the model has none.

    Forge (``backend/diffusion_engine/flux.py``): a Flux dev engine sets ``use_distilled_cfg_scale``; its
    ``get_learned_conditioning`` puts ``cond['guidance'] = distilled_cfg_scale or 3.5`` into every prompt's
    conditioning, the negative prompt's too: ``p.distilled_cfg_scale`` ("Distilled CFG Scale") in the first pass,
    ``p.hr_distilled_cfg`` ("Hires Distilled CFG Scale") in the hires pass. Flux schnell, SD3.5 and the UNet
    models have none (A1111 neither).
    """
    if p is None or not getattr(getattr(p, "sd_model", None), "use_distilled_cfg_scale", False):
        return None
    value = getattr(p, "hr_distilled_cfg", None) if getattr(p, "is_hr_pass", False) else p.distilled_cfg_scale
    return float(value or FORGE_DEFAULT_DISTILLED_GUIDANCE)


def hires_distilled_guidance(p: Any) -> float | None:
    """g₁ of a coming hires pass (``p.hr_distilled_cfg``) on a model with distilled guidance, else None."""
    if not getattr(getattr(p, "sd_model", None), "use_distilled_cfg_scale", False) or not hasattr(
        p, "hr_distilled_cfg"
    ):
        return None
    return float(p.hr_distilled_cfg or FORGE_DEFAULT_DISTILLED_GUIDANCE)


def apply_inversion_guidance(params: Any) -> None:
    """``on_cfg_denoiser`` callback: during a Zigzag inversion call, run it at g₂.

    Forge rebuilds ``params.text_cond`` / ``params.text_uncond`` (``DictWithShape`` of ``crossattn``, ``vector``
    and, on Flux dev, ``guidance``: one value per row) for every call from the stored conditioning, and compiles
    its model conditions from them after the callbacks (``sampling_function``: ``guidance`` → the transformer's
    guidance embedding). Replacing ``guidance`` there changes that call only. Keyed on
    :data:`INVERSION_GUIDANCE_ATTR` of ``params.denoiser`` (the host's ``CFGDenoiser``); anything else — other
    calls, models without ``guidance`` (A1111) — is left untouched. Never raises (the hosts swallow a callback's
    exception and would run the call at g₁ silently).

    Not a ``UnetPatcher`` conditioning modifier: that would sit in ``model_options`` for every call of the pass,
    and a ``conditioning_modifiers`` entry counts as a CFG hook (:data:`FORGE_CFG_HOOKS`), so inversions at
    γ₂ = 0 would lose their one-branch evaluation.
    """
    guidance = getattr(getattr(params, "denoiser", None), INVERSION_GUIDANCE_ATTR, None)
    if guidance is None:
        return
    for conds in (params.text_cond, params.text_uncond):
        if isinstance(conds, Mapping) and isinstance(conds.get("guidance"), torch.Tensor):
            conds["guidance"] = torch.full_like(conds["guidance"], float(guidance))
