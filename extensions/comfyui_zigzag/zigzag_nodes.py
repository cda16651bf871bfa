"""The pack's nodes (ComfyUI V3 API): Zigzag Sampler and the Guidance Interval model patches."""

from __future__ import annotations

import math

import comfy.samplers
from comfy_api.latest import ComfyExtension, io

from zigzag_kdiff.guidance import GuidanceInterval, check_finite

from .adapter import RULES, interval_from_percent, patch_guidance_interval, register_samplers, sample_zigzag
from .seg_nodes import SEG_NODES

SIGMA_MAX = 10000.0
"""Upper bound of the sigma widgets (a guidance interval reaching it has no upper limit in practice)."""

AUTO = -1.0
"""Widget value of ``inversion_scale`` and ``inversion_guidance`` that leaves the choice to the model's default
(:func:`adapter.resolve_distilled_guidance`)."""


def auto_or_value(name: str, value: float) -> float | None:
    """``None`` for the widget value :data:`AUTO` (-1), else the value, which must be >= 0."""
    number = check_finite(name, value)
    if number == AUTO:
        return None
    if number < 0:
        raise ValueError(f"{name} must be -1 (auto) or >= 0, got {value:g}")
    return number


def zigzag_steps_option(zigzag_steps: float, unit: str) -> dict[str, float | int]:
    """The sampler option for λ: ``zigzag_fraction`` (share of the steps) or ``zigzag_steps`` (a count)."""
    value = check_finite("zigzag_steps", zigzag_steps)
    if unit == "fraction":
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"zigzag_steps as a fraction must be in [0, 1] (share of the steps), got {value:g}")
        return {"zigzag_fraction": value}
    if unit == "steps":
        if value < 0 or value != math.floor(value):
            raise ValueError(f"zigzag_steps as steps must be a whole number >= 0, got {value:g}")
        return {"zigzag_steps": int(value)}
    raise ValueError(f"zigzag_steps_unit must be 'fraction' or 'steps', got {unit!r}")


class ZigzagSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ZigzagSampler",
            display_name="Zigzag Sampler",
            category="sampling/custom_sampling/samplers",
            description=(
                "Z-Sampling (zigzag diffusion sampling, ICLR 2025): each step denoises at the guider's cfg (γ₁), "
                "inverts back at the inversion scale (γ₂) and denoises again, so the guidance gap γ₁ − γ₂ "
                "accumulates prompt semantics. On guidance-distilled models (Flux dev) the gap is in the distilled "
                "guidance: denoising at the FluxGuidance value (g₁), inverting at inversion_guidance (g₂). For "
                "SamplerCustom / SamplerCustomAdvanced with a CFG guider or BasicGuider."
            ),
            inputs=[
                io.Combo.Input(
                    "rule",
                    options=list(RULES),
                    default="euler",
                    tooltip="Zigzag rule: euler (Euler steps and inversion, any model), ddim (the paper's eq. 4, "
                    "ε/v models), ddim_released (the released code's update), dpmpp_2m (DPM++ 2M steps, Euler "
                    "inversion, any model).",
                ),
                io.Float.Input(
                    "inversion_scale",
                    default=AUTO,
                    min=AUTO,
                    max=100.0,
                    step=0.1,
                    round=0.01,
                    tooltip="γ₂, the CFG scale of inversion calls; 0 is the unconditional prediction (released "
                    "code), 1 the conditional one; at 0 and 1 an inversion evaluates one batch, not two. "
                    "Must be <= cfg. -1 (auto): 1 on guidance-distilled models (Flux dev) at cfg 1, else 0.",
                ),
                io.Float.Input(
                    "zigzag_steps",
                    default=1.0,
                    min=0.0,
                    max=10000.0,
                    step=0.01,
                    tooltip="λ, zigzag on the first (noisiest) steps: a fraction of the steps sampled (1.0 = all "
                    "but the last) or a number of steps (at most steps − 1), see zigzag_steps_unit.",
                ),
                io.Combo.Input("zigzag_steps_unit", options=["fraction", "steps"], default="fraction"),
                io.Int.Input(
                    "zigzag_rounds", default=1, min=0, max=100, tooltip="T_max, zigzag rounds per step (0 = Euler)."
                ),
                io.Boolean.Input(
                    "guidance_interval",
                    default=False,
                    tooltip="CFG only for sigma_low <= σ <= sigma_high (the uncond pass is skipped elsewhere); "
                    "zigzag only on steps inside.",
                ),
                io.Float.Input("sigma_low", default=0.28, min=0.0, max=SIGMA_MAX, step=0.01, round=False),
                io.Float.Input("sigma_high", default=5.42, min=0.0, max=SIGMA_MAX, step=0.01, round=False),
                io.Float.Input(  # last, so workflows saved before it keep their widget values
                    "inversion_guidance",
                    default=AUTO,
                    min=AUTO,
                    max=100.0,
                    step=0.1,
                    round=0.01,
                    tooltip="g₂, the distilled guidance of inversion calls on guidance-distilled models (Flux dev); "
                    "must be <= the FluxGuidance value g₁ of the positive conditioning (default 3.5). -1 (auto): "
                    "min(1, g₁) on those models; other models (SD3, Flux schnell, UNets) have no distilled guidance.",
                ),
            ],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(
        cls,
        rule: str,
        inversion_scale: float,
        zigzag_steps: float,
        zigzag_steps_unit: str,
        zigzag_rounds: int,
        guidance_interval: bool,
        sigma_low: float,
        sigma_high: float,
        inversion_guidance: float = AUTO,
    ) -> io.NodeOutput:
        if rule not in RULES:
            raise ValueError(f"rule must be one of {list(RULES)}, got {rule!r}")
        if not isinstance(zigzag_rounds, int) or zigzag_rounds < 0:
            raise ValueError(f"zigzag_rounds (T_max) must be an integer >= 0, got {zigzag_rounds!r}")
        options = {
            "rule": rule,
            "inversion_scale": auto_or_value("inversion_scale", inversion_scale),
            "inversion_guidance": auto_or_value("inversion_guidance", inversion_guidance),
            "zigzag_rounds": zigzag_rounds,
            "guidance_interval": GuidanceInterval(sigma_low, sigma_high) if guidance_interval else None,
            **zigzag_steps_option(zigzag_steps, zigzag_steps_unit),
        }
        return io.NodeOutput(comfy.samplers.KSAMPLER(sample_zigzag, extra_options=options))


class GuidanceIntervalPercent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ZigzagGuidanceInterval",
            display_name="Guidance Interval",
            category="advanced/guidance",
            description=(
                "Classifier-free guidance only between start_percent and end_percent of sampling (Kynkäänniemi "
                "et al., 2024); elsewhere the guider runs at cfg 1 and the uncond pass is skipped. Works with "
                "KSampler and CFG guiders; the Zigzag Sampler then zigzags only on steps inside."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Float.Input("start_percent", default=0.2, min=0.0, max=1.0, step=0.001),
                io.Float.Input("end_percent", default=0.9, min=0.0, max=1.0, step=0.001),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, start_percent: float, end_percent: float) -> io.NodeOutput:
        interval = interval_from_percent(model.get_model_object("model_sampling"), start_percent, end_percent)
        return io.NodeOutput(patch_guidance_interval(model, interval))


class GuidanceIntervalSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ZigzagGuidanceIntervalSigmas",
            display_name="Guidance Interval (Sigmas)",
            category="advanced/guidance",
            description=(
                "Classifier-free guidance only for sigma_low <= σ <= sigma_high; elsewhere the guider runs at "
                "cfg 1 and the uncond pass is skipped. The paper's SD-XL interval is (0.28, 5.42]."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Float.Input("sigma_low", default=0.28, min=0.0, max=SIGMA_MAX, step=0.01, round=False),
                io.Float.Input("sigma_high", default=5.42, min=0.0, max=SIGMA_MAX, step=0.01, round=False),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, sigma_low: float, sigma_high: float) -> io.NodeOutput:
        return io.NodeOutput(patch_guidance_interval(model, GuidanceInterval(sigma_low, sigma_high)))


class ZigzagExtension(ComfyExtension):
    async def on_load(self) -> None:
        register_samplers()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [ZigzagSampler, GuidanceIntervalPercent, GuidanceIntervalSigmas, *SEG_NODES]
