"""``zigzag-kdiff bench gmm --flow``: Z-Sampling on flow-matching models, on exact Gaussian mixtures.

The mixtures of :mod:`.gmm` in the rectified-flow parameterisation ``x_σ = (1 − σ)·x₀ + σ·ε``, σ ∈ (0, 1], read
through the VE view ``x_VE = x/(1 − σ)``, ``σ_VE = σ/(1 − σ)`` (the denoised estimate is the same in both): the
exact velocity :class:`~zigzag_kdiff.bench.mixture.FlowMixtureVelocity` (timestep = σ, as Flux's) wrapped by
:class:`zigzag_kdiff.flow.FlowDenoiser`, so the samplers see a flow model exactly as they see SD3 or Flux and run
their flow rules (``flow=None`` → ``is_flow``).

Two kinds of guidance, as the two model families have them:

* **true CFG** (SD3): :class:`~zigzag_kdiff.guidance.CFGDenoiser` over the flow denoiser,
  ``D = D_u + γ·(D_c − D_u)``, two rows per call; Z-Sampling's denoising calls at γ₁, its inversions at γ₂;
* **distilled guidance** (Flux dev): :class:`~zigzag_kdiff.bench.mixture.DistilledDenoiser` takes ``guidance=g``
  and returns the guided prediction ``D_g = D_u + g·(D_c − D_u)`` from *one* call, counted as one row per sample
  (what a guidance-distilled network costs): an idealised, perfectly distilled model. Z-Sampling's denoising
  calls run at g₁ (``extra_args["guidance"]``), its inversions at
  g₂ (``inversion_guidance``), true CFG off (``cond_scale = inversion_scale = 1``).

For such a model, distilled guidance (g₁, g₂) gives exactly the samples of true CFG at (γ₁, γ₂) = (g₁, g₂) (the
identity flow-core tests; :func:`identity_rows` measures it here) at half the rows, so every adherence/fidelity
number of a distilled row equals its true-CFG twin; only the cost differs. Each method is compared **at matched
adherence** with the CFG sweep on the same schedule and T (the method of :mod:`.gmm`: the sweep's FD interpolated
at the method's adherence, per seed, bootstrapped over seeds); the DPM++ 2M rule against the DPM++ 2M sweep.

Schedules: ``linspace``, σ = linspace(1, 1/T, T) then 0 (FluxPipeline's sigmas without shift), and ``shift3``,
SD3's: diffusers' ``FlowMatchEulerDiscreteScheduler(shift=3.0).set_timesteps(T)`` (shift σ' = 3σ/(1 + 2σ), σ_min
shifted twice as diffusers does). RF-Sampling (Zhou et al. 2026) enters as its σ-space structure,
:func:`zigzag_kdiff.sampling.sample_rf_euler`, with the high and low *conditions* given as distilled guidance
values (the paper's text-embedding combination has no counterpart on a mixture): an analogue, labelled as such.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..flow import FlowDenoiser
from ..guidance import CallCounter, CFGDenoiser
from ..sampling import sample_rf_euler, sample_zigzag_dpmpp_2m, sample_zigzag_euler
from .common import ZIGZAG_SAMPLERS, save_figure
from .gmm import (
    CFG_SCALES,
    METRICS,
    MIXTURES,
    ZIGZAG_SCALES,
    DimResult,
    Mixture,
    Run,
    _ci,
    _fmt,
    equivalent_scale,
    initial_noise,
    matched,
    mean_ci,
    run_method,
)
from .mixture import UNCONDITIONAL, DistilledDenoiser, FlowMixtureVelocity, GaussianMixture

SCHEDULES = ("linspace", "shift3")


def flow_sigmas(steps: int, schedule: str = "linspace", shift: float = 3.0) -> torch.Tensor:
    """Flow noise levels ending in 0, float64: ``linspace`` (Flux's, no shift) or ``shift3`` (SD3's, diffusers')."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if schedule == "linspace":
        sigmas = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64)
    elif schedule == "shift3":

        def shifted(s: torch.Tensor) -> torch.Tensor:
            return shift * s / (1 + (shift - 1) * s)

        sigma_min = shifted(torch.tensor(1 / 1000, dtype=torch.float64))  # diffusers: shifted at init …
        sigmas = shifted(torch.linspace(1.0, float(sigma_min), steps, dtype=torch.float64))  # … and again here
    else:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    return torch.cat([sigmas, sigmas.new_zeros([1])])


# --- methods and configuration --------------------------------------------------------------------


@dataclass(frozen=True)
class FlowMethod:
    """One sampler setting on a flow mixture.

    ``rule``: "standard" (Euler) or "standard_dpmpp_2m" (plain sampling), Z-Sampling's "euler", "ddim",
    "dpmpp_2m", or "rf" (:func:`~zigzag_kdiff.sampling.sample_rf_euler`). ``guidance``: "cfg" (``scale`` = γ₁,
    ``inversion_scale`` = γ₂) or "distilled" (``scale`` = g₁, ``inversion_scale`` = g₂, one row per call).
    RF: ``rf_high``/``rf_low`` the distilled guidance of the high-weight denoising and low-weight inversion calls,
    ``merge_ratio`` γ, ``alpha`` α; the normal denoising runs at ``scale``.
    """

    family: str
    rule: str
    guidance: str
    scale: float
    steps: int
    schedule: str
    inversion_scale: float = 0.0
    rf_high: float = 0.0
    rf_low: float = 0.0
    merge_ratio: float = 0.5
    alpha: int = 1

    @property
    def zigzag_steps(self) -> int:
        return 0 if self.rule.startswith("standard") else self.steps - 1

    @property
    def label(self) -> str:
        kind = "γ" if self.guidance == "cfg" else "g"
        if self.rule == "standard":
            head = f"{'CFG' if self.guidance == 'cfg' else 'distilled'} {self.scale:g}"
        elif self.rule == "standard_dpmpp_2m":
            head = f"CFG {self.scale:g} DPM++ 2M"
        elif self.rule == "rf":
            head = (
                f"RF analogue g={self.scale:g} high {self.rf_high:g} low {self.rf_low:g} "
                f"γ={self.merge_ratio:g} α={self.alpha}"
            )
        else:
            head = f"Z {self.rule} {kind}₁={self.scale:g} {kind}₂={self.inversion_scale:g}"
        return f"{head} T={self.steps} {self.schedule}"

    def settings(self) -> tuple:
        return (
            (self.rule, self.guidance, self.scale, self.steps, self.schedule)
            + (() if self.rule.startswith("standard") else (self.inversion_scale, self.rf_high, self.rf_low))
            + ((self.merge_ratio, self.alpha) if self.rule == "rf" else ())
        )


@dataclass(frozen=True)
class FlowConfig:
    mixtures: tuple[Mixture, ...] = MIXTURES[:2]  # d = 2 and 16 (d = 32 behaves as 16 in bench gmm)
    schedules: tuple[str, ...] = SCHEDULES
    steps: int = 28
    seeds: int = 12
    first_seed: int = 0
    per_class: int = 128
    cfg_scales: tuple[float, ...] = CFG_SCALES
    zigzag_scales: tuple[float, ...] = ZIGZAG_SCALES
    inversion_guidance: float = 1.0  # g₂ of the distilled Z-Sampling rows (the library's default for Flux)
    merge_ratio: float = 0.5  # RF-Sampling's γ (the paper's default)
    alpha: int = 1  # RF-Sampling's α (the paper's FLUX-Dev default)
    headline_scale: float = 5.5  # the summary table's γ₁ = g₁ (the largest zigzag scale up to it)

    @property
    def equal_row_steps(self) -> tuple[int, int]:
        """Steps of plain sampling with at least Z-Sampling's rows: true CFG 2T + 3(T − 1) at 2 rows a step
        (γ₂ = 0: one-row inversions), distilled T + 2(T − 1) at 1 row a step (Z and the RF analogue alike)."""
        T = self.steps
        return math.ceil((2 * T + 3 * (T - 1)) / 2), T + 2 * (T - 1)

    @property
    def headline(self) -> float:
        scales = [g for g in self.zigzag_scales if self.inversion_guidance < g <= self.headline_scale]
        return max(scales) if scales else max(self.zigzag_scales)


QUICK = FlowConfig(
    mixtures=MIXTURES[:1],
    steps=6,
    seeds=3,
    per_class=24,
    cfg_scales=(1.0, 2.0, 4.0, 8.0),
    zigzag_scales=(2.0, 4.0),
)


def methods_for(config: FlowConfig, schedule: str) -> list[FlowMethod]:
    T, g2 = config.steps, config.inversion_guidance
    out = [FlowMethod("CFG", "standard", "cfg", s, T, schedule) for s in config.cfg_scales]
    out += [FlowMethod("CFG, DPM++ 2M", "standard_dpmpp_2m", "cfg", s, T, schedule) for s in config.cfg_scales]
    out += [FlowMethod("distilled", "standard", "distilled", s, T, schedule) for s in config.cfg_scales]
    cfg_rows, distilled_rows = config.equal_row_steps
    out += [FlowMethod("CFG, equal rows", "standard", "cfg", s, cfg_rows, schedule) for s in config.cfg_scales]
    out += [
        FlowMethod("distilled, equal rows", "standard", "distilled", s, distilled_rows, schedule)
        for s in config.cfg_scales
    ]
    for rule in ("euler", "ddim", "dpmpp_2m"):
        out += [FlowMethod(f"Z {rule}, CFG γ₂=0", rule, "cfg", g, T, schedule, 0.0) for g in config.zigzag_scales]
        out += [
            FlowMethod(f"Z {rule}, distilled g₂={g2:g}", rule, "distilled", g, T, schedule, g2)
            for g in config.zigzag_scales
            if g > g2
        ]
    rf = {"merge_ratio": config.merge_ratio, "alpha": config.alpha}
    out += [
        FlowMethod(f"RF analogue, high g, low {g2:g}", "rf", "distilled", g, T, schedule, rf_high=g, rf_low=g2, **rf)
        for g in config.zigzag_scales
        if g > g2
    ]
    out += [
        FlowMethod("RF analogue, high 2g, low g", "rf", "distilled", g, T, schedule, rf_high=2 * g, rf_low=g, **rf)
        for g in config.zigzag_scales
    ]
    return out


def equal_rows_baseline_of(method: FlowMethod) -> str:
    """The plain sweep with as many rows per sample as the method (more steps)."""
    return "CFG, equal rows" if method.guidance == "cfg" else "distilled, equal rows"


def baseline_of(method: FlowMethod) -> str:
    """The CFG sweep a method is compared with at matched adherence (same schedule and T)."""
    return "CFG, DPM++ 2M" if method.rule == "dpmpp_2m" else "CFG"


# --- sampling ---------------------------------------------------------------------------------------


def flow_sample(
    mixture: GaussianMixture, method: FlowMethod, noise: torch.Tensor, labels: torch.Tensor, config: Any = None
) -> tuple[torch.Tensor, float]:
    """Samples of ``method`` from unit noise (σ_max = 1: the noise is the initial latent); ``(x0, rows/sample)``."""
    flow_model = FlowDenoiser(FlowMixtureVelocity(mixture, timestep_scale=1.0), timestep_scale=1.0)
    # the counter sits where a host's network is: below CFG (2 rows a call), above the distilled model (1 row)
    counter = CallCounter(flow_model if method.guidance == "cfg" else DistilledDenoiser(flow_model))
    guided = CFGDenoiser(counter)
    sigmas = flow_sigmas(method.steps, method.schedule)
    uncond = torch.full_like(labels, UNCONDITIONAL)
    if method.guidance == "cfg":
        args: dict[str, Any] = {"cond": labels, "uncond": uncond, "cond_scale": method.scale}
        options: dict[str, Any] = {"inversion_scale": method.inversion_scale}
    else:  # one call per evaluation, true CFG off
        args = {"cond": labels, "uncond": uncond, "cond_scale": 1.0, "guidance": method.scale}
        options = {"inversion_scale": 1.0, "inversion_guidance": method.inversion_scale}
    x = noise * sigmas[0]
    if method.rule == "standard":
        out = sample_zigzag_euler(guided, x, sigmas, args, disable=True, zigzag_steps=0)
    elif method.rule == "standard_dpmpp_2m":
        out = sample_zigzag_dpmpp_2m(guided, x, sigmas, args, disable=True, zigzag_steps=0)
    elif method.rule == "rf":
        out = sample_rf_euler(
            guided,
            x,
            sigmas,
            args,
            disable=True,
            high_args={"guidance": method.rf_high},
            low_args={"guidance": method.rf_low},
            merge_ratio=method.merge_ratio,
            alpha=method.alpha,
        )
    else:
        out = ZIGZAG_SAMPLERS[method.rule](guided, x, sigmas, args, disable=True, **options)
    return out, counter.rows / len(noise)


@dataclass
class FlowResult:
    mixture: Mixture
    schedule: str
    result: DimResult = field(repr=False)
    identity: list[dict[str, Any]] = field(default_factory=list)
    _summary: list[dict[str, Any]] | None = field(default=None, repr=False)


def identity_rows(mixture: GaussianMixture, config: FlowConfig, schedule: str, noise, labels) -> list[dict[str, Any]]:
    """Distilled (g₁, g₂) against true CFG (γ₁, γ₂) = (g₁, g₂), per rule: max |Δx| of the samples and rows."""
    g1, g2 = max(config.zigzag_scales), config.inversion_guidance
    rows = []
    for rule in ("euler", "ddim", "dpmpp_2m"):
        base = {"rule": rule, "guidance": "cfg", "scale": g1, "steps": config.steps, "schedule": schedule}
        cfg, cfg_rows = flow_sample(mixture, FlowMethod("identity", inversion_scale=g2, **base), noise, labels)
        base["guidance"] = "distilled"
        distilled, d_rows = flow_sample(mixture, FlowMethod("identity", inversion_scale=g2, **base), noise, labels)
        rows.append(
            {
                "rule": rule,
                "g1": g1,
                "g2": g2,
                "max_abs_diff": float((cfg - distilled).abs().max()),
                "rows_cfg": cfg_rows,
                "rows_distilled": d_rows,
            }
        )
    return rows


def run_flow(config: FlowConfig = FlowConfig(), log=None) -> list[FlowResult]:
    torch.set_num_threads(1)
    results = []
    for mixture_spec in config.mixtures:
        mixture = mixture_spec.build()
        noise, labels = initial_noise(config, mixture_spec)
        for schedule in config.schedules:
            result = DimResult(mixture_spec)
            for method in methods_for(config, schedule):
                run = run_method(mixture, method, noise, labels, config, sampler=flow_sample)
                result.runs.append(run)
                if log:
                    log(f"  d={mixture_spec.dim} {method.label}: {run.seconds:.1f}s")
            part = slice(0, mixture_spec.num_classes * config.per_class)  # the identity on the first seed
            identity = identity_rows(mixture, config, schedule, noise[part], labels[part])
            results.append(FlowResult(mixture_spec, schedule, result, identity))
    return results


# --- tables -----------------------------------------------------------------------------------------

SWEEPS = ("CFG", "CFG, DPM++ 2M", "distilled", "CFG, equal rows", "distilled, equal rows")


def rising_sweep(result: DimResult, family: str) -> DimResult:
    """The sweep ``family`` up to the scale of its highest mean adherence: past it adherence falls again (few steps,
    high scales), and matching adherence on a folded curve would pair a method with two different CFG points."""
    runs = sorted(result.find(family=family), key=lambda run: run.method.scale)
    peak = int(np.argmax([np.mean(run.metrics["logit"]) for run in runs])) if runs else -1
    return DimResult(result.mixture, runs[: peak + 1])


def summary_rows(flow: FlowResult) -> list[dict[str, Any]]:
    """One row per run outside the sweeps, with matched-adherence deltas against its CFG sweep (computed once)."""
    if flow._summary is not None:
        return flow._summary
    rows = []
    result = flow.result
    families = list(dict.fromkeys(run.method.family for run in result.runs if run.method.family not in SWEEPS))
    for family in families:
        for run in sorted(result.find(family=family), key=lambda r: r.method.scale):
            baseline = baseline_of(run.method)
            sweep = rising_sweep(result, baseline)
            row: dict[str, Any] = {
                "family": family,
                "method": run.method.label,
                "scale": run.method.scale,
                "rows": run.rows_per_sample,
                "baseline": baseline,
            }
            for metric in METRICS:
                row[metric] = mean_ci(run.metrics[metric])
            row["cfg_equivalent"] = mean_ci(equivalent_scale(sweep, run, baseline))
            for metric in ("fd", "logp", "spread"):
                row[f"vs_cfg_{metric}"] = mean_ci(matched(sweep, run, metric, baseline))
            equal = equal_rows_baseline_of(run.method)
            row["equal_rows_baseline"] = equal
            row["vs_equal_rows_fd"] = mean_ci(matched(rising_sweep(result, equal), run, "fd", equal))
            rows.append(row)
    flow._summary = rows
    return rows


def sweep_rows(flow: FlowResult) -> list[dict[str, Any]]:
    rows = []
    for family in SWEEPS:
        for run in sorted(flow.result.find(family=family), key=lambda r: r.method.scale):
            rows.append(
                {
                    "family": family,
                    "scale": run.method.scale,
                    "rows": run.rows_per_sample,
                    **{metric: mean_ci(run.metrics[metric]) for metric in ("logit", "fd")},
                }
            )
    return rows


def format_result(flow: FlowResult, config: FlowConfig) -> str:
    m = flow.mixture
    lines = [
        f"### d = {m.dim}, {flow.schedule} schedule ({m.num_classes} classes × {m.components_per_class} components, "
        f"separation {m.separation:g}; T = {config.steps}, {config.seeds} seeds × {config.per_class} samples "
        "per class)",
        "",
        "Adherence = mean logit p(c∣x); FD = Fréchet distance to the exact class moments (lower is better). "
        "ΔFD/Δlog p/Δspread at matched adherence against the CFG sweep on the same schedule (the DPM++ 2M rule: "
        "against the DPM++ 2M sweep), each sweep up to its highest adherence; mean [95 % CI] over seeds; ΔFD < 0 "
        "favours the method; \"out of range\": the method's adherence is outside the sweep's.",
        "",
        "| method | rows/sample | adherence | accuracy | FD | spread | CFG-equivalent scale | ΔFD vs CFG "
        "| Δlog p vs CFG | Δspread vs CFG | ΔFD vs equal rows |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in summary_rows(flow):
        lines.append(
            f"| {row['method']} | {row['rows']:g} | {_fmt(row['logit'][0])} | {_fmt(row['accuracy'][0], 3)} "
            f"| {_fmt(row['fd'][0], 3)} | {_fmt(row['spread'][0], 3)} | {_fmt(row['cfg_equivalent'][0])} "
            f"| {_ci(row['vs_cfg_fd'], 3)} | {_ci(row['vs_cfg_logp'])} | {_ci(row['vs_cfg_spread'], 3)} "
            f"| {_ci(row['vs_equal_rows_fd'], 3)} |"
        )
    lines += [
        "",
        "Sweeps (adherence / FD per scale; the distilled sweep gives the CFG sweep's samples at half the rows; "
        f"equal rows: T = {config.equal_row_steps[0]} and {config.equal_row_steps[1]}):",
        "",
        "| sweep | rows/sample | " + " | ".join(f"{s:g}" for s in config.cfg_scales) + " |",
        "|---|---:|" + "---:|" * len(config.cfg_scales),
    ]
    sweeps = sweep_rows(flow)
    for family in SWEEPS:
        part = [r for r in sweeps if r["family"] == family]
        if part:
            cells = " | ".join(f"{_fmt(r['logit'][0])} / {_fmt(r['fd'][0], 3)}" for r in part)
            lines.append(f"| {family} | {max(r['rows'] for r in part):g} | {cells} |")
    lines += [
        "",
        "Identity (distilled (g₁, g₂) vs true CFG (γ₁, γ₂) = (g₁, g₂), first seed):",
        "",
        "| rule | g₁ | g₂ | max abs difference of the samples | rows/sample CFG | rows/sample distilled |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in flow.identity:
        lines.append(
            f"| {row['rule']} | {row['g1']:g} | {row['g2']:g} | {row['max_abs_diff']:.1e} | {row['rows_cfg']:g} "
            f"| {row['rows_distilled']:g} |"
        )
    return "\n".join(lines)


def headline_rows(results: list[FlowResult], config: FlowConfig) -> list[dict[str, Any]]:
    """Per mixture, schedule and family: the row at γ₁ = g₁ = ``config.headline``."""
    scale = config.headline
    rows = []
    for flow in results:
        for row in summary_rows(flow):
            if row["scale"] == scale:
                rows.append({"dim": flow.mixture.dim, "schedule": flow.schedule, **row})
    return rows


def format_headline(results: list[FlowResult], config: FlowConfig) -> str:
    scale = config.headline
    lines = [
        f"## Summary at γ₁ = g₁ = {scale:g} (T = {config.steps}; ΔFD at matched adherence, mean [95 % CI])",
        "",
        "| d | schedule | method | rows/sample | CFG-equivalent scale | ΔFD vs CFG | ΔFD vs equal rows |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for row in headline_rows(results, config):
        lines.append(
            f"| {row['dim']} | {row['schedule']} | {row['family']} | {row['rows']:g} "
            f"| {_fmt(row['cfg_equivalent'][0])} | {_ci(row['vs_cfg_fd'], 3)} | {_ci(row['vs_equal_rows_fd'], 3)} |"
        )
    cfg_steps, distilled_steps = config.equal_row_steps
    lines += [
        "",
        f"Equal rows: plain sampling with as many model rows per sample, true CFG at T = {cfg_steps} (against the "
        f"true-CFG rows), distilled at T = {distilled_steps} (against the distilled and RF rows).",
    ]
    return "\n".join(lines)


def format_flow(results: list[FlowResult], config: FlowConfig) -> str:
    parts = [format_headline(results, config), ""]
    for flow in results:
        parts += [format_result(flow, config), ""]
    return "\n".join(parts).rstrip() + "\n"


def to_json(results: list[FlowResult], config: FlowConfig) -> dict[str, Any]:
    return {
        "config": asdict(config),
        "results": [
            {
                "mixture": asdict(flow.mixture),
                "schedule": flow.schedule,
                "runs": [
                    {
                        "method": asdict(run.method),
                        "label": run.method.label,
                        "rows_per_sample": run.rows_per_sample,
                        "metrics": run.metrics,
                    }
                    for run in flow.result.runs
                ],
                "summary": summary_rows(flow),
                "identity": flow.identity,
            }
            for flow in results
        ],
    }


def load_json(path: str | Path) -> tuple[list[FlowResult], FlowConfig]:
    """Results and config of a stored ``flow.json`` (per-seed metrics; re-renders its tables and plot)."""
    data = json.loads(Path(path).read_text())
    raw = data["config"]
    config = FlowConfig(
        **{
            **raw,
            "mixtures": tuple(Mixture(**m) for m in raw["mixtures"]),
            **{k: tuple(raw[k]) for k in ("schedules", "cfg_scales", "zigzag_scales")},
        }
    )
    results = []
    for entry in data["results"]:
        result = DimResult(Mixture(**entry["mixture"]))
        for run in entry["runs"]:
            result.runs.append(Run(FlowMethod(**run["method"]), run["rows_per_sample"], 0.0, run["metrics"]))
        results.append(FlowResult(result.mixture, entry["schedule"], result, entry["identity"]))
    return results, config


def write_outputs(results: list[FlowResult], config: FlowConfig, folder: str | Path) -> list[Path]:
    """``flow.md``, ``flow.json`` and ``flow_frontier.png`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "flow.md", folder / "flow.json"]
    written[0].write_text(format_flow(results, config))
    written[1].write_text(json.dumps(to_json(results, config), indent=1, allow_nan=True) + "\n")
    written.append(plot_flow(results, folder / "flow_frontier.png"))
    return written


def plot_flow(results: list[FlowResult], path: Path) -> Path:
    """FD against adherence per family (sweeps as lines), one panel per mixture and schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    columns = min(n, 3)
    fig, axes = plt.subplots(math.ceil(n / columns), columns, figsize=(5.2 * columns, 4.2 * math.ceil(n / columns)))
    axes = np.atleast_1d(axes).ravel()
    for ax, flow in zip(axes, results):
        families = list(dict.fromkeys(run.method.family for run in flow.result.runs))
        for family in families:
            if family == "distilled":  # the CFG sweep's samples
                continue
            runs = sorted(flow.result.find(family=family), key=lambda r: r.method.scale)
            style = "-o" if family in SWEEPS else "--s"
            ax.plot(
                [np.mean(r.metrics["logit"]) for r in runs],
                [np.mean(r.metrics["fd"]) for r in runs],
                style,
                ms=3,
                label=family,
            )
        ax.set_yscale("log")
        ax.set_title(f"d = {flow.mixture.dim}, {flow.schedule}")
        ax.set_xlabel("adherence: mean logit p(c∣x)")
        ax.set_ylabel("FD to class (lower is better)")
    for ax in axes[n:]:
        ax.axis("off")
    axes[0].legend(fontsize=6)
    fig.suptitle("Flow mixtures: adherence vs fidelity (the distilled sweep coincides with the CFG sweep)")
    return save_figure(fig, path)
