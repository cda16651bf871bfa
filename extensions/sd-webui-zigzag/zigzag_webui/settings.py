"""The "Zigzag sampler" settings section: keys, defaults, validation, and the model calls they imply."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

DDIM_UPDATES = ("paper", "released")


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
        "zigzag_inversion_guidance",
        1.0,
        "Inversion distilled guidance g₂ (models with distilled guidance: Forge's Flux dev)",
        "Zigzag inversion guidance",
        "slider",
        {"minimum": 0.0, "maximum": 30.0, "step": 0.1},
        "the Distilled CFG Scale of the inversion calls; the Distilled CFG Scale is g₁ and must not be lower; "
        "1 = the plain conditional prediction, the weakest guidance such a model is run at (default); "
        "other models ignore it",
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
    inversion_guidance: float = 1.0
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
    "zigzag_inversion_guidance": "inversion_guidance",
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
    if key == "zigzag_inversion_guidance":
        number = _number(key, value, "a distilled guidance >= 0, not above the Distilled CFG Scale")
        if number < 0:
            raise ValueError(f"setting {key} (g₂) must be a distilled guidance >= 0, got {value!r}")
        return number
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


def refuse_invalid(key: str, get_opts: Callable[[], Any]) -> Callable[[], None]:
    """``OptionInfo(onchange=...)`` of setting ``key``: refuses an invalid value when it is set.

    The hosts' ``Options.set`` (Settings → Apply, ``POST /sdapi/v1/options``) stores the new value, then calls
    ``onchange()``; when it raises, they print the error, put the old value back and do not save it (the HTTP
    response does not say so). ``override_settings`` skip ``onchange``: a bad value there fails that request
    with the ``ValueError`` of :func:`read_settings`, before any model call.
    """

    def onchange() -> None:
        validate_setting(key, getattr(get_opts(), key))

    return onchange


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
