"""Train the bundled flow model (``zigzag_kdiff/models_data/shapes16-flow``) from scratch, on CPU.

A diffusers ``SD3Transformer2DModel`` (MMDiT; pixel space, 3 channels, 16×16, patch size 2, SD3's absolute
2-D sin-cos position embeddings) over two small ``CLIPTextModelWithProjection`` encoders (SD3's CLIP-L and
CLIP-G stand-ins) sharing the task's word-level tokenizer, trained jointly with the rectified-flow
objective: x_σ = (1 − σ)·x₀ + σ·ε, the transformer predicts v = ε − x₀ at timestep σ·1000 (as
``StableDiffusion3Pipeline`` calls it), loss ‖v̂ − v‖². Fresh procedural images every step
(:mod:`zigzag_kdiff.bench.shapes_task`), 10 % empty prompts so classifier-free guidance works. The text
goes through the pipeline's own ``encode_prompt``, so training sees exactly what sampling sees.

σ sampling: SD3's logit-normal (m = 0, s = 1) for 80 % of the batch and uniform σ for 20 %. The logit-normal
alone puts 8 % of its samples above σ = 0.8, where a 16×16 image's layout (which half, how many squares) is
decided; the uniform fifth keeps those levels trained (``--uniform 0`` gives SD3's choice).

Deterministic for a given seed and step count on CPU: every step draws its data, σ and noise from
generators seeded by (seed, step), so a run resumed from its state folder (``--state``, written every
``--save-every`` steps: weights, EMA, AdamW moments, safetensors) continues exactly. The saved weights are
an exponential moving average.

    python tools/train_shapes_flow.py                      # the bundled model (see its training.json)
    python tools/train_shapes_flow.py --steps 20 --out /tmp/flow-smoke --state /tmp/flow-smoke-state
    python tools/train_shapes_flow.py --until 1000        # stop at step 1000; the same command without it resumes

The output folder is a ``StableDiffusion3Pipeline`` without VAE and T5 (``transformer/``, ``text_encoder/``,
``text_encoder_2/``, ``tokenizer/``, ``tokenizer_2/``, ``scheduler/``, ``model_index.json``): it loads with
``zigzag_kdiff.diffusers.load_pipeline`` (``--model shapes-flow``) or ``DiffusionPipeline.from_pretrained``
(with ``vae=None``); its "latents" are the images in [-1, 1].
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zigzag_kdiff.bench import shapes_task as shapes  # noqa: E402

MODULES = ("transformer", "text_encoder", "text_encoder_2")


def build_pipeline(seed: int):
    """A fresh ``StableDiffusion3Pipeline`` (no VAE, no T5) from the configs, in train mode."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(**shapes.flow_transformer_config())
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**shapes.flow_text_encoder_config()))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**shapes.flow_text_encoder_config()))
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**shapes.flow_scheduler_config()),
        vae=None,
        text_encoder=text_encoder.train(),
        tokenizer=shapes.build_tokenizer(),
        text_encoder_2=text_encoder_2.train(),
        tokenizer_2=shapes.build_tokenizer(),
        text_encoder_3=None,
        tokenizer_3=None,
    )


def modules(pipe) -> dict[str, torch.nn.Module]:
    return {name: getattr(pipe, name) for name in MODULES}


def encode(pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The pipeline's own prompt encoding (CLIP-L ⊕ CLIP-G penultimate hidden states, zero T5 tokens; pooled)."""
    embeds, _, pooled, _ = pipe.encode_prompt(
        prompt=prompts, prompt_2=None, prompt_3=None, device="cpu", do_classifier_free_guidance=False
    )
    return embeds, pooled


def batch_of(seed: int, step: int, size: int, dropout: float, uniform: float) -> tuple[torch.Tensor, ...]:
    """Step ``step``'s data: images in [-1, 1], prompts ("" with probability ``dropout``), σ and noise."""
    rng = np.random.default_rng([seed, step])
    specs = shapes.all_specs()
    chosen = [specs[i] for i in rng.integers(0, len(specs), size)]
    images = torch.from_numpy(np.stack([shapes.render(spec, rng) for spec in chosen])) * 2 - 1
    prompts = ["" if rng.random() < dropout else spec.prompt for spec in chosen]
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    logit_normal = torch.sigmoid(torch.randn(size, generator=generator))  # SD3: σ = sigmoid(u), u ~ N(0, 1)
    flat = torch.rand(size, generator=generator)
    sigma = torch.where(torch.rand(size, generator=generator) < uniform, flat, logit_normal)
    noise = torch.randn(images.shape, generator=generator)
    return images, prompts, sigma, noise


def save_pipeline(folder: Path, pipe, ema: dict[str, torch.nn.Module], meta: dict) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    folder.mkdir(parents=True, exist_ok=True)
    for name, module in ema.items():
        module.save_pretrained(folder / name, safe_serialization=True)
    shapes.build_tokenizer(folder / "tokenizer")
    shapes.build_tokenizer(folder / "tokenizer_2")
    FlowMatchEulerDiscreteScheduler(**shapes.flow_scheduler_config()).save_pretrained(folder / "scheduler")
    shapes.write_flow_model_index(folder)
    (folder / "training.json").write_text(json.dumps(meta, indent=2) + "\n")


def save_state(folder: Path, step: int, live: dict, ema: dict, optimizer: torch.optim.Optimizer, args: dict) -> None:
    """Everything a resumed run needs, safetensors and JSON only (no pickle)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for prefix, group in (("live", live), ("ema", ema)):
        for name, module in group.items():
            for key, value in module.state_dict().items():
                tensors[f"{prefix}.{name}.{key}"] = value.contiguous()
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"adam.{index}.{key}"] = torch.as_tensor(value).contiguous()
    save_file(tensors, str(folder / "state.safetensors"))
    (folder / "state.json").write_text(json.dumps({"step": step, "args": args}, indent=2) + "\n")


def load_state(folder: Path, live: dict, ema: dict, optimizer: torch.optim.Optimizer, args: dict) -> int:
    """The next step of a saved run with the same settings (0 if there is none); restores its tensors."""
    from safetensors.torch import load_file

    meta_file = folder / "state.json"
    if not meta_file.is_file():
        return 0
    meta = json.loads(meta_file.read_text())
    if meta["args"] != args:
        raise ValueError(f"--state {folder} holds a run with other settings ({meta['args']}); use another --state")
    tensors = load_file(str(folder / "state.safetensors"))
    for prefix, group in (("live", live), ("ema", ema)):
        for name, module in group.items():
            start = f"{prefix}.{name}."
            module.load_state_dict({k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)})
    saved = optimizer.state_dict()
    for index in range(len(saved["param_groups"][0]["params"])):
        state = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"adam.{index}.")}
        if state:
            saved["state"][index] = state
    optimizer.load_state_dict(saved)
    return int(meta["step"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--ema", type=float, default=0.995, help="EMA decay of the saved weights")
    parser.add_argument("--dropout", type=float, default=0.1, help="probability of the empty prompt")
    parser.add_argument("--uniform", type=float, default=0.2, help="share of uniform σ (the rest logit-normal)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--save-every", type=int, default=200)
    parser.add_argument(
        "--until", type=int, help="stop after this many steps, saving the state only (resume with the same settings)"
    )
    parser.add_argument("--out", type=Path, default=shapes.BUNDLED_FLOW_MODEL)
    parser.add_argument(
        "--state",
        type=Path,
        default=Path(tempfile.gettempdir()) / "zigzag-shapes16-flow-state",
        help="folder of the resumable training state (a run with the same settings continues from it)",
    )
    args = parser.parse_args(argv)
    settings = {k: v for k, v in vars(args).items() if k not in ("threads", "save_every", "out", "state", "until")}

    torch.set_num_threads(args.threads)
    pipe = build_pipeline(args.seed)
    live = modules(pipe)
    ema = {name: build_pipeline(args.seed).components[name].eval() for name in MODULES}
    for name in MODULES:
        ema[name].load_state_dict(live[name].state_dict())
        ema[name].requires_grad_(False)
    params = [p for module in live.values() for p in module.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 5 % of the peak
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = (step - args.warmup) / max(args.steps - args.warmup, 1)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    first = load_state(args.state, live, ema, optimizer, settings)
    for group in optimizer.param_groups:
        group["lr"] = args.lr * lr_at(first)
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in live.items()}
    print(f"parameters: {counts}; starting at step {first}", flush=True)
    start, running = time.time(), None
    stop = args.steps if args.until is None else min(args.until, args.steps)
    for step in range(first, stop):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * lr_at(step)
        images, prompts, sigma, noise = batch_of(args.seed, step, args.batch, args.dropout, args.uniform)
        s = sigma.view(-1, 1, 1, 1)
        noisy = (1 - s) * images + s * noise  # x_σ = (1 − σ)·x₀ + σ·ε
        embeds, pooled = encode(pipe, prompts)
        velocity = pipe.transformer(
            hidden_states=noisy,
            timestep=sigma * 1000,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        loss = (velocity - (noise - images)).pow(2).mean()  # v = ε − x₀
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for name in MODULES:
                for p_ema, p in zip(ema[name].parameters(), live[name].parameters()):
                    p_ema.lerp_(p, 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        last = step == stop - 1
        if step % 50 == 0 or last:
            print(
                f"step {step:5d}  loss {running:.4f}  lr {optimizer.param_groups[0]['lr']:.2e}  "
                f"{time.time() - start:6.0f}s",
                flush=True,
            )
        if last or (args.save_every and (step + 1) % args.save_every == 0):
            save_state(args.state, step + 1, live, ema, optimizer, settings)
    if stop < args.steps:
        print(f"stopped after step {stop}; the state is in {args.state}", flush=True)
        return 0
    meta = {
        **settings,
        "final_loss_ema": None if running is None else round(running, 5),
        "command": "python tools/train_shapes_flow.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    save_pipeline(args.out, pipe, ema, meta)
    print(f"saved {args.out} after {time.time() - start:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
