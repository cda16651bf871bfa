"""Smoothed Energy Guidance: the blur, the layers, the settings, the rows, and the processors' state."""

from __future__ import annotations

import math

import pytest
import torch
from seg_reference import official_blur, official_kernel_size, official_layers, true_grid_blur
from torch import nn

from zigzag_kdiff import CallCounter, CFGDenoiser, sample_zigzag_euler
from zigzag_kdiff.seg import (
    LayerName,
    SEGOptions,
    SEGState,
    blur_grid,
    blur_kernel_size,
    blur_queries,
    combine,
    parse_layer_names,
    seg_branches,
    select_layers,
    self_attention_layers,
    token_grid,
)

# --- the blur ---------------------------------------------------------------------------------------------


def test_kernel_size_is_the_official_one():
    assert [blur_kernel_size(s) for s in (0.1, 0.5, 1.0, 1.1, 4.0)] == [1, 3, 7, 7, 25]
    assert blur_kernel_size(10.0, 8) == 9 and blur_kernel_size(10.0, 7) == 7  # cap: side + 1 if even, else side
    assert blur_kernel_size(1.0, 32) == 7


@pytest.mark.parametrize("side", [2, 3, 4, 7, 8, 16])
@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.5, 10.0, 100.0, 9999.0])
def test_separable_blur_equals_the_official_2d_blur_on_square_grids(side, sigma):
    img = torch.randn(2, 5, side, side, generator=torch.Generator().manual_seed(side))
    assert torch.allclose(
        blur_grid(img, sigma), official_blur(img, official_kernel_size(sigma), sigma), atol=1e-6, rtol=1e-5
    )


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0, 100.0])
def test_non_square_grid_blurs_on_the_true_grid(sigma):
    """8×12 tokens: the blur runs on 8 rows × 12 columns, with the kernel capped per axis."""
    img = torch.randn(2, 6, 8, 12, generator=torch.Generator().manual_seed(0))
    queries = img.flatten(2).transpose(1, 2)  # [batch, 96 tokens, channels], row-major as diffusers flattens
    blurred = blur_queries(queries, 8, 12, sigma)
    expected = true_grid_blur(img, sigma).flatten(2).transpose(1, 2)
    assert torch.allclose(blurred, expected, atol=1e-6)
    # the wrong (transposed) grid gives something else
    assert not torch.allclose(blur_queries(queries, 12, 8, sigma), expected, atol=1e-3)


def test_non_square_rows_stay_apart_along_the_untouched_axis():
    """A field that varies only along the width stays constant along the height after the blur."""
    columns = torch.linspace(-1, 1, 12).view(1, 1, 1, 12).expand(1, 3, 8, 12).contiguous()
    out = blur_queries(columns.flatten(2).transpose(1, 2), 8, 12, 2.0).transpose(1, 2).reshape(1, 3, 8, 12)
    assert torch.allclose(out, out[:, :, :1].expand_as(out), atol=1e-6)
    assert not torch.allclose(out, columns, atol=1e-3)


@pytest.mark.parametrize("sigma", [10000.0, 9999999.0, math.inf])
def test_infinite_blur_is_the_token_mean(sigma):
    queries = torch.randn(3, 96, 4, generator=torch.Generator().manual_seed(1))
    expected = queries.mean(dim=1, keepdim=True).expand_as(queries)
    assert torch.allclose(blur_queries(queries, 8, 12, sigma), expected, atol=1e-7)
    # 9999 itself is a (wide) Gaussian, not the mean (the official threshold is exclusive)
    assert not torch.allclose(blur_queries(queries, 8, 12, 9999.0), expected, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_blur_is_computed_in_float32(dtype):
    queries = torch.randn(1, 64, 8, generator=torch.Generator().manual_seed(2)) * 30
    out = blur_queries(queries.to(dtype), 8, 8, 1.0)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert torch.allclose(out.float(), blur_queries(queries.to(dtype).float(), 8, 8, 1.0), atol=0.3)


def test_token_grid_follows_the_unet_levels():
    assert token_grid(16 * 24, 16, 24) == (16, 24)
    assert token_grid(8 * 12, 16, 24) == (8, 12)
    assert token_grid(4 * 6, 16, 24) == (4, 6)
    assert token_grid(3 * 2, 5, 3) == (3, 2)  # ceil halving of odd sides
    with pytest.raises(ValueError, match="no level"):
        token_grid(50, 16, 24)


# --- layers -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unets():
    pytest.importorskip("diffusers")
    from zigzag_kdiff.models import tiny_unet

    return {"sd": tiny_unet(), "sdxl": tiny_unet(cross_attention_dim=64, sdxl=True, text_embeds_dim=32)}


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_layer_count_is_the_official_one(unets, kind):
    unet = unets[kind]
    ours = self_attention_layers(unet.named_modules())
    modules = dict(unet.named_modules())
    official = official_layers(unet)
    assert {g: [modules[n] for n in names] for g, names in ours.items()} == official
    assert len(ours["mid"]) >= 1 and len(ours["up"]) > len(ours["down"])


def test_layer_selection_by_group_and_index(unets):
    unet = unets["sdxl"]
    groups = self_attention_layers(unet.named_modules())
    assert select_layers(unet.named_modules(), ["mid"]) == groups["mid"]
    assert select_layers(unet.named_modules(), "d1,u0") == [groups["down"][1], groups["up"][0]]
    assert select_layers(unet.named_modules(), ["up", "u0"]) == groups["up"]  # duplicates once, model order
    assert parse_layer_names(["M0", " up "]) == (LayerName("mid", 0), LayerName("up"))
    with pytest.raises(ValueError, match=r"seg_applied_layers .*unknown layer name 'middle'.*'down', 'mid', 'up'"):
        select_layers(unet.named_modules(), ["middle"])
    count = len(groups["up"])
    with pytest.raises(ValueError, match=rf"seg_applied_layers names u{count}, which does not exist.*{count} up"):
        select_layers(unet.named_modules(), [f"u{count}"])
    with pytest.raises(ValueError, match="seg_applied_layers must be a non-empty list"):
        parse_layer_names([])


# --- settings -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options,match",
    [
        ({"seg_scale": -1.0}, r"seg_scale must be a finite number >= 0"),
        ({"seg_scale": math.nan}, r"seg_scale must be a finite number >= 0"),
        ({"inversion_seg_scale": -0.5}, r"inversion_seg_scale must be a finite number >= 0"),
        ({"seg_blur_sigma": 0.0}, r"seg_blur_sigma must be > 0 \(allowed: 0 < seg_blur_sigma <= inf"),
        ({"seg_blur_sigma": -2.0}, r"seg_blur_sigma must be > 0"),
        ({"seg_applied_layers": ("mid", "x3")}, r"seg_applied_layers has an unknown layer name 'x3'"),
        ({"seg_interval": (2.0, 1.0)}, r"seg_interval must have sigma_low <= sigma_high \(allowed: 0 <= sigma_low"),
        ({"seg_interval": (-1.0, 1.0)}, r"seg_interval must be \(sigma_low, sigma_high\) with 0 <= sigma_low"),
    ],
)
def test_bad_options_name_the_parameter_and_the_allowed_values(options, match):
    with pytest.raises(ValueError, match=match):
        SEGOptions(**options)


def test_options_defaults_are_the_official_ones():
    options = SEGOptions()
    assert (options.seg_scale, options.seg_blur_sigma, options.seg_applied_layers) == (3.0, 9999999.0, ("mid",))
    interval = SEGOptions(seg_interval=(0.5, 3.0)).seg_interval
    assert interval.contains(0.5) and interval.contains(3.0) and not interval.contains(3.01)
    assert SEGOptions(seg_interval=(0.5, 3.0)).scale_at(4.0) == 0.0


# --- the combination and the rows ---------------------------------------------------------------------------


def test_branches_for_every_combination():
    assert seg_branches(5.0, 3.0) == ("uncond", "cond", "cond_blur")
    assert seg_branches(1.0, 3.0) == ("cond", "cond_blur")
    assert seg_branches(0.0, 3.0) == ("uncond", "cond", "cond_blur")
    assert seg_branches(5.0, 0.0) == ("uncond", "cond")
    assert seg_branches(1.0, 0.0) == ("cond",)
    assert seg_branches(0.0, 0.0) == ("uncond",)


def test_combination_is_the_official_one():
    gen = torch.Generator().manual_seed(0)
    u, c, b = (torch.randn(4, generator=gen) for _ in range(3))
    # official, with CFG: ε_c + (w − 1)(ε_c − ε_u) + s(ε_c − ε_ptb); without: ε_c + s(ε_c − ε_ptb)
    assert torch.allclose(combine(u, c, b, 5.0, 3.0), c + 4.0 * (c - u) + 3.0 * (c - b), atol=1e-6)
    assert torch.allclose(combine(None, c, b, 1.0, 3.0), c + 3.0 * (c - b), atol=1e-6)


class BlurProbe(nn.Module):
    """A denoiser whose output shows which rows were marked blurred (adds 1 there); records every call."""

    def __init__(self, state: SEGState) -> None:
        super().__init__()
        self.state = state
        self.log: list[tuple[int, slice | None]] = []

    def forward(self, x, sigma, cond):
        self.log.append((x.shape[0], self.state.blur_rows))
        out = x * 0.5 + cond.view(-1, 1)
        if self.state.blur_rows is not None:
            out = out.clone()
            out[self.state.blur_rows] += 1.0
        return out


def probe(seg_interval=None, guidance_interval=None):
    state = SEGState()
    inner = BlurProbe(state)
    counter = CallCounter(inner)
    return CFGDenoiser(counter, guidance_interval, seg_state=state, seg_interval=seg_interval), counter, inner


ARGS = {"cond": torch.tensor([1.0, 2.0]), "uncond": torch.tensor([0.0, 0.0])}


@pytest.mark.parametrize(
    "cfg,seg,rows,blurred",
    [
        (5.0, 3.0, 6, slice(4, 6)),
        (1.0, 3.0, 4, slice(2, 4)),
        (0.0, 3.0, 6, slice(4, 6)),
        (5.0, 0.0, 4, None),
        (1.0, 0.0, 2, None),
        (0.0, 0.0, 2, None),
    ],
)
def test_rows_for_every_branch_combination_in_one_call(cfg, seg, rows, blurred):
    model, counter, inner = probe()
    x = torch.ones(2, 3)
    out = model(x, torch.full((2,), 2.0), **ARGS, cond_scale=cfg, seg_scale=seg)
    assert (counter.calls, counter.rows) == (1, rows)
    assert inner.log == [(rows, blurred)]
    assert model.seg_state.blur_rows is None  # reset after the call
    # D_c^blur = D_c + 1 in the probe, so SEG adds −s_seg to the CFG result
    cfg_only = x * 0.5 + ARGS["uncond"].view(-1, 1) + cfg * (ARGS["cond"] - ARGS["uncond"]).view(-1, 1)
    assert torch.allclose(out, cfg_only - seg)


def test_uncond_of_another_token_length_is_its_own_call_and_cond_blur_stay_batched():
    state = SEGState()
    calls = []

    def inner(x, sigma, cond):
        calls.append((x.shape[0], cond.shape[1], state.blur_rows))
        return x

    model = CFGDenoiser(inner, seg_state=state)
    cond, uncond = torch.zeros(2, 77, 4), torch.zeros(2, 154, 4)
    model(torch.ones(2, 3), torch.ones(2), cond, uncond, cond_scale=5.0, seg_scale=3.0)
    assert calls == [(2, 154, None), (4, 77, slice(2, 4))]


def test_seg_scale_zero_is_bit_identical_and_adds_no_rows():
    model, counter, inner = probe()
    plain = CFGDenoiser(CallCounter(BlurProbe(SEGState())))
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((2,), 3.0)
    assert torch.equal(model(x, sigma, **ARGS, cond_scale=5.0, seg_scale=0.0), plain(x, sigma, **ARGS, cond_scale=5.0))
    assert counter.rows == 4


def test_seg_interval_decides_per_call_by_its_sigma():
    model, counter, _ = probe(seg_interval=(1.0, 2.0))
    x = torch.ones(2, 3)
    for sigma, rows in [(0.5, 4), (1.0, 6), (2.0, 6), (2.5, 4)]:
        counter.reset()
        model(x, torch.full((2,), sigma), **ARGS, cond_scale=5.0, seg_scale=3.0)
        assert counter.rows == rows, sigma
    # outside the guidance interval too: [cond, cond_blur] inside the SEG interval, [cond] outside both
    model, counter, _ = probe(seg_interval=(1.0, 2.0), guidance_interval=(5.0, 10.0))
    model(x, torch.full((2,), 1.5), **ARGS, cond_scale=5.0, seg_scale=3.0)
    model(x, torch.full((2,), 0.5), **ARGS, cond_scale=5.0, seg_scale=3.0)
    assert counter.rows == 4 + 2


def test_wrapper_rejects_bad_seg_scales_before_calling_the_model():
    model, counter, _ = probe()
    for kwargs, match in [({"seg_scale": -1.0}, "seg_scale must be"), ({"inversion_seg_scale": -1.0}, "inversion_seg")]:
        with pytest.raises(ValueError, match=match):
            model(torch.ones(2, 3), torch.ones(2), **ARGS, cond_scale=5.0, **kwargs)
    with pytest.raises(ValueError, match="seg_scale > 0 needs a seg_state"):
        CFGDenoiser(counter)(torch.ones(2, 3), torch.ones(2), **ARGS, cond_scale=5.0, seg_scale=3.0)
    assert counter.calls == 0


# --- with Z-Sampling ----------------------------------------------------------------------------------------


def zigzag_rows(steps=4, **extra):
    model, counter, inner = probe(seg_interval=extra.pop("seg_interval", None))
    sigmas = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.0])[: steps + 1]
    args = {**ARGS, "cond_scale": 5.0, "seg_scale": 3.0, **extra}
    sample_zigzag_euler(model, torch.ones(2, 3) * 8, sigmas, args, disable=True)
    return counter, inner


def test_zigzag_step_with_seg_is_3_plus_1_plus_3_rows():
    counter, inner = zigzag_rows()
    # 4 steps, 3 zigzag steps: denoise [u, c, c_blur] = 3 rows, invert at γ₂ = 0 without SEG = 1, denoise 3
    assert counter.calls == 4 + 2 * 3
    assert counter.rows == 2 * (4 * 3 + 3 * (1 + 3))
    inversions = [entry for entry in inner.log if entry[0] == 2]
    assert len(inversions) == 3 and all(rows is None for _, rows in inversions)


def test_seg_in_inversion_calls_is_an_option():
    counter, inner = zigzag_rows(inversion_seg_scale=3.0)
    # γ₂ = 0 with SEG: D_u + 3·(D_c − D_c^blur) needs [u, c, c_blur] too
    assert counter.rows == 2 * (4 * 3 + 3 * (3 + 3))
    assert all(rows is not None for _, rows in inner.log)


def test_zigzag_step_partly_inside_the_seg_interval():
    """The SEG interval acts per call by its σ: step 1 (σ 4 → 2) denoises at σ = 4, outside [1, 2]: no blurred
    row; its inversion at σ = 2 is without SEG (default) anyway. Steps 2 and 3 denoise at σ = 2 and 1: SEG."""
    counter, inner = zigzag_rows(seg_interval=(1.0, 2.0))
    denoise_rows = [rows for rows, _ in inner.log if rows != 2]
    # rows per image, call by call (σ: rows): 8: 2, inv 1, 8: 2 | 4: 2, inv 1, 4: 2 | 2: 3, inv 1, 2: 3 | 1: 3
    assert counter.rows == 2 * (2 + 1 + 2 + 2 + 1 + 2 + 3 + 1 + 3 + 3)
    assert denoise_rows.count(6) == 3
