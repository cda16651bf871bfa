"""The ``zigzag-kdiff`` command."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _bench(args: argparse.Namespace) -> int:
    if args.which == "cost":
        from .bench.common import format_cost, run_cost

        print(format_cost(run_cost(steps=args.steps, repeats=args.repeats), args.steps))
    elif args.which == "gmm" and args.flow:
        _bench_gmm_flow(args)
    elif args.which == "gmm":
        from .bench import gmm as bench_gmm

        config = bench_gmm.QUICK if args.quick else bench_gmm.Config()
        if args.first_seed is not None:
            config = bench_gmm.replace(config, first_seed=args.first_seed)
        start = time.perf_counter()
        results = bench_gmm.run_gmm(config, log=_log if args.verbose else None)
        print(bench_gmm.format_gmm(results, config))
        if args.out:
            for path in bench_gmm.write_outputs(results, config, args.out):
                _log(f"wrote {path}")
        _log(f"bench gmm: {time.perf_counter() - start:.0f}s")
    elif args.which == "shapes":
        from .bench import shapes as bench_shapes

        config = bench_shapes.QUICK if args.quick else bench_shapes.Config()
        start = time.perf_counter()
        if args.from_json:  # re-render tables and plots from stored per-image outcomes
            results, config = bench_shapes.load_json(args.from_json)
        if args.model:
            config = bench_shapes.replace(config, model=args.model)
        if args.threads:
            config = bench_shapes.replace(config, threads=args.threads)
        if args.first_seed is not None and not args.from_json:
            config = bench_shapes.replace(config, first_seed=args.first_seed)
        if args.seeds is not None:
            config = bench_shapes.replace(config, seeds=args.seeds)
        if not args.from_json:
            results = bench_shapes.run_shapes(config, log=_log if args.verbose else None, seg=args.seg)
        seg = args.seg or any(run.method.seg_scale > 0 for run in results)
        print((bench_shapes.format_seg if seg else bench_shapes.format_shapes)(results, config))
        if args.out:
            write = bench_shapes.write_seg_outputs if seg else bench_shapes.write_outputs
            for path in write(results, config, args.out):
                _log(f"wrote {path}")
        _log(f"bench shapes: {time.perf_counter() - start:.0f}s")
    elif args.which in ("convergence", "shapes-dpmpp"):
        _bench_convergence(args)
    return 0


def _bench_gmm_flow(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from .bench import flow as bench_flow

    config = bench_flow.QUICK if args.quick else bench_flow.FlowConfig()
    if args.first_seed is not None:
        config = replace(config, first_seed=args.first_seed)
    start = time.perf_counter()
    if args.from_json:  # re-render the tables and plot from stored per-seed metrics
        results, config = bench_flow.load_json(args.from_json)
    else:
        results = bench_flow.run_flow(config, log=_log if args.verbose else None)
    print(bench_flow.format_flow(results, config))
    if args.out:
        for path in bench_flow.write_outputs(results, config, args.out):
            _log(f"wrote {path}")
    _log(f"bench gmm --flow: {time.perf_counter() - start:.0f}s")


def _bench_convergence(args: argparse.Namespace) -> None:
    from .bench import convergence as bc

    start = time.perf_counter()
    log = _log if args.verbose else None
    if args.which == "convergence" and args.flow:
        config = bc._replace(bc.FLOW_QUICK if args.quick else bc.FlowConfig(), first_seed=args.first_seed)
        results = bc.run_flow_convergence(config, log=log)
        print(bc.format_flow_convergence(results, config))
        written = bc.write_flow_outputs(results, config, args.out) if args.out else []
    elif args.which == "convergence":
        config = bc._replace(bc.QUICK if args.quick else bc.Config(), first_seed=args.first_seed)
        results = bc.run_convergence(config, log=log)
        print(bc.format_convergence(results, config))
        written = bc.write_outputs(results, config, args.out) if args.out else []
    else:
        config = bc._replace(
            bc.SHAPES_QUICK if args.quick else bc.ShapesConfig(),
            first_seed=args.first_seed,
            model=args.model,
            threads=args.threads,
        )
        if args.from_json:  # re-render the table and plot from stored per-image outcomes
            runs, config = bc.load_shapes_json(args.from_json)
        else:
            runs = bc.run_shapes_dpmpp(config, log=log)
        print(bc.format_shapes_dpmpp(runs, config))
        written = bc.write_shapes_outputs(runs, config, args.out) if args.out else []
    for path in written:
        _log(f"wrote {path}")
    _log(f"bench {args.which}: {time.perf_counter() - start:.0f}s")


def _replicate(args: argparse.Namespace) -> int:
    from .bench.replicate import compare_files, format_pairs

    for path in (args.reference, args.replicate):
        if not Path(path).is_file():
            raise ValueError(f"reference and replicate must be JSON files written by bench --out, got {path}")
    pairs = compare_files(args.reference, args.replicate)
    print(format_pairs(pairs, args.worst))
    return 0 if pairs else 1


def _torch_dtype(name: str, device: str) -> object:
    import torch

    if name == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def _compare(args: argparse.Namespace) -> int:
    import torch

    from .compare import CompareSettings, default_threads, run_compare
    from .diffusers import load_pipeline

    settings = CompareSettings(
        model=args.model,
        prompts=args.prompt or DEFAULT_PROMPTS.get(args.model, ["A small yellow dog."]),
        negative_prompt=args.negative_prompt,
        steps=args.steps,
        cfg_scale=args.cfg,
        inversion_scale=args.inversion_scale,
        zigzag_steps=args.zigzag_steps,
        zigzag_rounds=args.zigzag_rounds,
        ddim_update=args.ddim_update,
        schedule=args.schedule,
        guidance_interval=tuple(args.guidance_interval) if args.guidance_interval else None,
        seeds=args.seeds,
        width=args.width,
        height=args.height,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        seg_scale=args.seg_scale,
        seg_blur_sigma=args.seg_blur_sigma,
        seg_layers=[n.strip() for n in args.seg_layers.split(",") if n.strip()],
        seg_interval=tuple(args.seg_interval) if args.seg_interval else None,
    )
    settings.validate()  # before loading a model
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"threads must be >= 1, got {args.threads}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    threads = args.threads if args.threads is not None else default_threads(args.model, device)
    if threads is not None:
        torch.set_num_threads(threads)
    dtype = _torch_dtype(args.dtype, device)
    pipe = load_pipeline(args.model, device=device, dtype=dtype, config=args.model_config)
    summary = run_compare(
        pipe, settings, args.out, progress=not args.quiet, device=device, dtype=str(dtype), threads=threads
    )
    print(f"{'method':<28} {'model calls':>11} {'UNet rows':>9} {'s/image':>8}")
    for method in summary["methods"]:
        print(
            f"{method['label']:<28} {method['model_calls_per_image']:>11} {method['batch_rows_per_image']:>9} "
            f"{method['mean_wall_seconds_per_image']:>8.2f}"
        )
    print(f"wrote {len(summary['images'])} images, grid.png and compare.json to {args.out}")
    return 0


DEFAULT_PROMPTS = {"shapes": ["two red squares on the left", "three blue squares at the top"]}
"""``compare``'s prompts when none is given, per model (others: one of the released code's prompts)."""


def _add_compare(commands: argparse._SubParsersAction) -> None:
    from .compare import METHODS, SEG_METHODS

    schedules = ("ddim", "karras", "exponential", "model")  # zigzag_kdiff.diffusers.SCHEDULES
    compare = commands.add_parser(
        "compare",
        help="the same prompts and seeds through Euler, DPM++ 2M, Z-Sampling and matched-strength CFG",
        description="Generate every prompt × seed with each method from the same initial noise; write PNGs "
        "(A1111 'parameters' metadata), a labelled grid.png and compare.json.",
    )
    compare.add_argument(
        "--model",
        default="shapes",
        help="local diffusers folder, single-file .safetensors, hub id (needs network), shapes (the bundled "
        "trained 16×16 model, default), or tiny / tiny-sd2-v / tiny-sdxl (tiny random-weight pipelines)",
    )
    compare.add_argument("--model-config", help="for a single-file checkpoint offline: a local diffusers folder")
    compare.add_argument("--prompt", action="append", help="a prompt (repeat for several; default: a released one)")
    compare.add_argument("--negative-prompt", help="negative prompt (default: none; SDXL then uses zero embeddings)")
    compare.add_argument("--steps", type=int, default=30, help="sampling steps T (default 30)")
    compare.add_argument("--cfg", type=float, default=5.5, help="γ₁, CFG scale of denoising calls (default 5.5)")
    compare.add_argument(
        "--inversion-scale", type=float, default=0.0, help="γ₂, CFG scale of inversion calls (default 0: uncond)"
    )
    compare.add_argument("--zigzag-steps", type=int, help="λ, zigzag on the first λ steps (default steps − 1)")
    compare.add_argument("--zigzag-rounds", type=int, default=1, help="T_max, zigzag rounds per step (default 1)")
    compare.add_argument(
        "--ddim-update", choices=("paper", "released"), default="paper", help="inversion update of Z-Sampling (DDIM)"
    )
    compare.add_argument("--schedule", choices=schedules, default="karras", help="sigma schedule (default karras)")
    compare.add_argument(
        "--guidance-interval",
        nargs=2,
        type=float,
        metavar=("SIGMA_LOW", "SIGMA_HIGH"),
        help="CFG (and zigzag) only for sigma in [low, high]; high may be inf",
    )
    compare.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds, one grid row each (default 0)")
    compare.add_argument("--width", type=int, help="image width in pixels (default: the model's)")
    compare.add_argument("--height", type=int, help="image height in pixels (default: the model's)")
    compare.add_argument("--device", help="cuda, cpu, … (default: cuda if available)")
    compare.add_argument(
        "--dtype",
        choices=("auto", "float32", "float16", "bfloat16"),
        default="auto",
        help="model dtype (default auto: float16 on CUDA, else float32)",
    )
    compare.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma list from {','.join(METHODS + SEG_METHODS)}"
    )
    compare.add_argument("--seg-scale", type=float, default=3.0, help="SEG methods: SEG scale (default 3)")
    compare.add_argument(
        "--seg-blur-sigma",
        type=float,
        default=9999999.0,
        help="SEG methods: query blur sigma; > 9999 is the infinite blur (default 9999999)",
    )
    compare.add_argument(
        "--seg-layers", default="mid", help="SEG methods: comma list of down, mid, up or d0, m0, u5, … (default mid)"
    )
    compare.add_argument(
        "--seg-interval",
        nargs=2,
        type=float,
        metavar=("SIGMA_LOW", "SIGMA_HIGH"),
        help="SEG methods: the blurred pass only for sigma in [low, high]",
    )
    compare.add_argument("--out", default="compare-out", help="output folder (default compare-out)")
    compare.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default on CPU: 1 for the bundled and tiny models, else half the cores, "
        "at most 4; on an accelerator: torch's default)",
    )
    compare.add_argument("--quiet", action="store_true", help="no progress bar")
    compare.set_defaults(run=_compare)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zigzag-kdiff", description="Z-Sampling for k-diffusion and its hosts.")
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="benchmarks that print tables")
    bench.add_argument(
        "which",
        choices=["cost", "gmm", "shapes", "convergence", "shapes-dpmpp"],
        help="cost: model calls, batch rows and wall time per sampler; gmm: Z-Sampling vs a CFG sweep on exact "
        "Gaussian mixtures; shapes: the same on the bundled text-to-image model with a rule checker; "
        "convergence: error to the T → ∞ limit per step rule and matched adherence against DPM++ 2M (GMMs); "
        "shapes-dpmpp: zigzag DPM++ 2M against DPM++ 2M on the bundled model, paired",
    )
    bench.add_argument("--steps", type=int, default=50, help="cost: sampling steps T (default 50)")
    bench.add_argument("--repeats", type=int, default=3, help="cost: interleaved repetitions, median (default 3)")
    bench.add_argument("--quick", action="store_true", help="gmm/shapes: the small CI configuration")
    bench.add_argument("--out", help="gmm/shapes: also write markdown, JSON and plots into this folder")
    bench.add_argument("--model", help="shapes: a diffusers folder (default: the bundled shapes16 model)")
    bench.add_argument("--threads", type=int, help="shapes: torch threads (default 1: fastest on a busy machine)")
    bench.add_argument(
        "--from-json",
        help="shapes/shapes-dpmpp/gmm --flow: re-render the tables and plots of a stored shapes(_dpmpp).json "
        "or flow.json",
    )
    bench.add_argument(
        "--first-seed",
        type=int,
        help="gmm/shapes: first seed (default 0); another range: an independent replicate",
    )
    bench.add_argument(
        "--seg",
        action="store_true",
        help="shapes: the Smoothed Energy Guidance methods (alone, with CFG, with Z-Sampling) instead of the main run",
    )
    bench.add_argument("--seeds", type=int, help="shapes: number of seeds (default 20; --quick 2)")
    bench.add_argument(
        "--flow",
        action="store_true",
        help="flow-matching models. gmm: true CFG and distilled guidance, Z-Sampling's rules and an RF-Sampling "
        "analogue on flow schedules (writes flow.md/flow.json); convergence: the three rules with and without "
        "zigzag on flow sigmas (exact GMMs in rectified-flow form), flow λ = log((1 − σ)/σ) against the VE "
        "λ = −log σ for DPM++ 2M",
    )
    bench.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    bench.set_defaults(run=_bench)
    _add_compare(commands)
    replicate = commands.add_parser(
        "replicate",
        help="does a gmm/shapes benchmark JSON reproduce another within its 95 % confidence intervals?",
    )
    replicate.add_argument("reference", help="the committed run's JSON (e.g. results/shapes/shapes.json)")
    replicate.add_argument("replicate", help="the new run's JSON (a rerun, or other seeds with --first-seed)")
    replicate.add_argument("--worst", type=int, default=10, help="list this many least consistent estimates")
    replicate.set_defaults(run=_replicate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:  # bad settings or an unusable --model: one clear line, no traceback
        print(f"zigzag-kdiff {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
