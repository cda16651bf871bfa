"""``zigzag-kdiff compare``: the same prompts and seeds through several samplers, side by side.

Every method starts from the same initial noise (drawn from the seed, see
:func:`zigzag_kdiff.diffusers.generate`). Default methods: k-diffusion's Euler and DPM++ 2M at the
CFG scale γ₁, Z-Sampling with the Euler and the DDIM rule (γ₁, γ₂, λ, T_max), and Euler with plain
CFG at the *matched strength* 2·γ₁ − γ₂, the scale one zigzag pair roughly amounts to (reference
notes), so a viewer can tell what Z-Sampling adds beyond stronger guidance.

Writes, in the output folder: one PNG per image with an A1111-style ``parameters`` text chunk, a
labelled ``grid.png`` (a column per method titled with its γ₁, γ₂, λ; a row per prompt × seed, labelled with
the prompt text and the seed) and ``compare.json`` with the settings, model-call counts, batch rows and wall
times. Requires the ``[diffusers]`` extra.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .guidance import GuidanceInterval
from .seg import DEFAULT_BLUR_SIGMA, SEGOptions

METHODS = ("euler", "dpmpp_2m", "zigzag_euler", "zigzag_ddim", "zigzag_dpmpp_2m", "cfg_matched")
"""Method keys, in the default order of the grid's columns."""

SEG_METHODS = ("seg_euler", "zigzag_euler_seg")
"""Smoothed Energy Guidance methods (``--methods`` only, not in the default grid): Euler with CFG + SEG, and
Z-Sampling (Euler) with CFG + SEG on its denoising calls (inversion calls without SEG)."""


@dataclass
class CompareSettings:
    """Everything ``compare`` varies; γ₁ = ``cfg_scale``, γ₂ = ``inversion_scale``, λ = ``zigzag_steps``
    (``None``: steps − 1), T_max = ``zigzag_rounds``."""

    model: str = "tiny"
    prompts: list[str] = field(default_factory=lambda: ["a small yellow dog"])
    negative_prompt: str | None = None
    steps: int = 30
    cfg_scale: float = 5.5
    inversion_scale: float = 0.0
    zigzag_steps: int | None = None
    zigzag_rounds: int = 1
    ddim_update: str = "paper"
    schedule: str = "karras"
    guidance_interval: tuple[float, float] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    width: int | None = None
    height: int | None = None
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seg_scale: float = 3.0  # the SEG methods' s_seg (official default)
    seg_blur_sigma: float = DEFAULT_BLUR_SIGMA
    seg_layers: list[str] = field(default_factory=lambda: ["mid"])
    seg_interval: tuple[float, float] | None = None

    def validate(self) -> None:
        """ValueErrors naming the parameter and its allowed range, before any model is loaded."""
        unknown = [m for m in self.methods if m not in METHODS + SEG_METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {list(METHODS + SEG_METHODS)}, got {self.methods}")
        SEGOptions(self.seg_scale, self.seg_blur_sigma, tuple(self.seg_layers), self.seg_interval)
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        if self.zigzag_steps is not None and not 0 <= self.zigzag_steps <= self.steps - 1:
            raise ValueError(f"zigzag_steps (λ) must be in [0, {self.steps - 1}] (steps − 1), got {self.zigzag_steps}")
        if self.zigzag_rounds < 0:
            raise ValueError(f"zigzag_rounds (T_max) must be >= 0, got {self.zigzag_rounds}")
        for name in ("cfg_scale", "inversion_scale"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")
        if self.inversion_scale > self.cfg_scale:
            raise ValueError(
                f"inversion_scale (γ₂) must be <= cfg_scale (γ₁) = {self.cfg_scale:g}, got {self.inversion_scale:g}"
            )
        if not self.prompts or not self.seeds:
            raise ValueError("prompts and seeds must not be empty")
        GuidanceInterval.parse(self.guidance_interval)  # raises for low > high, negative or NaN bounds
        if self.ddim_update not in ("paper", "released"):
            raise ValueError(f"ddim_update must be 'paper' or 'released', got {self.ddim_update!r}")

    @property
    def matched_scale(self) -> float:
        """2·γ₁ − γ₂: the plain-CFG scale matching one zigzag pair's strength to first order."""
        return 2 * self.cfg_scale - self.inversion_scale


@dataclass
class Method:
    """One column: ``label`` names it (grid title, JSON, the CLI's table), ``sampler_name`` is the
    ``Sampler:`` written into the PNG's parameters."""

    key: str
    label: str
    sampler_name: str
    sampler: str
    cfg_scale: float
    options: dict[str, Any]
    seg: dict[str, Any] = field(default_factory=dict)  # generate()'s seg_* arguments (SEG methods)


SCHEDULE_NAMES = {"karras": "Karras", "exponential": "Exponential", "ddim": "DDIM", "model": "Model default"}
"""A1111's ``Schedule type`` names for the schedules."""


def build_methods(settings: CompareSettings) -> list[Method]:
    lam = settings.steps - 1 if settings.zigzag_steps is None else settings.zigzag_steps
    zigzag = {
        "inversion_scale": settings.inversion_scale,
        "zigzag_steps": lam,
        "zigzag_rounds": settings.zigzag_rounds,
    }
    gamma_1 = settings.cfg_scale
    matched = settings.matched_scale
    all_methods = {
        "euler": Method("euler", "Euler", "Euler", "euler", gamma_1, {}),
        "dpmpp_2m": Method("dpmpp_2m", "DPM++ 2M", "DPM++ 2M", "dpmpp_2m", gamma_1, {}),
        "zigzag_euler": Method(
            "zigzag_euler", "Z-Sampling (Euler)", "Z-Sampling Euler", "zigzag_euler", gamma_1, dict(zigzag)
        ),
        "zigzag_ddim": Method(
            "zigzag_ddim",
            "Z-Sampling (DDIM)",
            "Z-Sampling DDIM",
            "zigzag_ddim",
            gamma_1,
            {**zigzag, "inversion_update": settings.ddim_update},
        ),
        "zigzag_dpmpp_2m": Method(
            "zigzag_dpmpp_2m", "Z-Sampling (DPM++ 2M)", "Z-Sampling DPM++ 2M", "zigzag_dpmpp_2m", gamma_1, dict(zigzag)
        ),
        "cfg_matched": Method("cfg_matched", f"Euler, CFG {matched:g} (matched)", "Euler", "euler", matched, {}),
    }
    seg = {
        "seg_scale": settings.seg_scale,
        "seg_blur_sigma": settings.seg_blur_sigma,
        "seg_applied_layers": tuple(settings.seg_layers),
        "seg_interval": settings.seg_interval,
    }
    all_methods["seg_euler"] = Method("seg_euler", "Euler + SEG", "Euler", "euler", gamma_1, {}, seg)
    all_methods["zigzag_euler_seg"] = Method(
        "zigzag_euler_seg", "Z-Sampling (Euler) + SEG", "Z-Sampling Euler", "zigzag_euler", gamma_1, dict(zigzag), seg
    )
    return [all_methods[key] for key in settings.methods]


def column_label(method: Method) -> str:
    """The grid's column title: the method, then its scales in the papers' symbols (γ₁; Z-Sampling: γ₂, λ and
    T_max when not 1; the matched column: its scale 2·γ₁ − γ₂)."""
    if method.key == "cfg_matched":
        return f"Euler, CFG {method.cfg_scale:g} (matched)\n= 2·γ₁ − γ₂"
    scales = [f"γ₁={method.cfg_scale:g}"]
    if method.sampler.startswith("zigzag"):
        scales += [f"γ₂={method.options['inversion_scale']:g}", f"λ={method.options['zigzag_steps']}"]
        if method.options["zigzag_rounds"] != 1:
            scales.append(f"T_max={method.options['zigzag_rounds']}")
    if method.seg:
        scales.append(f"s_seg={method.seg['seg_scale']:g}")
    return f"{method.label}\n{', '.join(scales)}"


def row_label(prompt: str, seed: int, width: int = 20, max_lines: int = 3) -> str:
    """The grid's row label: the prompt wrapped to ``width`` characters (at most ``max_lines``, then
    abbreviated), then the seed."""
    lines = textwrap.wrap(prompt, width=width, max_lines=max_lines, placeholder=" ...") or ['""']
    return "\n".join([*lines, f"seed {seed}"])


def default_threads(model: str, device: str) -> int | None:
    """torch's CPU threads when ``--threads`` is not given. On a CPU: 1 for the bundled and tiny models (their
    layers are too small to split; extra threads only contend on a busy machine), else half the cores, at
    most 4. ``None`` on an accelerator: torch's default."""
    if not device.startswith("cpu"):
        return None
    if model == "shapes" or model.startswith("tiny"):
        return 1
    return max(1, min(4, (os.cpu_count() or 1) // 2))


ASCII_SYMBOLS = str.maketrans({"γ": "g", "₁": "1", "₂": "2", "λ": "lambda", "·": "*", "−": "-"})
"""Label text for a font without Greek (no DejaVu Sans found): γ₁ → g1, λ → lambda."""


def _grid_font() -> tuple[Any, bool]:
    """DejaVu Sans (system fonts, else matplotlib's copy) and True; Pillow's default font (no Greek) and False."""
    from PIL import ImageFont

    candidates = ["DejaVuSans.ttf"]
    try:
        import matplotlib

        candidates.append(str(Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"))
    except ImportError:
        pass
    for name in candidates:
        try:
            return ImageFont.truetype(name, 11), True
        except OSError:
            continue
    return ImageFont.load_default(), False


def a1111_parameters(prompt: str, settings: CompareSettings, method: Method, seed: int, width: int, height: int) -> str:
    """The A1111-style ``parameters`` string: prompt, negative prompt, then ``key: value`` pairs."""
    pairs = [
        ("Steps", settings.steps),
        ("Sampler", method.sampler_name),
        ("Schedule type", SCHEDULE_NAMES.get(settings.schedule, settings.schedule)),
        ("CFG scale", f"{method.cfg_scale:g}"),
        ("Seed", seed),
        ("Size", f"{width}x{height}"),
        ("Model", Path(settings.model).name or settings.model),
    ]
    if method.sampler.startswith("zigzag"):
        pairs += [
            ("Zigzag inversion scale", f"{method.options['inversion_scale']:g}"),
            ("Zigzag steps", method.options["zigzag_steps"]),
            ("Zigzag rounds", method.options["zigzag_rounds"]),
        ]
        if "inversion_update" in method.options:
            pairs.append(("Zigzag DDIM update", method.options["inversion_update"]))
    if settings.guidance_interval is not None:
        low, high = settings.guidance_interval
        pairs.append(("Guidance interval", f'"{low:g}-{high:g}"'))
    if method.seg:
        pairs += [
            ("SEG scale", f"{method.seg['seg_scale']:g}"),
            ("SEG blur sigma", f"{method.seg['seg_blur_sigma']:g}"),
            ("SEG layers", f'"{",".join(method.seg["seg_applied_layers"])}"'),
        ]
        if method.seg["seg_interval"] is not None:
            low, high = method.seg["seg_interval"]
            pairs.append(("SEG interval", f'"{low:g}-{high:g}"'))
    pairs.append(("Version", f"zigzag-kdiff {__version__}"))
    lines = [prompt]
    if settings.negative_prompt:
        lines.append(f"Negative prompt: {settings.negative_prompt}")
    lines.append(", ".join(f"{key}: {value}" for key, value in pairs))
    return "\n".join(lines)


def save_png(image: Any, path: Path, parameters: str) -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    image.save(path, pnginfo=info)


def _wrap(draw: Any, text: str, font: Any, width: int) -> list[str]:
    """Greedy word wrap of each line of ``text`` to lines that fit ``width`` pixels."""
    average = max(1, draw.textlength("abcdefghij", font=font) / 10)
    return [wrapped for line in text.split("\n") for wrapped in textwrap.wrap(line, max(4, int(width / average)))]


def make_grid(tiles: list[list[Any]], column_labels: list[str], row_labels: list[str], min_tile: int = 128) -> Any:
    """A labelled grid image: ``tiles[row][column]`` PIL images, labels above columns and left of rows.
    Tiles smaller than ``min_tile`` pixels are enlarged (nearest neighbour) so labels stay legible. Labels may
    hold line breaks; without a font that has Greek, γ₁/γ₂/λ are spelled g1/g2/lambda."""
    from PIL import Image, ImageDraw

    font, greek = _grid_font()
    if not greek:
        column_labels = [label.translate(ASCII_SYMBOLS) for label in column_labels]
        row_labels = [label.translate(ASCII_SYMBOLS) for label in row_labels]
    tile_w, tile_h = tiles[0][0].size
    zoom = max(1, math.ceil(min_tile / max(1, min(tile_w, tile_h))))
    tile_w, tile_h = tile_w * zoom, tile_h * zoom
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = int(probe.textbbox((0, 0), "Ag", font=font)[3]) + 4
    label_w = max(int(probe.textlength(line, font=font)) for label in row_labels for line in label.split("\n")) + 12
    header_lines = max(len(_wrap(probe, label, font, tile_w - 8)) for label in column_labels)
    header_h = header_lines * line_h + 8
    pad = 4
    grid = Image.new(
        "RGB",
        (label_w + len(column_labels) * (tile_w + pad), header_h + len(row_labels) * (tile_h + pad)),
        "white",
    )
    draw = ImageDraw.Draw(grid)
    for c, label in enumerate(column_labels):
        for k, line in enumerate(_wrap(draw, label, font, tile_w - 8)):
            draw.text((label_w + c * (tile_w + pad) + 4, 4 + k * line_h), line, fill="black", font=font)
    for r, label in enumerate(row_labels):
        for k, line in enumerate(label.split("\n")):
            draw.text((6, header_h + r * (tile_h + pad) + 4 + k * line_h), line, fill="black", font=font)
        for c, tile in enumerate(tiles[r]):
            tile = tile.resize((tile_w, tile_h), Image.NEAREST) if zoom > 1 else tile
            grid.paste(tile, (label_w + c * (tile_w + pad), header_h + r * (tile_h + pad)))
    return grid


def run_compare(
    pipe: Any,
    settings: CompareSettings,
    out_dir: str | Path,
    *,
    progress: bool = True,
    device: str = "",
    dtype: str = "",
    threads: int | None = None,
) -> dict[str, Any]:
    """Generate every (prompt, seed, method) image, write PNGs, ``grid.png`` and ``compare.json``;
    return the JSON's content."""
    from tqdm.auto import tqdm

    from .diffusers import generate

    settings.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = build_methods(settings)
    records: list[dict[str, Any]] = []
    tiles: list[list[Any]] = []
    row_labels: list[str] = []
    start = time.perf_counter()
    total = len(settings.prompts) * len(settings.seeds) * len(methods)
    with tqdm(total=total, desc="compare", unit="image", disable=not progress) as bar:
        for p, prompt in enumerate(settings.prompts):
            for seed in settings.seeds:
                row = []
                for method in methods:
                    bar.set_postfix_str(f"{method.key} seed {seed}")
                    began = time.perf_counter()
                    result = generate(
                        pipe,
                        prompt,
                        negative_prompt=settings.negative_prompt,
                        sampler=method.sampler,
                        steps=settings.steps,
                        cfg_scale=method.cfg_scale,
                        schedule=settings.schedule,
                        height=settings.height,
                        width=settings.width,
                        seed=seed,  # the same seed: the same initial noise for every method
                        guidance_interval=settings.guidance_interval,
                        sampler_options=method.options,
                        disable_progress=True,
                        **method.seg,
                    )
                    seconds = time.perf_counter() - began
                    image = result.images[0]
                    width, height = image.size
                    name = f"p{p:02d}-seed{seed}-{method.key}.png"
                    save_png(image, out / name, a1111_parameters(prompt, settings, method, seed, width, height))
                    records.append(
                        {
                            "file": name,
                            "method": method.key,
                            "prompt": prompt,
                            "seed": seed,
                            "model_calls": result.model_calls,
                            "batch_rows": result.batch_rows,
                            "sampling_seconds": round(result.seconds, 4),
                            "wall_seconds": round(seconds, 4),
                        }
                    )
                    row.append(image)
                    bar.update()
                tiles.append(row)
                row_labels.append(row_label(prompt, seed))
    grid = make_grid(tiles, [column_label(m) for m in methods], row_labels)
    grid.save(out / "grid.png")
    summary = {
        "zigzag_kdiff": __version__,
        "settings": {
            **asdict(settings),
            "matched_scale": settings.matched_scale,
            "device": device,
            "dtype": dtype,
            "threads": threads,
        },
        "methods": [_method_summary(method, records) for method in methods],
        "images": records,
        "grid": "grid.png",
        "wall_seconds": round(time.perf_counter() - start, 3),
    }
    with open(out / "compare.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, ensure_ascii=False)
    return summary


def _method_summary(method: Method, records: list[dict[str, Any]]) -> dict[str, Any]:
    mine = [r for r in records if r["method"] == method.key]
    return {
        **asdict(method),
        "model_calls_per_image": mine[0]["model_calls"],
        "batch_rows_per_image": mine[0]["batch_rows"],
        "mean_wall_seconds_per_image": round(sum(r["wall_seconds"] for r in mine) / len(mine), 4),
    }
