"""Smoothed Energy Guidance in AUTOMATIC1111 1.10 and the Forge family, importable without a webui.

``scripts/seg.py`` is the glue (the accordion, the callbacks, the X/Y/Z axes); everything it decides is
here and tested in ``tests/test_a1111_seg.py`` against stand-ins with the hosts' exact signatures. The
blur, the layer names, the settings, the interval and the combination are :mod:`zigzag_kdiff.seg`'s.

**A1111** (``modules/sd_samplers_cfg_denoiser.py``, 1.10.1): ``CFGDenoiser.forward`` builds
``x_in = [cond rows, uncond rows]`` and calls the ``cfg_denoiser`` callback, which may replace ``x``,
``sigma``, ``image_cond`` and ``text_cond``; its CFG combination reads the conds at their indices and the
uncond from the *last* rows, so rows placed between them are ignored. :class:`A1111SEG` inserts the
blurred rows there (``[cond, cond_blur, uncond]``: one UNet call of 3 rows per image and step), blurs
their queries with forward hooks on the chosen layers' ``attn1.to_q`` (installed for that call only),
takes ``D_c`` and ``D_c^blur`` in ``cfg_denoised`` and adds ``s_seg·(D_c − D_c^blur)`` in ``cfg_after_cfg``.

**Forge** (``backend/sampling/sampling_function.py``): CFG runs on ComfyUI-style ``model_options`` with
only cond/uncond chunks and ``cfg_denoised`` is never called, so :func:`patch_forge_unet` adds a post-CFG
function that runs one extra cond-only call with an ``attn1`` replace patch blurring its queries (as
Forge's built-in PAG does) and adds the SEG term: two UNet calls per step (2 + 1 rows per image).

Zigzag inversion calls carry ``zigzag_webui.INVERSION_ATTR`` on the host's denoiser and run without SEG
(``inversion_seg_scale`` 0, the library's default).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from zigzag_kdiff.seg import DEFAULT_BLUR_SIGMA, INFINITE_BLUR_THRESHOLD, SEGOptions, SEGState, blur_queries, token_grid
from zigzag_kdiff.seg_ldm import block_name, select_ldm_layers

INVERSION_ATTR = "zigzag_kdiff_inversion"
INVERSION_NEUTRAL = "zigzag_kdiff_inversion_neutral"  # zigzag_webui.INVERSION_NEUTRAL (the modules load apart)
"""Attribute the Zigzag samplers set on the host's ``CFGDenoiser`` during inversion calls."""

INFINITE = "infinite"
BLUR_CHOICES = (INFINITE, "1", "2", "4", "8", "16", "32")
"""Blur σ dropdown (custom values allowed); the official advice is to vary σ exponentially."""

HIRES_SAME, HIRES_OWN, HIRES_OFF = "Same as first pass", "Own settings", "Off"
HIRES_CHOICES = (HIRES_SAME, HIRES_OWN, HIRES_OFF)

OVERRIDES_ATTR = "zigzag_seg_overrides"
"""``p`` attribute where the X/Y/Z axes put their values (read when the pass starts)."""


# --- settings ------------------------------------------------------------------------------------------


def parse_blur_sigma(value: Any, parameter: str = "seg_blur_sigma") -> float:
    """The UI's blur σ: ``"infinite"`` (or ``inf``) is the official 9999999; any σ > 9999 is infinite; else σ > 0."""
    text = str(value).strip().lower()
    if text in (INFINITE, "inf", "infinity", "∞"):
        return DEFAULT_BLUR_SIGMA
    try:
        sigma = float(text)
    except ValueError:
        sigma = math.nan
    if math.isnan(sigma) or not sigma > 0:
        raise ValueError(
            f"{parameter} must be 'infinite' or a number > 0 (allowed: 0 < σ; > 9999 is infinite), got {value!r}"
        )
    return sigma


def format_blur_sigma(sigma: float) -> str:
    return INFINITE if sigma > INFINITE_BLUR_THRESHOLD else f"{sigma:g}"


@dataclass(frozen=True)
class SEGArgs:
    """The script's arguments, in the order of the UI components and of ``alwayson_scripts`` ``args``.

    ``sigma_high`` 0 means no upper limit. ``hires``: one of :data:`HIRES_CHOICES`.
    """

    enabled: bool = False
    seg_scale: float = 3.0
    seg_blur_sigma: str = INFINITE
    seg_applied_layers: str = "mid"
    sigma_low: float = 0.0
    sigma_high: float = 0.0
    hires: str = HIRES_SAME
    hr_seg_scale: float = 3.0
    hr_seg_blur_sigma: str = INFINITE

    @classmethod
    def from_script_args(cls, args: Sequence[Any]) -> SEGArgs:
        """From the webui's ``*script_args`` (or the API's ``args`` list; missing trailing ones take defaults)."""
        names = [f.name for f in fields(cls)]
        if len(args) > len(names):
            raise ValueError(
                f"Smoothed Energy Guidance takes at most {len(names)} arguments ({', '.join(names)}), got {len(args)}"
            )
        return cls(**dict(zip(names, args)))

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> SEGArgs:
        return self if not overrides else replace(self, **overrides)

    def options(self, hires_pass: bool = False) -> SEGOptions | None:
        """The pass's validated :class:`SEGOptions`, or None when SEG is off (for this pass)."""
        if not self.enabled or (hires_pass and self.hires == HIRES_OFF):
            return None
        if self.hires not in HIRES_CHOICES:
            raise ValueError(f"SEG hires must be one of {list(HIRES_CHOICES)}, got {self.hires!r}")
        own = hires_pass and self.hires == HIRES_OWN
        scale = self.hr_seg_scale if own else self.seg_scale
        blur = self.hr_seg_blur_sigma if own else self.seg_blur_sigma
        high = float(self.sigma_high) if float(self.sigma_high) > 0 else math.inf
        interval = None if float(self.sigma_low) == 0 and math.isinf(high) else (float(self.sigma_low), high)
        layers = tuple(n.strip() for n in str(self.seg_applied_layers).split(",") if n.strip())
        official = tuple(n for n in layers if ":" not in n) or ("mid",)  # block names are checked on the model
        options = SEGOptions(
            seg_scale=float(scale),
            seg_blur_sigma=parse_blur_sigma(blur, "hr_seg_blur_sigma" if own else "seg_blur_sigma"),
            seg_applied_layers=official,
            seg_interval=interval,
        )
        return options if options.enabled else None


# --- infotext ------------------------------------------------------------------------------------------


INFOTEXT = {
    "seg_scale": "SEG scale",
    "seg_blur_sigma": "SEG blur sigma",
    "seg_applied_layers": "SEG layers",
    "interval": "SEG sigma interval",
    "hires": "SEG hires",
    "hr_seg_scale": "SEG hires scale",
    "hr_seg_blur_sigma": "SEG hires blur sigma",
}


def infotext_params(args: SEGArgs) -> dict[str, Any]:
    """``p.extra_generation_params`` entries of an enabled SEG (defaults of the interval and hires omitted)."""
    if not args.enabled:
        return {}
    params: dict[str, Any] = {
        INFOTEXT["seg_scale"]: float(args.seg_scale),
        INFOTEXT["seg_blur_sigma"]: format_blur_sigma(parse_blur_sigma(args.seg_blur_sigma)),
        INFOTEXT["seg_applied_layers"]: str(args.seg_applied_layers),
    }
    if float(args.sigma_low) != 0 or float(args.sigma_high) != 0:
        high = f"{float(args.sigma_high):g}" if float(args.sigma_high) > 0 else "inf"
        params[INFOTEXT["interval"]] = f"{float(args.sigma_low):g}-{high}"
    if args.hires != HIRES_SAME:
        params[INFOTEXT["hires"]] = "off" if args.hires == HIRES_OFF else "own"
    if args.hires == HIRES_OWN:
        params[INFOTEXT["hr_seg_scale"]] = float(args.hr_seg_scale)
        params[INFOTEXT["hr_seg_blur_sigma"]] = format_blur_sigma(parse_blur_sigma(args.hr_seg_blur_sigma))
    return params


def args_from_infotext(params: Mapping[str, str]) -> SEGArgs:
    """The arguments an infotext (as the webui parses it: strings) describes; SEG off without its keys."""
    if INFOTEXT["seg_scale"] not in params:
        return SEGArgs()
    low, high = 0.0, 0.0
    if INFOTEXT["interval"] in params:
        low_text, _, high_text = str(params[INFOTEXT["interval"]]).partition("-")
        low, high = float(low_text), (0.0 if high_text.strip() == "inf" else float(high_text))
    hires = {"off": HIRES_OFF, "own": HIRES_OWN}.get(str(params.get(INFOTEXT["hires"], "")), HIRES_SAME)
    return SEGArgs(
        enabled=True,
        seg_scale=float(params[INFOTEXT["seg_scale"]]),
        seg_blur_sigma=str(params.get(INFOTEXT["seg_blur_sigma"], INFINITE)),
        seg_applied_layers=str(params.get(INFOTEXT["seg_applied_layers"], "mid")),
        sigma_low=low,
        sigma_high=high,
        hires=hires,
        hr_seg_scale=float(params.get(INFOTEXT["hr_seg_scale"], 3.0)),
        hr_seg_blur_sigma=str(params.get(INFOTEXT["hr_seg_blur_sigma"], INFINITE)),
    )


NOTE_INFOTEXT = "SEG note"
"""Infotext key saying that SEG was on but not applied, and why (the HTTP API's ``info`` carries the infotext,
not the comments under the image)."""


def forget_infotext(params: dict[str, Any]) -> None:
    """Drop the SEG entries another X/Y/Z cell left in the shared ``p.extra_generation_params`` dict."""
    for key in (*INFOTEXT.values(), NOTE_INFOTEXT):
        params.pop(key, None)


def check_not_flow(sd_model: Any) -> None:
    """``ValueError`` naming ``enabled`` if the loaded model is a flow transformer (SEG is refused there).

    The official SEG blurs the queries of a UNet's *self*-attention on the image's token grid; MMDiT (SD3) and
    Flux use *joint* attention over text and image tokens, for which no faithful variant is defined. Detected as
    A1111 1.10's ``sd_model.is_sd3`` or, on Forge, a predictor of flow latents (``forge_objects.unet.model
    .predictor.prediction_type == "const"``: Flux, SD3.5, Chroma).
    """
    flow = bool(getattr(sd_model, "is_sd3", False))
    if not flow:
        try:
            flow = sd_model.forge_objects.unet.model.predictor.prediction_type == "const"
        except AttributeError:  # A1111 model or an older Forge: not a Forge flow model
            flow = False
    if flow:
        raise ValueError(
            "Smoothed Energy Guidance (enabled) is defined on a UNet's self-attention; this model is a flow "
            "transformer (Flux, SD3: joint attention over text and image tokens), where it is not defined: "
            "turn the Smoothed Energy Guidance accordion off"
        )


def a1111_skip_reason(conditioning: Any, edit_model: bool = False) -> str | None:
    """Why :class:`A1111SEG` would leave every call of a pass without SEG, read from the pass's conditioning
    before sampling (A1111 1.10's ``process_before_every_sampling(p, ..., c=...)``): ``c`` is a
    ``MulticondLearnedConditioning`` whose ``batch`` holds, per image, one entry per AND-part of the prompt; an
    InstructPix2Pix model at Image CFG Scale ≠ 1 evaluates three chunks. ``None``: SEG applies."""
    batch = getattr(conditioning, "batch", None)
    if batch is not None and any(len(parts) > 1 for parts in batch):
        return "AND prompt"
    if edit_model:
        return "InstructPix2Pix model"
    return None


def a1111_edit_model(p: Any) -> bool:
    """Whether A1111's ``CFGDenoiser`` evaluates ``p`` with the edit model's three-chunk layout (1.10.1:
    ``cond_stage_key == "edit"`` and an Image CFG Scale other than None and 1)."""
    image_cfg_scale = getattr(p, "image_cfg_scale", None)
    edit = getattr(getattr(p, "sd_model", None), "cond_stage_key", None) == "edit"
    return edit and image_cfg_scale is not None and float(image_cfg_scale) != 1.0


def note_skipped(p: Any, reason: str, hires_pass: bool = False) -> str:
    """Record that SEG is on but skipped for this pass: no SEG entries for that pass, a ``SEG note`` infotext entry
    (``skipped: AND prompt``, ``hires pass skipped: ...``) and the message (returned, for the console)."""
    marker = f"{'hires pass ' if hires_pass else ''}skipped: {reason}"
    params = p.extra_generation_params
    markers = [m for m in str(params.get(NOTE_INFOTEXT) or "").split("; ") if m]
    if marker not in markers:
        params[NOTE_INFOTEXT] = "; ".join([*markers, marker])
    if not hires_pass:
        for key in INFOTEXT.values():
            params.pop(key, None)
    layout = "AND prompts (several conds per image)" if reason == "AND prompt" else "an InstructPix2Pix model"
    where = "in the hires pass " if hires_pass else ""
    message = f"Smoothed Energy Guidance {where}skipped: A1111 cannot add the blurred rows to a batch with {layout}"
    if hasattr(p, "comment"):
        p.comment(message)
    return message


# --- X/Y/Z axes -----------------------------------------------------------------------------------------


XYZ_AXES = (
    ("SEG scale", float, "seg_scale"),
    ("SEG blur sigma", str, "seg_blur_sigma"),
    ("SEG layers", str, "seg_applied_layers"),
)
"""(label, type, argument) of the X/Y/Z plot axes; an axis turns SEG on for its images."""


def xyz_apply(argument: str) -> Callable[[Any, Any, Any], None]:
    def apply(p: Any, x: Any, xs: Any) -> None:
        overrides = dict(getattr(p, OVERRIDES_ATTR, None) or {})
        overrides.update({argument: x, "enabled": True})
        setattr(p, OVERRIDES_ATTR, overrides)

    return apply


def xyz_confirm(argument: str) -> Callable[[Any, Sequence[Any]], None]:
    def confirm(p: Any, xs: Sequence[Any]) -> None:
        for x in xs:
            if argument == "seg_scale":
                SEGOptions(seg_scale=float(x))
            elif argument == "seg_blur_sigma":
                parse_blur_sigma(x)
            elif not str(x).strip():
                raise ValueError(f"seg_applied_layers must name at least one layer, got {x!r}")

    return confirm


def add_xyz_axes(xyz_module: Any) -> list[str]:
    """Append the SEG axes to ``xyz_module.axis_options`` once (Reload UI re-imports the glue)."""
    labels = {getattr(option, "label", None) for option in xyz_module.axis_options}
    added = []
    for label, kind, argument in XYZ_AXES:
        if label in labels:
            continue
        option = xyz_module.AxisOption(label, kind, xyz_apply(argument), confirm=xyz_confirm(argument))
        xyz_module.axis_options.append(option)
        added.append(label)
    return added


# --- layers ---------------------------------------------------------------------------------------------


def chosen_attn1(diffusion_model: torch.nn.Module, layer_names: str) -> list[tuple[str, torch.nn.Module]]:
    """``(name, attn1 module)`` of the chosen layers (:func:`zigzag_kdiff.seg_ldm.select_ldm_layers`)."""
    modules = dict(diffusion_model.named_modules())
    return [(name, modules[name]) for name in select_ldm_layers(modules.items(), layer_names)]


def _rows(value: Any) -> int:
    return (value["crossattn"] if isinstance(value, Mapping) else value).shape[0]


def _repeat_rows(value: Any, rows: int) -> Any:
    """``value`` with its first ``rows`` rows inserted again after them (tensors, or SDXL's ``DictWithShape``
    of tensors: its type is kept, A1111 reads its ``shape``)."""
    if isinstance(value, Mapping):
        return type(value)({k: _repeat_rows(v, rows) for k, v in value.items()})
    return torch.cat([value[:rows], value[:rows], value[rows:]])


# --- A1111: rows in the same batch ------------------------------------------------------------------------


class A1111SEG:
    """SEG for one sampling pass in A1111: the three callbacks and the ``to_q`` hooks of one UNet call.

    Layout per call: ``[cond (n rows), cond_blur (n rows), uncond (n rows)]`` where ``n`` is the batch
    size; images with AND-prompts (several conds) or an edit model's layout run without SEG (noted once).
    ``current_unet`` (e.g. ``lambda: shared.sd_model.model.diffusion_model``) is asked at every call, so
    after A1111's refiner switch the hooks go on the refiner's layers (a refiner without them: SEG off, noted).
    """

    def __init__(
        self,
        options: SEGOptions,
        diffusion_model: torch.nn.Module,
        layer_names: str | None = None,
        notify: Callable[[str], None] | None = None,
        current_unet: Callable[[], torch.nn.Module] | None = None,
    ) -> None:
        self.layer_names = ",".join(options.seg_applied_layers) if layer_names is None else layer_names
        self.layers = chosen_attn1(diffusion_model, self.layer_names)
        self.options = options
        self.diffusion_model = diffusion_model
        self.current_unet = current_unet
        self.state = SEGState(options.seg_blur_sigma)
        self.notify = notify
        self.handles: list[Any] = []
        self.cond_rows: int | None = None
        self.blur_scale = 0.0
        self.offset = 0
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self.denoiser: Any = None  # the host's CFGDenoiser of the current call (inversion flag, inpainting mask)
        self.rows_per_call: list[int] = []  # batch rows of each UNet call with blurred rows (cost tables)
        self.blurred_layer_calls = 0  # layer evaluations that blurred queries
        self._noted = False

    def on_cfg_denoiser(self, params: Any) -> None:
        """``CFGDenoiserParams``: insert the blurred rows between cond and uncond; hooks for this call."""
        self.remove_hooks()
        self.pending, self.cond_rows, self.denoiser = None, None, params.denoiser
        if getattr(params.denoiser, INVERSION_ATTR, False):
            return
        scale = self.options.scale_at(params.sigma.max())
        if scale == 0.0:
            return
        if not self._follow_model_switch():
            return
        batch, conds = _rows(params.text_uncond), _rows(params.text_cond)
        if conds != batch or params.x.shape[0] != conds + batch:
            self._note("SEG skipped: AND-prompts (several conds per image) and edit models are not supported")
            return
        params.x = _repeat_rows(params.x, conds)
        params.sigma = _repeat_rows(params.sigma, conds)
        params.image_cond = _repeat_rows(params.image_cond, conds)
        params.text_cond = _repeat_rows(params.text_cond, conds)
        self.cond_rows, self.blur_scale, self.offset = conds, scale, 0
        self.state.latent_size = (int(params.x.shape[-2]), int(params.x.shape[-1]))
        self.handles.append(self.diffusion_model.register_forward_pre_hook(self._unet_call, with_kwargs=True))
        for _, attn1 in self.layers:
            self.handles.append(attn1.to_q.register_forward_hook(self._blur_output))

    def on_cfg_denoised(self, params: Any) -> None:
        """``CFGDenoisedParams``: keep ``D_c`` and ``D_c^blur``; remove the hooks."""
        self.remove_hooks()
        if self.cond_rows is None:
            return
        n = self.cond_rows
        self.pending = (params.x[:n].clone(), params.x[n : 2 * n].clone())

    def on_cfg_after_cfg(self, params: Any) -> None:
        """``AfterCFGCallbackParams``: ``x ← x + s_seg·(D_c − D_c^blur)``.

        In img2img/inpainting A1111 has already blended the kept region back (``x·nmask + init·mask``,
        unless ``mask_before_denoising``); the term is then added where the image is regenerated only,
        which equals combining first and blending after.
        """
        pending, self.pending, self.cond_rows = self.pending, None, None
        if pending is None:
            return
        cond, blurred = pending
        term = (cond - blurred) * self.blur_scale
        denoiser = self.denoiser
        if getattr(denoiser, "mask", None) is not None and not getattr(denoiser, "mask_before_denoising", False):
            term = term * denoiser.nmask
        params.x = params.x + term

    def _follow_model_switch(self) -> bool:
        """Re-resolve the layers if the host now samples with another UNet; False if it lacks them."""
        unet = self.current_unet() if self.current_unet is not None else self.diffusion_model
        if unet is self.diffusion_model:
            return bool(self.layers)
        self.diffusion_model = unet
        try:
            self.layers = chosen_attn1(unet, self.layer_names)
        except ValueError as error:
            self.layers = []
            self._note(f"SEG off for the switched model: {error}")
        return bool(self.layers)

    def _unet_call(self, module: Any, args: tuple, kwargs: dict) -> None:
        """Which rows of this UNet call (the host may split the batch in row order) are blurred."""
        x = args[0] if args else kwargs["x"]
        start, stop = self.offset, self.offset + x.shape[0]
        self.offset = stop
        n = self.cond_rows or 0
        low, high = max(start, n), min(stop, 2 * n)
        self.state.blur_rows = slice(low - start, high - start) if low < high else None
        if self.state.blur_rows is not None:
            self.rows_per_call.append(int(x.shape[0]))

    def _blur_output(self, module: Any, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        rows = self.state.blur_rows
        if rows is None:
            return None
        height, width = self.state.grid(output.shape[1])
        blurred = blur_queries(output[rows], height, width, self.state.blur_sigma)
        self.blurred_layer_calls += 1
        return torch.cat([output[: rows.start], blurred, output[rows.stop :]])

    def remove_hooks(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.state.blur_rows = None

    def close(self) -> None:
        self.remove_hooks()
        self.pending, self.cond_rows = None, None

    def _note(self, message: str) -> None:
        if not self._noted and self.notify is not None:
            self.notify(message)
        self._noted = True


# --- Forge: one extra cond-only call in a post-CFG function --------------------------------------------


class ForgeBlurredSelfAttention:
    """Forge ``attn1`` replace patch for the extra call: every row's queries blurred, then Forge's attention."""

    def __init__(self, blur_sigma: float, latent_size: tuple[int, int], attention: Callable[..., torch.Tensor]) -> None:
        self.blur_sigma = blur_sigma
        self.latent_size = latent_size
        self.attention = attention

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        height, width = token_grid(q.shape[1], *self.latent_size)
        return self.attention(blur_queries(q, height, width, self.blur_sigma), k, v, extra_options["n_heads"])


class ForgeSEG:
    """The post-CFG function of a Forge UNet patcher clone (see :func:`patch_forge_unet`)."""

    def __init__(
        self, options: SEGOptions, layers: list[tuple[str, int, int]], host: ForgeHost, is_inversion: Callable[[], bool]
    ) -> None:
        self.options = options
        self.layers = layers
        self.host = host
        self.is_inversion = is_inversion
        self.extra_calls = 0
        # without inversion SEG the function returns inversion calls' result as it is: Zigzag may then run an
        # inversion at γ₂ = 0 on the unconditional branch alone (zigzag_webui.unconditional_branch_only)
        setattr(self, INVERSION_NEUTRAL, options.inversion_seg_scale == 0)

    def __call__(self, args: dict) -> torch.Tensor:
        denoised, x, sigma = args["denoised"], args["input"], args["sigma"]
        scale = self.options.scale_at(sigma.max(), inversion=self.is_inversion())
        if scale == 0.0:
            return denoised
        options = dict(args["model_options"])
        options.setdefault("transformer_options", {})
        latent = (int(x.shape[-2]), int(x.shape[-1]))
        for block, block_id, index in self.layers:
            patch = ForgeBlurredSelfAttention(self.options.seg_blur_sigma, latent, self.host.attention)
            options = self.host.set_patch_replace(options, patch, "attn1", block, block_id, index)
        blurred, _ = self.host.calc_cond_uncond_batch(args["model"], args["cond"], None, x, sigma, options)
        self.extra_calls += 1
        return denoised + (args["cond_denoised"] - blurred) * scale


@dataclass(frozen=True)
class ForgeHost:
    """Forge's functions the patch needs: ``backend.sampling.sampling_function.calc_cond_uncond_batch``,
    ``backend.patcher.base.set_model_options_patch_replace``, ``backend.attention.attention_function``."""

    calc_cond_uncond_batch: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    set_patch_replace: Callable[..., dict]
    attention: Callable[..., torch.Tensor]


def patch_forge_unet(
    unet_patcher: Any,
    options: SEGOptions,
    host: ForgeHost,
    is_inversion: Callable[[], bool],
    layer_names: str | None = None,
) -> Any:
    """A clone of Forge's ``forge_objects.unet`` with the SEG post-CFG function (``ValueError`` before cloning)."""
    names = ",".join(options.seg_applied_layers) if layer_names is None else layer_names
    modules = unet_patcher.model.diffusion_model.named_modules()
    layers = [block_name(name) for name in select_ldm_layers(modules, names)]
    patched = unet_patcher.clone()
    patched.set_model_sampler_post_cfg_function(ForgeSEG(options, layers, host, is_inversion))
    return patched


def forge_is_inversion(p: Any) -> Callable[[], bool]:
    """Whether the current call of ``p``'s sampler is a Zigzag inversion call (read at call time)."""
    return lambda: bool(getattr(getattr(getattr(p, "sampler", None), "model_wrap_cfg", None), INVERSION_ATTR, False))


def args_in_order() -> list[str]:
    """The ``alwayson_scripts`` argument order (documented in the README)."""
    return [f.name for f in fields(SEGArgs)]


def layer_check(diffusion_model: torch.nn.Module, layer_names: Iterable[str] | str) -> list[str]:
    """Module names the layer setting selects on this model (``ValueError`` naming seg_applied_layers)."""
    return select_ldm_layers(diffusion_model.named_modules(), layer_names)
