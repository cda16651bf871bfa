"""Forge-family hooks: the hires pass's own scale, and an inversion at scale 0 on one branch."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


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
