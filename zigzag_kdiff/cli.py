"""The ``zigzag-kdiff`` command."""

from __future__ import annotations

import argparse
import sys


def _bench(args: argparse.Namespace) -> int:
    if args.which == "cost":
        from .bench import format_cost, run_cost

        print(format_cost(run_cost(steps=args.steps, repeats=args.repeats), args.steps))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zigzag-kdiff", description="Z-Sampling for k-diffusion and its hosts.")
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="benchmarks that print tables")
    bench.add_argument("which", choices=["cost"], help="cost: model calls, batch rows and wall time per sampler")
    bench.add_argument("--steps", type=int, default=50, help="sampling steps T (default 50)")
    bench.add_argument("--repeats", type=int, default=3, help="interleaved repetitions, median reported (default 3)")
    bench.set_defaults(run=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
