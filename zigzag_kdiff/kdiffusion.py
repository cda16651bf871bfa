"""Make the zigzag samplers available as ``k_diffusion.sampling.sample_zigzag_*``."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from .sampling import sample_zigzag_ddim, sample_zigzag_euler

SAMPLERS: dict[str, Callable[..., object]] = {
    "zigzag_euler": sample_zigzag_euler,
    "zigzag_ddim": sample_zigzag_ddim,
}
"""Sampler names (k-diffusion style, without the ``sample_`` prefix) and their functions."""


def register_k_diffusion(module: ModuleType | None = None) -> list[str]:
    """Set ``sample_zigzag_euler`` and ``sample_zigzag_ddim`` on k-diffusion's sampling module.

    Idempotent: calling it again (or after a reload of this package) replaces our own entries.
    ``module`` defaults to ``k_diffusion.sampling``; hosts pass their vendored copy (Forge's
    ``k_diffusion.sampling``, ComfyUI's ``comfy.k_diffusion.sampling``). An attribute of the same name
    that belongs to another package is left alone and raises ``ValueError`` before anything is set.
    Returns the attribute names set.
    """
    if module is None:
        import k_diffusion.sampling as module
    names = [f"sample_{name}" for name in SAMPLERS]
    for attr in names:
        existing = getattr(module, attr, None)
        if existing is not None and not getattr(existing, "__module__", "").startswith("zigzag_kdiff"):
            raise ValueError(
                f"{module.__name__}.{attr} already exists and belongs to {existing.__module__!r}; "
                "refusing to replace it"
            )
    for attr, function in zip(names, SAMPLERS.values()):
        setattr(module, attr, function)
    return names
