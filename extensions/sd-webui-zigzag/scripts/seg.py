"""Webui glue: the always-on "Smoothed Energy Guidance" accordion (txt2img and img2img).

All decisions are in ``seg_webui`` (next to this folder; tested without a webui), the guidance in
``zigzag_kdiff.seg``. A1111: the blurred rows ride in the same UNet batch through the ``cfg_denoiser`` /
``cfg_denoised`` / ``cfg_after_cfg`` callbacks (registered once per import; the webui clears callbacks
before it re-imports scripts on Reload UI). Forge (``backend`` package): a post-CFG function on a clone of
``p.sd_model.forge_objects.unet``, which Forge resets before every pass.

API (``alwayson_scripts``): ``{"Smoothed Energy Guidance": {"args": [enabled, seg_scale, seg_blur_sigma,
seg_applied_layers, sigma_low, sigma_high, hires, hr_seg_scale, hr_seg_blur_sigma]}}`` (see the README).
"""

import importlib.util
import os
import sys

import gradio as gr
from modules import script_callbacks, scripts

EXTENSION_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def _load_local(name):
    """Import a module from the extension folder by path (the webui does not keep it on sys.path)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXTENSION_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_load_local("zigzag_checkout").import_library(EXTENSION_DIR)  # installed zigzag_kdiff, else the checkout's; logs which

sg = _load_local("seg_webui")

try:  # lllyasviel Forge / Forge Neo: ComfyUI-like sampling on the UNet patcher's model_options
    from backend.attention import attention_function
    from backend.patcher.base import set_model_options_patch_replace
    from backend.sampling.sampling_function import calc_cond_uncond_batch

    FORGE_HOST = sg.ForgeHost(calc_cond_uncond_batch, set_model_options_patch_replace, attention_function)
except ImportError:
    FORGE_HOST = None

ACTIVE = {"run": None}
"""The A1111 run of the pass being sampled (the callbacks are global)."""


def _close_run():
    run, ACTIVE["run"] = ACTIVE["run"], None
    if run is not None:
        run.close()


def _dispatch(method):
    def callback(params):
        run = ACTIVE["run"]
        if run is not None:
            getattr(run, method)(params)

    return callback


script_callbacks.on_cfg_denoiser(_dispatch("on_cfg_denoiser"), name="zigzag_seg_cfg_denoiser")
script_callbacks.on_cfg_denoised(_dispatch("on_cfg_denoised"), name="zigzag_seg_cfg_denoised")
script_callbacks.on_cfg_after_cfg(_dispatch("on_cfg_after_cfg"), name="zigzag_seg_cfg_after_cfg")


def _on_before_ui():
    for script in scripts.scripts_data:
        module = getattr(script, "module", None)
        if hasattr(module, "AxisOption") and hasattr(module, "axis_options"):
            sg.add_xyz_axes(module)


# API-only mode (--nowebui) builds the X/Y/Z axis list before the before_ui callbacks run: add the axes at import
# too (the built-in X/Y/Z script is imported before extension scripts; add_xyz_axes never duplicates a label).
_on_before_ui()
script_callbacks.on_before_ui(_on_before_ui)


def _diffusion_model(p):
    forge_objects = getattr(p.sd_model, "forge_objects", None)
    return forge_objects.unet.model.diffusion_model if forge_objects is not None else p.sd_model.model.diffusion_model


def _fail_before_sampling(p, error):
    """The webuis report an exception of a script hook in the console and generate anyway (without SEG here);
    ``process_images_inner`` calls ``p.sample`` right after the scripts' ``process``, unguarded: raise from there,
    so the request fails with the clear ValueError before any UNet call."""

    def sample(*args, **kwargs):
        raise error

    p.sample = sample


class Script(scripts.Script):
    sorting_priority = 15

    def title(self):
        return "Smoothed Energy Guidance"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        from modules.ui_components import InputAccordion

        with InputAccordion(False, label=self.title()) as enabled:
            with gr.Row():
                scale = gr.Slider(label="SEG scale", minimum=0.0, maximum=30.0, step=0.1, value=3.0)
                blur = gr.Dropdown(
                    label="Blur σ", choices=list(sg.BLUR_CHOICES), value=sg.INFINITE, allow_custom_value=True
                )
            layers = gr.Textbox(
                label="Layers", value="mid", placeholder="mid | down, up | m0, d4, u0 | input:4, output:3.1"
            )
            with gr.Row():
                low = gr.Number(label="σ low", value=0.0)
                high = gr.Number(label="σ high (0 = no limit)", value=0.0)
            with gr.Row():
                hires = gr.Radio(label="Hires pass", choices=list(sg.HIRES_CHOICES), value=sg.HIRES_SAME)
                hr_scale = gr.Slider(label="Hires SEG scale", minimum=0.0, maximum=30.0, step=0.1, value=3.0)
                hr_blur = gr.Dropdown(
                    label="Hires blur σ", choices=list(sg.BLUR_CHOICES), value=sg.INFINITE, allow_custom_value=True
                )
        components = [enabled, scale, blur, layers, low, high, hires, hr_scale, hr_blur]
        self.infotext_fields = [
            (component, lambda params, name=name: getattr(sg.args_from_infotext(params), name))
            for component, name in zip(components, sg.args_in_order())
        ]
        return components

    def process(self, p, *args):
        _close_run()  # whatever an interrupted or failed earlier generation left
        sg.forget_infotext(p.extra_generation_params)  # X/Y/Z cells share one dict
        try:  # bad input: a clear ValueError before any model call, nothing applied
            seg_args = sg.SEGArgs.from_script_args(args).with_overrides(getattr(p, sg.OVERRIDES_ATTR, None))
            for hires_pass in (False, True) if getattr(p, "enable_hr", False) else (False,):
                seg_args.options(hires_pass=hires_pass)
            if seg_args.enabled:
                sg.check_not_flow(p.sd_model)
                sg.layer_check(_diffusion_model(p), seg_args.seg_applied_layers)
        except ValueError as error:
            _fail_before_sampling(p, error)

    def process_before_every_sampling(self, p, *args, **kwargs):
        _close_run()
        seg_args = sg.SEGArgs.from_script_args(args).with_overrides(getattr(p, sg.OVERRIDES_ATTR, None))
        options = seg_args.options(hires_pass=bool(getattr(p, "is_hr_pass", False)))
        if options is None:
            p.extra_generation_params.update(sg.infotext_params(seg_args))
            return
        if FORGE_HOST is not None and hasattr(p.sd_model, "forge_objects"):
            unet = p.sd_model.forge_objects.unet
            p.sd_model.forge_objects.unet = sg.patch_forge_unet(
                unet, options, FORGE_HOST, sg.forge_is_inversion(p), seg_args.seg_applied_layers
            )
        else:
            from modules import shared

            hires_pass = bool(getattr(p, "is_hr_pass", False))
            reason = sg.a1111_skip_reason(kwargs.get("c"), sg.a1111_edit_model(p))
            if reason is not None:  # decided before the infotext is written: the image has no SEG
                print(sg.note_skipped(p, reason, hires_pass))
                return
            ACTIVE["run"] = sg.A1111SEG(
                options,
                p.sd_model.model.diffusion_model,
                seg_args.seg_applied_layers,
                notify=print,
                current_unet=lambda: shared.sd_model.model.diffusion_model,  # the refiner switch swaps it
            )
        p.extra_generation_params.update(sg.infotext_params(seg_args))  # only once SEG is really applied

    def postprocess(self, p, processed, *args):
        _close_run()
