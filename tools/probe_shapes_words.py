"""Which prompt words does a shapes model use? ε-loss on fresh task images with edited prompts.

For a batch of real task images noised at a few timesteps, the model's ε-prediction loss with the right
prompt, with the position word swapped (left↔right, top↔bottom), with the colour word changed, and with
the empty prompt. A word the model uses raises the loss when edited; a word it ignores does not.

    python tools/probe_shapes_words.py                    # the bundled model
    python tools/probe_shapes_words.py --model /tmp/shapes16-stage1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zigzag_kdiff.bench import shapes as bench_shapes  # noqa: E402
from zigzag_kdiff.bench import shapes_task as shapes  # noqa: E402

OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}


def edited(spec: shapes.ShapeSpec, edit: str) -> str:
    if edit == "right prompt":
        return spec.prompt
    if edit == "position swapped":
        return shapes.ShapeSpec(spec.count, spec.colour, OPPOSITE[spec.position]).prompt
    if edit == "colour changed":
        colours = list(shapes.COLOURS)
        return shapes.ShapeSpec(spec.count, colours[(colours.index(spec.colour) + 1) % 6], spec.position).prompt
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a diffusers folder (default: the bundled model)")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--timesteps", type=int, nargs="+", default=[900, 700, 500, 300])
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = bench_shapes.load_model(args.model)
    images, specs = shapes.make_dataset(args.images, seed=1)
    x0 = torch.from_numpy(images) * 2 - 1
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    edits = ("right prompt", "position swapped", "colour changed", "empty prompt")
    print("| t | " + " | ".join(edits) + " |")
    print("|---:|" + "---:|" * len(edits))
    for t in args.timesteps:
        a = model.alphas_cumprod[t]
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        losses = []
        for edit in edits:
            cond = model.encode([edited(spec, edit) for spec in specs])
            with torch.no_grad():
                eps = model.unet(noisy, torch.full((len(specs),), t), cond).sample
            losses.append(float(((eps - noise) ** 2).mean()))
        print(f"| {t} | " + " | ".join(f"{value:.5f}" for value in losses) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
