"""The Zigzag dropdown entries: rules, names, aliases (no webui needed)."""

from __future__ import annotations

from collections.abc import Iterable

RULES = ("euler", "ddim", "dpmpp_2m")
"""The zigzag rules of :mod:`zigzag_kdiff.sampling` (``sample_zigzag_euler`` / ``_ddim`` / ``_dpmpp_2m``)."""

SAMPLER_NAMES = {"euler": "Zigzag Euler", "ddim": "Zigzag (DDIM)", "dpmpp_2m": "Zigzag DPM++ 2M"}
"""Dropdown names. None may end in a scheduler label ("DDIM", "Karras", "Uniform", ...): the webui
reads "<sampler> <scheduler>" from such a name (``get_sampler_and_scheduler``)."""

SAMPLER_ALIASES = {"euler": ["zigzag_euler"], "ddim": ["zigzag_ddim"], "dpmpp_2m": ["zigzag_dpmpp_2m"]}
OPTION_KEY = "zigzag_rule"
"""Key in ``SamplerData.options`` that marks an entry as ours (and names its rule)."""

DEFAULT_SCHEDULERS = {"euler": None, "ddim": "ddim", "dpmpp_2m": "karras"}
"""The Schedule type each entry uses at "Automatic": that of the sampler it extends, as ``SamplerData.options
['scheduler']`` (read by ``KDiffusionSampler.get_sigmas`` at "Automatic", A1111 1.10 and Forge). Euler: none, the
model's own sigmas; DDIM: the "DDIM" Schedule type, the DDIM sampler's timesteps (1000 // T apart); DPM++ 2M:
Karras."""


def our_sampler_labels() -> set[str]:
    """Every dropdown name and alias of the zigzag entries."""
    return {*SAMPLER_NAMES.values(), *(alias for aliases in SAMPLER_ALIASES.values() for alias in aliases)}


def check_sampler_name(name: str, scheduler_names: Iterable[str]) -> None:
    """``ValueError`` if the webui would read ``name`` as "<sampler> <scheduler>"."""
    for scheduler in scheduler_names:
        if scheduler and name.endswith(" " + scheduler):
            raise ValueError(f"sampler name {name!r} ends in the scheduler label {scheduler!r}")
