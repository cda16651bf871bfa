"""Webui glue: registers "Zigzag Euler", "Zigzag (DDIM)" and "Zigzag DPM++ 2M", their settings, infotext and X/Y/Z axes,
and the ``on_cfg_denoiser`` callback that gives inversion calls their distilled guidance g₂ (Forge's Flux dev).

Runs when the webui imports the extension's scripts (before the UI is built; again on Reload UI).
All logic is in the ``zigzag_webui`` package (next to this folder) and the sampling in ``zigzag_kdiff``.
"""

import importlib.util
import os
import sys

from modules import script_callbacks, scripts, sd_samplers, sd_samplers_common, sd_samplers_kdiffusion, shared

EXTENSION_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def _load_local(name):
    """Import a module or package from the extension folder by path (the webui does not keep it on sys.path)."""
    path = os.path.join(EXTENSION_DIR, name)
    if os.path.isdir(path):  # a package: its modules import each other relatively; Reload UI imports them afresh
        for key in [key for key in sys.modules if key.startswith(f"{name}.")]:
            del sys.modules[key]
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(path, "__init__.py"), submodule_search_locations=[path]
        )
    else:
        spec = importlib.util.spec_from_file_location(name, f"{path}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_load_local("zigzag_checkout").import_library(EXTENSION_DIR)  # installed zigzag_kdiff, else the checkout's; logs which

_load_local("zigzag_webui")
from zigzag_webui import forge, infotext, names, registry, settings, xyz  # noqa: E402


def _opts():
    return shared.opts


def _scheduler_names():
    try:
        from modules import sd_schedulers
    except ImportError:  # hosts without the "Schedule type" dropdown
        return []
    return [n for s in sd_schedulers.schedulers for n in (s.label, s.name, *(s.aliases or []))]


def _host_notes():
    forge_family = importlib.util.find_spec("modules_forge") is not None
    hidden = set(getattr(shared.opts, "hide_samplers", []) or [])
    invert = bool(getattr(shared.opts, "hide_samplers_invert", False))
    return registry.host_notes(forge_family, invert and not set(names.SAMPLER_NAMES.values()) <= hidden)


try:
    REGISTERED = registry.register_samplers(
        sd_samplers, sd_samplers_common.SamplerData, sd_samplers_kdiffusion.KDiffusionSampler, _opts, _scheduler_names()
    )
    print(f"[Zigzag] samplers registered: {', '.join(REGISTERED)}. " + " ".join(_host_notes()))
except ValueError as error:
    REGISTERED = []
    print(f"[Zigzag] samplers NOT registered: {error}")


def on_ui_settings():
    import gradio as gr

    components = {"slider": gr.Slider, "radio": gr.Radio}
    for setting in settings.SETTINGS:
        info = shared.OptionInfo(
            setting.default,
            setting.label,
            components[setting.kind],
            dict(setting.component_args),
            onchange=settings.refuse_invalid(setting.key, _opts),  # an invalid value is refused when set
            section=settings.SETTINGS_SECTION,
            infotext=setting.infotext,
            category_id="sd",
        )
        shared.opts.add_option(setting.key, info.info(setting.info))
    notes = shared.OptionHTML("<br>".join(_host_notes()))
    notes.section, notes.category_id = settings.SETTINGS_SECTION, "sd"
    shared.opts.add_option("zigzag_host_notes", notes)


def add_xyz_axes():
    module = xyz.find_xyz_module(scripts.scripts_data)
    if module is not None:
        xyz.add_xyz_axes(module)


# Now, while the webui loads the scripts: the X/Y/Z script (a built-in script, loaded before extensions; again
# on Reload UI) copies its axis list when its UI is built, which in API-only mode (--nowebui) happens before
# the before_ui callbacks run. Adding replaces by label, so the before_ui call below (for an X/Y/Z module loaded
# after this script) never duplicates an axis.
add_xyz_axes()


def on_before_ui():
    add_xyz_axes()


def on_infotext_pasted(text, params):
    infotext.fill_infotext_defaults(params, REGISTERED)


class ZigzagInfotext(scripts.Script):
    """No UI. X/Y/Z cells share one infotext dict: each generation starts without another cell's zigzag
    entries, also when its sampler is not ours (the zigzag samplers write their own)."""

    def title(self):
        return "Zigzag infotext"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        infotext.forget_infotext(p)


script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_before_ui(on_before_ui)
script_callbacks.on_infotext_pasted(on_infotext_pasted)
# Zigzag inversion calls with distilled guidance (Forge's Flux dev): g₂ replaces that call's guidance (no-op elsewhere)
script_callbacks.on_cfg_denoiser(forge.apply_inversion_guidance, name="zigzag_inversion_guidance")
