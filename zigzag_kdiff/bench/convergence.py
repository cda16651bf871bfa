"""Z-Sampling on DPM++ 2M: how close do the step rules get to their T → ∞ limit, and does it matter?

``zigzag-kdiff bench convergence`` (exact Gaussian mixtures, :mod:`zigzag_kdiff.bench.mixture`):

* **Convergence.** Z-Sampling with T steps follows an ODE-like path whose limit for T → ∞ exists. For
  each method (zigzag Euler, zigzag DDIM, zigzag DPM++ 2M, and standard Euler / DPM++ 2M) the error of
  a T-step run is the mean over samples of ‖x_T − x_ref‖, x_ref the same method with ``reference_steps``
  steps from the same initial noise; mean and 95 % bootstrap CI over seeds. The order per doubling is
  log₂(e_T / e_2T).
* **Matched adherence.** At T = 10, 20, 30: Fréchet distance (FD) of each zigzag rule against the CFG
  sweep of standard DPM++ 2M (and standard Euler) at the same T, interpolated at the method's adherence,
  as in ``bench gmm`` (:func:`zigzag_kdiff.bench.gmm.matched`).

``zigzag-kdiff bench convergence --flow`` (the same mixtures in rectified-flow form,
:class:`~zigzag_kdiff.bench.mixture.FlowMixtureVelocity`): the three rules with and without zigzag on flow
sigmas (``linspace(1, σ_min)`` and SD3's shift-3 schedule), the order per doubling of each, and DPM++ 2M
with the VE half-log-SNR λ = −log σ applied directly to the flow sigmas (what a VE-only sampler does on a flow
model) beside the flow formula λ = log((1 − σ)/σ).

``zigzag-kdiff bench shapes-dpmpp`` (the bundled shapes16 model, DDIM sigmas): zigzag DPM++ 2M against
DPM++ 2M at T = 10 and 20 on paired images (same prompt and seed), with the statistics of ``bench shapes``
(Wilson intervals, paired bootstrap Δ, McNemar's exact test).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..flow import FlowDenoiser
from ..guidance import CFGDenoiser
from ..sampling import (
    Denoise,
    _sample_zigzag,
    invert_euler,
    sample_zigzag_ddim,
    sample_zigzag_dpmpp_2m,
    sample_zigzag_euler,
    step_dpmpp_2m,
)
from . import common, gmm, shapes, shapes_task
from .common import Method, save_figure
from .mixture import UNCONDITIONAL, FlowMixtureVelocity

__all__ = [
    "Config",
    "QUICK",
    "run_convergence",
    "format_convergence",
    "FlowConfig",
    "FLOW_QUICK",
    "flow_sigmas",
    "run_flow_convergence",
    "format_flow_convergence",
    "write_flow_outputs",
    "write_outputs",
    "ShapesConfig",
    "SHAPES_QUICK",
    "run_shapes_dpmpp",
    "format_shapes_dpmpp",
    "write_shapes_outputs",
]

RULES = ("euler", "ddim", "dpmpp_2m")
"""The zigzag rules compared (``sample_zigzag_<rule>``)."""

NAMES = {
    ("zigzag", "euler"): "zigzag Euler",
    ("zigzag", "ddim"): "zigzag DDIM",
    ("zigzag", "dpmpp_2m"): "zigzag DPM++ 2M",
    ("standard", "euler"): "Euler",
    ("standard", "dpmpp_2m"): "DPM++ 2M",
}


# --- GMM: convergence and matched adherence -----------------------------------------------------------


@dataclass(frozen=True)
class Config:
    mixtures: tuple[gmm.Mixture, ...] = gmm.MIXTURES[:2]  # d = 2 and d = 16
    seeds: int = 12
    first_seed: int = 0
    per_class: int = 128
    scale: float = 4.0  # γ₁ of the convergence runs (γ₂ = 0, λ = T − 1)
    steps: tuple[int, ...] = (5, 10, 20, 40, 80)
    reference_steps: int = 400
    matched_steps: tuple[int, ...] = (10, 20, 30)
    cfg_scales: tuple[float, ...] = gmm.CFG_SCALES
    zigzag_scales: tuple[float, ...] = gmm.ZIGZAG_SCALES
    sigma_min: float = 0.02
    sigma_max: float = 20.0
    diagnostic: bool = True  # also run the UNMOVED_NAME and EXACT_INVERSION diagnostics

    def gmm_config(self) -> gmm.Config:
        """The ``bench gmm`` config whose noise, seeds and sigmas these runs share."""
        return gmm.Config(
            mixtures=self.mixtures,
            seeds=self.seeds,
            first_seed=self.first_seed,
            per_class=self.per_class,
            sigma_min=self.sigma_min,
            sigma_max=self.sigma_max,
        )


QUICK = Config(
    mixtures=gmm.MIXTURES[1:2],
    seeds=4,
    per_class=32,
    steps=(5, 10, 20),
    reference_steps=80,
    matched_steps=(10,),
    cfg_scales=(1.0, 2.0, 4.0, 8.0, 14.0),
    zigzag_scales=(4.0,),
)


def convergence_methods(config: Config, steps: int) -> list[tuple[str, Method]]:
    """``(name, method)`` for every compared sampler at ``steps`` steps (γ₁ = ``config.scale``, γ₂ = 0)."""
    out = [(NAMES["zigzag", rule], Method("convergence", rule, config.scale, steps)) for rule in RULES]
    out.append((NAMES["standard", "euler"], Method("convergence", "standard", config.scale, steps)))
    out.append((NAMES["standard", "dpmpp_2m"], Method("convergence", "dpmpp_2m", config.scale, steps, zigzag_steps=0)))
    return out


UNMOVED_NAME = "zigzag DPM++ 2M, unmoved history (diagnostic)"
EXACT_INVERSION = "zigzag DPM++ 2M, exact inversion (diagnostic)"
"""Not a sampler: zigzag DPM++ 2M whose inversion solves the γ₂ ODE σ_{i+1} → σ_i with
``INVERSION_SUBSTEPS`` DPM++ 2M sub-steps (that many model calls), to show what the Euler inversion costs."""
INVERSION_SUBSTEPS = 12


def invert_substeps(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, i: int) -> torch.Tensor:
    """The inversion σ_{i+1} → σ_i as ``INVERSION_SUBSTEPS`` DPM++ 2M steps on a log-uniform grid."""
    grid = torch.linspace(float(sigmas[i + 1].log()), float(sigmas[i].log()), INVERSION_SUBSTEPS + 1).exp()
    grid = grid.to(sigmas.dtype)
    old_denoised = None
    for j in range(INVERSION_SUBSTEPS):
        denoised = denoise(x, grid[j])
        x, old_denoised = step_dpmpp_2m(x, denoised, grid, j, old_denoised), denoised
    return x


def sample_exact_inversion(model, x, sigmas, extra_args):
    """The diagnostic sampler of :data:`EXACT_INVERSION` (the engine with another inversion rule)."""
    return _sample_zigzag(
        model, x, sigmas, extra_args, None, True, step_dpmpp_2m, invert_substeps, 0.0, None, 1, None, None, None
    )


UNMOVED = "dpmpp_2m_unmoved"
"""Diagnostic ``Method.rule``: zigzag DPM++ 2M whose re-denoising uses the plain history D_{i−1} instead of
the moved one (:func:`zigzag_kdiff.sampling.moved_history`), to show what moving it does."""


def sample_unmoved_history(model, x, sigmas, extra_args, disable=True, inversion_scale=0.0, zigzag_steps=None):
    """The diagnostic sampler of :data:`UNMOVED`."""
    return _sample_zigzag(
        model, x, sigmas, extra_args, None, disable, step_dpmpp_2m, invert_euler, inversion_scale, zigzag_steps,
        1, None, None, None, move_history=False,
    )  # fmt: skip


common.ZIGZAG_SAMPLERS.setdefault(UNMOVED, sample_unmoved_history)  # runnable by sample_method, for diagnostics


@dataclass
class Convergence:
    name: str
    steps: tuple[int, ...]
    errors: dict[int, list[float]]  # T -> per-seed mean ‖x_T − x_ref‖


@dataclass
class DimConvergence:
    mixture: gmm.Mixture
    convergence: list[Convergence] = field(default_factory=list)
    matched: dict[int, gmm.DimResult] = field(default_factory=dict)  # T -> runs (sweeps and zigzag)


def _per_seed_error(x: torch.Tensor, reference: torch.Tensor, seeds: int) -> list[float]:
    distance = (x - reference).norm(dim=1)
    return [float(part.mean()) for part in distance.chunk(seeds)]


def matched_methods(config: Config, steps: int) -> list[Method]:
    """The CFG sweeps (Euler, DPM++ 2M) and every zigzag rule over ``zigzag_scales`` at ``steps`` steps."""
    out = [Method("standard", "standard", s, steps) for s in config.cfg_scales]
    out += [Method("standard DPM++ 2M", "dpmpp_2m", s, steps, zigzag_steps=0) for s in config.cfg_scales]
    for rule in RULES:
        out += [Method(f"Z-Sampling {rule} γ₂=0", rule, g, steps) for g in config.zigzag_scales]
    return out


def run_dim(mixture: gmm.Mixture, config: Config, log=None) -> DimConvergence:
    gmm_config = config.gmm_config()
    model = mixture.build()
    noise, labels = gmm.initial_noise(gmm_config, mixture)
    result = DimConvergence(mixture)
    guided = CFGDenoiser(model)
    args = {"cond": labels, "uncond": torch.full_like(labels, UNCONDITIONAL), "cond_scale": config.scale}

    def run(index: int, steps: int) -> torch.Tensor:
        sigmas = gmm.karras_sigmas(steps, config.sigma_min, config.sigma_max)
        if index == len(RULES) + 2:
            return sample_unmoved_history(guided, noise * sigmas[0], sigmas, args)
        if index == len(RULES) + 3:
            return sample_exact_inversion(guided, noise * sigmas[0], sigmas, args)
        return gmm.sample(model, convergence_methods(config, steps)[index][1], noise, labels, gmm_config)[0]

    names = [name for name, _ in convergence_methods(config, 1)]
    names += [UNMOVED_NAME, EXACT_INVERSION] if config.diagnostic else []
    for index, name in enumerate(names):
        start = time.perf_counter()
        reference = run(index, config.reference_steps)
        errors = {steps: _per_seed_error(run(index, steps), reference, config.seeds) for steps in config.steps}
        result.convergence.append(Convergence(name, config.steps, errors))
        if log:
            log(f"  d={mixture.dim} convergence {name}: {time.perf_counter() - start:.1f}s")
    for steps in config.matched_steps:
        runs = gmm.DimResult(mixture)
        for method in matched_methods(config, steps):
            runs.runs.append(gmm.run_method(model, method, noise, labels, gmm_config))
        result.matched[steps] = runs
        if log:
            log(f"  d={mixture.dim} matched adherence T={steps}: {sum(r.seconds for r in runs.runs):.1f}s")
    return result


def run_convergence(config: Config = Config(), log=None) -> list[DimConvergence]:
    torch.set_num_threads(1)
    return [run_dim(mixture, config, log) for mixture in config.mixtures]


def order_per_doubling(errors: dict[int, list[float]], steps: int) -> tuple[float, float, float]:
    """log₂(e_T / e_2T) per seed, mean and CI (NaN when 2T was not run)."""
    if 2 * steps not in errors:
        return (math.nan, math.nan, math.nan)
    ratios = np.log2(np.asarray(errors[steps]) / np.asarray(errors[2 * steps]))
    return gmm.mean_ci(ratios)


def error_ratio(dim: DimConvergence, name: str, baseline: str, steps: int) -> tuple[float, float, float]:
    """Per seed ``e_T(name) / e_T(baseline)``, mean and CI."""
    by_name = {c.name: c for c in dim.convergence}
    return gmm.mean_ci(np.asarray(by_name[name].errors[steps]) / np.asarray(by_name[baseline].errors[steps]))


def convergence_rows(dim: DimConvergence) -> list[dict[str, Any]]:
    rows = []
    for conv in dim.convergence:
        rows.append(
            {
                "method": conv.name,
                "error": {str(t): gmm.mean_ci(conv.errors[t]) for t in conv.steps},
                "order": {str(t): order_per_doubling(conv.errors, t) for t in conv.steps if 2 * t in conv.errors},
                "vs_zigzag_euler": (
                    {str(t): error_ratio(dim, conv.name, NAMES["zigzag", "euler"], t) for t in conv.steps}
                    if conv.name.startswith("zigzag")
                    else {}
                ),
            }
        )
    return rows


def matched_rows(dim: DimConvergence) -> list[dict[str, Any]]:
    """Per T and zigzag run: adherence, FD and ΔFD at matched adherence against both CFG sweeps."""
    rows = []
    for steps, runs in dim.matched.items():
        for run in runs.runs:
            if not run.method.family.startswith("Z-Sampling"):
                continue
            rows.append(
                {
                    "steps": steps,
                    "method": run.method.label,
                    "rule": run.method.rule,
                    "scale": run.method.scale,
                    "rows": run.rows_per_sample,
                    "logit": gmm.mean_ci(run.metrics["logit"]),
                    "fd": gmm.mean_ci(run.metrics["fd"]),
                    "vs_dpmpp_2m_fd": gmm.mean_ci(gmm.matched(runs, run, "fd", "standard DPM++ 2M")),
                    "vs_euler_fd": gmm.mean_ci(gmm.matched(runs, run, "fd", "standard")),
                    "dpmpp_2m_equivalent": gmm.mean_ci(gmm.equivalent_scale(runs, run, "standard DPM++ 2M")),
                }
            )
    return rows


def format_dim(dim: DimConvergence, config: Config) -> str:
    m = dim.mixture
    ts = config.steps
    lines = [
        f"### d = {m.dim} ({m.num_classes} classes × {m.components_per_class} components, separation "
        f"{m.separation:g}; γ₁ = {config.scale:g}, γ₂ = 0, λ = T − 1; {config.seeds} seeds × {config.per_class} "
        "samples per class)",
        "",
        f"Error to the same method at T = {config.reference_steps}: mean ‖x_T − x_{config.reference_steps}‖ over "
        "samples, mean [95 % CI] over seeds; order = log₂(e_T / e_2T) per doubling; ratio = e_T / e_T(zigzag Euler).",
        "",
        "| method | "
        + " | ".join(f"T={t}" for t in ts)
        + " | "
        + " | ".join(f"order {t}→{2 * t}" for t in ts if 2 * t in ts)
        + " |",
        "|---|" + "---:|" * (len(ts) + sum(2 * t in ts for t in ts)),
    ]
    rows = convergence_rows(dim)
    for row in rows:
        cells = [gmm._ci(row["error"][str(t)], 3, signed=False) for t in ts]
        cells += [gmm._ci(row["order"][str(t)], 2, signed=False) for t in ts if 2 * t in ts]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Error ratio to zigzag Euler (per seed, mean [95 % CI]):",
        "",
        "| method | " + " | ".join(f"T={t}" for t in ts) + " |",
        "|---|" + "---:|" * len(ts),
    ]
    for row in rows:
        if row["vs_zigzag_euler"] and row["method"] != NAMES["zigzag", "euler"]:
            cells = [gmm._ci(row["vs_zigzag_euler"][str(t)], 2, signed=False) for t in ts]
            lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    if dim.matched:
        lines += [
            "",
            "Matched adherence (as `bench gmm`): FD of each zigzag run, and ΔFD against the CFG sweep of standard "
            "DPM++ 2M and of standard Euler at the same T, interpolated at the run's adherence (ΔFD < 0 favours "
            "zigzag); DPM++ 2M-equivalent = the CFG scale of DPM++ 2M with the same adherence.",
            "",
            "| T | method | rows/sample | adherence | FD | DPM++ 2M-equivalent scale | ΔFD vs DPM++ 2M CFG "
            "| ΔFD vs Euler CFG |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in matched_rows(dim):
            lines.append(
                f"| {row['steps']} | {row['method']} | {row['rows']:g} | {gmm._fmt(row['logit'][0])} "
                f"| {gmm._fmt(row['fd'][0], 3)} | {gmm._fmt(row['dpmpp_2m_equivalent'][0])} "
                f"| {gmm._ci(row['vs_dpmpp_2m_fd'], 3)} | {gmm._ci(row['vs_euler_fd'], 3)} |"
            )
    return "\n".join(lines)


def format_convergence(results: list[DimConvergence], config: Config) -> str:
    parts = ["## Z-Sampling step rules: convergence to the T → ∞ limit and matched adherence (exact GMMs)", ""]
    parts += [format_dim(dim, config) + "\n" for dim in results]
    return "\n".join(parts)


def to_json(results: list[DimConvergence], config: Config) -> dict[str, Any]:
    return {
        "config": asdict(config),
        "dims": [
            {
                "mixture": asdict(dim.mixture),
                "convergence": convergence_rows(dim),
                "errors": {c.name: {str(t): v for t, v in c.errors.items()} for c in dim.convergence},
                "matched": matched_rows(dim),
            }
            for dim in results
        ],
    }


def write_outputs(results: list[DimConvergence], config: Config, folder: str | Path) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "convergence.md", folder / "convergence.json"]
    written[0].write_text(format_convergence(results, config))
    written[1].write_text(json.dumps(to_json(results, config), indent=1, allow_nan=True) + "\n")
    written.append(plot_convergence(results, config, folder / "convergence.png"))
    if any(dim.matched for dim in results):
        written.append(plot_matched(results, folder / "convergence_matched.png"))
    return written


STYLES = {
    "zigzag Euler": ("C0", "o", "-"),
    "zigzag DDIM": ("C1", "s", "-"),
    "zigzag DPM++ 2M": ("C3", "D", "-"),
    "Euler": ("C0", "o", ":"),
    "DPM++ 2M": ("C3", "D", ":"),
    "zigzag DPM++ 2M, unmoved history (diagnostic)": ("C3", "v", "--"),
    "zigzag DPM++ 2M, exact inversion (diagnostic)": ("0.5", "x", "--"),
}


def plot_convergence(results: list[DimConvergence], config: Config, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.2), squeeze=False)
    for ax, dim in zip(axes[0], results):
        for conv in dim.convergence:
            stats = [gmm.mean_ci(conv.errors[t]) for t in conv.steps]
            colour, marker, line = STYLES.get(conv.name, ("k", ".", "-"))
            ax.errorbar(
                conv.steps, [s[0] for s in stats], yerr=gmm._yerr(stats), label=conv.name, color=colour,
                marker=marker, linestyle=line, capsize=2,
            )  # fmt: skip
        t = np.asarray(config.steps, dtype=float)
        for order, anchor in ((1, "zigzag Euler"), (2, "DPM++ 2M")):
            conv = next((c for c in dim.convergence if c.name == anchor), None)
            if conv is not None:
                start = float(np.mean(conv.errors[config.steps[0]]))
                ax.plot(t, start * (t[0] / t) ** order, color="0.6", linewidth=0.8, linestyle="--")
                ax.annotate(f"order {order}", (t[-1], start * (t[0] / t[-1]) ** order), fontsize=7, color="0.4")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("steps T")
        ax.set_ylabel(f"mean ‖x_T − x_{config.reference_steps}‖ (same method)")
        ax.set_title(f"d = {dim.mixture.dim}, γ₁ = {config.scale:g}, γ₂ = 0")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_matched(results: list[DimConvergence], path: Path) -> Path:
    """FD against adherence at each matched T: both CFG sweeps and the zigzag rules (seed means)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted({t for dim in results for t in dim.matched})
    fig, axes = plt.subplots(len(results), len(steps), figsize=(4.2 * len(steps), 3.6 * len(results)), squeeze=False)
    families = {
        "standard": ("Euler CFG sweep", "C0", ":"),
        "standard DPM++ 2M": ("DPM++ 2M CFG sweep", "C3", ":"),
        "Z-Sampling euler γ₂=0": ("zigzag Euler", "C0", "-"),
        "Z-Sampling ddim γ₂=0": ("zigzag DDIM", "C1", "-"),
        "Z-Sampling dpmpp_2m γ₂=0": ("zigzag DPM++ 2M", "C3", "-"),
    }
    for row, dim in zip(axes, results):
        for ax, t in zip(row, steps):
            runs = dim.matched.get(t)
            if runs is None:
                continue
            for family, (label, colour, line) in families.items():
                adherence, fd = gmm.curve(runs, family, "fd")
                ax.plot(adherence.mean(0), fd.mean(0), color=colour, linestyle=line, marker=".", label=label)
            ax.set_title(f"d = {dim.mixture.dim}, T = {t}")
            ax.set_xlabel("adherence (mean logit p(c∣x))")
            ax.set_ylabel("FD (lower is better)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, path)


# --- flow models: the rules on flow sigmas (``bench convergence --flow``) ----------------------------------


@dataclass(frozen=True)
class FlowConfig:
    mixtures: tuple[gmm.Mixture, ...] = gmm.MIXTURES[:2]  # d = 2 and d = 16
    seeds: int = 4
    first_seed: int = 0
    per_class: int = 32
    scale: float = 4.0  # γ₁ (γ₂ = 0, λ = T − 1 for the zigzag rows)
    steps: tuple[int, ...] = (10, 20, 40, 80)
    reference_steps: int = 640
    schedules: tuple[str, ...] = ("linear", "sd3")
    sigma_min: float = 1e-3  # the last nonzero level before the final step to 0 (before the shift)
    shift: float = 3.0  # SD3's static shift σ' = shift·σ/(1 + (shift − 1)·σ)
    methods: tuple[str, ...] = ()  # names of FLOW_METHODS to run (empty: all)


FLOW_QUICK = FlowConfig(mixtures=gmm.MIXTURES[:1], seeds=4, per_class=16, steps=(10, 20, 40), reference_steps=320)

FLOW_SCHEDULES = {
    "linear": "linspace(1, σ_min, T), then 0",
    "sd3": "SD3's shift-3 schedule: σ' = 3σ/(1 + 2σ) on linspace(1, σ_min, T), then 0",
}

FLOW_METHODS: tuple[tuple[str, Any, dict[str, Any]], ...] = (
    ("zigzag Euler", sample_zigzag_euler, {}),
    ("zigzag DDIM", sample_zigzag_ddim, {}),
    ("zigzag DPM++ 2M", sample_zigzag_dpmpp_2m, {}),
    ("Euler (= DDIM at λ = 0)", sample_zigzag_euler, {"zigzag_steps": 0}),
    ("DPM++ 2M", sample_zigzag_dpmpp_2m, {"zigzag_steps": 0}),
    ("DPM++ 2M, VE λ = −log σ on flow sigmas", sample_zigzag_dpmpp_2m, {"zigzag_steps": 0, "flow": False}),
    ("zigzag DPM++ 2M, VE λ = −log σ on flow sigmas", sample_zigzag_dpmpp_2m, {"flow": False}),
)
"""``(name, sampler, options)`` of the flow table; every row samples the flow model at γ₁, γ₂ = 0."""


def flow_sigmas(steps: int, schedule: str = "linear", sigma_min: float = 1e-3, shift: float = 3.0) -> torch.Tensor:
    """Flow noise levels from 1: ``linspace(1, sigma_min, steps)`` (``"sd3"``: then SD3's static shift), then 0."""
    if schedule not in FLOW_SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(FLOW_SCHEDULES)}, got {schedule!r}")
    sigmas = torch.linspace(1.0, sigma_min, steps, dtype=torch.float64)
    if schedule == "sd3":
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return torch.cat([sigmas, sigmas.new_zeros([1])])


@dataclass
class FlowConvergence:
    mixture: gmm.Mixture
    schedule: str
    convergence: list[Convergence] = field(default_factory=list)


def run_flow_convergence(config: FlowConfig = FlowConfig(), log=None) -> list[FlowConvergence]:
    """Per mixture and schedule, the error of every :data:`FLOW_METHODS` row to itself at ``reference_steps``."""
    torch.set_num_threads(1)
    gmm_config = gmm.Config(seeds=config.seeds, first_seed=config.first_seed, per_class=config.per_class)
    results = []
    for mixture in config.mixtures:
        model = CFGDenoiser(FlowDenoiser(FlowMixtureVelocity(mixture.build())))
        noise, labels = gmm.initial_noise(gmm_config, mixture)  # the flow latent at σ = 1 is the noise
        args = {"cond": labels, "uncond": torch.full_like(labels, UNCONDITIONAL), "cond_scale": config.scale}
        for schedule in config.schedules:
            result = FlowConvergence(mixture, schedule)
            for name, sampler, options in FLOW_METHODS:
                if config.methods and name not in config.methods:
                    continue
                start = time.perf_counter()
                runs = {}
                for steps in (config.reference_steps, *config.steps):
                    sigmas = flow_sigmas(steps, schedule, config.sigma_min, config.shift)
                    runs[steps] = sampler(model, noise * sigmas[0], sigmas, args, disable=True, **options)
                reference = runs[config.reference_steps]
                errors = {steps: _per_seed_error(runs[steps], reference, config.seeds) for steps in config.steps}
                result.convergence.append(Convergence(name, config.steps, errors))
                if log:
                    log(f"  d={mixture.dim} {schedule} {name}: {time.perf_counter() - start:.1f}s")
            results.append(result)
    return results


def format_flow_convergence(results: list[FlowConvergence], config: FlowConfig) -> str:
    ts = config.steps
    doubling = [t for t in ts if 2 * t in ts]
    lines = [
        "## Flow models: the step rules on flow sigmas (exact GMMs in rectified-flow form)",
        "",
        f"γ₁ = {config.scale:g}, γ₂ = 0, λ = T − 1 for zigzag; σ_min = {config.sigma_min:g}; {config.seeds} seeds × "
        f"{config.per_class} samples per class. Error to the same method at T = {config.reference_steps}: mean "
        "‖x_T − x_ref‖ over samples, mean [95 % CI] over seeds; order = log₂(e_T / e_2T) per doubling. "
        "DPM++ 2M uses the flow half-log-SNR λ = log((1 − σ)/σ) unless the row says VE.",
    ]
    for result in results:
        m = result.mixture
        lines += [
            "",
            f"### d = {m.dim}, {FLOW_SCHEDULES[result.schedule]}",
            "",
            "| method | " + " | ".join([f"T={t}" for t in ts] + [f"order {t}→{2 * t}" for t in doubling]) + " |",
            "|---|" + "---:|" * (len(ts) + len(doubling)),
        ]
        for conv in result.convergence:
            cells = [gmm._ci(gmm.mean_ci(conv.errors[t]), 3, signed=False) for t in ts]
            cells += [gmm._ci(order_per_doubling(conv.errors, t), 2, signed=False) for t in doubling]
            lines.append(f"| {conv.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def flow_to_json(results: list[FlowConvergence], config: FlowConfig) -> dict[str, Any]:
    return {
        "config": asdict(config),
        "results": [
            {
                "mixture": asdict(r.mixture),
                "schedule": r.schedule,
                "errors": {c.name: {str(t): v for t, v in c.errors.items()} for c in r.convergence},
                "order": {
                    c.name: {str(t): order_per_doubling(c.errors, t) for t in c.steps if 2 * t in c.errors}
                    for c in r.convergence
                },
            }
            for r in results
        ],
    }


def write_flow_outputs(results: list[FlowConvergence], config: FlowConfig, folder: str | Path) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "convergence_flow.md", folder / "convergence_flow.json"]
    written[0].write_text(format_flow_convergence(results, config))
    written[1].write_text(json.dumps(flow_to_json(results, config), indent=1, allow_nan=True) + "\n")
    return written


# --- shapes: zigzag DPM++ 2M against DPM++ 2M --------------------------------------------------------------


@dataclass(frozen=True)
class ShapesConfig:
    model: str | None = None
    seeds: int = 20
    first_seed: int = 0
    prompts: int = 72
    steps: tuple[int, ...] = (10, 20)
    scale: float = 3.0  # γ₁ (bench shapes' reference scale); γ₂ = 0, λ = T − 1
    diagnostic_seeds: int = 4  # seeds of the unmoved-history diagnostic (0: not run)
    batch: int = 128
    threads: int = 1


SHAPES_QUICK = ShapesConfig(seeds=2, prompts=8, steps=(4,), diagnostic_seeds=1, batch=48)


def shapes_methods(config: ShapesConfig) -> list[Method]:
    out = []
    for steps in config.steps:
        out.append(Method("DPM++ 2M", "dpmpp_2m", config.scale, steps, zigzag_steps=0))
        out.append(Method("Z-Sampling dpmpp_2m γ₂=0", "dpmpp_2m", config.scale, steps))
    for steps in config.steps if config.diagnostic_seeds else ():
        out.append(Method("diagnostic: unmoved history", UNMOVED, config.scale, steps, seeds=config.diagnostic_seeds))
    return out


def run_shapes_dpmpp(config: ShapesConfig = ShapesConfig(), log=None) -> list[shapes.Run]:
    torch.set_num_threads(config.threads)
    model = shapes.load_model(config.model)
    specs = shapes_task.all_specs()[: config.prompts]
    cond = model.encode([spec.prompt for spec in specs]).repeat(config.seeds, 1, 1)
    uncond = model.encode([""])
    noise = shapes.initial_noise(config.seeds, config.prompts, config.first_seed).reshape(-1, 3, 16, 16)
    runs = []
    for method in shapes_methods(config):
        start = time.perf_counter()
        seeds = config.seeds if method.seeds is None else min(method.seeds, config.seeds)
        n = seeds * len(specs)
        images, rows = shapes.generate(model, method, noise[:n], cond[:n], uncond, config.batch)
        outcomes = {k: v.reshape(seeds, -1) for k, v in shapes.score(images, specs * seeds).items()}
        runs.append(shapes.Run(method, rows, time.perf_counter() - start, outcomes))
        if log:
            log(f"  {method.label}: all-correct {outcomes['all_correct'].mean():.3f}, {runs[-1].seconds:.0f}s")
    return runs


def shapes_comparisons(runs: list[shapes.Run]) -> list[shapes.Paired]:
    """Zigzag DPM++ 2M against DPM++ 2M at the same T, and against DPM++ 2M at the nearest T with more rows."""
    plain = {r.method.steps: r for r in runs if r.method.lam == 0}
    zigzag = {r.method.steps: r for r in runs if r.method.lam > 0 and r.method.rule == "dpmpp_2m"}
    out = []
    for run in runs:
        if run.method.lam == 0:
            continue
        if run.method.rule == UNMOVED:
            if run.method.steps in zigzag:
                out.append(shapes.paired_test(run, zigzag[run.method.steps], "moved history"))
            continue
        same = plain.get(run.method.steps)
        if same is not None:
            out.append(shapes.paired_test(run, same, "same T"))
        richer = [r for r in plain.values() if r.method.steps > run.method.steps]
        if richer:
            more = min(richer, key=lambda r: r.method.steps)
            out.append(shapes.paired_test(run, more, f"T={more.method.steps}"))
    return out


def format_shapes_dpmpp(runs: list[shapes.Run], config: ShapesConfig) -> str:
    pct = shapes._pct
    lines = [
        f"Bundled shapes16 model, DDIM sigmas, γ₁ = {config.scale:g} (γ₂ = 0, λ = T − 1 for zigzag); "
        f"{config.prompts} prompts × {config.seeds} seeds, same initial noise for every method. Rates in % with 95 % "
        "Wilson intervals; all correct = count ∧ colour ∧ position.",
        "",
        "| method | images | rows/image | all correct | count ∧ colour | clean |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        o = run.outcomes
        lines.append(
            f"| {run.method.label} | {o['all_correct'].size} | {run.rows_per_image:g} "
            f"| {pct(shapes.proportion_ci(o['all_correct']))} "
            f"| {pct(shapes.proportion_ci(o['count_colour']))} | {pct(shapes.proportion_ci(o['clean']))} |"
        )
    lines += [
        "",
        "Paired (same prompt and seed): Δ = zigzag − baseline in percentage points, 95 % bootstrap CI over images; "
        "w/l = discordant pairs; p = McNemar's exact test.",
        "",
        "| method | baseline | images | Δ all correct (w/l, p) | Δ count ∧ colour (w/l, p) | Δ clean (w/l, p) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for test in shapes_comparisons(runs):
        cells = [
            f"{pct(t.delta, True)} ({t.wins}/{t.losses}, {t.p_value:.2g})"
            for t in (test.tests[k] for k in shapes.TESTED)
        ]
        lines.append(
            f"| {test.method} | {test.baseline} ({test.relation}) | {test.images} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def write_shapes_outputs(runs: list[shapes.Run], config: ShapesConfig, folder: str | Path) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "shapes_dpmpp.md", folder / "shapes_dpmpp.json"]
    written[0].write_text(format_shapes_dpmpp(runs, config))
    data = {
        "config": asdict(config),
        "runs": [
            {
                "method": asdict(run.method),
                "label": run.method.label,
                "rows_per_image": run.rows_per_image,
                "seconds": round(run.seconds, 1),
                "rates": {k: float(v.mean()) for k, v in run.outcomes.items()},
                "all_correct_ci": shapes.proportion_ci(run.outcomes["all_correct"]),
                "outcomes": {k: v.astype(int).tolist() for k, v in run.outcomes.items()},
            }
            for run in runs
        ],
        "paired": [asdict(test) for test in shapes_comparisons(runs)],
    }
    written[1].write_text(json.dumps(data, indent=1) + "\n")
    written.append(plot_shapes_dpmpp(runs, folder / "shapes_dpmpp.png"))
    return written


def _replace(config: Any, **changes: Any) -> Any:
    return replace(config, **{k: v for k, v in changes.items() if v is not None})


def load_shapes_json(path: str | Path) -> tuple[list[shapes.Run], ShapesConfig]:
    """Runs and config back from ``shapes_dpmpp.json`` (outcomes per image), to re-render tables and plots."""
    data = json.loads(Path(path).read_text())
    config = ShapesConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["config"].items()})
    runs = []
    for item in data["runs"]:
        method = Method(**{k: tuple(v) if isinstance(v, list) else v for k, v in item["method"].items()})
        outcomes = {k: np.asarray(v, dtype=bool) for k, v in item["outcomes"].items()}
        runs.append(shapes.Run(method, item["rows_per_image"], item["seconds"], outcomes))
    return runs, config


def plot_shapes_dpmpp(runs: list[shapes.Run], path: Path) -> Path:
    """Rates with 95 % Wilson intervals per attribute, one bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attributes = (("all_correct", "all correct"), ("count_colour", "count ∧ colour"), ("clean", "clean"))
    fig, axes = plt.subplots(1, len(attributes), figsize=(4.4 * len(attributes), 4.2))
    colours = {0: "C3", 1: "C0", 2: "0.6"}
    for ax, (key, title) in zip(axes, attributes):
        stats = [shapes.proportion_ci(run.outcomes[key]) for run in runs]
        kinds = [0 if run.method.lam == 0 else (2 if run.method.rule == UNMOVED else 1) for run in runs]
        positions = np.arange(len(runs))
        ax.bar(
            positions, [100 * s[0] for s in stats], yerr=100 * gmm._yerr(stats), capsize=3,
            color=[colours[k] for k in kinds],
        )  # fmt: skip
        labels = [
            ("DPM++ 2M" if k == 0 else "zigzag" if k == 1 else "unmoved\n(diagnostic)") + f"\nT={run.method.steps}"
            for run, k in zip(runs, kinds)
        ]
        ax.set_xticks(positions, labels, fontsize=7)
        ax.set_ylabel(f"{title} (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)
