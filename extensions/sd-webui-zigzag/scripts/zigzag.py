"""Webui glue: registers "Zigzag Euler", "Zigzag (DDIM)" and "Zigzag DPM++ 2M", their settings, infotext and X/Y/Z axes.

Runs when the webui imports the extension's scripts (before the UI is built; again on Reload UI).
All logic is in ``zigzag_webui`` (next to this folder) and the sampling in ``zigzag_kdiff``.
"""

import importlib.util
import os
import sys

from modules import script_callbacks, scripts, sd_samplers, sd_samplers_common, sd_samplers_kdiffusion, shared

EXTENSION_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def _load_local(name):
    """Import a module from the extension folder by path (the webui does not keep it on sys.path)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXTENSION_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_load_local("zigzag_checkout").import_library(EXTENSION_DIR)  # installed zigzag_kdiff, else the checkout's; logs which

zw = _load_local("zigzag_webui")


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
    return zw.host_notes(forge_family, invert and not set(zw.SAMPLER_NAMES.values()) <= hidden)


try:
    REGISTERED = zw.register_samplers(
        sd_samplers, sd_samplers_common.SamplerData, sd_samplers_kdiffusion.KDiffusionSampler, _opts, _scheduler_names()
    )
    print(f"[Zigzag] samplers registered: {', '.join(REGISTERED)}. " + " ".join(_host_notes()))
except ValueError as error:
    REGISTERED = []
    print(f"[Zigzag] samplers NOT registered: {error}")


def on_ui_settings():
    import gradio as gr

    components = {"slider": gr.Slider, "radio": gr.Radio}
    for setting in zw.SETTINGS:
        info = shared.OptionInfo(
            setting.default,
            setting.label,
            components[setting.kind],
            dict(setting.component_args),
            section=zw.SETTINGS_SECTION,
            infotext=setting.infotext,
            category_id="sd",
        )
        shared.opts.add_option(setting.key, info.info(setting.info))
    notes = shared.OptionHTML("<br>".join(_host_notes()))
    notes.section, notes.category_id = zw.SETTINGS_SECTION, "sd"
    shared.opts.add_option("zigzag_host_notes", notes)


def add_xyz_axes():
    xyz = zw.find_xyz_module(scripts.scripts_data)
    if xyz is not None:
        zw.add_xyz_axes(xyz)


# Now, while the webui loads the scripts: the X/Y/Z script (a built-in script, loaded before extensions; again
# on Reload UI) copies its axis list when its UI is built, which in API-only mode (--nowebui) happens before
# the before_ui callbacks run. Adding replaces by label, so the before_ui call below (for an X/Y/Z module loaded
# after this script) never duplicates an axis.
add_xyz_axes()


def on_before_ui():
    add_xyz_axes()


def on_infotext_pasted(infotext, params):
    zw.fill_infotext_defaults(params, REGISTERED)


class ZigzagInfotext(scripts.Script):
    """No UI. X/Y/Z cells share one infotext dict: each generation starts without another cell's zigzag
    entries, also when its sampler is not ours (the zigzag samplers write their own)."""

    def title(self):
        return "Zigzag infotext"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        zw.forget_infotext(p)


script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_before_ui(on_before_ui)
script_callbacks.on_infotext_pasted(on_infotext_pasted)
