"""Registration of the Zigzag entries in the host's sampler list, and what differs on the running host."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from .names import DEFAULT_SCHEDULERS, OPTION_KEY, RULES, SAMPLER_ALIASES, SAMPLER_NAMES, check_sampler_name
from .sampling import sample_in_host
from .settings import read_settings, total_model_calls


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

        options = {OPTION_KEY: rule}
        if DEFAULT_SCHEDULERS[rule] is not None:
            options["scheduler"] = DEFAULT_SCHEDULERS[rule]
        ours[name] = data_class(name, constructor, list(SAMPLER_ALIASES[rule]), options)

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


def host_notes(forge_family: bool, hide_samplers_invert: bool = False) -> list[str]:
    """What differs on this host (shown in the settings section and logged at start)."""
    if forge_family:
        notes = [
            "Forge family: inversions at γ₂ = 1 skip the unconditional pass; on Forge inversions at γ₂ = 0 skip "
            "the conditional pass (one branch each) unless a CFG hook (dynamic thresholding, SAG, ...) is active. "
            "In the hires pass γ₁ is the Hires CFG Scale. At CFG Scale 1 there is no negative prompt: the "
            "inversion then runs at the CFG scale (no guidance gap, no effect). NGMS (negative guidance minimum "
            "sigma) applies to the denoising calls only.",
            "Flow models (Flux, SD3.5, Chroma): sampled as flow latents. On Flux dev the Distilled CFG Scale is g₁ "
            "and setting zigzag_inversion_guidance is g₂ of the inversion calls (the distilled guidance gap); at "
            "CFG Scale 1 every call is one row. Smoothed Energy Guidance is refused on flow models.",
        ]
    else:
        notes = [
            "AUTOMATIC1111: every model call evaluates both CFG branches (the webui has no per-call switch to "
            "skip one), so an inversion costs as much as a denoising call. NGMS (negative guidance minimum "
            "sigma) applies to the denoising calls only.",
            "Flow models (SD3 medium in 1.10): sampled as flow latents with true CFG (γ₁ the CFG Scale, γ₂ the "
            "inversion scale); SD3 has no distilled guidance, so setting zigzag_inversion_guidance has no effect. "
            "Smoothed Energy Guidance is refused on flow models.",
        ]
    if hide_samplers_invert:
        notes.append(
            "'Hide samplers' is inverted (a list of shown samplers): add "
            + " and ".join(SAMPLER_NAMES.values())
            + " to it in Settings to see them in the dropdown."
        )
    return notes
