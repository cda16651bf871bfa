"""Train the bundled shapes model (``zigzag_kdiff/models_data/shapes16``) from scratch, on CPU.

A diffusers ``UNet2DConditionModel`` (pixel space, 3 channels, 16×16, cross- and self-attention) and a
small transformers ``CLIPTextModel`` with a word-level tokenizer, trained jointly with the ε-prediction
loss on SD's scaled-linear schedule (β 0.00085…0.012, 1000 steps), fresh procedural images every
step (:mod:`zigzag_kdiff.bench.shapes_task`), 10 % empty prompts so classifier-free guidance works. The saved
weights are an exponential moving average. Deterministic for a given seed and step count on CPU.

    # the bundled model, in two stages of 3000 steps (28 min on 1 thread + 22 min on 2 threads here)
    python tools/train_shapes.py --out /tmp/shapes16-stage1
    python tools/train_shapes.py --init /tmp/shapes16-stage1 --seed 1 --lr 5e-4 --warmup 50 --threads 2
    python tools/train_shapes.py --steps 50 --out /tmp/shapes16-smoke     # a smoke test

The output folder loads with ``from_pretrained`` (safetensors only): ``unet/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/`` and a ``model_index.json`` describing a ``StableDiffusionPipeline``
without VAE (pixel space: its "latents" are images in [-1, 1]), safety checker or feature extractor.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zigzag_kdiff.bench import shapes_task as shapes  # noqa: E402


def build_models(seed: int, init: Path | None = None) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Fresh models from the configs, or (``init``) the weights of an earlier run's folder (safetensors)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    if init is not None:
        unet = UNet2DConditionModel.from_pretrained(init / "unet", use_safetensors=True)
        text_encoder = CLIPTextModel.from_pretrained(init / "text_encoder", use_safetensors=True)
        return unet.train(), text_encoder.train()
    unet = UNet2DConditionModel(**shapes.unet_config())
    text_encoder = CLIPTextModel(CLIPTextConfig(**shapes.text_encoder_config()))
    return unet, text_encoder


def batch_of(rng: np.random.Generator, size: int, dropout: float) -> tuple[torch.Tensor, list[str]]:
    """``size`` fresh images in [-1, 1] and their prompts ("" with probability ``dropout``)."""
    specs = shapes.all_specs()
    chosen = [specs[i] for i in rng.integers(0, len(specs), size)]
    images = np.stack([shapes.render(spec, rng) for spec in chosen])
    prompts = ["" if rng.random() < dropout else spec.prompt for spec in chosen]
    return torch.from_numpy(images) * 2 - 1, prompts


def save(folder: Path, unet: torch.nn.Module, text_encoder: torch.nn.Module, meta: dict) -> None:
    from diffusers import DDIMScheduler

    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    shapes.build_tokenizer(folder / "tokenizer")
    DDIMScheduler(**shapes.scheduler_config()).save_pretrained(folder / "scheduler")
    shapes.write_model_index(folder)
    (folder / "training.json").write_text(json.dumps(meta, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--ema", type=float, default=0.995, help="EMA decay of the saved weights")
    parser.add_argument("--dropout", type=float, default=0.1, help="probability of the empty prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    parser.add_argument("--save-every", type=int, default=300)
    parser.add_argument("--out", type=Path, default=shapes.BUNDLED_MODEL)
    parser.add_argument("--init", type=Path, help="continue from the weights of an earlier run's output folder")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    init_meta = json.loads((args.init / "training.json").read_text()) if args.init else None
    unet, text_encoder = build_models(args.seed, args.init)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    tokenizer = shapes.build_tokenizer()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 5 % of the peak
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = (step - args.warmup) / max(args.steps - args.warmup, 1)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    generator = torch.Generator().manual_seed(args.seed)
    print(
        f"unet {sum(p.numel() for p in unet.parameters()):,} params, "
        f"text encoder {sum(p.numel() for p in text_encoder.parameters()):,} params",
        flush=True,
    )
    start, running = time.time(), 0.0
    for step in range(args.steps):
        images, prompts = batch_of(rng, args.batch, args.dropout)
        ids = tokenizer(prompts, padding="max_length", max_length=shapes.MAX_TOKENS, return_tensors="pt").input_ids
        t = torch.randint(0, 1000, (args.batch,), generator=generator)
        noise = torch.randn(images.shape, generator=generator)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * images + (1 - a).sqrt() * noise
        emb = text_encoder(ids).last_hidden_state
        loss = (unet(noisy, t, emb).sample - noise).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_text, text_encoder)):
                for p_ema, p in zip(ema.parameters(), live.parameters()):
                    p_ema.lerp_(p, 1 - decay)
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if step % 50 == 0 or step == args.steps - 1:
            elapsed = time.time() - start
            print(
                f"step {step:5d}  loss {running:.4f}  lr {scheduler.get_last_lr()[0]:.2e}  {elapsed:6.0f}s", flush=True
            )
        last = step == args.steps - 1
        if last or (args.save_every and step and step % args.save_every == 0):
            meta = {
                "steps": step + 1,
                "batch": args.batch,
                "lr": args.lr,
                "ema": args.ema,
                "dropout": args.dropout,
                "seed": args.seed,
                "final_loss_ema": round(running, 5),
                "seconds": round(time.time() - start),
                "command": "python tools/train_shapes.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                "init": init_meta,
            }
            save(args.out, ema_unet, ema_text, meta)
    print(f"saved {args.out} after {time.time() - start:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
