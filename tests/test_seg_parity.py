"""Parity with the official SEG pipeline (SusungHong/SEG-SDXL, ``pipeline_seg.py``) on a tiny SDXL pipeline.

The official sampling loop and its attention processor (``SEGCFGSelfAttnProcessor``) are written out
below from their code, reduced to their arithmetic: the batch ``[uncond, cond, cond_ptb]`` (``[cond,
cond_ptb]`` at guidance scale 1), the queries of the last chunk blurred on the square grid
``isqrt(tokens)`` (their 2-D Gaussian kernel with the cap on the grid side and reflect padding, or the
token mean above σ = 9999), the ε combination ``ε_c + (w − 1)(ε_c − ε_u) + s(ε_c − ε_ptb)``, the layers
counted as theirs ('attn1' in the module name, not a 'to' sublayer, grouped by the first name part),
the pipeline's own Euler scheduler. Ours is ``generate(sampler="euler", schedule="model", seg_scale=…)``;
the final latents are compared: relative error = max |ours − official| / max |official|.

The tiny UNet's self-attention is made strong (its ``attn1`` query, key and output weights scaled up), so
that the blur matters: :func:`test_a_different_blur_misses_the_tolerance` shows that a slightly
different blur (σ × 1.25) or blurring the wrong chunk fails the comparison.

Run as a script for the table of errors: ``PYTHONPATH=. python tests/test_seg_parity.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from seg_reference import official_blur, official_kernel_size, official_layers, true_grid_blur

pytest.importorskip("diffusers")
pytest.importorskip("k_diffusion")

from zigzag_kdiff.diffusers import generate  # noqa: E402
from zigzag_kdiff.tiny import tiny_pipeline  # noqa: E402

TOLERANCE = 1e-4
STEPS = 4
SEG_SCALE = 3.0
PROMPT = "a red square"
LATENT = 16  # 16×16 latents: self-attention on 8×8 grids (down, mid and up)
INFINITE = 9999999.0


# --- the official processor and loop, written out -------------------------------------------------------


class OfficialSEGProcessor:
    """SEGCFGSelfAttnProcessor's arithmetic (self-attention only: no mask, spatial or group norm in SDXL)."""

    def __init__(
        self,
        blur_sigma: float,
        do_cfg: bool,
        chunk: int = -1,
        sigma_factor: float = 1.0,
        mean: bool = False,
        grid: dict[int, tuple[int, int]] | None = None,
    ) -> None:
        self.grid = grid
        self.blur_sigma, self.do_cfg = blur_sigma, do_cfg
        self.inf_blur = blur_sigma > 9999.0 or mean
        self.chunk, self.sigma_factor = chunk, sigma_factor  # for the negative test only: what to get wrong

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        batch_size = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        height = width = math.isqrt(query.shape[2])
        if self.grid is not None:  # the official loop generalised to the true grid (the non-square test)
            height, width = self.grid[query.shape[2]]
        chunks = list(query.chunk(3 if self.do_cfg else 2))
        ptb = chunks[self.chunk]
        n = ptb.shape[0]
        ptb = ptb.permute(0, 1, 3, 2).reshape(n, attn.heads * head_dim, height, width)
        if not self.inf_blur and self.grid is not None:
            ptb = true_grid_blur(ptb, self.blur_sigma)
        elif not self.inf_blur:
            sigma = self.blur_sigma * self.sigma_factor
            ptb = official_blur(ptb, official_kernel_size(sigma), sigma)
        else:
            ptb = ptb.mean(dim=(-2, -1), keepdim=True).expand_as(ptb)
        chunks[self.chunk] = ptb.reshape(n, attn.heads, head_dim, height * width).permute(0, 1, 3, 2)
        query = torch.cat(chunks, dim=0)
        hidden_states = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@torch.no_grad()
def official_sample(pipe, noise, guidance_scale, blur_sigma, layers, index=None, **wrong) -> torch.Tensor:
    latent_h, latent_w = noise.shape[-2:]
    """The official ``__call__`` loop (its seg_applied_layers / seg_applied_layers_index, the pipeline's own
    scheduler, ``guidance_scale > 1`` = CFG), returning the final latents."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    do_cfg = guidance_scale > 1
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(STEPS)
    height, width = latent_h * pipe.vae_scale_factor, latent_w * pipe.vae_scale_factor
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        prompt=PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=do_cfg
    )
    time_ids = pipe._get_add_time_ids(
        (height, width), (0, 0), (height, width), dtype=embeds.dtype, text_encoder_projection_dim=pooled.shape[-1]
    )
    if do_cfg:
        embeds = torch.cat([negative, embeds, embeds])
        text = torch.cat([negative_pooled, pooled, pooled])
        time_ids = torch.cat([time_ids] * 3)
    else:
        embeds, text, time_ids = torch.cat([embeds] * 2), torch.cat([pooled] * 2), torch.cat([time_ids] * 2)
    groups = official_layers(pipe.unet)
    chosen = [groups[{"d": "down", "m": "mid", "u": "up"}[i[0]]][int(i[1:])] for i in index] if index else []
    if not index:
        chosen = [module for group in layers for module in groups[group]]
    latents = noise * scheduler.init_noise_sigma
    try:
        for t in scheduler.timesteps:
            for module in chosen:
                module.processor = OfficialSEGProcessor(blur_sigma, do_cfg, **wrong)
            model_input = scheduler.scale_model_input(torch.cat([latents] * (3 if do_cfg else 2)), t)
            out = pipe.unet(
                model_input,
                t,
                encoder_hidden_states=embeds,
                added_cond_kwargs={"text_embeds": text, "time_ids": time_ids},
                return_dict=False,
            )[0]
            if do_cfg:
                uncond, cond, ptb = out.chunk(3)
                eps = cond + (guidance_scale - 1.0) * (cond - uncond) + SEG_SCALE * (cond - ptb)
            else:
                cond, ptb = out.chunk(2)
                eps = cond + SEG_SCALE * (cond - ptb)
            latents = scheduler.step(eps, t, latents, return_dict=False)[0]
    finally:
        for module in chosen:
            module.processor = AttnProcessor2_0()
    return latents


# --- the setup ------------------------------------------------------------------------------------------


def strong_pipeline():
    """Tiny SDXL pipeline whose self-attention is peaked and loud: a wrong blur shows in the latents."""
    pipe = tiny_pipeline("sdxl", sample_size=LATENT)
    with torch.no_grad():
        for name, module in pipe.unet.named_modules():
            if name.endswith("attn1"):
                module.to_q.weight.mul_(3.0)  # ×9 on the attention logits: peaked weights
                module.to_k.weight.mul_(3.0)
                module.to_out[0].weight.mul_(4.0)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield strong_pipeline()
    torch.set_num_threads(threads)


def noise(height: int = LATENT, width: int = LATENT) -> torch.Tensor:
    return torch.randn(1, 4, height, width, generator=torch.Generator().manual_seed(3))


def ours(pipe, guidance_scale, blur_sigma, layers, size=(LATENT, LATENT)) -> torch.Tensor:
    return generate(
        pipe,
        PROMPT,
        height=size[0] * pipe.vae_scale_factor,
        width=size[1] * pipe.vae_scale_factor,
        sampler="euler",
        schedule="model",
        steps=STEPS,
        cfg_scale=guidance_scale,
        noise=noise(*size),
        seg_scale=SEG_SCALE,
        seg_blur_sigma=blur_sigma,
        seg_applied_layers=layers,
        output_type="latent",
        disable_progress=True,
    ).latents


def relative_error(a: torch.Tensor, reference: torch.Tensor) -> float:
    return float((a - reference).abs().max() / reference.abs().max())


def parity_error(pipe, guidance_scale, blur_sigma, layers) -> float:
    index = [n for n in layers if n not in ("down", "mid", "up")]
    reference = official_sample(pipe, noise(), guidance_scale, blur_sigma, layers, index=index or None)
    assert torch.isfinite(reference).all()
    return relative_error(ours(pipe, guidance_scale, blur_sigma, layers), reference)


CONFIGS = [(cfg, sigma, ("mid",)) for cfg in (1.0, 5.0) for sigma in (1.0, 10.0, 100.0, INFINITE)] + [
    (5.0, 1.0, ("down",)),
    (5.0, 1.0, ("up",)),
    (1.0, 10.0, ("down", "up")),
    (5.0, 1.0, ("u3",)),
    (1.0, INFINITE, ("d1", "m0")),
]


@pytest.mark.parametrize("guidance_scale,blur_sigma,layers", CONFIGS)
def test_generate_matches_the_official_loop(pipe, guidance_scale, blur_sigma, layers):
    assert parity_error(pipe, guidance_scale, blur_sigma, layers) <= TOLERANCE


@pytest.mark.parametrize("blur_sigma", [1.0, 100.0, INFINITE])
def test_non_square_latents_blur_on_the_true_grid(pipe, blur_sigma):
    """A 16×24 latent: self-attention on 8×12 tokens, blurred as 8 rows × 12 columns (the official code
    would take isqrt(96) = 9 and fail); compared with the official loop given the true grid."""
    grid = {8 * 12: (8, 12)}
    reference = official_sample(pipe, noise(16, 24), 5.0, blur_sigma, ["mid"], grid=grid)
    assert relative_error(ours(pipe, 5.0, blur_sigma, ("mid",), size=(16, 24)), reference) <= TOLERANCE
    if blur_sigma == 1.0:  # and the transposed grid is not what we compute
        transposed = official_sample(pipe, noise(16, 24), 5.0, blur_sigma, ["mid"], grid={96: (12, 8)})
        assert relative_error(ours(pipe, 5.0, blur_sigma, ("mid",), size=(16, 24)), transposed) > 30 * TOLERANCE


WRONG = ({"sigma_factor": 1.25}, {"chunk": 1}, {"mean": True})


def test_a_different_blur_misses_the_tolerance(pipe):
    """The comparison can fail: σ × 1.25, the wrong chunk blurred, the token mean for a finite σ (what
    diffusers' guider computes, see the README) or no SEG at all are far outside it."""
    reference = ours(pipe, 5.0, 1.0, ("mid",))
    for wrong in WRONG:
        official = official_sample(pipe, noise(), 5.0, 1.0, ["mid"], **wrong)
        assert relative_error(reference, official) > 30 * TOLERANCE, wrong
    wide = ours(pipe, 5.0, 100.0, ("mid",))  # even a wide finite blur is not the token mean
    assert relative_error(wide, official_sample(pipe, noise(), 5.0, 100.0, ["mid"], mean=True)) > 10 * TOLERANCE
    plain = generate(
        pipe, PROMPT, sampler="euler", schedule="model", steps=STEPS, cfg_scale=5.0, noise=noise(),
        output_type="latent", disable_progress=True,
    ).latents  # fmt: skip
    assert relative_error(plain, reference) > 30 * TOLERANCE


def print_table() -> None:
    torch.set_num_threads(1)
    pipe = strong_pipeline()
    print(f"T = {STEPS}, s_seg = {SEG_SCALE}, tiny SDXL-architecture pipeline, latent 16×16, Euler, float32 CPU")
    print("| guidance scale | seg_blur_sigma | layers | max relative error |")
    print("|---:|---:|---|---:|")
    for guidance_scale, blur_sigma, layers in CONFIGS:
        error = parity_error(pipe, guidance_scale, blur_sigma, layers)
        print(f"| {guidance_scale:g} | {blur_sigma:g} | {', '.join(layers)} | {error:.2e} |", flush=True)
    for blur_sigma in (1.0, 100.0, INFINITE):
        reference = official_sample(pipe, noise(16, 24), 5.0, blur_sigma, ["mid"], grid={96: (8, 12)})
        error = relative_error(ours(pipe, 5.0, blur_sigma, ("mid",), size=(16, 24)), reference)
        print(f"| 5 | {blur_sigma:g} | mid, latent 16×24 (8×12 tokens) | {error:.2e} |", flush=True)
    reference = ours(pipe, 5.0, 1.0, ("mid",))
    for wrong in WRONG:
        error = relative_error(reference, official_sample(pipe, noise(), 5.0, 1.0, ["mid"], **wrong))
        print(f"| 5 | 1 | mid, official with {wrong} | {error:.2e} (must fail) |")
    error = relative_error(
        ours(pipe, 5.0, 100.0, ("mid",)), official_sample(pipe, noise(), 5.0, 100.0, ["mid"], mean=True)
    )
    print(f"| 5 | 100 | mid, official with the token mean | {error:.2e} (must fail) |")


if __name__ == "__main__":
    print_table()
