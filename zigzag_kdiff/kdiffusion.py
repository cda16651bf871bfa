"""Make the zigzag samplers available as ``k_diffusion.sampling.sample_zigzag_*``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from types import ModuleType

from .sampling import sample_zigzag_ddim, sample_zigzag_dpmpp_2m, sample_zigzag_euler

SAMPLERS: dict[str, Callable[..., object]] = {
    "zigzag_euler": sample_zigzag_euler,
    "zigzag_ddim": sample_zigzag_ddim,
    "zigzag_dpmpp_2m": sample_zigzag_dpmpp_2m,
}
"""Sampler names (k-diffusion style, without the ``sample_`` prefix) and their functions."""


def _is_ours(function: object) -> bool:
    """A zigzag_kdiff sampler, or a host adapter that wraps one (``functools.wraps`` sets ``__wrapped__``)."""
    unwrapped = inspect.unwrap(function) if callable(function) else function
    return getattr(unwrapped, "__module__", "").startswith("zigzag_kdiff")


def register_k_diffusion(
    module: ModuleType | None = None,
    samplers: Mapping[str, Callable[..., object]] | None = None,
) -> list[str]:
    """Set ``sample_zigzag_euler``, ``sample_zigzag_ddim`` and ``sample_zigzag_dpmpp_2m`` on k-diffusion's
    sampling module.

    Idempotent: calling it again (or after a reload of this package) replaces our own entries.
    ``module`` defaults to ``k_diffusion.sampling``; hosts pass their vendored copy (Forge's
    ``k_diffusion.sampling``, ComfyUI's ``comfy.k_diffusion.sampling``). ``samplers`` (default
    :data:`SAMPLERS`) maps names of :data:`SAMPLERS` to the functions to set: a host whose denoiser
    needs its own ``call_at_scale`` registers adapters that wrap ours with ``functools.wraps``.
    An attribute of the same name that is neither ours nor wraps ours is left alone and raises
    ``ValueError`` before anything is set. Returns the attribute names set.
    """
    if module is None:
        import k_diffusion.sampling as module
    samplers = SAMPLERS if samplers is None else dict(samplers)
    unknown = sorted(set(samplers) - set(SAMPLERS))
    if unknown:
        raise ValueError(f"samplers must be named from {sorted(SAMPLERS)}, got {unknown}")
    names = [f"sample_{name}" for name in samplers]
    for attr, function in zip(names, samplers.values()):
        if not _is_ours(function):
            raise ValueError(f"samplers[{attr[len('sample_') :]!r}] must be a zigzag_kdiff sampler or wrap one")
        existing = getattr(module, attr, None)
        if existing is not None and not _is_ours(existing):
            raise ValueError(
                f"{module.__name__}.{attr} already exists and belongs to {getattr(existing, '__module__', None)!r}; "
                "refusing to replace it"
            )
    for attr, function in zip(names, samplers.values()):
        setattr(module, attr, function)
    return names
