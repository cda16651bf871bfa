"""The ``zigzag-kdiff`` command.

Every input is checked before a model loads, in one place each: single values by the argument types below
(shared by all subcommands), combinations, files, folders and the device by the ``_check_*`` functions right
after parsing, the optional dependencies a command needs by :func:`require_extras`. A bad input, a missing
optional dependency or a model file that cannot be read ends the command with one line,
``zigzag-kdiff <command>: error: <flag> ...`` naming the flag and what it allows, and exit status 2 (:func:`main`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MAX_SEED = 2**64 - 1
"""Seeds are 0 … 2⁶⁴ − 1, as in the webuis and ComfyUI (A1111 reads −1 as "random")."""

EXTRAS: dict[str, tuple[str, ...]] = {
    "kdiffusion": ("k_diffusion", "torchvision"),
    "diffusers": ("diffusers", "transformers", "safetensors", "PIL"),
    "bench": ("scipy", "matplotlib"),
}
"""The optional extras of setup.cfg and the top-level modules of each that the commands import."""

COMMAND_EXTRAS: dict[str, tuple[str, ...]] = {
    "compare": ("kdiffusion", "diffusers"),
    "bench cost": ("kdiffusion", "diffusers", "bench"),
    "bench gmm": ("kdiffusion", "diffusers", "bench"),
    "bench shapes": ("kdiffusion", "diffusers", "bench"),
    "bench convergence": ("kdiffusion", "diffusers", "bench"),
    "bench shapes-dpmpp": ("kdiffusion", "diffusers", "bench"),
    "bench device": ("kdiffusion", "diffusers", "bench"),
    "replicate": (),
}
"""The extras each command needs (tests/test_extras.py checks them against the code each command imports)."""


class UsageError(ValueError):
    """A command-line input the command cannot use; the message starts with the flag's name."""


# --- argument types: one per kind of value, shared by every subcommand -------------------------------------------


def _number(text: str, kind: Callable[[str], Any], rule: str, ok: Callable[[Any], bool]) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (steps, repeats, seeds to run, threads, pixels)."""
    return _number(text, int, "an integer >= 1", lambda v: v >= 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (λ, T_max, a count to list)."""
    return _number(text, int, "an integer >= 0", lambda v: v >= 0)


def seed(text: str) -> int:
    """A seed: an integer in 0 … 2⁶⁴ − 1."""
    return _number(text, int, f"an integer seed in [0, {MAX_SEED}] (2^64 - 1)", lambda v: 0 <= v <= MAX_SEED)


def finite_float(text: str) -> float:
    """A finite number (a CFG scale)."""
    return _number(text, float, "a finite number", math.isfinite)


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (a SEG scale)."""
    return _number(text, float, "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)


def positive_float(text: str) -> float:
    """A number > 0, inf allowed (a blur sigma)."""
    return _number(text, float, "a number > 0", lambda v: v > 0)


def sigma(text: str) -> float:
    """A noise level for an interval bound: >= 0, inf allowed."""
    return _number(text, float, "a noise level >= 0 (inf allowed)", lambda v: v >= 0)


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's, without breaking lines at hyphens (``tiny-sd15`` stays one word)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block above them) and help text wrapped at spaces only."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --- checks after parsing, before anything is loaded ---------------------------------------------------------------


def model_names() -> list[str]:
    """Every ``--model`` name: the bundled models, then the tiny random-weight pipelines (from their registries)."""
    from .diffusers import BUNDLED_MODELS, TINY_MODELS

    return [*BUNDLED_MODELS, *TINY_MODELS]


def _check_safetensors(flag: str, path: Path) -> None:
    """The file's header reads as safetensors and its tensors fill the file exactly (nothing is loaded)."""
    problem = f"{flag} {path}: not a readable .safetensors file (damaged header or truncated data)"
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < length <= size - 8:
            raise UsageError(problem)
        try:
            header = json.loads(f.read(length))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise UsageError(problem) from None
    if max(ends, default=0) != size - 8 - length:
        raise UsageError(problem)


def _check_diffusers_folder(flag: str, path: Path, index: bool = True) -> None:
    """A diffusers folder: ``model_index.json`` (``index``) and readable safetensors files."""
    index_file = path / "model_index.json"
    if index and not index_file.is_file():
        raise UsageError(f"{flag} {path}: a folder without model_index.json, so not a diffusers model folder")
    if index:
        try:
            json.loads(index_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise UsageError(f"{flag} {path}: its model_index.json is not valid JSON") from None
    for weights in sorted(path.glob("*/*.safetensors")):
        _check_safetensors(flag, weights)


def _check_model(model: str, config: str | None) -> None:
    """``--model`` (and ``--model-config``) before loading: a name, a diffusers folder, a safetensors file, a hub id."""
    names = model_names()
    path = Path(model).expanduser()
    if model in names:
        pass
    elif path.is_dir():
        _check_diffusers_folder("--model", path)
    elif path.is_file():
        if path.suffix.lower() != ".safetensors":
            raise UsageError(
                f"--model {model}: only .safetensors single-file checkpoints are loaded (.ckpt/.pt/.bin files are "
                "pickles, which can run code when loaded); convert it to safetensors first"
            )
        _check_safetensors("--model", path)
    elif not (re.fullmatch(r"[\w.-]+/[\w.-]+", model) and not model.startswith((".", "~"))):
        raise UsageError(
            f"--model {model}: no such folder or file; expected a local diffusers folder, a .safetensors file, "
            f"a hub id owner/name, or one of {', '.join(names)}"
        )
    if config is not None:
        if not Path(config).expanduser().is_dir():
            raise UsageError(f"--model-config {config}: not a folder (expected a local diffusers folder)")
        _check_diffusers_folder("--model-config", Path(config).expanduser())


def _check_device(name: str) -> None:
    """``--device``: a torch device that exists on this machine."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name}: not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cpu":
        return
    backend = torch.backends.mps if device.type == "mps" else getattr(torch, device.type, None)
    available = bool(backend is not None and backend.is_available())
    if not available:
        raise UsageError(f"--device {name}: no {device.type} device is available to torch here; use --device cpu")
    count = getattr(backend, "device_count", lambda: 1)()
    if device.index is not None and device.index >= count:
        raise UsageError(f"--device {name}: this machine has {count} {device.type} device(s), indices 0 to {count - 1}")


def _check_out(flag: str, out: str | None) -> None:
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise UsageError(f"{flag} {out}: a file, not a folder")


def _check_json(flag: str, path: str | None) -> None:
    if path is None:
        return
    try:
        json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise UsageError(f"{flag} {path}: not a readable JSON file written by bench --out") from None


PARAMETER_FLAGS = {
    "height and width": "--height and --width",
    "cfg_scale": "--cfg",
    "inversion_scale": "--inversion-scale",
    "distilled_guidance": "--distilled-guidance",
    "inversion_guidance": "--inversion-guidance",
    "zigzag_steps": "--zigzag-steps",
    "zigzag_rounds": "--zigzag-rounds",
    "ddim_update": "--ddim-update",
    "inversion_update": "--ddim-update",
    "guidance_interval": "--guidance-interval",
    "seg_interval": "--seg-interval",
    "seg_scale": "--seg-scale",
    "seg_blur_sigma": "--seg-blur-sigma",
    "seg_applied_layers": "--seg-layers",
    "seg_layers": "--seg-layers",
    "negative_prompt": "--negative-prompt",
    "methods": "--methods",
    "schedule": "--schedule",
    "prompts": "--prompt",
    "seeds": "--seeds",
    "steps": "--steps",
    "width": "--width",
    "height": "--height",
}
"""``compare``'s flags by the parameter names the library's ValueErrors use."""


def with_flag_names(message: str) -> str:
    """A library ValueError's message with its parameter names spelled as ``compare``'s flags."""
    names = "|".join(re.escape(name) for name in PARAMETER_FLAGS)
    return re.sub(rf"(?<![\w-])({names})(?![\w-])", lambda m: PARAMETER_FLAGS[m.group(1)], message)


def require_extras(command: str) -> None:
    """Raise :class:`UsageError` naming the extra to install if a module a command needs is missing."""
    for extra in COMMAND_EXTRAS.get(command, ()):
        missing = [module for module in EXTRAS[extra] if importlib.util.find_spec(module) is None]
        if missing:
            raise UsageError(f'{command} needs {", ".join(missing)}: pip install "zigzag-kdiff[{extra}]"')


def _missing_extra(error: ModuleNotFoundError) -> str | None:
    top = (error.name or "").split(".")[0]
    return next((extra for extra, modules in EXTRAS.items() if top in modules), None)


@contextmanager
def dependency_noise_silenced(libraries: Sequence[str] = ("diffusers", "transformers")) -> Iterator[None]:
    """Hide what the dependencies print because of how this command uses them: diffusers' ``torch_dtype``
    deprecation (the pipelines the project supports take ``torch_dtype``), CLIP's ``pkg_resources`` warning
    (k-diffusion imports CLIP) and the model-loading progress bars of diffusers and transformers. Restored on exit."""
    restore = []
    for name in libraries:
        if importlib.util.find_spec(name) is not None:
            try:
                logging = importlib.import_module(f"{name}.utils.logging")
            except ImportError:
                continue
            if logging.is_progress_bar_enabled():
                logging.disable_progress_bar()
                restore.append(logging.enable_progress_bar)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch_dtype` is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"pkg_resources is deprecated", category=UserWarning)
        try:
            yield
        finally:
            for enable in restore:
                enable()


# --- the commands ----------------------------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _check_bench(args: argparse.Namespace) -> None:
    _check_out("--out", args.out)
    _check_json("--from-json", args.from_json)
    if args.model is not None and args.model not in ("shapes", "shapes-flow"):
        flow = (Path(args.model) / "transformer").is_dir()
        denoising = "transformer" if flow else "unet"
        parts = (denoising, "text_encoder", "tokenizer", "scheduler")
        missing = [part for part in parts if not (Path(args.model) / part).is_dir()]
        if missing:
            raise UsageError(
                f"--model {args.model}: not shapes, shapes-flow or a diffusers folder like the bundled ones "
                f"({', '.join(parts)}; missing {', '.join(missing)})"
            )
        _check_diffusers_folder("--model", Path(args.model), index=flow)
    if args.seg and args.model is not None:
        from .bench.shapes import is_flow_model

        if is_flow_model(args.model):
            raise UsageError(f"--seg: SEG is defined on the UNet's self-attention only, not on --model {args.model}")


def _stored(load: Callable[[str], Any], args: argparse.Namespace) -> Any:
    """``load(--from-json)``; a JSON of another benchmark (or damaged) is a :class:`UsageError`."""
    try:
        return load(args.from_json)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise UsageError(
            f"--from-json {args.from_json}: not the JSON that bench {args.which} --out writes "
            f"({'shapes.json or seg.json' if args.which == 'shapes' else 'shapes_dpmpp.json'})"
        ) from None


def _bench(args: argparse.Namespace) -> int:
    _check_bench(args)
    if args.which == "cost":
        from .bench.common import format_cost, run_cost

        steps = 50 if args.steps is None else args.steps
        print(format_cost(run_cost(steps=steps, repeats=args.repeats), steps))
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
            results, config = _stored(bench_shapes.load_json, args)
        if args.model:
            config = bench_shapes.for_model(config, args.model)
        if args.threads:
            config = bench_shapes.replace(config, threads=args.threads)
        if args.first_seed is not None and not args.from_json:
            config = bench_shapes.replace(config, first_seed=args.first_seed)
        if args.seeds is not None:
            config = bench_shapes.replace(config, seeds=args.seeds)
        if args.main_only and not args.from_json:
            config = bench_shapes.main_only(config)
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
    elif args.which == "device":
        _bench_device(args)
    return 0


def _bench_device(args: argparse.Namespace) -> None:
    import torch

    from .bench import device as bench_device

    if args.device is not None:
        _check_device(args.device)
    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(name).type == "cpu" and not args.quick:
        raise UsageError(
            f"--device {name}: the full configuration needs a GPU (a 2.6 B-parameter SDXL UNet at 1024²); "
            "on a CPU add --quick"
        )
    threads = args.threads or (1 if torch.device(name).type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    steps = bench_device.DeviceConfig.steps if args.steps is None else args.steps
    dtypes = ("fp32", "bf16") if torch.device(name).type == "cpu" else ("fp32", "fp16", "bf16")  # no fast CPU fp16
    config = bench_device.DeviceConfig(device=name, quick=args.quick, steps=steps, dtypes=dtypes)
    start = time.perf_counter()
    try:
        rows = bench_device.run_device(config, log=_log if args.verbose else None)
    except ValueError as error:
        raise UsageError(f"--device {name}: {error}") from None
    table = bench_device.format_device(rows, config)
    print(table, end="")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "device.md").write_text(table)
        _log(f"wrote {Path(args.out) / 'device.md'}")
    _log(f"bench device: {time.perf_counter() - start:.0f}s")


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
            runs, config = _stored(bc.load_shapes_json, args)
        else:
            runs = bc.run_shapes_dpmpp(config, log=log)
        print(bc.format_shapes_dpmpp(runs, config))
        written = bc.write_shapes_outputs(runs, config, args.out) if args.out else []
    for path in written:
        _log(f"wrote {path}")
    _log(f"bench {args.which}: {time.perf_counter() - start:.0f}s")


def _replicate(args: argparse.Namespace) -> int:
    from .bench.replicate import compare_files, format_pairs

    for flag, path in (("reference", args.reference), ("replicate", args.replicate)):
        if not Path(path).is_file():
            raise UsageError(f"{flag} {path}: no such file (expected a JSON file written by bench --out)")
        _check_json(flag, path)
    pairs = compare_files(args.reference, args.replicate)
    print(format_pairs(pairs, args.worst))
    return 0 if pairs else 1


def _torch_dtype(name: str, device: str) -> object:
    import torch

    if name == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


DEFAULT_PROMPTS = {
    "shapes": ["two red squares on the left", "three blue squares at the top"],
    "shapes-flow": ["two red squares on the left", "three blue squares at the top"],
}
"""``compare``'s prompts when none is given, per model (two of the shapes task's 72 prompts)."""
DEFAULT_CFG = {"shapes-flow": 3.0}
"""``compare``'s γ₁ for a bundled model whose pipeline default does not suit it (SD3's 7 for shapes-flow, whose
best scale in ``bench shapes`` is 2–3)."""
OTHER_DEFAULT_PROMPTS = ["A small yellow dog."]
"""``compare``'s prompt for a model not in :data:`DEFAULT_PROMPTS` (one of the released code's prompts)."""


def _compare_settings(args: argparse.Namespace) -> Any:
    """The settings from the flags, checked (flags named in every error), before any model is loaded."""
    from .compare import CompareSettings

    _check_out("--out", args.out)
    settings = CompareSettings(
        model=args.model,
        prompts=args.prompt or DEFAULT_PROMPTS.get(args.model, OTHER_DEFAULT_PROMPTS),
        negative_prompt=args.negative_prompt,
        steps=args.steps,
        cfg_scale=args.cfg if args.cfg is not None else DEFAULT_CFG.get(args.model),
        inversion_scale=args.inversion_scale,
        distilled_guidance=args.distilled_guidance,
        inversion_guidance=args.inversion_guidance,
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
    try:
        settings.validate()
    except ValueError as error:
        raise UsageError(with_flag_names(str(error))) from None
    _check_model(args.model, args.model_config)
    _check_distilled_guidance(args)
    if args.device is not None:
        _check_device(args.device)
    return settings


def _check_distilled_guidance(args: argparse.Namespace) -> None:
    """``--distilled-guidance``/``--inversion-guidance`` on a named model without guidance embeddings (a folder's is
    known once loaded: generate() refuses it then, before the first image)."""
    from .diffusers import TINY_MODELS

    given = [
        flag
        for flag, value in (
            ("--distilled-guidance", args.distilled_guidance),
            ("--inversion-guidance", args.inversion_guidance),
        )
        if value is not None
    ]
    if given and args.model in model_names() and TINY_MODELS.get(args.model) != "flux":
        raise UsageError(
            f"{given[0]}: {args.model} has no guidance embeddings; only guidance-distilled models (Flux dev, e.g. "
            "tiny-flux) take distilled guidance (use --cfg for true CFG)"
        )


def _compare(args: argparse.Namespace) -> int:
    settings = _compare_settings(args)  # before loading a model
    import torch

    from .compare import default_threads, run_compare
    from .diffusers import load_pipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    threads = args.threads if args.threads is not None else default_threads(args.model, device)
    if threads is not None:
        torch.set_num_threads(threads)
    dtype = _torch_dtype(args.dtype, device)
    try:
        pipe = load_pipeline(args.model, device=device, dtype=dtype, config=args.model_config)
    except OSError as error:  # a diffusers folder with a missing or unreadable component
        raise UsageError(f"--model {args.model}: cannot be loaded: {str(error).splitlines()[0]}") from None
    try:
        summary = run_compare(
            pipe, settings, args.out, progress=not args.quiet, device=device, dtype=str(dtype), threads=threads
        )
    except ValueError as error:  # the size or the SEG layers against this model, before the first image
        raise UsageError(with_flag_names(str(error))) from None
    print(f"{'method':<34} {'model calls':>11} {'UNet rows':>9} {'s/image':>8}")
    for method in summary["methods"]:
        print(
            f"{method['label']:<34} {method['model_calls_per_image']:>11} {method['batch_rows_per_image']:>9} "
            f"{method['mean_wall_seconds_per_image']:>8.2f}"
        )
    images = len(summary["images"])
    replaced = summary.get("replaced", 0)
    note = f" (replacing {replaced} file{'s' * (replaced != 1)} of an earlier run)" if replaced else ""
    print(f"wrote {images} image{'s' * (images != 1)}, grid.png and compare.json to {args.out}{note}")
    return 0


def _add_compare(commands: argparse._SubParsersAction) -> None:
    from .compare import METHODS, SEG_METHODS
    from .diffusers import BUNDLED_MODELS, SCHEDULES, TINY_MODELS

    default_model = "shapes"
    shapes_prompts = ", ".join(f"'{p}'" for p in DEFAULT_PROMPTS[default_model])
    compare = commands.add_parser(
        "compare",
        help="the same prompts and seeds through Euler, DPM++ 2M, Z-Sampling and matched-strength CFG",
        description="Generate every prompt × seed with each method from the same initial noise; write PNGs "
        "(A1111 'parameters' metadata), a labelled grid.png and compare.json.",
    )
    compare.add_argument(
        "--model",
        default=default_model,
        help="a local diffusers folder, a single-file .safetensors, a hub id owner/name (needs network), a bundled "
        f"model: {', '.join(BUNDLED_MODELS)} (default {default_model}: the trained 16×16 shapes model), or a tiny "
        f"random-weight pipeline: {', '.join(TINY_MODELS)}",
    )
    compare.add_argument("--model-config", help="for a single-file checkpoint offline: a local diffusers folder")
    compare.add_argument(
        "--prompt",
        action="append",
        help=f"a prompt (repeat for several; default: {shapes_prompts} for shapes, "
        f"'{OTHER_DEFAULT_PROMPTS[0]}' for the other models)",
    )
    compare.add_argument("--negative-prompt", help="negative prompt (default: none; SDXL then uses zero embeddings)")
    compare.add_argument("--steps", type=positive_int, default=30, help="sampling steps T, >= 1 (default 30)")
    compare.add_argument(
        "--cfg",
        type=finite_float,
        help="γ₁, true CFG scale of denoising calls (default: the model's: 5.5 SD/SDXL/shapes, 3 shapes-flow, "
        "the pipeline's for SD3, 1 = off for Flux)",
    )
    compare.add_argument(
        "--inversion-scale",
        type=finite_float,
        help="γ₂, CFG scale of inversion calls, <= γ₁ (default 0: uncond; 1 on SD3/Flux with --cfg 1: one row a call)",
    )
    compare.add_argument(
        "--distilled-guidance",
        type=finite_float,
        help="g₁, distilled guidance of every call on guidance-distilled models (Flux dev; default the pipeline's, "
        "3.5); refused on other models",
    )
    compare.add_argument(
        "--inversion-guidance",
        type=finite_float,
        help="g₂, distilled guidance of Z-Sampling's inversion calls, <= g₁ (default min(1, g₁))",
    )
    compare.add_argument(
        "--zigzag-steps", type=non_negative_int, help="λ, zigzag on the first λ steps, 0 … T − 1 (default T − 1)"
    )
    compare.add_argument(
        "--zigzag-rounds", type=non_negative_int, default=1, help="T_max, zigzag rounds per step, >= 0 (default 1)"
    )
    compare.add_argument(
        "--ddim-update", choices=("paper", "released"), default="paper", help="inversion update of Z-Sampling (DDIM)"
    )
    compare.add_argument(
        "--schedule", choices=SCHEDULES, help="sigma schedule (default: karras; model, the pipeline's, for SD3/Flux)"
    )
    compare.add_argument(
        "--guidance-interval",
        nargs=2,
        type=sigma,
        metavar=("SIGMA_LOW", "SIGMA_HIGH"),
        help="CFG (and zigzag) only for sigma in [low, high], 0 <= low <= high; high may be inf",
    )
    compare.add_argument(
        "--seeds",
        type=seed,
        nargs="+",
        default=[0],
        help=f"seeds, each once, 0 … {MAX_SEED}; one grid row each (default 0)",
    )
    compare.add_argument(
        "--width", type=positive_int, help="image width in pixels, a multiple of the model's factor (default: its own)"
    )
    compare.add_argument(
        "--height",
        type=positive_int,
        help="image height in pixels, a multiple of the model's factor (default: its own)",
    )
    compare.add_argument("--device", help="cuda, cuda:1, cpu, mps, … (default: cuda if available)")
    compare.add_argument(
        "--dtype",
        choices=("auto", "float32", "float16", "bfloat16"),
        default="auto",
        help="model dtype (default auto: float16 on CUDA, else float32)",
    )
    compare.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma list from {','.join(METHODS + SEG_METHODS)}"
    )
    compare.add_argument(
        "--seg-scale", type=non_negative_float, default=3.0, help="SEG methods: SEG scale, >= 0 (default 3)"
    )
    compare.add_argument(
        "--seg-blur-sigma",
        type=positive_float,
        default=9999999.0,
        help="SEG methods: query blur sigma, > 0; > 9999 is the infinite blur (default 9999999)",
    )
    compare.add_argument(
        "--seg-layers", default="mid", help="SEG methods: comma list of down, mid, up or d0, m0, u5, … (default mid)"
    )
    compare.add_argument(
        "--seg-interval",
        nargs=2,
        type=sigma,
        metavar=("SIGMA_LOW", "SIGMA_HIGH"),
        help="SEG methods: the blurred pass only for sigma in [low, high]",
    )
    compare.add_argument(
        "--out",
        default="compare-out",
        help="output folder (default compare-out); the files an earlier compare wrote there are replaced, "
        "other files are left alone",
    )
    compare.add_argument(
        "--threads",
        type=positive_int,
        help="CPU threads for torch, >= 1 (default on CPU: 1 for the bundled and tiny models, else half the cores, "
        "at most 4; on an accelerator: torch's default)",
    )
    compare.add_argument("--quiet", action="store_true", help="no progress bar")
    compare.set_defaults(run=_compare)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zigzag-kdiff", description="Z-Sampling for k-diffusion and its hosts.")
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="benchmarks that print tables")
    bench.add_argument(
        "which",
        metavar="BENCHMARK",
        choices=["cost", "gmm", "shapes", "convergence", "shapes-dpmpp", "device"],
        help="cost: model calls, batch rows and wall time per sampler; gmm: Z-Sampling vs a CFG sweep on exact "
        "Gaussian mixtures; shapes: the same on the bundled text-to-image model with a rule checker; "
        "convergence: error to the T → ∞ limit per step rule and matched adherence against DPM++ 2M (GMMs); "
        "shapes-dpmpp: zigzag DPM++ 2M against DPM++ 2M on the bundled model, paired; device: every sampler on a "
        "GPU (a random full-size SDXL UNet in fp32/fp16/bf16 and the bundled models), one table (one of cost, gmm, "
        "shapes, convergence, shapes-dpmpp, device)",
    )
    bench.add_argument(
        "--steps", type=positive_int, help="cost: sampling steps T, >= 1 (default 50); device: the SDXL UNet's (10)"
    )
    bench.add_argument(
        "--repeats", type=positive_int, default=3, help="cost: interleaved repetitions, median, >= 1 (default 3)"
    )
    bench.add_argument("--quick", action="store_true", help="gmm/shapes: the small CI configuration")
    bench.add_argument("--out", help="gmm/shapes: also write markdown, JSON and plots into this folder")
    bench.add_argument(
        "--model",
        help="shapes: shapes (the bundled ε-UNet, default), shapes-flow (the bundled MMDiT flow model) or a "
        "diffusers folder of either kind",
    )
    bench.add_argument(
        "--threads", type=positive_int, help="shapes: torch threads, >= 1 (default 1: fastest on a busy machine)"
    )
    bench.add_argument(
        "--from-json",
        help="shapes/shapes-dpmpp/gmm --flow: re-render the tables and plots of a stored shapes(_dpmpp).json "
        "or flow.json",
    )
    bench.add_argument(
        "--first-seed",
        type=seed,
        help="gmm/shapes: first seed (default 0); another range: an independent replicate",
    )
    bench.add_argument(
        "--seg",
        action="store_true",
        help="shapes: the Smoothed Energy Guidance methods (alone, with CFG, with Z-Sampling) instead of the main run",
    )
    bench.add_argument("--seeds", type=positive_int, help="shapes: number of seeds, >= 1 (default 20; --quick 2)")
    bench.add_argument(
        "--main-only",
        action="store_true",
        help="shapes: the CFG sweep (1, 2, 3, 5), Z-Sampling per rule, equal rows, γ₂ = 1 and the interval; no λ, "
        "γ₂, γ₁ or compute sweeps",
    )
    bench.add_argument(
        "--flow",
        action="store_true",
        help="flow-matching models. gmm: true CFG and distilled guidance, Z-Sampling's rules and an RF-Sampling "
        "analogue on flow schedules (writes flow.md/flow.json); convergence: the three rules with and without "
        "zigzag on flow sigmas (exact GMMs in rectified-flow form), flow λ = log((1 − σ)/σ) against the VE "
        "λ = −log σ for DPM++ 2M",
    )
    bench.add_argument(
        "--device", help="device: the torch device (default cuda if available, else cpu; on a CPU use --quick)"
    )
    bench.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    bench.set_defaults(run=_bench)
    _add_compare(commands)
    replicate = commands.add_parser(
        "replicate",
        help="does a gmm/shapes benchmark JSON reproduce another within its 95 %% confidence intervals?",
    )
    replicate.add_argument("reference", help="the committed run's JSON (e.g. results/shapes/shapes.json)")
    replicate.add_argument("replicate", help="the new run's JSON (a rerun, or other seeds with --first-seed)")
    replicate.add_argument(
        "--worst", type=non_negative_int, default=10, help="list this many least consistent estimates (default 10)"
    )
    replicate.set_defaults(run=_replicate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; returns the exit status (2 with one ``error:`` line for any input it cannot use)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help (0) or a value the argument types refuse (2, one line printed)
        return exit.code if isinstance(exit.code, int) else 2
    command = f"{args.command} {args.which}" if args.command == "bench" else args.command
    try:
        require_extras(command)
        libraries = ("diffusers", "transformers") if "diffusers" in COMMAND_EXTRAS[command] else ()
        with dependency_noise_silenced(libraries):
            return args.run(args)
    except ModuleNotFoundError as error:  # an optional dependency a command needs is missing
        extra = _missing_extra(error)
        if extra is None:
            raise
        message = f'{command} needs {error.name}: pip install "zigzag-kdiff[{extra}]"'
    except ValueError as error:  # a bad setting or an unusable --model: one clear line, no traceback
        message = str(error)
    print(f"zigzag-kdiff {args.command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
