"""The webui side of the Zigzag samplers, importable without a webui (tested in ``tests/test_a1111.py``).

``scripts/zigzag.py`` is the glue that hands the host's objects (``modules.sd_samplers``,
``SamplerData``, ``KDiffusionSampler``, ``shared.opts``, the X/Y/Z grid module) to the functions
here. All sampling is :mod:`zigzag_kdiff`'s; this module only turns webui settings and ``p`` into
its arguments, does the host's bookkeeping and registers the entries.

Paper symbols: γ₁ the CFG scale of denoising calls (the webui's CFG Scale, or Hires CFG Scale in a
Forge-family hires pass), γ₂ the inversion scale, λ the zigzag steps, T_max the rounds.

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
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from zigzag_kdiff import SAMPLERS, count_model_calls
from zigzag_kdiff.guidance import GuidanceInterval, effective_scale

logger = logging.getLogger("sd-webui-zigzag")

RULES = ("euler", "ddim", "dpmpp_2m")
"""The zigzag rules of :mod:`zigzag_kdiff.sampling` (``sample_zigzag_euler`` / ``_ddim`` / ``_dpmpp_2m``)."""

SAMPLER_NAMES = {"euler": "Zigzag Euler", "ddim": "Zigzag (DDIM)", "dpmpp_2m": "Zigzag DPM++ 2M"}
"""Dropdown names. None may end in a scheduler label ("DDIM", "Karras", "Uniform", ...): the webui
reads "<sampler> <scheduler>" from such a name (``get_sampler_and_scheduler``)."""

SAMPLER_ALIASES = {"euler": ["zigzag_euler"], "ddim": ["zigzag_ddim"], "dpmpp_2m": ["zigzag_dpmpp_2m"]}
OPTION_KEY = "zigzag_rule"
"""Key in ``SamplerData.options`` that marks an entry as ours (and names its rule)."""

DDIM_UPDATES = ("paper", "released")

INVERSION_ATTR = "zigzag_kdiff_inversion"
"""Set on the host's ``CFGDenoiser`` during Zigzag inversion calls (read by ``seg_webui``)."""


# --- settings -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One entry of the "Zigzag sampler" settings section (``shared.opts`` key, default, labels)."""

    key: str
    default: Any
    label: str
    infotext: str
    kind: str  # "slider" or "radio": the glue picks the gradio component
    component_args: Mapping[str, Any]
    info: str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "zigzag_inversion_scale",
        0.0,
        "Inversion scale γ₂",
        "Zigzag inversion scale",
        "slider",
        {"minimum": 0.0, "maximum": 30.0, "step": 0.1},
        "CFG scale of the inversion calls; 0 = unconditional (paper default); must not exceed the CFG Scale γ₁",
    ),
    Setting(
        "zigzag_steps_fraction",
        1.0,
        "Zigzag steps λ, as a fraction of the sampling steps",
        "Zigzag steps fraction",
        "slider",
        {"minimum": 0.0, "maximum": 1.0, "step": 0.05},
        "λ = round(fraction × steps), at most steps − 1; 1 = every step but the last (paper default); "
        "0 = no zigzag (plain Euler; plain DPM++ 2M for Zigzag DPM++ 2M)",
    ),
    Setting(
        "zigzag_rounds",
        1,
        "Zigzag rounds T_max per step",
        "Zigzag rounds",
        "slider",
        {"minimum": 0, "maximum": 5, "step": 1},
        "each round costs two model calls per zigzag step",
    ),
    Setting(
        "zigzag_guidance_sigma_low",
        0.0,
        "Guidance interval: lowest σ with CFG",
        "Zigzag guidance sigma low",
        "slider",
        {"minimum": 0.0, "maximum": 20.0, "step": 0.01},
        "CFG (and zigzag) only for σ in [low, high]; outside it the scale is 1; 0 and 0 = no interval",
    ),
    Setting(
        "zigzag_guidance_sigma_high",
        0.0,
        "Guidance interval: highest σ with CFG (0 = no upper limit)",
        "Zigzag guidance sigma high",
        "slider",
        {"minimum": 0.0, "maximum": 20.0, "step": 0.01},
        "SD 1.x/SDXL noise levels run from about 14.6 down to 0.03",
    ),
    Setting(
        "zigzag_ddim_inversion_update",
        "paper",
        "Zigzag (DDIM): inversion update",
        "Zigzag DDIM update",
        "radio",
        {"choices": list(DDIM_UPDATES)},
        "paper = eq. 4; released = the released code's diffusers-0.22.3 update",
    ),
)
SETTINGS_BY_KEY = {s.key: s for s in SETTINGS}
SETTINGS_SECTION = ("zigzag", "Zigzag sampler")


@dataclass(frozen=True)
class ZigzagSettings:
    """Validated settings: γ₂, λ as a fraction of the steps, T_max, guidance interval, DDIM update."""

    inversion_scale: float = 0.0
    steps_fraction: float = 1.0
    rounds: int = 1
    sigma_low: float = 0.0
    sigma_high: float = 0.0  # 0 = no upper limit
    ddim_update: str = "paper"

    @property
    def guidance_interval(self) -> tuple[float, float] | None:
        """``(σ_low, σ_high)`` for the engine, or ``None`` when the interval covers every σ."""
        if self.sigma_low == 0 and self.sigma_high == 0:
            return None
        return (self.sigma_low, self.sigma_high if self.sigma_high > 0 else math.inf)


_FIELDS = {
    "zigzag_inversion_scale": "inversion_scale",
    "zigzag_steps_fraction": "steps_fraction",
    "zigzag_rounds": "rounds",
    "zigzag_guidance_sigma_low": "sigma_low",
    "zigzag_guidance_sigma_high": "sigma_high",
    "zigzag_ddim_inversion_update": "ddim_update",
}


def _number(key: str, value: Any, allowed: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise ValueError(f"setting {key} must be a finite number ({allowed}), got {value!r}")
    return number


def validate_setting(key: str, value: Any) -> Any:
    """Return ``value`` converted for setting ``key``; ``ValueError`` naming the key and the range.

    Accepts what the UI, the X/Y/Z grid, infotext pasting and the HTTP API deliver (numbers or
    numeric strings).
    """
    if key == "zigzag_inversion_scale":
        return _number(key, value, "any finite CFG scale not above the CFG Scale")
    if key == "zigzag_steps_fraction":
        number = _number(key, value, "0 <= fraction <= 1")
        if not 0 <= number <= 1:
            raise ValueError(f"setting {key} must be in [0, 1] (a fraction of the steps), got {value!r}")
        return number
    if key == "zigzag_rounds":
        number = _number(key, value, "an integer >= 0")
        if number < 0 or number != int(number):
            raise ValueError(f"setting {key} (T_max) must be an integer >= 0, got {value!r}")
        return int(number)
    if key in ("zigzag_guidance_sigma_low", "zigzag_guidance_sigma_high"):
        number = _number(key, value, "σ >= 0")
        if number < 0:
            raise ValueError(f"setting {key} must be a noise level σ >= 0 (0 = no limit for high), got {value!r}")
        return number
    if key == "zigzag_ddim_inversion_update":
        if value not in DDIM_UPDATES:
            raise ValueError(f"setting {key} must be one of {list(DDIM_UPDATES)}, got {value!r}")
        return value
    raise KeyError(f"not a zigzag setting: {key!r}")


def read_settings(opts: Any) -> ZigzagSettings:
    """Validated :class:`ZigzagSettings` from ``shared.opts`` (or any object with those attributes).

    Missing attributes take their defaults (settings not registered yet, e.g. before the UI).
    """
    values = {_FIELDS[s.key]: validate_setting(s.key, getattr(opts, s.key, s.default)) for s in SETTINGS}
    settings = ZigzagSettings(**values)
    if settings.sigma_high > 0 and settings.sigma_low > settings.sigma_high:
        raise ValueError(
            "settings zigzag_guidance_sigma_low <= zigzag_guidance_sigma_high required (high 0 = no upper "
            f"limit), got low={settings.sigma_low:g} > high={settings.sigma_high:g}"
        )
    return settings


# --- bookkeeping ----------------------------------------------------------------------------------


def zigzag_steps_for(steps: int, fraction: float) -> int:
    """λ for ``steps`` sampling steps: ``round(fraction·steps)``, at most ``steps − 1`` (and >= 0)."""
    return max(0, min(steps - 1, math.floor(fraction * steps + 0.5)))


def total_model_calls(steps: int, settings: ZigzagSettings) -> int:
    """What ``SamplerData.total_steps(steps)`` reports: the denoiser calls of ``steps`` steps.

    ``T + 2·λ·T_max`` (:func:`zigzag_kdiff.count_model_calls` on any schedule that reaches σ = 0 only
    at its end). With a guidance interval only the steps inside it zigzag, which needs the sigmas;
    this is then the upper bound and the sampler corrects ``model.total_steps`` once it has them.
    """
    if steps < 1:
        return steps
    return steps + 2 * settings.rounds * zigzag_steps_for(steps, settings.steps_fraction)


def infotext_params(settings: ZigzagSettings) -> dict[str, Any]:
    """Infotext entries (``p.extra_generation_params``) for every non-default setting."""
    params = {}
    for setting in SETTINGS:
        value = getattr(settings, _FIELDS[setting.key])
        if value != setting.default:
            params[setting.infotext] = value
    return params


def fill_infotext_defaults(params: dict[str, Any], sampler_names: Iterable[str]) -> None:
    """``on_infotext_pasted`` callback body: an infotext made with a zigzag sampler that lacks a
    zigzag entry had that setting at its default, so paste the default (the webui then overrides
    the current setting only if it differs)."""
    names = set(sampler_names)
    if params.get("Sampler") not in names and params.get("Hires sampler") not in names:
        return
    for setting in SETTINGS:
        params.setdefault(setting.infotext, str(setting.default))


# --- the sampler function ---------------------------------------------------------------------------


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

    def call_at_scale(self, model: Any, x: torch.Tensor, sigma: torch.Tensor, extra_args: dict, scale: float):
        """An inversion call at γ₂. NGMS is kept out of it (``s_min_uncond`` 0 for this call): the webui
        would otherwise run some inversions on the conditional branch alone, i.e. at scale 1. SEG
        (``seg_webui``) runs inversion calls without SEG: the host model is marked for this call."""
        if extra_args.get("s_min_uncond"):
            extra_args = {**extra_args, "s_min_uncond": 0.0}
        setattr(self.host_model, INVERSION_ATTR, True)
        try:
            return call_host_at_scale(self.host_model, x, sigma, extra_args, scale)
        finally:
            setattr(self.host_model, INVERSION_ATTR, False)


def is_flow_schedule(host_model: Any) -> bool:
    """Whether the model's own noise levels stay within [0, 1] (rectified flow: Flux, SD3, ...)."""
    try:
        sigmas = host_model.inner_model.sigmas
    except Exception:  # not a k-diffusion style wrapper: assume a VP model
        return False
    return isinstance(sigmas, torch.Tensor) and sigmas.numel() > 0 and float(sigmas.max()) <= 1.0 + 1e-6


NOTE_INFOTEXT = "Zigzag note"
"""Infotext key of the notes' short markers (the HTTP API's ``info`` carries the infotext, not the comments)."""


def record_infotext(p: Any, settings: ZigzagSettings) -> None:
    """Write the full current state of our infotext entries into ``p.extra_generation_params``.

    The X/Y/Z grid makes each cell with a shallow ``copy(p)``, so all cells share one dict: set every
    non-default setting, remove those back at their default, and drop the note markers of another
    generation (a cell is a new ``p`` object; the hires pass and batch iterations reuse the same ``p``
    and keep the markers of its first pass).
    """
    params = getattr(p, "extra_generation_params", None)
    if not isinstance(params, dict):
        return
    current = infotext_params(settings)
    for setting in SETTINGS:
        if setting.infotext in current:
            params[setting.infotext] = current[setting.infotext]
        else:
            params.pop(setting.infotext, None)
    if getattr(p, NOTES_OWNER, None) != id(p):
        params.pop(NOTE_INFOTEXT, None)
        setattr(p, NOTES_OWNER, id(p))


def forget_infotext(p: Any) -> None:
    """At the start of every generation, whatever its sampler (the extension's ``process`` script hook):
    drop our entries and note markers that another X/Y/Z cell left in the shared dict (a zigzag sampler
    writes its own again, :func:`record_infotext`)."""
    params = getattr(p, "extra_generation_params", None)
    if not isinstance(params, dict):
        return
    for setting in SETTINGS:
        params.pop(setting.infotext, None)
    params.pop(NOTE_INFOTEXT, None)
    setattr(p, NOTES_OWNER, id(p))


NOTES_OWNER = "zigzag_notes_of"
"""Attribute of ``p``: ``id(p)`` of the generation whose markers ``p.extra_generation_params`` holds
(a shallow copy inherits another object's id, so its first zigzag call starts fresh)."""


def notify(p: Any, message: str, marker: str) -> None:
    """Tell the user once per generation: a comment under the image (``p.comment``), the log, and a
    short stable ``marker`` in the infotext (``Zigzag note: <marker>; <marker>``)."""
    params = getattr(p, "extra_generation_params", None)
    if isinstance(params, dict):
        markers = [m for m in str(params.get(NOTE_INFOTEXT) or "").split("; ") if m]
        if marker not in markers:
            params[NOTE_INFOTEXT] = "; ".join([*markers, marker])
    text = f"Zigzag: {message}"
    comments = getattr(p, "comments", None)
    if isinstance(comments, dict) and text in comments:
        return
    logger.warning(text)
    if hasattr(p, "comment"):
        p.comment(text)


def our_sampler_labels() -> set[str]:
    """Every dropdown name and alias of the zigzag entries."""
    return {*SAMPLER_NAMES.values(), *(alias for aliases in SAMPLER_ALIASES.values() for alias in aliases)}


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
    if zigzags and rule == "ddim" and is_flow_schedule(model):
        raise ValueError(
            f"{SAMPLER_NAMES['ddim']} assumes a variance-preserving (ε or v) model; this model's noise levels "
            f"stay in [0, 1] (rectified flow): use {SAMPLER_NAMES['euler']} or {SAMPLER_NAMES['dpmpp_2m']}"
        )
    check_hires_scale(p, settings)
    record_infotext(p, settings)

    if no_uncond:
        # Forge/Neo at CFG 1: there is no unconditional prediction to invert with.
        inversion_scale = cond_scale
        notify(
            p,
            f"{scale_label} {cond_scale:g} runs without a negative prompt, so the inversion uses the same "
            "scale: guidance gap 0, zigzag cannot strengthen the prompt (raise the CFG scale)",
            f"gap 0 ({scale_label} {cond_scale:g})",
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
    }
    if rule == "ddim":
        options["inversion_update"] = settings.ddim_update
    return SAMPLERS[f"zigzag_{rule}"](guided, x, sigmas, extra_args, callback, disable, **options)


def make_sampler_function(rule: str, get_opts: Callable[[], Any]) -> Callable[..., torch.Tensor]:
    """The k-diffusion-signature function registered for ``rule``; reads the settings per call.

    The webui inspects its parameters: ``sigmas`` gets the schedule; it must not declare ``n``,
    ``sigma_min``, ``sigma_max`` or ``eta`` (those would be filled with other values).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {list(RULES)}, got {rule!r}")

    def sample_zigzag(model, x, sigmas, extra_args=None, callback=None, disable=None):
        return sample_in_host(rule, read_settings(get_opts()), model, x, sigmas, extra_args, callback, disable)

    sample_zigzag.__name__ = sample_zigzag.__qualname__ = f"sample_zigzag_{rule}_webui"
    sample_zigzag.__doc__ = f"{SAMPLER_NAMES[rule]}: zigzag_kdiff.sample_zigzag_{rule} with the webui settings."
    return sample_zigzag


# --- registration ---------------------------------------------------------------------------------


def check_sampler_name(name: str, scheduler_names: Iterable[str]) -> None:
    """``ValueError`` if the webui would read ``name`` as "<sampler> <scheduler>"."""
    for scheduler in scheduler_names:
        if scheduler and name.endswith(" " + scheduler):
            raise ValueError(f"sampler name {name!r} ends in the scheduler label {scheduler!r}")


def sampler_data_class(base: type, get_opts: Callable[[], Any]) -> type:
    """A subclass of the host's ``SamplerData`` whose ``total_steps(steps)`` is the true call count."""

    class ZigzagSamplerData(base):
        __slots__ = ()

        def total_steps(self, steps: int) -> int:
            return total_model_calls(steps, read_settings(get_opts()))

    return ZigzagSamplerData


def register_samplers(
    sd_samplers: Any,
    sampler_data_base: type,
    kdiffusion_sampler: Callable[[Any, Any], Any],
    get_opts: Callable[[], Any],
    scheduler_names: Iterable[str] = (),
) -> list[str]:
    """Add the zigzag entries to the host's sampler registry (``modules.sd_samplers``) in place.

    ``sd_samplers`` needs ``all_samplers`` (list), ``all_samplers_map`` (dict) and ``set_samplers()``;
    ``kdiffusion_sampler(func, model)`` is the host's ``KDiffusionSampler``. Idempotent (Reload UI
    imports the script again: our old entries are replaced where they stand). Everything is checked
    before anything changes: a name that the scheduler parser would split, or a name or alias that
    belongs to another sampler, raises ``ValueError`` and leaves the registry untouched.
    """
    scheduler_names = list(scheduler_names)
    data_class = sampler_data_class(sampler_data_base, get_opts)
    ours = {}
    taken = {}
    for entry in sd_samplers.all_samplers:
        if OPTION_KEY not in getattr(entry, "options", {}):
            for label in (entry.name, *entry.aliases):
                taken[label.lower()] = entry.name
    for rule in RULES:
        name = SAMPLER_NAMES[rule]
        check_sampler_name(name, scheduler_names)
        for label in (name, *SAMPLER_ALIASES[rule]):
            if label.lower() in taken:
                raise ValueError(f"sampler name or alias {label!r} is already used by {taken[label.lower()]!r}")
        func = make_sampler_function(rule, get_opts)

        def constructor(model, func=func):
            return kdiffusion_sampler(func, model)

        ours[name] = data_class(name, constructor, list(SAMPLER_ALIASES[rule]), {OPTION_KEY: rule})

    samplers = sd_samplers.all_samplers
    for name, data in ours.items():
        index = next((i for i, entry in enumerate(samplers) if entry.name == name), None)
        if index is None:
            samplers.append(data)
        else:
            samplers[index] = data
        sd_samplers.all_samplers_map[name] = data
    sd_samplers.set_samplers()
    cache_clear = getattr(getattr(sd_samplers, "get_sampler_and_scheduler", None), "cache_clear", None)
    if cache_clear is not None:
        cache_clear()
    return list(ours)


def override_setter(key: str) -> Callable[[Any, Any, Any], None]:
    """X/Y/Z grid ``apply``: put the axis value into ``p.override_settings`` (applied to opts)."""

    def apply(p: Any, x: Any, xs: Any) -> None:
        p.override_settings[key] = validate_setting(key, x)

    return apply


XYZ_AXES = (
    ("Zigzag inversion scale", float, "zigzag_inversion_scale", None),
    ("Zigzag steps fraction", float, "zigzag_steps_fraction", None),
    ("Zigzag rounds", int, "zigzag_rounds", None),
    ("Zigzag guidance sigma low", float, "zigzag_guidance_sigma_low", None),
    ("Zigzag guidance sigma high", float, "zigzag_guidance_sigma_high", None),
    ("Zigzag DDIM update", str, "zigzag_ddim_inversion_update", lambda: list(DDIM_UPDATES)),
)


def add_xyz_axes(xyz_module: Any) -> list[str]:
    """Add (or replace) our axes in the X/Y/Z grid script's ``axis_options`` (uses its ``AxisOption``)."""
    axis_option = xyz_module.AxisOption
    labels = []
    for label, kind, key, choices in XYZ_AXES:

        def confirm(p, xs, key=key):
            for value in xs:
                validate_setting(key, value)

        axis = axis_option(label, kind, override_setter(key), confirm=confirm, choices=choices)
        options = xyz_module.axis_options
        index = next((i for i, option in enumerate(options) if option.label == label), None)
        if index is None:
            options.append(axis)
        else:
            options[index] = axis
        labels.append(label)
    return labels


def find_xyz_module(scripts_data: Iterable[Any]) -> Any | None:
    """The loaded X/Y/Z grid script module among ``modules.scripts.scripts_data`` (module name
    ``xyz_grid.py`` on every host, also Forge Classic's built-in extension)."""
    for data in scripts_data:
        if getattr(data.script_class, "__module__", None) == "xyz_grid.py":
            return data.module
    return None


def host_notes(forge_family: bool, hide_samplers_invert: bool = False) -> list[str]:
    """What differs on this host (shown in the settings section and logged at start)."""
    if forge_family:
        notes = [
            "Forge family: inversions at γ₂ = 1 skip the unconditional pass; on Forge inversions at γ₂ = 0 skip "
            "the conditional pass (one branch each) unless a CFG hook (dynamic thresholding, SAG, ...) is active. "
            "In the hires pass γ₁ is the Hires CFG Scale. At CFG Scale 1 there is no negative prompt: the "
            "inversion then runs at the CFG scale (no guidance gap, no effect). NGMS (negative guidance minimum "
            "sigma) applies to the denoising calls only.",
        ]
    else:
        notes = [
            "AUTOMATIC1111: every model call evaluates both CFG branches (the webui has no per-call switch to "
            "skip one), so an inversion costs as much as a denoising call. NGMS (negative guidance minimum "
            "sigma) applies to the denoising calls only.",
        ]
    if hide_samplers_invert:
        notes.append(
            "'Hide samplers' is inverted (a list of shown samplers): add "
            + " and ".join(SAMPLER_NAMES.values())
            + " to it in Settings to see them in the dropdown."
        )
    return notes
