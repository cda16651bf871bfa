"""The X/Y/Z grid axes of the Zigzag settings (values go to ``p.override_settings``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .settings import DDIM_UPDATES, validate_setting


def override_setter(key: str) -> Callable[[Any, Any, Any], None]:
    """X/Y/Z grid ``apply``: put the axis value into ``p.override_settings`` (applied to opts)."""

    def apply(p: Any, x: Any, xs: Any) -> None:
        p.override_settings[key] = validate_setting(key, x)

    return apply


XYZ_AXES = (
    ("Zigzag inversion scale", float, "zigzag_inversion_scale", None),
    ("Zigzag inversion guidance", float, "zigzag_inversion_guidance", None),
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
