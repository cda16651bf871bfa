"""Pool the per-image outcomes of shapes runs on disjoint seed ranges and test the headline pairs again.

    python tools/pool_shapes_replicates.py results/shapes/shapes.json \\
        results/shapes/replicate-seeds-20-39/shapes.json
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
    args = parser.parse_args(argv)
    runs = [{run.method.label: run for run in bench_shapes.load_json(path)[0]} for path in args.runs]
    print("| method | baseline | images | Δ all correct (w/l, p) | Δ count ∧ colour (w/l, p) | Δ clean (w/l, p) |")
    print("|---|---|---:|---:|---:|---:|")
    for method, baseline in PAIRS:
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
