"""The ``zigzag-kdiff`` command."""

from __future__ import annotations

import argparse
import sys
import time


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _bench(args: argparse.Namespace) -> int:
    if args.which == "cost":
        from .bench import format_cost, run_cost

        print(format_cost(run_cost(steps=args.steps, repeats=args.repeats), args.steps))
    elif args.which == "gmm":
        from . import bench_gmm

        config = bench_gmm.QUICK if args.quick else bench_gmm.Config()
        start = time.perf_counter()
        results = bench_gmm.run_gmm(config, log=_log if args.verbose else None)
        print(bench_gmm.format_gmm(results, config))
        if args.out:
            for path in bench_gmm.write_outputs(results, config, args.out):
                _log(f"wrote {path}")
        _log(f"bench gmm: {time.perf_counter() - start:.0f}s")
    elif args.which == "shapes":
        from . import bench_shapes

        config = bench_shapes.QUICK if args.quick else bench_shapes.Config()
        start = time.perf_counter()
        if args.from_json:  # re-render tables and plots from stored per-image outcomes
            results, config = bench_shapes.load_json(args.from_json)
        if args.model:
            config = bench_shapes.replace(config, model=args.model)
        if args.threads:
            config = bench_shapes.replace(config, threads=args.threads)
        if not args.from_json:
            results = bench_shapes.run_shapes(config, log=_log if args.verbose else None)
        print(bench_shapes.format_shapes(results, config))
        if args.out:
            for path in bench_shapes.write_outputs(results, config, args.out):
                _log(f"wrote {path}")
        _log(f"bench shapes: {time.perf_counter() - start:.0f}s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zigzag-kdiff", description="Z-Sampling for k-diffusion and its hosts.")
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="benchmarks that print tables")
    bench.add_argument(
        "which",
        choices=["cost", "gmm", "shapes"],
        help="cost: model calls, batch rows and wall time per sampler; gmm: Z-Sampling vs a CFG sweep on exact "
        "Gaussian mixtures; shapes: the same on the bundled text-to-image model with a rule checker",
    )
    bench.add_argument("--steps", type=int, default=50, help="cost: sampling steps T (default 50)")
    bench.add_argument("--repeats", type=int, default=3, help="cost: interleaved repetitions, median (default 3)")
    bench.add_argument("--quick", action="store_true", help="gmm/shapes: the small CI configuration")
    bench.add_argument("--out", help="gmm/shapes: also write markdown, JSON and plots into this folder")
    bench.add_argument("--model", help="shapes: a diffusers folder (default: the bundled shapes16 model)")
    bench.add_argument("--threads", type=int, help="shapes: torch threads (default 1: fastest on a busy machine)")
    bench.add_argument("--from-json", help="shapes: re-render the tables and plots of a stored shapes.json")
    bench.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    bench.set_defaults(run=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
