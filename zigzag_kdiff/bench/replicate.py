"""Does a benchmark run reproduce another within its confidence intervals?

``zigzag-kdiff replicate REFERENCE.json REPLICATE.json`` reads two outputs of ``zigzag-kdiff bench gmm``
or ``bench shapes`` (``--out`` writes the JSON) and pairs every estimate stored as ``[mean, low, high]``
(a 95 % interval) by its place in the file: method, baseline and metric. For each pair it reports

* **inside**: the replicate's mean lies in the reference's interval (for an independent replicate with
  the same spread this happens about 83 % of the time, not 95 %);
* **consistent**: the two means differ by at most √(h₁² + h₂²), h the interval half-widths, the 95 %
  test for the difference of two independent estimates (a same-seed rerun must pass every row).

Intervals of zero width (a method against itself) and NaN estimates are skipped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


@dataclass(frozen=True)
class Pair:
    path: str
    reference: Estimate
    replicate: Estimate

    @property
    def inside(self) -> bool:
        return self.reference.low <= self.replicate.mean <= self.reference.high

    @property
    def consistent(self) -> bool:
        bound = math.hypot(self.reference.half_width, self.replicate.half_width)
        return abs(self.replicate.mean - self.reference.mean) <= bound + 1e-12


def _as_estimate(value: Any) -> Estimate | None:
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)):
        return None
    mean, low, high = (float(v) for v in value)
    if any(math.isnan(v) for v in (mean, low, high)) or not low <= mean <= high or high == low:
        return None
    return Estimate(mean, low, high)


def _identity(item: dict[str, Any]) -> str:
    """A list entry's name: its text fields (method, baseline, relation, …) and whole numbers; entries
    without any are named by their index."""
    named = (str, int)
    parts = [f"{k}={v}" for k, v in item.items() if isinstance(v, named) and not isinstance(v, bool)]
    return "{" + ", ".join(parts) + "}"


def estimates(tree: Any, path: str = "") -> dict[str, Estimate]:
    """Every ``[mean, low, high]`` in a benchmark JSON, by path (list entries named by :func:`_identity`)."""
    found: dict[str, Estimate] = {}
    estimate = _as_estimate(tree)
    if estimate is not None:
        found[path] = estimate
    elif isinstance(tree, dict):
        for key, value in tree.items():
            if key != "config":
                found.update(estimates(value, f"{path}/{key}"))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            name = _identity(value) if isinstance(value, dict) else "{}"
            name = str(index) if name == "{}" else name
            found.update(estimates(value, f"{path}/{name}"))
    return found


def compare(reference: dict[str, Any], replicate: dict[str, Any]) -> list[Pair]:
    """The estimates present in both files, paired by path."""
    ours, theirs = estimates(reference), estimates(replicate)
    return [Pair(path, ours[path], theirs[path]) for path in ours if path in theirs]


def compare_files(reference: str | Path, replicate: str | Path) -> list[Pair]:
    return compare(json.loads(Path(reference).read_text()), json.loads(Path(replicate).read_text()))


def format_pairs(pairs: list[Pair], worst: int = 10) -> str:
    """A summary line and the ``worst`` pairs (largest difference in units of the combined half-width)."""
    if not pairs:
        return "no shared estimates (are both files outputs of the same benchmark?)"
    inside = sum(p.inside for p in pairs)
    consistent = sum(p.consistent for p in pairs)

    def z(pair: Pair) -> float:
        return abs(pair.replicate.mean - pair.reference.mean) / math.hypot(
            pair.reference.half_width, pair.replicate.half_width
        )

    lines = [
        f"{len(pairs)} estimates: replicate mean inside the reference's 95 % CI for {inside} "
        f"({100 * inside / len(pairs):.0f} %); consistent (|Δ| ≤ √(h₁² + h₂²)) for {consistent} "
        f"({100 * consistent / len(pairs):.0f} %).",
        "",
        "| estimate | reference [95 % CI] | replicate [95 % CI] | |Δ| / √(h₁² + h₂²) |",
        "|---|---:|---:|---:|",
    ]
    for pair in sorted(pairs, key=z, reverse=True)[:worst]:
        a, b = pair.reference, pair.replicate
        lines.append(
            f"| `{pair.path}` | {a.mean:.4g} [{a.low:.4g}, {a.high:.4g}] | "
            f"{b.mean:.4g} [{b.low:.4g}, {b.high:.4g}] | {z(pair):.2f} |"
        )
    return "\n".join(lines)
