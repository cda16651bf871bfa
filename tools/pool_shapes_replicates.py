"""Pool the per-image outcomes of shapes runs on disjoint seed ranges and test the headline pairs again.

    python tools/pool_shapes_replicates.py results/shapes/shapes.json \\
        results/shapes/replicate-seeds-20-39/shapes.json
    python tools/pool_shapes_replicates.py --rates --pair "Z euler γ₁=3 γ₂=0 λ=19 T=20" "CFG 3 T=20" \\
        results/shapes-flow/shapes.json results/shapes-flow/replicate-seeds-2-3/shapes.json

``--rates``: first a table of every method's pooled rates (position, count ∧ colour, all correct, clean; 95 %
Wilson intervals), for the methods run on all seeds of every run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zigzag_kdiff.bench import shapes as bench_shapes  # noqa: E402

PAIRS = (("Z ddim γ₁=3 γ₂=0 λ=19 T=20", "CFG 3 T=20"), ("Z ddim γ₁=3 γ₂=0 λ=19 T=20", "CFG 3 T=49"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="shapes.json files of runs on disjoint seed ranges")
    parser.add_argument("--rates", action="store_true", help="also every method's pooled rates, with intervals")
    parser.add_argument(
        "--pair", nargs=2, action="append", metavar=("METHOD", "BASELINE"), help="a paired test (repeatable)"
    )
    args = parser.parse_args(argv)
    runs = [{run.method.label: run for run in bench_shapes.load_json(path)[0]} for path in args.runs]
    if args.rates:
        keys = ("position", "count_colour", "all_correct", "clean")
        print("| method | rows/image | images | position | count ∧ colour | all correct | clean |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for label in runs[0]:
            if not all(label in run for run in runs):
                continue
            cells = []
            for key in keys:
                outcomes = np.concatenate([run[label].outcomes[key].ravel() for run in runs])
                cells.append(bench_shapes._pct(bench_shapes.proportion_ci(outcomes)))
            rows = runs[0][label].rows_per_image
            print(f"| {label} | {rows:g} | {len(outcomes)} | " + " | ".join(cells) + " |")
        print()
    print("| method | baseline | images | Δ all correct (w/l, p) | Δ count ∧ colour (w/l, p) | Δ clean (w/l, p) |")
    print("|---|---|---:|---:|---:|---:|")
    for method, baseline in [tuple(pair) for pair in args.pair] if args.pair else PAIRS:
        cells = []
        for attribute in bench_shapes.TESTED:
            ours = np.concatenate([run[method].outcomes[attribute].ravel() for run in runs])
            theirs = np.concatenate([run[baseline].outcomes[attribute].ravel() for run in runs])
            test = bench_shapes.paired_attribute(ours, theirs)
            mean, low, high = (100 * v for v in test.delta)
            cells.append(f"{mean:+.1f} [{low:+.1f}, {high:+.1f}] ({test.wins}/{test.losses}, {test.p_value:.2g})")
        print(f"| {method} | {baseline} | {len(ours)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
