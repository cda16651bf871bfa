"""``zigzag-kdiff bench device``: the samplers on an accelerator, one table, for the day a GPU is available.

Per model and dtype, every sampler (k-diffusion's Euler, zigzag Euler, zigzag DDIM, zigzag DPM++ 2M, Euler +
SEG) runs twice on the same noise: the first run warms up and is kept as the reference of run-to-run
equality; the second is timed (CUDA events between synchronisations on a GPU, ``perf_counter`` on a CPU) with
the peak memory reset before it. Reported: model calls and rows per image, seconds per image, that time as a
ratio to Euler measured in the same run, the peak memory (GPU only), the largest |Δ| of the final latent
against the float32 run on the same noise, and whether the two runs are equal bit for bit.

Models: a random-weight full-size SDXL UNet (``UNet2DConditionModel`` with SDXL base's config; 1024² images,
128² latents, CFG 5.5, Karras sigmas) and the two bundled models (shapes16, ε-UNet, DDIM sigmas; shapes16-flow,
MMDiT, its flow sigmas; SEG is not defined on an MMDiT). ``--quick`` (CPU, CI): a tiny SDXL-layout UNet instead
of the full-size one, 3 steps, a few images; on a CPU the dtypes are fp32 and bf16 (torch has no fast CPU fp16).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..guidance import CallCounter, CFGDenoiser
from ..sampling import sample_zigzag_ddim, sample_zigzag_dpmpp_2m, sample_zigzag_euler
from ..seg import seg_attention

SAMPLERS = ("euler", "zigzag_euler", "zigzag_ddim", "zigzag_dpmpp_2m", "euler + SEG")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class DeviceConfig:
    device: str = "cuda"
    quick: bool = False
    steps: int = 10  # the SDXL UNet's; the bundled models take 20
    dtypes: tuple[str, ...] = ("fp32", "fp16", "bf16")
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [d for d in self.dtypes if d not in DTYPES]
        if unknown or "fp32" not in self.dtypes:
            raise ValueError(f"dtypes must include fp32 and be among {list(DTYPES)}, got {self.dtypes!r}")
        if not isinstance(self.steps, int) or self.steps < 2:
            raise ValueError(f"steps must be an integer >= 2, got {self.steps!r}")


@dataclass
class Case:
    """One model: a denoiser per dtype, its conditioning, noise shape, sigmas and CFG scale."""

    name: str
    build: Callable[[torch.dtype], tuple[nn.Module, nn.Module]]  # dtype -> (denoiser, network for SEG)
    cond: Any
    uncond: Any
    shape: tuple[int, ...]
    sigmas: torch.Tensor
    scale: float
    start: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    seg: bool = True


@dataclass
class Row:
    model: str
    dtype: str
    sampler: str
    calls: int = 0
    rows_per_image: float = 0.0
    seconds_per_image: float = math.nan
    ratio: float = math.nan
    peak_mib: float | None = None
    max_delta: float | None = None
    equal: bool | None = None
    note: str = ""
    latent: torch.Tensor | None = field(default=None, repr=False)


def sdxl_unet_config() -> dict[str, Any]:
    """SDXL base 1.0's ``UNet2DConditionModel`` config (2.6 B parameters), written out: no hub here."""
    return {
        "sample_size": 128,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "block_out_channels": (320, 640, 1280),
        "layers_per_block": 2,
        "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20),
        "cross_attention_dim": 2048,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    }


def _sd_alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0).float()


def _unet_case(
    name: str,
    unet: nn.Module,
    device: torch.device,
    steps: int,
    images: int,
    size: int,
    tokens: int,
    width: int,
    pooled: int,
    seed: int,
) -> Case:
    """An SDXL-layout UNet with random conditioning (CFG 5.5, Karras sigmas)."""
    from k_diffusion import sampling as k_sampling
    from k_diffusion.external import DiscreteEpsDDPMDenoiser

    from ..models import UNetEps

    alphas = _sd_alphas_cumprod().to(device)
    generator = torch.Generator().manual_seed(seed + 1)
    text = torch.randn(1, tokens, width, generator=generator).to(device)
    text_embeds = torch.randn(1, pooled, generator=generator).to(device)
    time_ids = torch.tensor([[8.0 * size, 8.0 * size, 0, 0, 8.0 * size, 8.0 * size]], device=device)
    cond = {"encoder_hidden_states": text, "added_cond_kwargs": {"text_embeds": text_embeds, "time_ids": time_ids}}
    uncond = {  # SDXL's force_zeros_for_empty_prompt
        "encoder_hidden_states": torch.zeros_like(text),
        "added_cond_kwargs": {"text_embeds": torch.zeros_like(text_embeds), "time_ids": time_ids},
    }

    def build(dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
        network = unet if dtype == torch.float32 else copy.deepcopy(unet).to(dtype)
        return DiscreteEpsDDPMDenoiser(UNetEps(network), alphas, quantize=True), network

    probe = DiscreteEpsDDPMDenoiser(UNetEps(unet), alphas, quantize=True)
    sigmas = k_sampling.get_sigmas_karras(steps, float(probe.sigma_min), float(probe.sigma_max)).float()
    return Case(name, build, cond, uncond, (images, 4, size, size), sigmas.to(device), 5.5, lambda n, s: n * s[0])


def build_cases(config: DeviceConfig) -> list[Case]:
    """The SDXL UNet (full size, or tiny with ``quick``) and the two bundled models, on ``config.device``."""
    from diffusers import UNet2DConditionModel

    from . import shapes as bench_shapes

    device = torch.device(config.device)
    cases = []
    torch.manual_seed(config.seed)
    if config.quick:
        from ..models import tiny_unet

        unet = tiny_unet(cross_attention_dim=64, sample_size=16, sdxl=True, text_embeds_dim=32).to(device)
        cases.append(_unet_case("tiny SDXL-layout UNet (random)", unet, device, 3, 2, 16, 77, 64, 32, config.seed))
    else:
        with device:
            unet = UNet2DConditionModel(**sdxl_unet_config()).eval()
        cases.append(
            _unet_case("SDXL UNet (random, 1024²)", unet, device, config.steps, 1, 128, 77, 2048, 1280, config.seed)
        )
    steps, images = (3, 4) if config.quick else (20, 64)
    specs = bench_shapes.shapes_task.all_specs()[:images]
    for name in ("shapes", "shapes-flow"):
        model = bench_shapes.load_model(name)
        cond, uncond = model.encode([s.prompt for s in specs]), model.encode([""])
        move = (
            (lambda c: {k: v.to(device) for k, v in c.items()}) if isinstance(cond, dict) else (lambda c: c.to(device))
        )
        cases.append(_bundled_case(name, model, move(cond), move(uncond), device, steps, images))
    return cases


def _bundled_case(name: str, model: Any, cond: Any, uncond: Any, device: torch.device, steps: int, images: int) -> Case:
    from ..flow import FlowDenoiser

    sigmas = model.sigmas(steps).to(device)
    if model.flow:
        reference = model.denoiser()

        def build(dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
            network = model.pipe.transformer.to(device)
            network = network if dtype == torch.float32 else copy.deepcopy(network).to(dtype)
            velocity = type(reference.inner_model)(network)
            denoiser = FlowDenoiser(
                velocity, timestep_scale=1000.0, sigma_min=float(reference.sigma_min), sigma_max=1.0
            )
            return denoiser, network

        return Case(
            "shapes16-flow (bundled MMDiT)",
            build,
            cond,
            uncond,
            (images, 3, 16, 16),
            sigmas,
            3.0,
            model.start,
            seg=False,
        )

    from k_diffusion.external import DiscreteEpsDDPMDenoiser

    from ..models import UNetEps

    def build_unet(dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
        network = model.unet.to(device)
        network = network if dtype == torch.float32 else copy.deepcopy(network).to(dtype)
        return DiscreteEpsDDPMDenoiser(UNetEps(network), model.alphas_cumprod.to(device), quantize=True), network

    return Case(
        "shapes16 (bundled ε-UNet)",
        build_unet,
        {"encoder_hidden_states": cond},
        {"encoder_hidden_states": uncond},
        (images, 3, 16, 16),
        sigmas,
        3.0,
        model.start,
    )


def _sample(sampler: str, guided: nn.Module, x: torch.Tensor, sigmas: torch.Tensor, args: dict) -> torch.Tensor:
    if sampler == "euler":
        from k_diffusion import sampling as k_sampling

        return k_sampling.sample_euler(guided, x, sigmas, args, disable=True)
    if sampler == "euler + SEG":
        return sample_zigzag_euler(guided, x, sigmas, {**args, "seg_scale": 3.0}, disable=True, zigzag_steps=0)
    rule = {
        "zigzag_euler": sample_zigzag_euler,
        "zigzag_ddim": sample_zigzag_ddim,
        "zigzag_dpmpp_2m": sample_zigzag_dpmpp_2m,
    }[sampler]
    return rule(guided, x, sigmas, args, disable=True)


class _Clock:
    """Wall time of a block: CUDA events between synchronisations on a GPU, ``perf_counter`` elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __enter__(self) -> _Clock:
        if self.cuda:
            torch.cuda.synchronize()
            self.begin, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.begin.record()
        else:
            self.begin_s = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.end.record()
            torch.cuda.synchronize()
            self.seconds = self.begin.elapsed_time(self.end) / 1000
        else:
            self.seconds = time.perf_counter() - self.begin_s


@torch.no_grad()
def run_case(case: Case, config: DeviceConfig, log: Callable[[str], None] | None = None) -> list[Row]:
    device = torch.device(config.device)
    noise = torch.randn(case.shape, generator=torch.Generator().manual_seed(config.seed)).to(device)
    rows: list[Row] = []
    reference: dict[str, torch.Tensor] = {}
    for dtype_name in config.dtypes:
        denoiser, network = case.build(DTYPES[dtype_name])
        for sampler in SAMPLERS:
            row = Row(case.name, dtype_name, sampler)
            rows.append(row)
            if sampler.endswith("SEG") and not case.seg:
                row.note = "SEG is not defined on an MMDiT"
                continue
            counter = CallCounter(denoiser)
            guided = CFGDenoiser(counter)
            args = {"cond": case.cond, "uncond": case.uncond, "cond_scale": case.scale}
            seg = sampler.endswith("SEG")
            try:
                outputs = []
                for run in range(2):  # run 0: warm-up and the equality reference; run 1: timed
                    counter.calls = counter.rows = 0
                    if run == 1 and device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    with seg_attention(network, ("mid",)) if seg else nullcontext() as state:
                        guided.seg_state = state
                        with _Clock(device) as clock:
                            outputs.append(_sample(sampler, guided, case.start(noise, case.sigmas), case.sigmas, args))
            except RuntimeError as error:  # e.g. an op without a kernel for this dtype on this device
                row.note = f"{type(error).__name__}: {str(error).splitlines()[0][:60]}"
                continue
            images = case.shape[0]
            row.calls = counter.calls
            row.rows_per_image = counter.rows / images
            row.seconds_per_image = clock.seconds / images
            row.peak_mib = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
            row.equal = bool(torch.equal(outputs[0], outputs[1]))
            row.latent = outputs[1].float().cpu()
            if dtype_name == "fp32":
                reference[sampler] = row.latent
            elif sampler in reference:
                row.max_delta = float((row.latent - reference[sampler]).abs().max())
            if log:
                log(f"  {case.name} {dtype_name} {sampler}: {row.seconds_per_image:.4f} s/image")
        del denoiser, network
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for dtype_name in config.dtypes:
        euler = next(r for r in rows if r.dtype == dtype_name and r.sampler == "euler")
        for row in rows:
            if row.dtype == dtype_name and math.isfinite(row.seconds_per_image):
                row.ratio = row.seconds_per_image / euler.seconds_per_image
    return rows


def run_device(config: DeviceConfig, log: Callable[[str], None] | None = None) -> list[Row]:
    """Every case of :func:`build_cases`, each sampler and dtype."""
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device must be available: {config.device!r} was given but torch sees no CUDA device")
    rows: list[Row] = []
    for case in build_cases(config):
        rows += run_case(case, config, log)
    return rows


def _cell(value: float | None, spec: str) -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec)


def format_device(rows: list[Row], config: DeviceConfig) -> str:
    """The one table (markdown)."""
    device = torch.device(config.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [
        f"bench device on {name} (torch {torch.__version__}){', --quick' if config.quick else ''}: seconds per image "
        "of the timed run (after a warm-up run on the same noise), × Euler = ratio to Euler of the same model and "
        "dtype in this run; max |Δ| = largest difference of the final latent from the fp32 run; equal = the two "
        "runs are identical bit for bit.",
        "",
        "| model | dtype | sampler | calls | rows/image | s/image | × Euler | peak MiB | max abs Δ vs fp32 | equal |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r.note:
            lines.append(f"| {r.model} | {r.dtype} | {r.sampler} | — | — | — | — | — | — | {r.note} |")
            continue
        delta = "ref" if r.dtype == "fp32" else _cell(r.max_delta, ".3g")
        lines.append(
            f"| {r.model} | {r.dtype} | {r.sampler} | {r.calls} | {r.rows_per_image:g} | "
            f"{_cell(r.seconds_per_image, '.4f')} | {_cell(r.ratio, '.2f')} | {_cell(r.peak_mib, '.0f')} | "
            f"{delta} | {'yes' if r.equal else 'no'} |"
        )
    return "\n".join(lines) + "\n"
