"""Smoothed Energy Guidance (SEG) for ComfyUI: a MODEL patch over ``zigzag_kdiff.seg``.

The blur, the layer names, the settings and their interval come from :mod:`zigzag_kdiff.seg`; this
module maps them onto ComfyUI's UNet and sampling hooks:

* **Rows.** A ``sampler_calc_cond_batch_function`` evaluates ``[positive, negative, positive]`` in one
  ``comfy.samplers.calc_cond_batch``; the third conditioning (chunk index :data:`BLUR_CHUNK` in
  ``cond_or_uncond``) is the blurred branch, batched with the others like the official
  ``[uncond, cond, cond_ptb]``. At cfg 1 ComfyUI drops the negative: ``[positive, positive_blur]``.
  Outside the SEG interval, in Zigzag inversion calls (marked by the Zigzag adapter with
  :data:`adapter.INVERSION_KEY`) and at scale 0 the host's own call runs, untouched.
* **Blur.** For the call that carries blurred rows, an ``attn1`` replace patch on each chosen layer blurs
  the queries of those rows (after ``to_q``) on the layer's true ``H×W`` (``activations_shape``) with
  :func:`zigzag_kdiff.seg.blur_queries`; keys, values and the other rows are computed as ComfyUI does.
* **Combination.** A ``sampler_post_cfg_function`` adds ``s_seg·(D_c − D_c^blur)`` to ComfyUI's CFG
  result (:func:`zigzag_kdiff.seg.combine`'s SEG term; with plain CFG the sum is exactly ``combine``).
* **Layers.** The official names (``down``/``mid``/``up``, ``d0``, ``m0``, ``u5``) count self-attention
  layers as the official diffusers UNet does (:func:`zigzag_kdiff.seg_ldm.select_ldm_layers`); ComfyUI block
  names ``input:4``, ``middle:0``, ``output:3`` (a whole block) or ``input:4.1`` (transformer 1 of it)
  name them as ComfyUI's ``transformer_options`` do.

Nothing is installed outside the patched clone's ``model_options``: the attention patch exists only in
the per-call options of calls with blurred rows, so other runs (and the unpatched model) never see it.
"""

from __future__ import annotations

from typing import Any

import comfy.ldm.modules.attention
import comfy.ldm.modules.diffusionmodules.openaimodel
import comfy.model_patcher
import comfy.model_sampling
import comfy.samplers
import torch
from comfy_api.latest import io

from zigzag_kdiff.guidance import GuidanceInterval, check_finite
from zigzag_kdiff.seg import DEFAULT_BLUR_SIGMA, SEGOptions, blur_queries, token_grid
from zigzag_kdiff.seg_ldm import block_name, ldm_self_attention_layers, select_ldm_layers

from .adapter import INVERSION_KEY, INVERSION_NEUTRAL, interval_from_percent

BLUR_CHUNK = 2
"""Index of the blurred conditional branch in ``calc_cond_batch``'s conds (``cond_or_uncond`` value);
0 and 1 are ComfyUI's positive and negative."""

LayerKey = tuple[str, int, int]
"""ComfyUI's ``attn1`` patch key: ``(block, block id, transformer index)``, e.g. ``("middle", 0, 0)``."""

SIGMA_MAX = 10000.0


# --- layers ------------------------------------------------------------------------------------------


def unet_self_attention_layers(diffusion_model: Any) -> dict[str, list[LayerKey]]:
    """The self-attention layers of a ComfyUI UNet by official group, in the official diffusers order
    (:func:`zigzag_kdiff.seg_ldm.ldm_self_attention_layers`), as patch keys."""
    groups = ldm_self_attention_layers(diffusion_model.named_modules())
    return {group: [block_name(name) for name in names] for group, names in groups.items()}


def check_unet(model_patcher: Any) -> None:
    """``ValueError`` unless the model is a UNet with self-attention (SD1.x/2.x/SDXL), before anything is patched.

    The official SEG blurs the queries of a UNet's self-attention layers (image tokens attending to image
    tokens). Flow transformers (SD3's MMDiT, Flux) attend jointly over text and image tokens in one attention,
    where that algorithm is not defined; they are refused with that reason.
    """
    diffusion_model = model_patcher.get_model_object("diffusion_model")
    if isinstance(diffusion_model, comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel):
        return
    name = type(diffusion_model).__name__
    model_sampling = model_patcher.get_model_object("model_sampling")
    if isinstance(model_sampling, comfy.model_sampling.CONST) or hasattr(diffusion_model, "joint_blocks"):
        raise ValueError(
            f"Smoothed Energy Guidance (seg_scale) is defined on a UNet's self-attention layers, whose queries it "
            f"blurs; {name} is a flow transformer (SD3's MMDiT, Flux) with joint attention over text and image "
            "tokens, where the official SEG is not defined: SEG is refused on flow models"
        )
    raise ValueError(
        f"Smoothed Energy Guidance (seg_scale) is defined on a UNet's self-attention layers (SD1.x, SD2.x, SDXL); "
        f"this model's diffusion model is {name}, not a UNet"
    )


def resolve_layers(diffusion_model: Any, names: str, parameter: str = "seg_applied_layers") -> list[LayerKey]:
    """The ``attn1`` patch keys ``names`` selects (official and ComfyUI names, comma-separated), in model order
    (:func:`zigzag_kdiff.seg_ldm.select_ldm_layers`; ``ValueError`` naming ``parameter``)."""
    return [block_name(name) for name in select_ldm_layers(diffusion_model.named_modules(), names, parameter)]


def blur_sigma_from_widget(value: float) -> float:
    """The node's blur σ: −1 is the official infinite blur (9999999), as is any σ > 9999; otherwise σ > 0."""
    sigma = check_finite("seg_blur_sigma", value)
    if sigma == -1.0:
        return DEFAULT_BLUR_SIGMA
    if not sigma > 0:
        raise ValueError(
            f"seg_blur_sigma must be -1 (infinite blur) or > 0 (allowed: -1 or 0 < σ <= {SIGMA_MAX:g}), got {value!r}"
        )
    return sigma


# --- the attention patch -----------------------------------------------------------------------------


class BlurredSelfAttention:
    """ComfyUI ``attn1`` replace patch: blur the queries of the :data:`BLUR_CHUNK` rows, then attend.

    ``base`` is the replace patch that was there before (it then gets the queries), else ComfyUI's own
    ``optimized_attention`` with the layer's precision. Rows of other chunks keep their queries.
    """

    def __init__(self, blur_sigma: float, base: Any = None) -> None:
        self.blur_sigma = blur_sigma
        self.base = base

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        chunks = extra_options["cond_or_uncond"]
        rows = q.shape[0] // len(chunks)
        height, width = layer_grid(q.shape[1], extra_options)
        parts = []
        for i, chunk in enumerate(chunks):
            part = q[i * rows : (i + 1) * rows]
            parts.append(blur_queries(part, height, width, self.blur_sigma) if chunk == BLUR_CHUNK else part)
        q = torch.cat(parts) if BLUR_CHUNK in chunks else q
        if self.base is not None:
            return self.base(q, k, v, extra_options)
        return comfy.ldm.modules.attention.optimized_attention(
            q,
            k,
            v,
            extra_options["n_heads"],
            attn_precision=extra_options.get("attn_precision"),
            transformer_options=extra_options,
        )


def layer_grid(tokens: int, extra_options: dict) -> tuple[int, int]:
    """``(H, W)`` of the layer: ComfyUI's ``activations_shape``, else from the UNet input size."""
    shape = extra_options.get("activations_shape")
    if shape is not None and shape[-2] * shape[-1] == tokens:
        return int(shape[-2]), int(shape[-1])
    return token_grid(tokens, *extra_options["original_shape"][-2:])


# --- the sampling hooks ------------------------------------------------------------------------------


class SEGGuidance:
    """The SEG patch of one model: the batch function (rows), the post-CFG function (combination).

    ``previous`` is a ``sampler_calc_cond_batch_function`` that was set before; its call then runs as it
    is and the blurred rows come in one extra cond-only call.
    """

    def __init__(self, options: SEGOptions, layers: list[LayerKey], previous: Any = None) -> None:
        self.options = options
        self.layers = layers
        self.previous = previous
        self._pending: tuple[torch.Tensor, float, torch.Tensor] | None = None

    def __deepcopy__(self, memo: dict) -> SEGGuidance:  # ModelPatcher.clone deep-copies model_options
        return self

    def scale_for(self, sigma: torch.Tensor, model_options: dict) -> float:
        """s_seg for this call: 0 in Zigzag inversion calls (inversion_seg_scale) and outside the interval."""
        inversion = bool(model_options.get("transformer_options", {}).get(INVERSION_KEY))
        return self.options.scale_at(sigma.max(), inversion=inversion)

    def blur_options(self, model_options: dict) -> dict:
        """A copy of ``model_options`` with the blurred attention on the chosen layers."""
        options = comfy.model_patcher.create_model_options_clone(model_options)
        options.setdefault("transformer_options", {})
        existing = options["transformer_options"].get("patches_replace", {}).get("attn1", {})
        for block, block_id, index in self.layers:
            base = existing.get((block, block_id, index), existing.get((block, block_id)))
            patch = BlurredSelfAttention(self.options.seg_blur_sigma, base)
            options = comfy.model_patcher.set_model_options_patch_replace(
                options, patch, "attn1", block, block_id, index
            )
        return options

    def calc_cond_batch(self, args: dict) -> list[torch.Tensor]:
        conds, x, sigma, model, model_options = (args[k] for k in ("conds", "input", "sigma", "model", "model_options"))
        self._pending = None
        scale = self.scale_for(sigma, model_options)
        if scale == 0.0 or conds[0] is None:
            return self._host_call(args)
        blurred_options = self.blur_options(model_options)
        if self.previous is None:
            *out, blurred = comfy.samplers.calc_cond_batch(model, [*conds, conds[0]], x, sigma, blurred_options)
        else:
            out = self._host_call(args)
            blurred = comfy.samplers.calc_cond_batch(model, [None, None, conds[0]], x, sigma, blurred_options)[2]
        self._pending = (x, scale, blurred)
        return out

    def _host_call(self, args: dict) -> list[torch.Tensor]:
        if self.previous is not None:
            return self.previous(args)
        return comfy.samplers.calc_cond_batch(
            args["model"], args["conds"], args["input"], args["sigma"], args["model_options"]
        )

    def post_cfg(self, args: dict) -> torch.Tensor:
        pending, self._pending = self._pending, None
        if pending is None or pending[0] is not args["input"]:
            return args["denoised"]
        _, scale, blurred = pending
        return args["denoised"] + (args["cond_denoised"] - blurred) * scale

    # Nothing is pending in a Zigzag inversion call (no blurred row there): the post-CFG function returns the
    # CFG result as it is, so an inversion at γ₂ = 0 may still evaluate the negative batch alone (adapter).
    setattr(post_cfg, INVERSION_NEUTRAL, True)


def _is_seg(function: Any) -> bool:
    return isinstance(getattr(function, "__self__", None), SEGGuidance)


def patch_seg(model_patcher: Any, options: SEGOptions, layer_names: str | None = None) -> Any:
    """A clone of ``model_patcher`` with SEG (replaces an earlier SEG patch); scale 0: a clone without SEG.

    ``layer_names`` (official and ComfyUI names, see :func:`resolve_layers`) default to
    ``options.seg_applied_layers``. ``ValueError`` for layers the model lacks, before anything is patched.
    """
    check_unet(model_patcher)
    names = ",".join(options.seg_applied_layers) if layer_names is None else layer_names
    layers = resolve_layers(model_patcher.get_model_object("diffusion_model"), names)
    patched = model_patcher.clone()
    model_options = patched.model_options
    previous = model_options.get("sampler_calc_cond_batch_function")
    if _is_seg(previous):
        previous = previous.__self__.previous
        model_options.pop("sampler_calc_cond_batch_function")
    post = [fn for fn in model_options.get("sampler_post_cfg_function", []) if not _is_seg(fn)]
    if "sampler_post_cfg_function" in model_options:
        model_options["sampler_post_cfg_function"] = post
    if previous is not None:
        model_options["sampler_calc_cond_batch_function"] = previous
    if not options.enabled:
        return patched
    seg = SEGGuidance(options, layers, previous)
    patched.set_model_sampler_calc_cond_batch_function(seg.calc_cond_batch)
    patched.set_model_sampler_post_cfg_function(seg.post_cfg)
    return patched


def seg_of(model_patcher: Any) -> SEGGuidance | None:
    """The SEG patch of a model, if any."""
    function = model_patcher.model_options.get("sampler_calc_cond_batch_function")
    return function.__self__ if _is_seg(function) else None


# --- the nodes ---------------------------------------------------------------------------------------


def _common_inputs() -> list:
    return [
        io.Model.Input("model"),
        io.Float.Input(
            "seg_scale",
            default=3.0,
            min=0.0,
            max=100.0,
            step=0.1,
            round=0.01,
            tooltip="s_seg: guidance away from the blurred-attention prediction (official default 3; 0 = off).",
        ),
        io.Float.Input(
            "seg_blur_sigma",
            default=-1.0,
            min=-1.0,
            max=SIGMA_MAX,
            step=0.1,
            round=False,
            tooltip="σ of the Gaussian blur of the attention queries; -1 (or > 9999) is the infinite blur (every "
            "query its mean, the official default). The official advice: vary it exponentially (1, 4, 16, …).",
        ),
        io.String.Input(
            "seg_applied_layers",
            default="mid",
            tooltip="Comma-separated self-attention layers: official groups 'down', 'mid', 'up', official index "
            "names 'd0', 'm0', 'u5' (counted as in the diffusers UNet), or ComfyUI blocks 'input:4', 'middle:0', "
            "'output:3' (a whole block) and 'output:3.1' (its transformer 1).",
        ),
    ]


def _options(seg_scale: float, seg_blur_sigma: float, interval: GuidanceInterval) -> SEGOptions:
    return SEGOptions(
        seg_scale=seg_scale,
        seg_blur_sigma=blur_sigma_from_widget(seg_blur_sigma),
        seg_interval=(interval.sigma_low, interval.sigma_high),
    )


class SmoothedEnergyGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ZigzagSmoothedEnergyGuidance",
            display_name="Smoothed Energy Guidance",
            category="advanced/guidance",
            description=(
                "Smoothed Energy Guidance (Hong, 2024): D = CFG + s_seg·(D_c − D_c^blur), where D_c^blur is the "
                "positive prediction with the queries of the chosen self-attention layers blurred. The blurred rows "
                "ride in the same batch as positive and negative, only between start_percent and end_percent; "
                "Zigzag inversion calls run without SEG."
            ),
            inputs=[
                *_common_inputs(),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, seg_scale, seg_blur_sigma, seg_applied_layers, start_percent, end_percent) -> io.NodeOutput:
        interval = interval_from_percent(model.get_model_object("model_sampling"), start_percent, end_percent)
        return io.NodeOutput(patch_seg(model, _options(seg_scale, seg_blur_sigma, interval), seg_applied_layers))


class SmoothedEnergyGuidanceSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ZigzagSmoothedEnergyGuidanceSigmas",
            display_name="Smoothed Energy Guidance (Sigmas)",
            category="advanced/guidance",
            description="Smoothed Energy Guidance only for sigma_low <= σ <= sigma_high (see the percent node).",
            inputs=[
                *_common_inputs(),
                io.Float.Input("sigma_low", default=0.0, min=0.0, max=SIGMA_MAX, step=0.01, round=False),
                io.Float.Input("sigma_high", default=SIGMA_MAX, min=0.0, max=SIGMA_MAX, step=0.01, round=False),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, seg_scale, seg_blur_sigma, seg_applied_layers, sigma_low, sigma_high) -> io.NodeOutput:
        interval = GuidanceInterval(sigma_low, sigma_high)
        return io.NodeOutput(patch_seg(model, _options(seg_scale, seg_blur_sigma, interval), seg_applied_layers))


SEG_NODES = [SmoothedEnergyGuidance, SmoothedEnergyGuidanceSigmas]
