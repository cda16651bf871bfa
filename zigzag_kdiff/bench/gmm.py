"""``zigzag-kdiff bench gmm``: is Z-Sampling better than simply raising CFG? Exact answers on Gaussian mixtures.

Class-conditional Gaussian mixtures (:class:`zigzag_kdiff.bench.mixture.GaussianMixture`) have closed-form
denoisers, class posteriors and class moments, so every metric here is exact up to sampling noise:

* adherence: mean logit of the exact class posterior p(c∣x) of the requested class, and accuracy
  (argmax p(·∣x) = c);
* fidelity: Fréchet distance between the samples of each class and that class's exact moments
  (mean over classes; lower is better), and mean log p(x∣c);
* diversity: spread, sqrt(tr Σ_samples / tr Σ_class) averaged over classes (1 = the data's).

To first order one zig-zag pair acts like CFG at about 2γ₁ − γ₂, so Z-Sampling is compared **at
matched adherence** with the standard-CFG curve swept over its scale: for each seed the CFG sweep's
fidelity is interpolated (linearly, in adherence) at the method's adherence, and the paired
difference is bootstrapped over seeds (scipy.stats.bootstrap, 95 % BCa). Every method starts from the
same initial noise for a given seed. "Equal rows" is standard CFG with more steps, so that it makes as
many model rows per sample as Z-Sampling (2T + 3λ at γ₂ ∈ {0, 1}).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..guidance import CallCounter, CFGDenoiser
from .common import Method, sample_method, save_figure
from .mixture import UNCONDITIONAL, GaussianMixture

CFG_SCALES = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 12.0, 14.0)
ZIGZAG_SCALES = (1.5, 2.5, 4.0, 5.5, 7.0)
INTERVAL = (0.28, 5.42)  # Kynkäänniemi et al.'s EDM2 interval, in k-diffusion σ
METRICS = ("logit", "accuracy", "fd", "spread", "logp")


@dataclass(frozen=True)
class Mixture:
    """A benchmark mixture: ``GaussianMixture.random`` arguments."""

    dim: int
    separation: float
    num_classes: int = 3
    components_per_class: int = 2
    variance: float = 0.25
    seed: int = 0

    def build(self) -> GaussianMixture:
        return GaussianMixture.random(
            self.num_classes, self.components_per_class, self.dim, self.separation, self.variance, self.seed
        )


# Separations chosen so that unguided sampling (scale 1) reaches roughly 60–80 % class accuracy.
MIXTURES = (Mixture(2, 0.6), Mixture(16, 0.2), Mixture(32, 0.14))


@dataclass(frozen=True)
class Config:
    mixtures: tuple[Mixture, ...] = MIXTURES
    steps: int = 50
    seeds: int = 12
    first_seed: int = 0  # seeds first_seed … first_seed + seeds − 1 (another range: an independent replicate)
    per_class: int = 128
    cfg_scales: tuple[float, ...] = CFG_SCALES
    zigzag_scales: tuple[float, ...] = ZIGZAG_SCALES
    lambda_scale: float = 3.0  # γ₁ of the λ sweep (Fig. 9)
    lambdas: tuple[int, ...] = (0, 1, 2, 5, 10, 25, 49)
    gap_scale: float = 5.5  # γ₁ of the γ₂ sweep (Fig. 7)
    inversion_scales: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 5.5)
    compute_steps_standard: tuple[int, ...] = (10, 20, 50, 124)
    compute_steps_zigzag: tuple[int, ...] = (4, 10, 20, 50)
    target_scale: float = 4.0  # Fig. 10 compares fidelity at the adherence of CFG at this scale (T steps)
    sigma_min: float = 0.02
    sigma_max: float = 20.0

    @property
    def equal_row_steps(self) -> int:
        """Steps of standard CFG (2 rows each) costing at least Z-Sampling's 2T + 3(T − 1) rows."""
        return math.ceil((2 * self.steps + 3 * (self.steps - 1)) / 2)


QUICK = Config(
    mixtures=MIXTURES[:2],
    steps=12,
    seeds=4,
    per_class=64,
    cfg_scales=(1.0, 2.0, 3.0, 4.0, 6.0, 9.0, 14.0),
    zigzag_scales=(2.0, 4.0),
    lambdas=(0, 4, 11),
    inversion_scales=(0.0, 2.0, 4.0),
    compute_steps_standard=(6, 12),
    compute_steps_zigzag=(4, 12),
)


@dataclass
class Run:
    method: Method
    rows_per_sample: float
    seconds: float
    metrics: dict[str, list[float]]  # metric -> per-seed values
    sample_logit: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))  # per sample, seed-major


@dataclass
class DimResult:
    mixture: Mixture
    runs: list[Run] = field(default_factory=list)

    def find(self, **match: Any) -> list[Run]:
        return [run for run in self.runs if all(getattr(run.method, k) == v for k, v in match.items())]


# --- sampling -------------------------------------------------------------------------------------


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. noise levels ending in 0 (as k-diffusion's ``get_sigmas_karras``)."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def initial_noise(config: Config, mixture: Mixture) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard normal noise ``[seeds·classes·per_class, dim]`` (seed s: generator seed s) and labels."""
    per_seed = mixture.num_classes * config.per_class
    noise = torch.cat(
        [
            torch.randn(per_seed, mixture.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            for seed in range(config.first_seed, config.first_seed + config.seeds)
        ]
    )
    labels = torch.arange(mixture.num_classes).repeat_interleave(config.per_class).repeat(config.seeds)
    return noise, labels


def sample(model: GaussianMixture, method: Method, noise: torch.Tensor, labels: torch.Tensor, config: Config):
    """Samples of ``method`` from ``noise`` (unit variance); returns ``(x0, model rows per sample)``."""
    counter = CallCounter(model)
    guided = CFGDenoiser(counter, guidance_interval=method.interval)
    sigmas = karras_sigmas(method.steps, config.sigma_min, config.sigma_max)
    args = {"cond": labels, "uncond": torch.full_like(labels, UNCONDITIONAL), "cond_scale": method.scale}
    out = sample_method(method, guided, noise * sigmas[0], sigmas, args)
    return out, counter.rows / len(noise)


# --- metrics --------------------------------------------------------------------------------------


def frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """``‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2 (Σ_a^½ Σ_b Σ_a^½)^½)`` via symmetric eigendecompositions."""
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_term = np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(np.clip(cross, 0, None)).sum()
    return float(((mean_a - mean_b) ** 2).sum() + max(trace_term, 0.0))


def class_logit(model: GaussianMixture, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sample, ``log p(c∣x) − log(1 − p(c∣x))`` for the requested class c, computed stably."""
    log_post = model.class_log_posterior(x)  # [batch, classes], float64
    own = log_post.gather(1, labels[:, None]).squeeze(1)
    others = log_post.masked_fill(torch.nn.functional.one_hot(labels, log_post.shape[1]).bool(), -math.inf)
    return own - others.logsumexp(1)


def sample_metrics(model: GaussianMixture, x: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The adherence, fidelity and diversity metrics of one batch (see the module docstring).

    Logits are clamped to ±50 (p(c∣x) within 2e-22 of 0 or 1) so a single saturated sample cannot
    dominate the mean.
    """
    log_post = model.class_log_posterior(x)
    logit = class_logit(model, x, labels)
    fds, spreads = [], []
    x64 = x.to(torch.float64)
    for c in range(model.num_classes):
        members = x64[labels == c].numpy()
        mean, cov = (t.numpy() for t in model.class_moments(c))
        sample_cov = np.cov(members, rowvar=False).reshape(len(mean), len(mean))
        fds.append(frechet_distance(members.mean(0), sample_cov, mean, cov))
        spreads.append(math.sqrt(np.trace(sample_cov) / np.trace(cov)))
    logp = model.log_prob(x, 0.0, labels)
    return {
        "logit": float(logit.clamp(-50, 50).mean()),
        "accuracy": float((log_post.argmax(1) == labels).double().mean()),
        "fd": float(np.mean(fds)),
        "spread": float(np.mean(spreads)),
        "logp": float(logp.mean()),
    }


def run_method(model: GaussianMixture, method: Method, noise, labels, config: Config, sampler=None) -> Run:
    """Sample ``method`` (with ``sampler``, default :func:`sample`; same signature) and score it per seed."""
    start = time.perf_counter()
    x, rows = (sample if sampler is None else sampler)(model, method, noise, labels, config)
    per_seed = len(noise) // config.seeds
    metrics: dict[str, list[float]] = {name: [] for name in METRICS}
    for s in range(config.seeds):
        part = slice(s * per_seed, (s + 1) * per_seed)
        for name, value in sample_metrics(model, x[part], labels[part]).items():
            metrics[name].append(value)
    logit = class_logit(model, x, labels).clamp(-50, 50).numpy()
    return Run(method, rows, time.perf_counter() - start, metrics, logit)


# --- the methods -----------------------------------------------------------------------------------


def methods_for(config: Config) -> list[Method]:
    T = config.steps
    out = [Method("standard", "standard", s, T) for s in config.cfg_scales]
    out += [Method("standard, equal rows", "standard", s, config.equal_row_steps) for s in config.cfg_scales]
    out += [Method("standard, interval", "standard", s, T, interval=INTERVAL) for s in config.cfg_scales if s > 1]
    for rule in ("euler", "ddim"):
        for gamma_2 in (0.0, 1.0):
            out += [
                Method(f"Z-Sampling {rule} γ₂={gamma_2:g}", rule, g, T, inversion_scale=gamma_2)
                for g in config.zigzag_scales
                if g > gamma_2
            ]
    out += [
        Method("Z-Sampling euler γ₂=0, interval", "euler", g, T, interval=INTERVAL)
        for g in config.zigzag_scales
        if g > 1
    ]
    out += [
        Method("λ sweep", "euler", config.lambda_scale, T, zigzag_steps=lam) for lam in config.lambdas if lam <= T - 1
    ]
    out += [
        Method("γ₂ sweep", "euler", config.gap_scale, T, inversion_scale=g2)
        for g2 in config.inversion_scales
        if g2 <= config.gap_scale
    ]
    for steps in config.compute_steps_standard:
        out += [Method(f"compute: standard T={steps}", "standard", s, steps) for s in config.cfg_scales]
    for steps in config.compute_steps_zigzag:
        out += [Method(f"compute: Z-Sampling T={steps}", "euler", g, steps) for g in config.zigzag_scales]
    return _dedupe(out)


def _dedupe(methods: list[Method]) -> list[Method]:
    """Keep every family's list but run identical settings once (see :func:`run_dim`)."""
    return list(dict.fromkeys(methods))


def run_dim(mixture: Mixture, config: Config, log=None) -> DimResult:
    model = mixture.build()
    noise, labels = initial_noise(config, mixture)
    result = DimResult(mixture)
    cache: dict[tuple, Run] = {}
    for method in methods_for(config):
        key = method.settings()
        if key not in cache:
            cache[key] = run_method(model, method, noise, labels, config)
            if log:
                log(f"  d={mixture.dim} {method.label}: {cache[key].seconds:.1f}s")
        result.runs.append(replace(cache[key], method=method))
    return result


# --- matched adherence ----------------------------------------------------------------------------


def interpolate_curve(adherence: np.ndarray, values: np.ndarray, at: float) -> float:
    """Linear interpolation of a sweep's ``values`` at adherence ``at``; NaN outside the sweep's range."""
    order = np.argsort(adherence)
    adherence, values = adherence[order], values[order]
    if not adherence[0] <= at <= adherence[-1]:
        return math.nan
    return float(np.interp(at, adherence, values))


def curve(result: DimResult, family: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed arrays ``[seeds, points]`` of adherence and ``metric`` along a family's scale sweep."""
    runs = sorted(result.find(family=family), key=lambda run: run.method.scale)
    adherence = np.array([run.metrics["logit"] for run in runs]).T
    values = np.array([run.metrics[metric] for run in runs]).T
    return adherence, values


def matched(result: DimResult, run: Run, metric: str, baseline: str = "standard") -> np.ndarray:
    """Per seed: the run's ``metric`` minus the baseline sweep's, interpolated at the run's adherence."""
    adherence, values = curve(result, baseline, metric)
    at = np.asarray(run.metrics["logit"])
    reference = np.array([interpolate_curve(adherence[s], values[s], at[s]) for s in range(len(at))])
    return np.asarray(run.metrics[metric]) - reference


def equivalent_scale(result: DimResult, run: Run, baseline: str = "standard") -> np.ndarray:
    """Per seed: the baseline's CFG scale reaching the run's adherence (NaN if outside the sweep)."""
    runs = sorted(result.find(family=baseline), key=lambda r: r.method.scale)
    scales = np.array([r.method.scale for r in runs])
    adherence = np.array([r.metrics["logit"] for r in runs]).T
    return np.array([interpolate_curve(adherence[s], scales, a) for s, a in enumerate(run.metrics["logit"])])


def mean_ci(values: Sequence[float] | np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95 % bootstrap CI (BCa; percentile when degenerate) over seeds; NaN if any value is NaN."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    if len(values) == 0 or np.isnan(values).any():
        return (math.nan, math.nan, math.nan)
    mean = float(values.mean())
    if len(values) < 3 or np.ptp(values) == 0:
        return (mean, mean, mean)
    for method in ("BCa", "percentile"):
        ci = stats.bootstrap(
            (values,), np.mean, confidence_level=0.95, n_resamples=2000, method=method, random_state=seed
        ).confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            return (mean, float(ci.low), float(ci.high))
    return (mean, math.nan, math.nan)


# --- the whole benchmark --------------------------------------------------------------------------


def run_gmm(config: Config = Config(), log=None) -> list[DimResult]:
    torch.set_num_threads(1)
    return [run_dim(mixture, config, log) for mixture in config.mixtures]


def _fmt(value: float, digits: int = 2) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _ci(stats: tuple[float, float, float], digits: int = 2, signed: bool = True) -> str:
    mean, low, high = stats
    if not math.isfinite(mean):
        return "out of range"
    sign = "+" if signed else ""
    return f"{mean:{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


MAIN_FAMILIES = (
    "standard",
    "standard, equal rows",
    "standard, interval",
    "Z-Sampling euler γ₂=0",
    "Z-Sampling euler γ₂=1",
    "Z-Sampling ddim γ₂=0",
    "Z-Sampling ddim γ₂=1",
    "Z-Sampling euler γ₂=0, interval",
)


def summary_rows(result: DimResult) -> list[dict[str, Any]]:
    """One row per run of the main families, with matched-adherence deltas against two baselines."""
    rows = []
    for family in MAIN_FAMILIES:
        for run in sorted(result.find(family=family), key=lambda r: r.method.scale):
            row: dict[str, Any] = {
                "family": family,
                "method": run.method.label,
                "scale": run.method.scale,
                "rows": run.rows_per_sample,
            }
            for metric in METRICS:
                row[metric] = mean_ci(run.metrics[metric])
            row["cfg_equivalent"] = mean_ci(equivalent_scale(result, run))
            for baseline, key in (("standard", "vs_cfg"), ("standard, equal rows", "vs_equal_rows")):
                for metric in ("fd", "logp", "spread"):
                    row[f"{key}_{metric}"] = mean_ci(matched(result, run, metric, baseline))
            rows.append(row)
    return rows


def format_dim(result: DimResult, config: Config) -> str:
    m = result.mixture
    lines = [
        f"### d = {m.dim} ({m.num_classes} classes × {m.components_per_class} components, separation "
        f"{m.separation:g}; T = {config.steps}, {config.seeds} seeds × {config.per_class} samples per class)",
        "",
        "Adherence = mean logit p(c∣x); FD = Fréchet distance to the exact class moments (lower is better). "
        "ΔFD/Δlog p/Δspread are at matched adherence, against standard CFG (same T) and against standard CFG "
        f"with {config.equal_row_steps} steps (equal rows); mean [95 % CI] over seeds; ΔFD < 0 favours the method.",
        "",
        "| method | rows/sample | adherence | accuracy | FD | spread | log p(x∣c) | CFG-equivalent scale "
        "| ΔFD vs CFG | Δlog p vs CFG | Δspread vs CFG | ΔFD vs equal rows |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in summary_rows(result):
        lines.append(
            f"| {row['method']} | {row['rows']:g} | {_fmt(row['logit'][0])} | {_fmt(row['accuracy'][0], 3)} "
            f"| {_fmt(row['fd'][0], 3)} | {_fmt(row['spread'][0], 3)} | {_fmt(row['logp'][0])} "
            f"| {_fmt(row['cfg_equivalent'][0])} | {_ci(row['vs_cfg_fd'], 3)} | {_ci(row['vs_cfg_logp'])} "
            f"| {_ci(row['vs_cfg_spread'], 3)} | {_ci(row['vs_equal_rows_fd'], 3)} |"
        )
    return "\n".join(lines)


def win_rate(better: np.ndarray, worse: np.ndarray) -> float:
    """Fraction of pairs where ``better > worse``, ties counted as half."""
    better, worse = np.asarray(better), np.asarray(worse)
    return float(np.mean((better > worse) + 0.5 * (better == worse)))


def lambda_rows(result: DimResult, config: Config) -> list[dict[str, Any]]:
    """Fig. 9: per λ, the win rate in adherence over paired samples (same initial noise) against standard
    at the same γ₁, with a bootstrap CI over seeds, and ΔFD against CFG at matched adherence."""
    rows = []
    standard = result.find(family="standard", scale=config.lambda_scale)
    for run in sorted(result.find(family="λ sweep"), key=lambda r: r.method.zigzag_steps):
        delta = matched(result, run, "fd")
        row = {
            "lambda": run.method.zigzag_steps,
            "rows": run.rows_per_sample,
            "logit": mean_ci(run.metrics["logit"]),
            "fd_vs_cfg": mean_ci(delta),
            "fd_win_rate_seeds": win_rate(-delta, np.zeros_like(delta)) if not np.isnan(delta).any() else math.nan,
        }
        if standard:
            ours, theirs = (r.sample_logit.reshape(config.seeds, -1) for r in (run, standard[0]))
            per_seed = [win_rate(a, b) for a, b in zip(ours, theirs)]
            row["adherence_win_rate"] = mean_ci(per_seed)
            row["logit_vs_same_scale"] = mean_ci(np.subtract(run.metrics["logit"], standard[0].metrics["logit"]))
        rows.append(row)
    return rows


def gap_rows(result: DimResult) -> list[dict[str, Any]]:
    """Fig. 7: per γ₂ at fixed γ₁, adherence, CFG-equivalent scale and ΔFD at matched adherence."""
    rows = []
    for run in sorted(result.find(family="γ₂ sweep"), key=lambda r: r.method.inversion_scale):
        rows.append(
            {
                "gamma_2": run.method.inversion_scale,
                "logit": mean_ci(run.metrics["logit"]),
                "cfg_equivalent": mean_ci(equivalent_scale(result, run)),
                "fd": mean_ci(run.metrics["fd"]),
                "fd_vs_cfg": mean_ci(matched(result, run, "fd")),
            }
        )
    return rows


def compute_rows(result: DimResult, config: Config) -> list[dict[str, Any]]:
    """Fig. 10: FD at a fixed target adherence (CFG at ``target_scale``, T steps, per seed), read off each
    family's own scale sweep, against model rows per sample."""
    target = result.find(family="standard", scale=config.target_scale)
    if not target:
        return []
    at = np.asarray(target[0].metrics["logit"])
    rows = []
    families = [f"compute: standard T={t}" for t in config.compute_steps_standard]
    families += [f"compute: Z-Sampling T={t}" for t in config.compute_steps_zigzag]
    for family in families:
        runs = result.find(family=family)
        if not runs:
            continue
        adherence, values = curve(result, family, "fd")
        fd = np.array([interpolate_curve(adherence[s], values[s], at[s]) for s in range(len(at))])
        rows.append(
            {
                "family": family,
                "sampler": "Z-Sampling" if "Z-Sampling" in family else "standard",
                "steps": runs[0].method.steps,
                "rows": float(max(r.rows_per_sample for r in runs)),
                "fd_at_target": mean_ci(fd),
            }
        )
    return rows


def format_extras(result: DimResult, config: Config) -> str:
    d = result.mixture.dim
    lines = [
        f"#### d = {d}: λ sweep (γ₁ = {config.lambda_scale:g}, γ₂ = 0, Euler rule; paper Fig. 9)",
        "",
        "| λ | rows/sample | adherence | win rate in p(c∣x) vs standard at γ₁ (paired samples) "
        "| Δadherence vs standard at γ₁ | ΔFD vs CFG at matched adherence | seeds with lower FD at matched adherence |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    nan3 = (math.nan,) * 3
    for row in lambda_rows(result, config):
        lines.append(
            f"| {row['lambda']} | {row['rows']:g} | {_fmt(row['logit'][0])} "
            f"| {_ci(row.get('adherence_win_rate', nan3), signed=False)} | {_ci(row.get('logit_vs_same_scale', nan3))} "
            f"| {_ci(row['fd_vs_cfg'], 3)} | {_fmt(row['fd_win_rate_seeds'], 2)} |"
        )
    lines += [
        "",
        f"#### d = {d}: guidance gap (γ₁ = {config.gap_scale:g}, Euler rule, λ = T − 1; paper Fig. 7)",
        "",
        "| γ₂ | adherence | CFG-equivalent scale | 2γ₁ − γ₂ | FD | ΔFD vs CFG at matched adherence |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in gap_rows(result):
        lines.append(
            f"| {row['gamma_2']:g} | {_fmt(row['logit'][0])} | {_ci(row['cfg_equivalent'], signed=False)} "
            f"| {2 * config.gap_scale - row['gamma_2']:g} | {_fmt(row['fd'][0], 3)} | {_ci(row['fd_vs_cfg'], 3)} |"
        )
    lines += [
        "",
        f"#### d = {d}: equal compute (FD at the adherence of standard CFG {config.target_scale:g}, T = "
        f"{config.steps}; each family's own scale sweep; paper Fig. 10)",
        "",
        "| sampler | T | rows/sample | FD at target adherence |",
        "|---|---:|---:|---:|",
    ]
    for row in compute_rows(result, config):
        lines.append(f"| {row['sampler']} | {row['steps']} | {row['rows']:g} | {_ci(row['fd_at_target'], 3, False)} |")
    return "\n".join(lines)


def format_gmm(results: list[DimResult], config: Config) -> str:
    parts = []
    for result in results:
        parts += [format_dim(result, config), "", format_extras(result, config), ""]
    return "\n".join(parts).rstrip() + "\n"


def to_json(results: list[DimResult], config: Config) -> dict[str, Any]:
    return {
        "config": asdict(config),
        "dims": [
            {
                "mixture": asdict(result.mixture),
                "runs": [
                    {
                        "method": asdict(run.method),
                        "label": run.method.label,
                        "rows_per_sample": run.rows_per_sample,
                        "metrics": run.metrics,
                    }
                    for run in result.runs
                ],
                "summary": summary_rows(result),
                "lambda_sweep": lambda_rows(result, config),
                "gap_sweep": gap_rows(result),
                "equal_compute": compute_rows(result, config),
            }
            for result in results
        ],
    }


def write_outputs(results: list[DimResult], config: Config, folder: str | Path) -> list[Path]:
    """Markdown tables, JSON and plots into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "gmm.md", folder / "gmm.json"]
    written[0].write_text(format_gmm(results, config))
    written[1].write_text(json.dumps(to_json(results, config), indent=1, allow_nan=True) + "\n")
    written += plot_gmm(results, config, folder)
    return written


# --- plots ------------------------------------------------------------------------------------------


def plot_gmm(results: list[DimResult], config: Config, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    n = len(results)
    fig, axes = plt.subplots(2, n, figsize=(5.2 * n, 8), squeeze=False)
    for column, result in enumerate(results):
        top, bottom = axes[0][column], axes[1][column]
        for family in MAIN_FAMILIES:
            runs = sorted(result.find(family=family), key=lambda r: r.method.scale)
            if not runs:
                continue
            x = [np.mean(r.metrics["logit"]) for r in runs]
            style = "-o" if family.startswith("standard") else "--s"
            top.plot(x, [np.mean(r.metrics["fd"]) for r in runs], style, ms=3, label=family)
            delta = [np.mean(matched(result, r, "fd")) for r in runs]
            bottom.plot(x, delta, style, ms=3, label=family)
        top.set_title(f"d = {result.mixture.dim}")
        top.set_ylabel("Fréchet distance to class (lower is better)")
        top.set_yscale("log")
        bottom.axhline(0, color="grey", lw=0.8)
        bottom.set_ylabel("ΔFD vs standard CFG at matched adherence")
        for ax in (top, bottom):
            ax.set_xlabel("adherence: mean logit p(c∣x)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Adherence vs fidelity frontier (each method swept over its scale); below 0 = better than CFG")
    paths.append(save_figure(fig, folder / "gmm_frontier.png"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for result in results:
        rows = lambda_rows(result, config)
        lam = [r["lambda"] for r in rows]
        axes[0].errorbar(
            lam,
            [r["adherence_win_rate"][0] for r in rows],
            yerr=_yerr([r["adherence_win_rate"] for r in rows]),
            fmt="-o",
            capsize=3,
            label=f"d = {result.mixture.dim}",
        )
        axes[1].errorbar(
            lam,
            [r["fd_vs_cfg"][0] for r in rows],
            yerr=_yerr([r["fd_vs_cfg"] for r in rows]),
            fmt="-o",
            capsize=3,
            label=f"d = {result.mixture.dim}",
        )
    axes[0].set_ylabel("win rate in p(c∣x) vs standard at γ₁")
    axes[0].axhline(0.5, color="grey", lw=0.8)
    axes[1].set_ylabel("ΔFD vs CFG at matched adherence")
    axes[1].axhline(0, color="grey", lw=0.8)
    for ax in axes:
        ax.set_xlabel("λ (zigzag steps)")
        ax.legend()
    fig.suptitle(f"Win rate vs λ (γ₁ = {config.lambda_scale:g}, γ₂ = 0, T = {config.steps}; cf. paper Fig. 9)")
    paths.append(save_figure(fig, folder / "gmm_lambda.png"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for result in results:
        rows = gap_rows(result)
        g2 = [r["gamma_2"] for r in rows]
        axes[0].plot(g2, [r["cfg_equivalent"][0] for r in rows], "-o", label=f"d = {result.mixture.dim}")
        axes[1].errorbar(
            g2,
            [r["fd_vs_cfg"][0] for r in rows],
            yerr=_yerr([r["fd_vs_cfg"] for r in rows]),
            fmt="-o",
            capsize=3,
            label=f"d = {result.mixture.dim}",
        )
    g2 = np.array(config.inversion_scales)
    axes[0].plot(g2, 2 * config.gap_scale - g2, "k:", label="2γ₁ − γ₂")
    axes[0].set_ylabel("CFG scale with the same adherence")
    axes[1].set_ylabel("ΔFD vs CFG at matched adherence")
    axes[1].axhline(0, color="grey", lw=0.8)
    for ax in axes:
        ax.set_xlabel("γ₂ (inversion scale)")
        ax.legend()
    fig.suptitle(f"Effect of the guidance gap (γ₁ = {config.gap_scale:g}; cf. paper Fig. 7)")
    paths.append(save_figure(fig, folder / "gmm_gap.png"))

    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4), squeeze=False)
    for ax, result in zip(axes[0], results):
        rows = compute_rows(result, config)
        for sampler, style in (("standard", "-o"), ("Z-Sampling", "--s")):
            part = [r for r in rows if r["sampler"] == sampler]
            ax.errorbar(
                [r["rows"] for r in part],
                [r["fd_at_target"][0] for r in part],
                yerr=_yerr([r["fd_at_target"] for r in part]),
                fmt=style,
                capsize=3,
                label=sampler,
            )
        ax.set_xscale("log")
        ax.set_xlabel("model rows per sample")
        ax.set_ylabel("FD at matched adherence")
        ax.set_title(f"d = {result.mixture.dim}")
        ax.legend()
    fig.suptitle(f"Quality at equal compute (adherence of CFG {config.target_scale:g}; cf. paper Fig. 10)")
    paths.append(save_figure(fig, folder / "gmm_compute.png"))
    return paths


def _yerr(cis: list[tuple[float, float, float]]) -> np.ndarray:
    return np.array([[max(m - lo, 0), max(hi - m, 0)] for m, lo, hi in cis]).T
