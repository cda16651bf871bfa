"""The README's compare grid: its caption's command, the note beside it, the docs that explain it, its image."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from zigzag_kdiff.bench.shapes_task import all_specs
from zigzag_kdiff.cli import build_parser
from zigzag_kdiff.compare import METHODS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = (ROOT / "docs" / "diffusers-and-k-diffusion.md").read_text(encoding="utf-8")


def _caption() -> tuple[str, str]:
    """The command in the caption under the README's grid, and the caption's text."""
    after = README.split("![compare grid](docs/compare-grid.png)", 1)[1]
    caption = after.strip().split("\n\n", 1)[0]
    (command,) = re.findall(r"`(zigzag-kdiff compare [^`]+)`", caption)
    return command, " ".join(caption.split())


def _args():
    return build_parser().parse_args(shlex.split(_caption()[0])[1:])


def test_the_caption_uses_the_tasks_prompts_and_says_the_model_ignores_position():
    args = _args()
    prompts = {spec.prompt for spec in all_specs()}
    assert args.model == "shapes" and args.prompt and set(args.prompt) <= prompts, args.prompt
    assert "ignores position" in _caption()[1]


def test_the_docs_show_the_same_command_and_describe_this_grid():
    command = _caption()[0]
    assert command in DOCS, "docs/diffusers-and-k-diffusion.md shows another command for the grid"
    reading = DOCS.split("**How to read the grid.**", 1)[1].split("\n\n", 1)[0]
    args = _args()
    steps, lam = args.steps, args.steps - 1 if args.zigzag_steps is None else args.zigzag_steps
    # per image at γ₂ = 0: Euler T calls / 2T rows, Z-Sampling T + 2λ calls / 2T + 3λ rows
    assert f"{steps} calls / {2 * steps} rows" in reading, reading
    assert f"{steps + 2 * lam} calls / {2 * steps + 3 * lam} rows" in reading, reading
    assert "tiny-sdxl" not in reading.lower() and "not dogs" not in reading
    images = len(args.prompt) * len(args.seeds) * len(METHODS)
    assert f"of the {images} images" in reading, "the checker's counts over the grid's images"


def test_the_committed_grid_has_the_commands_rows_and_columns():
    from PIL import Image

    args = _args()
    rows, columns = len(args.prompt) * len(args.seeds), len(METHODS)
    with Image.open(ROOT / "docs" / "compare-grid.png") as grid:
        width, height = grid.size
    tile = 128  # 16×16 images enlarged 8× (compare.make_grid's min_tile), 4-pixel gaps, labels left and above
    assert columns * tile < width - 100 < columns * (tile + 4) + 200, width
    assert rows * tile < height < rows * (tile + 4) + 120, height
