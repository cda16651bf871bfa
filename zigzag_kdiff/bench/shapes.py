"""``zigzag-kdiff bench shapes``: Z-Sampling against a CFG sweep on the bundled text-to-image model.

The bundled model (``zigzag_kdiff/models_data/shapes16``, trained by ``tools/train_shapes.py``) is a
diffusers ``UNet2DConditionModel`` with cross- and self-attention over a small ``CLIPTextModel``,
ε-prediction on SD's scaled-linear schedule, in pixel space (16×16 RGB). Sampling goes through the
same code path as an SD user's: k-diffusion's ``DiscreteEpsDDPMDenoiser`` over
:class:`zigzag_kdiff.models.UNetEps`, :class:`zigzag_kdiff.CFGDenoiser` (uncond = the empty prompt),
DDIM sigmas (:func:`zigzag_kdiff.ddim_sigmas`), batched over prompts × seeds with the same initial
noise for every method.

Every image is scored by the rule checker :func:`zigzag_kdiff.bench.shapes_task.check_image` (count, colour,
position, cleanliness; "all correct" = count ∧ colour ∧ position). Methods are compared on paired
images (same prompt, same seed) with McNemar's exact test (scipy.stats.binomtest on the discordant
pairs) against standard CFG at the same scale, against the sweep's best scale, and against standard
CFG with as many model rows per image (more steps).
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..guidance import CallCounter, CFGDenoiser
from ..sampling import ddim_sigmas
from ..seg import seg_attention
from . import shapes_task
from .common import Method, sample_method, save_figure

__all__ = [
    "Config",
    "FlowShapesModel",
    "for_model",
    "QUICK",
    "ShapesModel",
    "load_model",
    "run_shapes",
    "format_shapes",
    "write_outputs",
    "sample_grid",
]

ATTRIBUTES = ("count", "colour", "position", "all_correct", "count_colour", "clean")
TESTED = ("all_correct", "count_colour", "clean")  # the attributes of the paired tests


@dataclass(frozen=True)
class Config:
    model: str | None = None  # a diffusers folder; None: the bundled model
    seeds: int = 20
    first_seed: int = 0  # seeds first_seed … first_seed + seeds − 1 (another range: an independent replicate)
    prompts: int = 72  # the first n of shapes_task.all_specs()
    steps: int = 20
    cfg_scales: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0, 8.0)
    rule: str = "ddim"  # Z-Sampling's rule in the main run and the sweeps (the paper's eq. 4)
    reference_scale: float = 3.0  # γ₁ of Z-Sampling's main run and of its variants
    extra_scales: tuple[float, ...] = (2.0, 5.0)  # more γ₁ for Z-Sampling (on sweep_seeds)
    sweep_seeds: int = 4  # seeds of the variants and of the λ, γ₂ and compute sweeps
    lambdas: tuple[int, ...] = (2, 5, 10)
    inversion_scales: tuple[float, ...] = (2.0,)  # besides 0 and 1
    compute_steps: tuple[int, ...] = (5, 10)  # more T for the equal-compute curves (on sweep_seeds)
    interval: tuple[float, float] = (0.28, 5.42)
    batch: int = 128  # images per UNet call (CFG doubles the rows; ~256 rows is fastest on CPU here)
    threads: int = 1
    extra_rules: tuple[str, ...] = ()  # more Z-Sampling rules among the variants, each beside plain sampling with it

    @property
    def equal_row_steps(self) -> int:
        """Steps of standard CFG (2 rows each) costing at least Z-Sampling's 2T + 3(T − 1) rows."""
        return math.ceil((2 * self.steps + 3 * (self.steps - 1)) / 2)


QUICK = Config(
    seeds=2,
    prompts=8,
    steps=6,
    cfg_scales=(1.0, 3.0, 6.0),
    extra_scales=(),
    sweep_seeds=2,
    lambdas=(2,),
    inversion_scales=(),
    compute_steps=(3,),
    batch=48,
)


FLOW_INTERVAL = (0.219, 0.844)
"""The guidance interval (0.28, 5.42] of the VE bench in flow σ: σ_flow = σ_VE/(1 + σ_VE) (same noise level)."""


def for_model(config: Config, model: str | Path | None) -> Config:
    """``config`` for ``model``: on the flow model Z-Sampling's main rule is Euler (on a flow latent the DDIM step
    is the Euler step; the DDIM inversion and the DPM++ 2M rule run as variants) and the interval is in flow σ."""
    config = replace(config, model=None if model is None else str(model))
    if is_flow_model(model):
        config = replace(config, rule="euler", interval=FLOW_INTERVAL, extra_rules=("dpmpp_2m",))
    return config


def main_only(config: Config) -> Config:
    """``bench shapes --main-only``: the CFG sweep 1–5, Z-Sampling with each rule, equal rows, γ₂ = 1 and the
    guidance interval, without the λ, γ₂, γ₁ and compute sweeps (a third of the rows)."""
    return replace(
        config,
        cfg_scales=tuple(s for s in config.cfg_scales if s <= 5),
        extra_scales=(),
        lambdas=(),
        inversion_scales=(),
        compute_steps=(),
    )


def main_methods(config: Config) -> list[Method]:
    """Run on all seeds: the CFG sweep and Z-Sampling (``config.rule``, γ₂ = 0) at the reference γ₁."""
    T = config.steps
    out = [Method("standard", "standard", s, T) for s in config.cfg_scales]
    out.append(Method(f"Z-Sampling {config.rule} γ₂=0", config.rule, config.reference_scale, T))
    return out


def equal_row_methods(config: Config, best_scale: float) -> list[Method]:
    """Standard CFG with Z-Sampling's row budget, at the reference γ₁ and at the sweep's best scale."""
    scales = dict.fromkeys([config.reference_scale, best_scale])
    return [Method("standard, equal rows", "standard", s, config.equal_row_steps) for s in scales]


def variant_methods(config: Config) -> list[Method]:
    """Run on ``sweep_seeds``: the other rule, other γ₁, γ₂ = 1, the guidance interval, λ, γ₂ and T sweeps."""
    T, ref, n, rule = config.steps, config.reference_scale, config.sweep_seeds, config.rule
    other = "euler" if rule == "ddim" else "ddim"
    out = [Method(f"Z-Sampling {rule} γ₂=0", rule, g, T, seeds=n) for g in config.extra_scales]
    out.append(Method(f"Z-Sampling {other} γ₂=0", other, ref, T, seeds=n))
    out.append(Method(f"Z-Sampling {rule} γ₂=1", rule, ref, T, inversion_scale=1.0, seeds=n))
    out.append(Method("standard, interval", "standard", ref, T, interval=config.interval, seeds=n))
    out.append(Method(f"Z-Sampling {rule} γ₂=0, interval", rule, ref, T, interval=config.interval, seeds=n))
    out += [Method("λ sweep", rule, ref, T, zigzag_steps=lam, seeds=n) for lam in config.lambdas if lam < T]
    out += [
        Method("γ₂ sweep", rule, ref, T, inversion_scale=g2, seeds=n) for g2 in config.inversion_scales if g2 <= ref
    ]
    for extra in config.extra_rules:
        out.append(Method(f"standard {extra}", extra, ref, T, zigzag_steps=0, seeds=n))
        out.append(Method(f"Z-Sampling {extra} γ₂=0", extra, ref, T, seeds=n))
    out += [Method("compute: standard", "standard", ref, t, seeds=n) for t in config.compute_steps]
    out += [Method("compute: Z-Sampling", rule, ref, t, seeds=n) for t in config.compute_steps]
    return out


def seg_methods(config: Config) -> list[Method]:
    """``bench shapes --seg``: Smoothed Energy Guidance (official defaults: s_seg = 3, infinite blur, mid) with
    CFG at the reference γ₁ and alone (CFG 1), a finite blur, all self-attention layers, a SEG interval, and
    with Z-Sampling (inversion calls without SEG, and with), each beside the same sampler without SEG."""
    T, ref, rule = config.steps, config.reference_scale, config.rule
    seg = {"seg_scale": 3.0}
    every = {"seg_layers": ("down", "mid", "up"), **seg}
    return [
        Method("standard", "standard", ref, T),
        Method("SEG", "standard", ref, T, **seg),
        Method("SEG", "standard", ref, T, seg_blur_sigma=1.0, **seg),
        Method("SEG", "standard", ref, T, **every),
        Method("SEG", "standard", ref, T, seg_interval=config.interval, **every),
        Method("standard", "standard", 1.0, T),
        Method("SEG", "standard", 1.0, T, **seg),
        Method(f"Z-Sampling {rule} γ₂=0", rule, ref, T),
        Method("Z-Sampling + SEG", rule, ref, T, **seg),
        Method("Z-Sampling + SEG", rule, ref, T, **every),
        Method("Z-Sampling + SEG", rule, ref, T, inversion_seg_scale=3.0, **every),
    ]


# --- the model ----------------------------------------------------------------------------------------


@dataclass
class ShapesModel:
    """The pieces of a diffusers text-to-image folder that sampling needs: the bundled ε-UNet (shapes16)."""

    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: Any
    alphas_cumprod: torch.Tensor
    flow = False

    @property
    def network(self) -> torch.nn.Module:
        return self.unet

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """``last_hidden_state`` of the text encoder, prompts padded to the tokenizer's max length (SD's)."""
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return self.text_encoder(ids).last_hidden_state

    def denoiser(self) -> torch.nn.Module:
        """k-diffusion's ``DiscreteEpsDDPMDenoiser`` over the UNet (as for SD)."""
        from k_diffusion.external import DiscreteEpsDDPMDenoiser

        from ..models import UNetEps

        return DiscreteEpsDDPMDenoiser(UNetEps(self.unet), self.alphas_cumprod, quantize=True)

    def sigmas(self, steps: int) -> torch.Tensor:
        """DDIM sigmas (:func:`zigzag_kdiff.ddim_sigmas`), in k-diffusion's VE form."""
        return ddim_sigmas(self.alphas_cumprod, steps)

    def start(self, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """The VE latent at ``sigmas[0]`` for unit ``noise``."""
        return noise * sigmas[0]

    def images(self, out: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1]: back from the VE form at σ_end, x_vp = x / sqrt(1 + σ²)."""
        return ((out / (1 + sigmas[-1] ** 2) ** 0.5 + 1) / 2).clamp(0, 1)


@dataclass
class FlowShapesModel:
    """The bundled flow model (shapes16-flow): a ``StableDiffusion3Pipeline`` without VAE, sampled as an SD3
    user's is: :func:`zigzag_kdiff.diffusers.denoiser_for` (a :class:`~zigzag_kdiff.flow.FlowDenoiser`
    over SD3's transformer), the pipeline's own prompt encoding and sigmas."""

    pipe: Any
    flow = True

    @property
    def network(self) -> torch.nn.Module:
        return self.pipe.transformer

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The pipeline's ``encode_prompt``: CLIP-L ⊕ CLIP-G hidden states and pooled projections."""
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device="cpu", do_classifier_free_guidance=False
        )
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def denoiser(self) -> torch.nn.Module:
        from ..diffusers import denoiser_for

        return denoiser_for(self.pipe)

    def sigmas(self, steps: int) -> torch.Tensor:
        """The pipeline's own flow sigmas (``FlowMatchEulerDiscreteScheduler``, no shift: 1 … 0.001, then 0)."""
        from ..diffusers import sigmas_for

        return sigmas_for(self.pipe, self.denoiser(), "model", steps)

    def start(self, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """x_σ₀ = (1 − σ₀)·x₀ + σ₀·ε is the noise itself at σ₀ = 1, as the pipeline starts."""
        if float(sigmas[0]) != 1.0:
            raise ValueError(f"a flow model's sigmas must start at 1, got {float(sigmas[0])}")
        return noise.clone()

    def images(self, out: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """The final flow latent at σ = 0 is the image in [-1, 1]."""
        return ((out + 1) / 2).clamp(0, 1)


FLOW_MODEL_NAMES = ("shapes-flow",)
"""``Config.model`` names of the bundled flow model (``shapes``/None: the bundled UNet)."""


def is_flow_model(folder: str | Path | None) -> bool:
    """True for the bundled flow model's name or a diffusers folder with a ``transformer/``."""
    if folder is None or str(folder) == "shapes":
        return False
    return str(folder) in FLOW_MODEL_NAMES or (Path(folder) / "transformer").is_dir()


def load_model(folder: str | Path | None = None) -> ShapesModel | FlowShapesModel:
    """Load a shapes model, safetensors only: ``None``/``"shapes"`` the bundled shapes16 UNet, ``"shapes-flow"``
    the bundled flow model, or a diffusers folder (``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``;
    or a ``StableDiffusion3Pipeline`` folder with ``transformer/``)."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    if is_flow_model(folder):
        from ..diffusers import load_pipeline

        name = shapes_task.BUNDLED_FLOW_MODEL if str(folder) in FLOW_MODEL_NAMES else folder
        pipe = load_pipeline(str(name))
        pipe.set_progress_bar_config(disable=True)
        return FlowShapesModel(pipe)
    folder = Path(folder) if folder is not None and str(folder) != "shapes" else shapes_task.BUNDLED_MODEL
    if not (folder / "unet").is_dir():
        raise ValueError(
            f"model must be 'shapes', 'shapes-flow' or a diffusers folder with unet/ (or transformer/), "
            f"text_encoder/, tokenizer/ and scheduler/, got {folder}"
        )
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", use_safetensors=True).eval()
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
    return ShapesModel(unet, text_encoder, tokenizer, scheduler.alphas_cumprod.to(torch.float32))


def _rows(cond: Any, part: slice) -> Any:
    """Rows ``part`` of a conditioning (a tensor, or a dict of tensors)."""
    return {k: v[part] for k, v in cond.items()} if isinstance(cond, dict) else cond[part]


def _repeat(cond: Any, times: int) -> Any:
    """A conditioning repeated ``times`` along the batch (seed-major, as the noise)."""

    def rep(t: torch.Tensor) -> torch.Tensor:
        return t.repeat(times, *([1] * (t.ndim - 1)))

    return {k: rep(v) for k, v in cond.items()} if isinstance(cond, dict) else rep(cond)


def _as_kwargs(cond: Any) -> dict[str, torch.Tensor]:
    return cond if isinstance(cond, dict) else {"encoder_hidden_states": cond}


# --- sampling -------------------------------------------------------------------------------------------


def initial_noise(seeds: int, prompts: int, first_seed: int = 0) -> torch.Tensor:
    """Unit noise ``[seeds, prompts, 3, 16, 16]``; seed s (``first_seed`` … ``first_seed + seeds − 1``) draws
    from ``torch.Generator().manual_seed(s)``."""
    shape = (prompts, 3, shapes_task.IMAGE_SIZE, shapes_task.IMAGE_SIZE)
    seed_range = range(first_seed, first_seed + seeds)
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seed_range])


@torch.no_grad()
def generate(
    model: ShapesModel | FlowShapesModel, method: Method, noise: torch.Tensor, cond: Any, uncond: Any, batch: int
) -> tuple[torch.Tensor, float]:
    """Images in [0, 1] for unit ``noise`` ``[n, 3, 16, 16]`` and the prompts' conditioning ``cond`` (``n`` rows:
    the UNet's embeddings ``[n, 8, 64]``, or the flow model's dict); returns ``(images, model rows per image)``."""
    if model.flow and method.seg_scale > 0:
        raise ValueError("seg_scale must be 0 on the flow model: SEG is defined on the UNet's self-attention only")
    counter = CallCounter(model.denoiser())
    guided = CFGDenoiser(counter, guidance_interval=method.interval, seg_interval=method.seg_interval)
    sigmas = model.sigmas(method.steps)
    images = []
    seg = method.seg_scale > 0  # SEG: processors on the UNet for this method only (zigzag_kdiff.seg)
    with seg_attention(model.network, method.seg_layers, method.seg_blur_sigma) if seg else nullcontext() as state:
        guided.seg_state = state
        for start in range(0, len(noise), batch):
            part = slice(start, start + batch)
            x = model.start(noise[part], sigmas)
            args = {"cond": _as_kwargs(_rows(cond, part)), "uncond": _as_kwargs(uncond), "cond_scale": method.scale}
            if seg:
                args.update(seg_scale=method.seg_scale, inversion_seg_scale=method.inversion_seg_scale)
            out = sample_method(method, guided, x, sigmas, args)
            images.append(model.images(out, sigmas))
    return torch.cat(images), counter.rows / len(noise)


def score(images: torch.Tensor, specs: list[shapes_task.ShapeSpec]) -> dict[str, np.ndarray]:
    """Checker outcomes per image: ``{attribute: bool array}``."""
    results = [shapes_task.check_image(image.numpy(), spec) for image, spec in zip(images, specs)]
    outcomes = {name: np.array([getattr(r, name) for r in results]) for name in ATTRIBUTES if name != "count_colour"}
    outcomes["count_colour"] = outcomes["count"] & outcomes["colour"]
    return outcomes


@dataclass
class Run:
    method: Method
    rows_per_image: float
    seconds: float
    outcomes: dict[str, np.ndarray] = field(repr=False)  # attribute -> [seeds, prompts] bools
    images: torch.Tensor | None = field(default=None, repr=False)  # [seeds, prompts, 3, 16, 16]


def best_scale(runs: list[Run]) -> float:
    """The standard sweep's scale with the highest all-correct rate (ties: the smaller scale)."""
    sweep = [run for run in runs if run.method.family == "standard"]
    return max(sweep, key=lambda run: (run.outcomes["all_correct"].mean(), -run.method.scale)).method.scale


def run_shapes(config: Config = Config(), log=None, keep_images: bool = False, seg: bool = False) -> list[Run]:
    """Every method of the config, paired (same prompts, seeds and initial noise); ``seg``: the SEG methods
    (:func:`seg_methods`) instead."""
    torch.set_num_threads(config.threads)
    model = load_model(config.model)
    specs = shapes_task.all_specs()[: config.prompts]
    cond = model.encode([spec.prompt for spec in specs])
    uncond = model.encode([""])
    noise = initial_noise(config.seeds, config.prompts, config.first_seed)
    runs: list[Run] = []
    cache: dict[tuple, Run] = {}

    def execute(methods: list[Method]) -> None:
        for method in methods:
            seeds = config.seeds if method.seeds is None else min(method.seeds, config.seeds)
            key = method.settings()
            if key in cache and cache[key].outcomes["count"].shape[0] >= seeds:
                done = cache[key]
                images = None if done.images is None else done.images[:seeds]
                outcomes = {k: v[:seeds] for k, v in done.outcomes.items()}
                runs.append(replace(done, method=method, outcomes=outcomes, images=images))
                continue
            start = time.perf_counter()
            flat_noise = noise[:seeds].reshape(-1, *noise.shape[2:])
            images, rows = generate(model, method, flat_noise, _repeat(cond, seeds), uncond, config.batch)
            outcomes = {k: v.reshape(seeds, -1) for k, v in score(images, specs * seeds).items()}
            kept = images.reshape(seeds, len(specs), *images.shape[1:]) if keep_images else None
            run = Run(method, rows, time.perf_counter() - start, outcomes, kept)
            cache[key] = run
            runs.append(run)
            if log:
                log(
                    f"  {method.label} ({seeds} seeds): all-correct {outcomes['all_correct'].mean():.3f}, "
                    f"{run.seconds:.0f}s"
                )

    if seg:
        execute(seg_methods(config))
        return runs
    execute(main_methods(config))
    execute(equal_row_methods(config, best_scale(runs)))
    execute(variant_methods(config))
    return runs


# --- statistics -----------------------------------------------------------------------------------------


def proportion_ci(successes: np.ndarray) -> tuple[float, float, float]:
    """Rate and 95 % Wilson interval."""
    from scipy import stats

    successes = np.asarray(successes).ravel()
    k, n = int(successes.sum()), successes.size
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return (k / n, float(ci.low), float(ci.high))


@dataclass(frozen=True)
class PairedAttribute:
    """Δ rate (method − baseline) with a paired bootstrap CI, discordant pairs and McNemar's exact p."""

    delta: tuple[float, float, float]
    wins: int  # method right, baseline wrong
    losses: int
    p_value: float

    @property
    def win_rate(self) -> float:
        decided = self.wins + self.losses
        return self.wins / decided if decided else math.nan


@dataclass(frozen=True)
class Paired:
    """A method against a baseline on the same images (same prompt, same seed), per tested attribute."""

    method: str
    baseline: str
    relation: str
    images: int
    tests: dict[str, PairedAttribute]


def paired_attribute(a: np.ndarray, b: np.ndarray) -> PairedAttribute:
    from scipy import stats

    from .gmm import mean_ci

    a, b = np.asarray(a, dtype=bool).ravel(), np.asarray(b, dtype=bool).ravel()
    wins, losses = int((a & ~b).sum()), int((~a & b).sum())
    p = stats.binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
    return PairedAttribute(mean_ci(a.astype(float) - b.astype(float)), wins, losses, float(p))


def paired_test(run: Run, baseline: Run, relation: str) -> Paired:
    seeds = min(run.outcomes["all_correct"].shape[0], baseline.outcomes["all_correct"].shape[0])
    tests = {k: paired_attribute(run.outcomes[k][:seeds], baseline.outcomes[k][:seeds]) for k in TESTED}
    return Paired(
        run.method.label, baseline.method.label, relation, seeds * run.outcomes["all_correct"].shape[1], tests
    )


def _standard(runs: list[Run], scale: float, steps: int) -> Run | None:
    for run in runs:
        if run.method.rule == "standard" and run.method.interval is None and run.method.scale == scale:
            if run.method.steps == steps and run.method.family in ("standard", "standard, equal rows"):
                return run
    return None


def comparisons(runs: list[Run], config: Config) -> list[Paired]:
    """Each non-standard method against standard CFG at its scale, at the sweep's best scale, and at equal
    rows (same scale, and the best scale); the equal-rows runs against their T-step counterparts."""
    best = best_scale(runs)
    out = []
    for run in runs:
        if run.method.family in ("standard", "λ sweep", "γ₂ sweep") or run.method.family.startswith("compute"):
            continue
        if run.method.family == "standard, equal rows":
            same = _standard(runs, run.method.scale, config.steps)
            if same:
                out.append(paired_test(run, same, "more steps, same scale"))
            continue
        same = _standard(runs, run.method.scale, config.steps)
        if same:
            out.append(paired_test(run, same, "standard, same scale"))
        best_run = _standard(runs, best, config.steps)
        if best_run and best_run is not same:
            out.append(paired_test(run, best_run, f"standard, best scale ({best:g})"))
        if run.method.rule != "standard":
            for scale in dict.fromkeys([run.method.scale, best]):
                equal = _standard(runs, scale, config.equal_row_steps)
                if equal:
                    out.append(paired_test(run, equal, f"equal rows, scale {scale:g}"))
    return out


# --- tables -----------------------------------------------------------------------------------------------


def _pct(stats: tuple[float, float, float], signed: bool = False) -> str:
    mean, low, high = stats
    if not math.isfinite(mean):
        return "—"
    sign = "+" if signed else ""
    return f"{100 * mean:{sign}.1f} [{100 * low:{sign}.1f}, {100 * high:{sign}.1f}]"


def model_label(config: Config) -> str:
    """What the tables say of the model and its sigmas."""
    if is_flow_model(config.model):
        name = (
            "Bundled shapes16-flow model (MMDiT, rectified flow)"
            if str(config.model) in FLOW_MODEL_NAMES
            else (f"Flow model {config.model}")
        )
        return f"{name}, the pipeline's flow sigmas (1 … 0)"
    name = "Bundled shapes16 model" if config.model in (None, "shapes") else f"Model {config.model}"
    return f"{name}, DDIM sigmas"


def format_shapes(runs: list[Run], config: Config) -> str:
    best = best_scale(runs)
    lines = [
        f"{model_label(config)}, T = {config.steps}; {config.prompts} prompts × {config.seeds} seeds "
        f"(variants: × {config.sweep_seeds} seeds), same initial noise for every method. Rates in % with 95 % "
        "Wilson intervals; all correct = count ∧ colour ∧ position (cleanliness separate).",
        "",
        *_rate_table(runs),
        "",
        f"Best scale of the standard sweep (all correct): {best:g}.",
        "",
        *_paired_table(comparisons(runs, config)),
    ]
    sweep = lambda_rows(runs, config)
    if sweep:
        lines += [
            "",
            f"λ sweep (γ₁ = {config.reference_scale:g}, γ₂ = 0, {config.rule} rule; paper Fig. 9): win rate = wins / "
            "(wins + losses) against standard CFG at γ₁ on the same images.",
            "",
            "| λ | images | rows/image | all correct | win rate, all correct (p) | win rate, count ∧ colour (p) "
            "| win rate, clean (p) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in sweep:
            cells = [f"{_fmt_rate(row['win_rate'][k])} ({row['p_value'][k]:.2g})" for k in TESTED]
            lines.append(
                f"| {row['lambda']} | {row['images']} | {row['rows']:g} | {_pct(row['all_correct'])} | "
                + " | ".join(cells)
                + " |"
            )
    gaps = gap_rows(runs, config)
    if gaps:
        lines += [
            "",
            f"Guidance gap (γ₁ = {config.reference_scale:g}, {config.rule} rule, λ = T − 1; paper Fig. 7):",
            "",
            "| γ₂ | images | all correct | clean |",
            "|---:|---:|---:|---:|",
        ]
        for row in gaps:
            lines.append(
                f"| {row['gamma_2']:g} | {row['images']} | {_pct(row['all_correct'])} | {_pct(row['clean'])} |"
            )
    compute = compute_rows(runs, config)
    if compute:
        lines += [
            "",
            f"Equal compute (γ₁ = {config.reference_scale:g}; paper Fig. 10): all correct against UNet rows per image.",
            "",
            "| sampler | T | rows/image | images | all correct | clean |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row in compute:
            lines.append(
                f"| {row['sampler']} | {row['steps']} | {row['rows']:g} | {row['images']} | {_pct(row['all_correct'])} "
                f"| {100 * row['clean']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def _rate_table(runs: list[Run]) -> list[str]:
    lines = [
        "| method | images | rows/image | count | colour | position | all correct | count ∧ colour | clean |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        o = run.outcomes
        lines.append(
            f"| {run.method.label} | {o['count'].size} | {run.rows_per_image:g} | {100 * o['count'].mean():.1f} "
            f"| {100 * o['colour'].mean():.1f} | {100 * o['position'].mean():.1f} "
            f"| {_pct(proportion_ci(o['all_correct']))} | {_pct(proportion_ci(o['count_colour']))} "
            f"| {_pct(proportion_ci(o['clean']))} |"
        )
    return lines


def _paired_table(tests: list[Paired]) -> list[str]:
    lines = [
        "Paired tests (same prompt and seed): Δ = method − baseline in percentage points with a 95 % bootstrap CI "
        "over images; w/l = discordant pairs (method right and baseline wrong / the reverse); p = McNemar's exact "
        "test.",
        "",
        "| method | baseline | images | Δ all correct (w/l, p) | Δ count ∧ colour (w/l, p) | Δ clean (w/l, p) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for test in tests:
        cells = [
            f"{_pct(t.delta, True)} ({t.wins}/{t.losses}, {t.p_value:.2g})" for t in (test.tests[k] for k in TESTED)
        ]
        lines.append(
            f"| {test.method} | {test.baseline} ({test.relation}) | {test.images} | " + " | ".join(cells) + " |"
        )
    return lines


def seg_comparisons(runs: list[Run]) -> list[Paired]:
    """Each SEG run against the same sampler without SEG, and (Z-Sampling + SEG) against standard CFG at γ₁."""
    by_settings = {run.method.settings(): run for run in runs}
    out = []
    for run in runs:
        if run.method.seg_scale == 0:
            continue
        plain = replace(run.method, seg_scale=0.0, seg_interval=None, inversion_seg_scale=0.0)
        if plain.settings() in by_settings:
            out.append(paired_test(run, by_settings[plain.settings()], "same sampler without SEG"))
        if run.method.rule != "standard":
            standard = _standard(runs, run.method.scale, run.method.steps)
            if standard:
                out.append(paired_test(run, standard, "standard, same scale"))
    return out


def format_seg(runs: list[Run], config: Config) -> str:
    """The ``bench shapes --seg`` tables: rates per method and the paired tests of :func:`seg_comparisons`."""
    lines = [
        f"Smoothed Energy Guidance on the bundled shapes16 model, DDIM sigmas, T = {config.steps}; {config.prompts} "
        f"prompts × {config.seeds} seeds (first seed {config.first_seed}), same initial noise for every method. "
        "SEG: s_seg = 3, σ_blur = ∞ (token mean) unless given, self-attention layers as named; Z-Sampling's "
        "inversion calls without SEG unless 'inversion SEG'. Rates in % with 95 % Wilson intervals.",
        "",
        *_rate_table(runs),
        "",
        *_paired_table(seg_comparisons(runs)),
    ]
    return "\n".join(lines) + "\n"


def write_seg_outputs(runs: list[Run], config: Config, folder: str | Path) -> list[Path]:
    """``seg.md`` and ``seg.json`` (per-image outcomes, as shapes.json) of a ``bench shapes --seg`` run."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = to_json(runs, config)
    data["paired"] = [asdict(test) for test in seg_comparisons(runs)]
    for key in ("lambda_sweep", "gap_sweep", "equal_compute"):  # the main run's sweeps: not part of this one
        data.pop(key)
    written = [folder / "seg.md", folder / "seg.json"]
    written[0].write_text(format_seg(runs, config))
    written[1].write_text(json.dumps(data, indent=1) + "\n")
    return written


def _fmt_rate(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:.2f}"


def lambda_rows(runs: list[Run], config: Config) -> list[dict[str, Any]]:
    """Per λ (0 and T − 1 included when run): all correct and the win rate against standard at γ₁."""
    ref, T = config.reference_scale, config.steps
    candidates = [r for r in runs if r.method.family == "λ sweep"]
    candidates += [r for r in runs if r.method.family == f"Z-Sampling {config.rule} γ₂=0" and r.method.scale == ref]
    standard = _standard(runs, ref, T)
    if not candidates or standard is None:
        return []
    seeds = min(r.outcomes["all_correct"].shape[0] for r in candidates)
    rows = []
    for run in sorted(candidates, key=lambda r: r.method.lam):
        test = paired_test(replace(run, outcomes={k: v[:seeds] for k, v in run.outcomes.items()}), standard, "")
        rows.append(
            {
                "lambda": run.method.lam,
                "images": test.images,
                "rows": run.rows_per_image,
                "all_correct": proportion_ci(run.outcomes["all_correct"][:seeds]),
                "win_rate": {k: t.win_rate for k, t in test.tests.items()},
                "p_value": {k: t.p_value for k, t in test.tests.items()},
            }
        )
    return rows


def gap_rows(runs: list[Run], config: Config) -> list[dict[str, Any]]:
    """Fig. 7: all correct and clean per γ₂ at γ₁ = the reference scale (on the sweep seeds)."""
    ref, T = config.reference_scale, config.steps
    candidates = [
        r
        for r in runs
        if r.method.rule == config.rule
        and r.method.scale == ref
        and r.method.lam == T - 1
        and r.method.interval is None
    ]
    if not candidates:
        return []
    seeds = min(r.outcomes["all_correct"].shape[0] for r in candidates)
    rows = {}
    for run in candidates:
        rows[run.method.inversion_scale] = {
            "gamma_2": run.method.inversion_scale,
            "all_correct": proportion_ci(run.outcomes["all_correct"][:seeds]),
            "clean": proportion_ci(run.outcomes["clean"][:seeds]),
            "images": int(run.outcomes["all_correct"][:seeds].size),
        }
    return [rows[g] for g in sorted(rows)]


def compute_rows(runs: list[Run], config: Config) -> list[dict[str, Any]]:
    """Fig. 10: all correct against UNet rows per image at γ₁ = the reference scale, for standard CFG and
    Z-Sampling (γ₂ = 0, λ = T − 1) at several T, on the seeds they share."""
    ref = config.reference_scale
    members = [
        r
        for r in runs
        if r.method.scale == ref
        and r.method.interval is None
        and (
            r.method.rule == "standard"
            or (r.method.rule == config.rule and r.method.inversion_scale == 0 and r.method.lam == r.method.steps - 1)
        )
    ]
    if not members:
        return []
    seeds = min(r.outcomes["all_correct"].shape[0] for r in members)
    rows = {}
    for r in members:
        sampler = "standard" if r.method.rule == "standard" else f"Z-Sampling {r.method.rule}"
        rows[(sampler, r.method.steps)] = {
            "sampler": sampler,
            "steps": r.method.steps,
            "rows": r.rows_per_image,
            "images": int(r.outcomes["all_correct"][:seeds].size),
            "all_correct": proportion_ci(r.outcomes["all_correct"][:seeds]),
            "clean": float(r.outcomes["clean"][:seeds].mean()),
        }
    return [rows[k] for k in sorted(rows)]


# --- outputs ------------------------------------------------------------------------------------------------


def to_json(runs: list[Run], config: Config) -> dict[str, Any]:
    return {
        "config": asdict(config),
        "best_scale": best_scale(runs),
        "runs": [
            {
                "method": _method_dict(run.method),
                "label": run.method.label,
                "rows_per_image": run.rows_per_image,
                "seconds": round(run.seconds, 1),
                "rates": {k: float(v.mean()) for k, v in run.outcomes.items()},
                "all_correct_ci": proportion_ci(run.outcomes["all_correct"]),
                "outcomes": {k: v.astype(int).tolist() for k, v in run.outcomes.items()},
            }
            for run in runs
        ],
        "paired": [asdict(test) for test in comparisons(runs, config)],
        "lambda_sweep": lambda_rows(runs, config),
        "gap_sweep": gap_rows(runs, config),
        "equal_compute": compute_rows(runs, config),
    }


def _method_dict(method: Method) -> dict[str, Any]:
    """``asdict(method)``, without the SEG fields when SEG is off (the JSON of earlier runs, unchanged)."""
    data = asdict(method)
    if method.seg_scale == 0:
        data = {k: v for k, v in data.items() if not k.startswith(("seg_", "inversion_seg"))}
    return data


def load_json(path: str | Path) -> tuple[list[Run], Config]:
    """Runs and config back from ``shapes.json`` (outcomes per image), to re-render tables and plots."""
    data = json.loads(Path(path).read_text())
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in data["config"].items()}
    config = Config(**fields)
    runs = []
    for item in data["runs"]:
        method = Method(**{k: tuple(v) if isinstance(v, list) else v for k, v in item["method"].items()})
        outcomes = {k: np.asarray(v, dtype=bool) for k, v in item["outcomes"].items()}
        outcomes.setdefault("count_colour", outcomes["count"] & outcomes["colour"])
        runs.append(Run(method, item["rows_per_image"], item["seconds"], outcomes))
    return runs, config


def write_outputs(runs: list[Run], config: Config, folder: str | Path) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "shapes.md", folder / "shapes.json"]
    written[0].write_text(format_shapes(runs, config))
    written[1].write_text(json.dumps(to_json(runs, config), indent=1) + "\n")
    written += plot_shapes(runs, config, folder)
    written.append(sample_grid(config, folder / "shapes_samples.png"))
    return written


def plot_shapes(runs: list[Run], config: Config, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.8))
    sweep = sorted([r for r in runs if r.method.family == "standard"], key=lambda r: r.method.scale)
    others = [r for r in runs if r.method.family not in ("standard", "λ sweep", "γ₂ sweep")]
    seeds = min(r.outcomes["clean"].shape[0] for r in runs)  # every point on the same images

    def rate(run: Run, key: str) -> float:
        return float(run.outcomes[key][:seeds].mean())

    colours = plt.get_cmap("tab20").colors
    for ax, key in zip(axes, ("all_correct", "count_colour")):
        ax.plot(
            [rate(r, key) for r in sweep],
            [rate(r, "clean") for r in sweep],
            "-o",
            color="k",
            label=f"standard CFG sweep, T={config.steps}",
        )
        for r in sweep:
            ax.annotate(f"{r.method.scale:g}", (rate(r, key), rate(r, "clean")), fontsize=7)
        for n, r in enumerate(others):
            marker = "^" if r.method.rule == "standard" else "s"
            ax.plot(rate(r, key), rate(r, "clean"), marker, color=colours[n % 20], label=r.method.label)
        ax.set_xlabel(f"{'all correct' if key == 'all_correct' else 'count ∧ colour'} (adherence)")
        ax.set_ylabel("clean (shape fidelity)")
    axes[1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(
        f"Adherence vs fidelity, {model_label(config).split(',')[0]} ({config.prompts} prompts × {seeds} seeds, paired)"
    )
    paths.append(save_figure(fig, folder / "shapes_frontier.png"))

    rows = lambda_rows(runs, config)
    if rows:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for key in TESTED:
            ax.plot([r["lambda"] for r in rows], [r["win_rate"][key] for r in rows], "-o", label=key.replace("_", " "))
        ax.legend(fontsize=7)
        ax.axhline(0.5, color="grey", lw=0.8)
        ax.set_xlabel("λ (zigzag steps)")
        ax.set_ylabel(f"win rate vs standard CFG {config.reference_scale:g}")
        ax.set_title("Win rate vs λ (cf. paper Fig. 9)")
        paths.append(save_figure(fig, folder / "shapes_lambda.png"))

    rows = gap_rows(runs, config)
    if rows:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for key in ("all_correct", "clean"):
            ax.errorbar(
                [r["gamma_2"] for r in rows],
                [r[key][0] for r in rows],
                yerr=np.array([[r[key][0] - r[key][1], r[key][2] - r[key][0]] for r in rows]).T,
                fmt="-o",
                capsize=3,
                label=key.replace("_", " "),
            )
        ax.set_xlabel("γ₂ (inversion scale)")
        ax.set_title(f"Effect of γ₂ at γ₁ = {config.reference_scale:g} (cf. paper Fig. 7)")
        ax.legend()
        paths.append(save_figure(fig, folder / "shapes_gap.png"))

    rows = compute_rows(runs, config)
    if rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        for sampler in dict.fromkeys(r["sampler"] for r in rows):
            part = [r for r in rows if r["sampler"] == sampler]
            errors = [
                [r["all_correct"][0] - r["all_correct"][1], r["all_correct"][2] - r["all_correct"][0]] for r in part
            ]
            ax.errorbar(
                [r["rows"] for r in part],
                [r["all_correct"][0] for r in part],
                yerr=np.array(errors).T,
                fmt="-o" if sampler == "standard" else "--s",
                capsize=3,
                label=sampler,
            )
            for r in part:
                ax.annotate(f"T={r['steps']}", (r["rows"], r["all_correct"][0]), fontsize=7)
        ax.set_xlabel("UNet rows per image")
        ax.set_ylabel("all correct")
        ax.set_title(f"Quality at equal compute, γ₁ = {config.reference_scale:g} (cf. paper Fig. 10)")
        ax.legend(fontsize=7)
        paths.append(save_figure(fig, folder / "shapes_compute.png"))
    return paths


def sample_grid(config: Config, path: str | Path, seeds: int = 2) -> Path:
    """A labelled PNG grid from the model: one row per method and seed, one column per prompt (18 of the
    72: every count and colour, the position cycling), same initial noise along each row block."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.set_num_threads(config.threads)
    model = load_model(config.model)
    specs = [s for i, s in enumerate(shapes_task.all_specs()) if i % 4 == (i // 4) % 4]  # positions cycle
    cond = model.encode([s.prompt for s in specs])
    uncond = model.encode([""])
    ref = config.reference_scale
    methods = [
        Method("standard", "standard", 1.0, config.steps),
        Method("standard", "standard", ref, config.steps),
        Method("standard", "standard", 2 * ref, config.steps),
        Method("Z", config.rule, ref, config.steps),
        Method("standard, equal rows", "standard", ref, config.equal_row_steps),
    ]
    rows = []
    for seed in range(seeds):
        noise = torch.randn(len(specs), 3, 16, 16, generator=torch.Generator().manual_seed(seed))
        for method in methods:
            images, _ = generate(model, method, noise, cond, uncond, config.batch)
            rows.append((f"seed {seed}: {method.label}", images.numpy().transpose(0, 2, 3, 1)))
    fig, axes = plt.subplots(len(rows), len(specs), figsize=(0.75 * len(specs) + 2.6, 0.8 * len(rows) + 0.6))
    for r, (label, images) in enumerate(rows):
        for c, image in enumerate(images):
            ax = axes[r][c]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                spec = specs[c]
                ax.set_title(f"{spec.count} {spec.colour}\n{spec.position}", fontsize=7)
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(f"{model_label(config).split(',')[0]}: prompt = '<count> <colour> square(s) <position>'", fontsize=9)
    return save_figure(fig, Path(path), dpi=100)
