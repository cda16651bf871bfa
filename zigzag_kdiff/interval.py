"""Noise-level intervals and scale validation shared by CFG (:mod:`zigzag_kdiff.guidance`), SEG
(:mod:`zigzag_kdiff.seg`) and the samplers: the bottom of the import graph (torch only).

``guidance`` imports ``seg`` and both import this module, so imports go one way:
``sampling → guidance → seg → interval``. The names stay importable from :mod:`zigzag_kdiff.guidance`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

__all__ = ["GuidanceInterval", "check_finite", "effective_scale"]


def check_finite(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise a ``ValueError`` naming ``name`` if it is not finite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number (-inf < {name} < inf), got {value!r}")
    return number


@dataclass(frozen=True)
class GuidanceInterval:
    """The noise levels ``sigma_low ≤ σ ≤ sigma_high`` at which guidance is applied.

    The paper's interval is given in σ of the EDM parameterisation, which is k-diffusion's σ.
    ``sigma_high`` may be ``inf`` (guidance up to the noisiest step).
    """

    sigma_low: float
    sigma_high: float = math.inf
    parameter: ClassVar[str] = "guidance_interval"  # the name in error messages (SEG's interval: seg_interval)

    def __post_init__(self) -> None:
        low, high = float(self.sigma_low), float(self.sigma_high)
        if math.isnan(low) or math.isnan(high) or low < 0 or math.isinf(low):
            raise ValueError(
                f"{self.parameter} must be (sigma_low, sigma_high) with 0 <= sigma_low <= sigma_high"
                f" <= inf, got ({self.sigma_low!r}, {self.sigma_high!r})"
            )
        if low > high:
            raise ValueError(
                f"{self.parameter} must have sigma_low <= sigma_high (allowed: 0 <= sigma_low <= "
                f"sigma_high <= inf), got sigma_low={low} > sigma_high={high}"
            )
        object.__setattr__(self, "sigma_low", low)
        object.__setattr__(self, "sigma_high", high)

    @classmethod
    def parse(cls, value: GuidanceInterval | tuple[float, float] | None) -> GuidanceInterval | None:
        """Accept ``None``, an interval, or a ``(sigma_low, sigma_high)`` pair."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, GuidanceInterval):
            return cls(value.sigma_low, value.sigma_high)
        try:
            low, high = value
        except (TypeError, ValueError):
            raise ValueError(f"{cls.parameter} must be a (sigma_low, sigma_high) pair, got {value!r}") from None
        return cls(low, high)

    def contains(self, sigma: float | torch.Tensor) -> bool:
        sigma = float(sigma)
        return self.sigma_low <= sigma <= self.sigma_high


def effective_scale(scale: float, sigma: float | torch.Tensor, interval: GuidanceInterval | None) -> float:
    """The CFG scale in effect at ``sigma``: ``scale`` inside the interval (or with none), else 1."""
    if interval is None or interval.contains(sigma):
        return scale
    return 1.0
