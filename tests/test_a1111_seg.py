"""Smoothed Energy Guidance in the A1111/Forge extension (``extensions/sd-webui-zigzag/seg_webui.py``).

No webui runs here: the hosts are played by contract stand-ins with the exact signatures read in
A1111 1.10.1 (``modules/script_callbacks.py``: ``CFGDenoiserParams``, ``CFGDenoisedParams``,
``AfterCFGCallbackParams``; ``modules/sd_samplers_cfg_denoiser.py``: ``CFGDenoiser.forward``'s row layout,
batching modes and combination; ``modules/prompt_parser.py``: ``DictWithShape``) and in Forge
(``backend/sampling/sampling_function.py``'s post-CFG arguments). The UNet is a small torch module with
ldm's module names (``input_blocks.1.1.transformer_blocks.0.attn1.to_q``), run for real.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zigzag_kdiff import CFGDenoiser
from zigzag_kdiff.seg import SEGOptions, SEGState, blur_queries, combine

EXTENSION_DIR = Path(__file__).resolve().parents[1] / "extensions" / "sd-webui-zigzag"


def _load(name: str) -> types.ModuleType:
    """Import a module or package of the extension folder by path, as the glue scripts do."""
    path = EXTENSION_DIR / name
    if path.is_dir():
        spec = importlib.util.spec_from_file_location(
            name, path / "__init__.py", submodule_search_locations=[str(path)]
        )
    else:
        spec = importlib.util.spec_from_file_location(name, EXTENSION_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


sg = _load("seg_webui")
if "zigzag_webui" not in sys.modules:
    _load("zigzag_webui")
from zigzag_webui import forge as zforge  # noqa: E402
from zigzag_webui import sampling as zsamp  # noqa: E402

# --- host stand-ins (signatures as in A1111 1.10.1) ------------------------------------------------------


class CFGDenoiserParams:
    def __init__(
        self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None
    ):
        self.x, self.image_cond, self.sigma = x, image_cond, sigma
        self.sampling_step, self.total_sampling_steps = sampling_step, total_sampling_steps
        self.text_cond, self.text_uncond, self.denoiser = text_cond, text_uncond, denoiser


class CFGDenoisedParams:
    def __init__(self, x, sampling_step, total_sampling_steps, inner_model):
        self.x, self.sampling_step, self.total_sampling_steps, self.inner_model = (
            x,
            sampling_step,
            total_sampling_steps,
            inner_model,
        )


class AfterCFGCallbackParams:
    def __init__(self, x, sampling_step, total_sampling_steps):
        self.x, self.sampling_step, self.total_sampling_steps = x, sampling_step, total_sampling_steps


class DictWithShape(dict):
    def __init__(self, x, shape=None):
        super().__init__()
        self.update(x)

    @property
    def shape(self):
        return self["crossattn"].shape


def test_stand_ins_have_the_hosts_signatures():
    assert str(inspect.signature(CFGDenoiserParams)) == (
        "(x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None)"
    )
    assert str(inspect.signature(CFGDenoisedParams)) == "(x, sampling_step, total_sampling_steps, inner_model)"
    assert str(inspect.signature(AfterCFGCallbackParams)) == "(x, sampling_step, total_sampling_steps)"


# --- a small UNet with ldm's module names ----------------------------------------------------------------


class Attention(nn.Module):
    def __init__(self, dim: int, context_dim: int | None = None, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim))

    def forward(self, x, context=None):
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        b, n, d = q.shape
        q, k, v = (t.reshape(b, -1, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        return self.to_out(out)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, context_dim: int) -> None:
        super().__init__()
        self.attn1, self.attn2 = Attention(dim), Attention(dim, context_dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, context):
        x = x + self.attn1(self.norm1(x))
        return x + self.attn2(self.norm2(x), context)


class SpatialTransformer(nn.Module):
    def __init__(self, dim: int, context_dim: int, depth: int = 1) -> None:
        super().__init__()
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(dim, context_dim) for _ in range(depth)])

    def forward(self, x, context):
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return x + tokens.transpose(1, 2).reshape(b, c, h, w)


class Sequence(nn.ModuleList):
    def forward(self, x, context, size=None):
        for layer in self:
            if isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif layer == "up":
                x = F.interpolate(x, size=size)
            else:
                x = layer(x)
        return x


class TinyLDMUNet(nn.Module):
    """input_blocks 1, 3 / middle_block / output_blocks 0, 1, 2 carry self-attention (ldm's names)."""

    def __init__(self, dim: int = 16, context_dim: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)

        def conv(stride: int = 1) -> nn.Conv2d:
            return nn.Conv2d(dim, dim, 3, stride=stride, padding=1)

        st = lambda depth=1: SpatialTransformer(dim, context_dim, depth)  # noqa: E731
        self.input_blocks = nn.ModuleList(
            [
                Sequence([nn.Conv2d(4, dim, 3, padding=1)]),
                Sequence([conv(), st()]),
                Sequence([conv(2)]),
                Sequence([conv(), st(2)]),
            ]
        )
        self.middle_block = Sequence([conv(), st(), conv()])
        self.output_blocks = nn.ModuleList(
            [Sequence([conv(), st()]), Sequence([conv(), st()]), Sequence([conv(), st()])]
        )
        self.time = nn.Linear(1, dim)
        self.out = nn.Conv2d(dim, 4, 3, padding=1)
        with torch.no_grad():
            for name, parameter in self.named_parameters():
                if ".to_q." in name or ".to_k." in name:
                    parameter.mul_(4.0)  # peaked self-attention, so blurring the queries shows

    def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
        size = x.shape[-2:]
        h = x
        for block in self.input_blocks:
            h = block(h, context)
        h = self.middle_block(h + self.time(timesteps[:, None].float().log1p())[:, :, None, None], context)
        h = self.output_blocks[0](h, context)
        h = F.interpolate(h, size=size)
        h = self.output_blocks[2](self.output_blocks[1](h, context), context)
        return self.out(h)


class CompVisDenoiser(nn.Module):
    """The k-diffusion wrapper A1111 calls: ``inner_model(x, sigma, cond={"c_crossattn": [c], "c_concat": [i]})``."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.calls: list[int] = []

    def forward(self, x, sigma, cond):
        self.calls.append(x.shape[0])
        context = cond["c_crossattn"][0]
        context = context["crossattn"] if isinstance(context, dict) else context
        c_in = 1 / (sigma**2 + 1) ** 0.5
        return x - sigma[:, None, None, None] * self.unet(x * c_in[:, None, None, None], sigma, context=context)


class HostDenoiser:
    """A1111's ``CFGDenoiser`` as far as the callbacks see it (``params.denoiser``)."""

    mask = nmask = init_latent = None
    mask_before_denoising = False


class Callbacks:
    def __init__(self, run=None) -> None:
        self.run = run

    def __call__(self, method: str, params) -> None:
        if self.run is not None:
            getattr(self.run, method)(params)


def a1111_forward(
    inner,
    x,
    sigma,
    uncond,
    cond,
    cond_scale,
    image_cond,
    callbacks,
    *,
    denoiser=None,
    batch_cond_uncond=True,
    skip_uncond=False,
    lengths_differ=False,
):
    """The steps of A1111 1.10.1 ``CFGDenoiser.forward`` for one cond per image, not an edit model."""
    batch = x.shape[0]
    params = CFGDenoiserParams(
        torch.cat([x, x]),
        torch.cat([image_cond, image_cond]),
        torch.cat([sigma, sigma]),
        0,
        6,
        cond,
        uncond,
        denoiser or HostDenoiser(),
    )
    callbacks("on_cfg_denoiser", params)
    x_in, image_cond_in, sigma_in, tensor, uncond = (
        params.x,
        params.image_cond,
        params.sigma,
        params.text_cond,
        params.text_uncond,
    )
    if skip_uncond:
        x_in, sigma_in = x_in[:-batch], sigma_in[:-batch]

    def cond_dict(c, i):
        return {"c_crossattn": [c], "c_concat": [i]}

    if not lengths_differ:
        cond_in = tensor if skip_uncond else torch.cat([tensor, uncond])
        if batch_cond_uncond:
            x_out = inner(x_in, sigma_in, cond=cond_dict(cond_in, image_cond_in))
        else:
            x_out = torch.zeros_like(x_in)
            for a in range(0, x_out.shape[0], batch):
                x_out[a : a + batch] = inner(
                    x_in[a : a + batch],
                    sigma_in[a : a + batch],
                    cond=cond_dict(cond_in[a : a + batch], image_cond_in[a : a + batch]),
                )
    else:
        x_out = torch.zeros_like(x_in)
        step = batch * 2 if batch_cond_uncond else batch
        for a in range(0, tensor.shape[0], step):
            b = min(a + step, tensor.shape[0])
            x_out[a:b] = inner(x_in[a:b], sigma_in[a:b], cond=cond_dict(tensor[a:b], image_cond_in[a:b]))
        x_out[-batch:] = inner(x_in[-batch:], sigma_in[-batch:], cond=cond_dict(uncond, image_cond_in[-batch:]))
    if skip_uncond:
        x_out = torch.cat([x_out, x_out[:batch]])
    callbacks("on_cfg_denoised", CFGDenoisedParams(x_out, 0, 6, inner))
    denoised_uncond = x_out[-batch:]
    denoised = torch.clone(denoised_uncond)
    scale = 1.0 if skip_uncond else cond_scale
    for i in range(batch):
        denoised[i] += (x_out[i] - denoised_uncond[i]) * (1.0 * scale)
    host = params.denoiser
    if getattr(host, "mask", None) is not None and not host.mask_before_denoising:  # img2img / inpainting blend
        denoised = denoised * host.nmask + host.init_latent * host.mask
    after = AfterCFGCallbackParams(denoised, 0, 6)
    callbacks("on_cfg_after_cfg", after)
    return after.x, x_out


@pytest.fixture(scope="module")
def unet():
    return TinyLDMUNet()


def inputs(batch=1, height=8, width=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, height, width, generator=g) * 3
    sigma = torch.full((batch,), 3.0)
    cond, uncond = torch.randn(batch, 5, 8, generator=g), torch.randn(batch, 5, 8, generator=g)
    return x, sigma, uncond, cond, torch.zeros(batch, 5, 1, 1)


def run_for(unet, **settings):
    args = sg.SEGArgs(enabled=True, **settings)
    return sg.A1111SEG(args.options(), unet, args.seg_applied_layers)


# --- A1111: rows, combination, the library's numbers -------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2])
def test_blurred_rows_ride_in_the_same_batch_and_the_combination_is_the_librarys(unet, batch):
    inner = CompVisDenoiser(unet)
    x, sigma, uncond, cond, image_cond = inputs(batch)
    plain, _ = a1111_forward(inner, x, sigma, uncond, cond, 5.0, image_cond, Callbacks())
    assert inner.calls == [2 * batch]
    run = run_for(unet, seg_applied_layers="d1,m0,u2")
    inner.calls.clear()
    guided, x_out = a1111_forward(inner, x, sigma, uncond, cond, 5.0, image_cond, Callbacks(run))
    assert inner.calls == [3 * batch] and run.rows_per_call == [3 * batch]  # [cond, cond_blur, uncond]
    assert run.blurred_layer_calls == 3 and not run.handles  # 3 layers blurred once; hooks gone after the call
    cond_d, blur_d, uncond_d = x_out[:batch], x_out[batch : 2 * batch], x_out[2 * batch :]
    assert torch.equal(guided, combine(uncond_d, cond_d, blur_d, 5.0, 3.0))  # bit for bit
    assert (guided - plain).abs().max() > 1e-2
    # the uncond and cond rows are what the host computes without SEG
    torch.testing.assert_close(combine(uncond_d, cond_d, cond_d, 5.0, 0.0), plain, atol=1e-5, rtol=1e-5)


def test_same_numbers_as_zigzag_kdiff_cfg_denoiser(unet):
    """The library's CFGDenoiser + SEGState ([uncond, cond, cond_blur], its own hook) on the same UNet and inputs."""
    x, sigma, uncond, cond, image_cond = inputs(2, 6, 10)
    run = run_for(unet, seg_blur_sigma="2", seg_applied_layers="mid,u0")
    host, _ = a1111_forward(CompVisDenoiser(unet), x, sigma, uncond, cond, 5.0, image_cond, Callbacks(run))
    state = SEGState(2.0)
    modules = dict(unet.named_modules())
    names = ["middle_block.1.transformer_blocks.0.attn1", "output_blocks.0.1.transformer_blocks.0.attn1"]

    def hook(module, args, output):
        if state.blur_rows is None:
            return None
        rows = state.blur_rows
        h, w = state.grid(output.shape[1])
        return torch.cat([output[: rows.start], blur_queries(output[rows], h, w, 2.0), output[rows.stop :]])

    handles = [modules[n].to_q.register_forward_hook(hook) for n in names]
    try:
        state.latent_size = (6, 10)
        inner = CompVisDenoiser(unet)
        library = CFGDenoiser(
            lambda x, s, cond: inner(x, s, cond={"c_crossattn": [cond], "c_concat": [None]}), seg_state=state
        )
        expected = library(x, sigma, cond=cond, uncond=uncond, cond_scale=5.0, seg_scale=3.0)
    finally:
        for handle in handles:
            handle.remove()
    assert [n for n, _ in run.layers] == names
    # bit for bit on one thread; with several, the two batch layouts ([cond, cond_blur, uncond] against
    # [uncond, cond, cond_blur]) round differently in the kernels (seen: 1.4e-4 on values up to 30)
    plain = library(x, sigma, cond=cond, uncond=uncond, cond_scale=5.0)
    difference, scale = (host - expected).abs().max(), expected.abs().max()
    assert difference <= 1e-5 * scale and (expected - plain).abs().max() > 1000 * difference


@pytest.mark.parametrize("mode", ["one_call_per_chunk", "lengths_differ", "lengths_differ_unbatched", "skip_uncond"])
def test_host_batching_modes_blur_exactly_the_blurred_rows(unet, mode):
    x, sigma, uncond, cond, image_cond = inputs(2)
    options = {
        "one_call_per_chunk": dict(batch_cond_uncond=False),
        "lengths_differ": dict(lengths_differ=True),
        "lengths_differ_unbatched": dict(lengths_differ=True, batch_cond_uncond=False),
        "skip_uncond": dict(skip_uncond=True),
    }[mode]
    reference_run = run_for(unet)
    reference, ref_out = a1111_forward(
        CompVisDenoiser(unet), x, sigma, uncond, cond, 5.0, image_cond, Callbacks(reference_run)
    )
    run = run_for(unet)
    inner = CompVisDenoiser(unet)
    guided, x_out = a1111_forward(inner, x, sigma, uncond, cond, 5.0, image_cond, Callbacks(run), **options)
    assert sum(inner.calls) == (4 if mode == "skip_uncond" else 6)
    torch.testing.assert_close(x_out[2:4], ref_out[2:4], atol=1e-5, rtol=1e-5)  # the blurred rows, wherever computed
    if mode == "skip_uncond":
        torch.testing.assert_close(guided, combine(None, ref_out[:2], ref_out[2:4], 1.0, 3.0), atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(guided, reference, atol=1e-5, rtol=1e-5)


def test_inpainting_keeps_the_masked_out_region(unet):
    """A1111 blends ``init·mask`` back before ``cfg_after_cfg``: the SEG term must not touch the kept region."""
    x, sigma, uncond, cond, image_cond = inputs(1, 8, 8)
    host = HostDenoiser()
    host.mask = torch.zeros(1, 1, 8, 8)
    host.mask[..., 4:] = 1.0  # keep the right half
    host.nmask, host.init_latent = 1 - host.mask, torch.randn(1, 4, 8, 8)
    guided, x_out = a1111_forward(
        CompVisDenoiser(unet), x, sigma, uncond, cond, 5.0, image_cond, Callbacks(run_for(unet)), denoiser=host
    )
    assert torch.equal(guided[..., 4:], host.init_latent[..., 4:])
    unblended = combine(x_out[2:], x_out[:1], x_out[1:2], 5.0, 3.0)
    torch.testing.assert_close(guided[..., :4], unblended[..., :4])
    host.mask_before_denoising = True  # then the host blends the input, not the output: the term is added as is
    guided, x_out = a1111_forward(
        CompVisDenoiser(unet), x, sigma, uncond, cond, 5.0, image_cond, Callbacks(run_for(unet)), denoiser=host
    )
    assert torch.equal(guided, combine(x_out[2:], x_out[:1], x_out[1:2], 5.0, 3.0))


def test_refiner_switch_moves_the_hooks_to_the_new_unet(unet):
    x, sigma, uncond, cond, image_cond = inputs()
    refiner, small = TinyLDMUNet(), nn.Module()
    current = {"unet": unet}
    notes = []
    run = sg.A1111SEG(
        SEGOptions(seg_applied_layers=("d2",)), unet, notify=notes.append, current_unet=lambda: current["unet"]
    )
    a1111_forward(CompVisDenoiser(unet), x, sigma, uncond, cond, 5.0, image_cond, Callbacks(run))
    current["unet"] = refiner
    inner = CompVisDenoiser(refiner)
    a1111_forward(inner, x, sigma, uncond, cond, 5.0, image_cond, Callbacks(run))
    assert inner.calls == [3] and run.layers[0][1] is dict(refiner.named_modules())[run.layers[0][0]]
    assert run.blurred_layer_calls == 2
    current["unet"] = small  # a model without that layer: SEG off, noted once, no rows added
    inner = CompVisDenoiser(refiner)
    a1111_forward(inner, x, sigma, uncond, cond, 5.0, image_cond, Callbacks(run))
    assert inner.calls == [2] and len(notes) == 1 and "switched model" in notes[0]


def test_off_outside_the_interval_and_in_inversion_calls(unet):
    x, sigma, uncond, cond, image_cond = inputs()
    inner = CompVisDenoiser(unet)
    plain, _ = a1111_forward(inner, x, sigma, uncond, cond, 5.0, image_cond, Callbacks())
    outside = run_for(unet, sigma_low=0.5, sigma_high=2.0)  # σ = 3 is outside
    inner.calls.clear()
    assert torch.equal(a1111_forward(inner, x, sigma, uncond, cond, 5.0, image_cond, Callbacks(outside))[0], plain)
    inside = run_for(unet, sigma_low=2.0)  # σ_high 0: no upper limit
    a1111_forward(inner, x, sigma, uncond, cond, 5.0, image_cond, Callbacks(inside))
    assert inner.calls == [2, 3]
    assert sg.INVERSION_ATTR == zsamp.INVERSION_ATTR


def test_zigzag_inversion_calls_run_without_seg(unet):
    """Through zigzag_webui.HostGuidedModel: denoising calls carry blurred rows, inversion calls none."""
    x, sigma, uncond, cond, image_cond = inputs()
    inner = CompVisDenoiser(unet)
    run = run_for(unet)

    class Host(HostDenoiser, nn.Module):
        def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
            return a1111_forward(inner, x, sigma, uncond, cond, cond_scale, image_cond, Callbacks(run), denoiser=self)[
                0
            ]

    host = Host()
    guided = zsamp.HostGuidedModel(host, 5.0, None)
    extra = {"cond": cond, "uncond": uncond, "cond_scale": 5.0, "s_min_uncond": 0.0, "image_cond": image_cond}
    guided(x, sigma, **extra)
    guided.call_at_scale(guided, x, sigma, extra, 0.0)
    assert inner.calls == [3, 2] and not getattr(host, sg.INVERSION_ATTR)

    class Failing(HostDenoiser, nn.Module):
        def forward(self, *args, **kwargs):
            assert getattr(self, sg.INVERSION_ATTR)
            raise RuntimeError("inside the inversion call")

    failing = zsamp.HostGuidedModel(Failing(), 5.0, None)
    with pytest.raises(RuntimeError, match="inside the inversion call"):
        failing.call_at_scale(failing, x, sigma, extra, 0.0)
    assert getattr(failing.host_model, sg.INVERSION_ATTR) is False


def test_hooks_are_removed_after_each_call_and_after_an_error(unet):
    x, sigma, uncond, cond, image_cond = inputs()
    to_q = dict(unet.named_modules())["middle_block.1.transformer_blocks.0.attn1"].to_q
    run = run_for(unet)

    class Broken(CompVisDenoiser):
        def forward(self, x, sigma, cond):
            super().forward(x, sigma, cond)
            raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        a1111_forward(Broken(unet), x, sigma, uncond, cond, 5.0, image_cond, Callbacks(run))
    assert to_q._forward_hooks and unet._forward_pre_hooks  # left by the failed call ...
    run.close()  # ... until the script's process()/postprocess() (or the next call's cfg_denoiser)
    assert not to_q._forward_hooks and not unet._forward_pre_hooks and run.state.blur_rows is None
    plain, _ = a1111_forward(CompVisDenoiser(unet), x, sigma, uncond, cond, 5.0, image_cond, Callbacks())
    again, _ = a1111_forward(CompVisDenoiser(unet), x, sigma, uncond, cond, 5.0, image_cond, Callbacks())
    assert torch.equal(plain, again)


def test_sdxl_dict_conds_keep_their_type_and_and_prompts_are_skipped(unet):
    x, sigma, uncond, cond, image_cond = inputs()
    params = CFGDenoiserParams(
        torch.cat([x, x]),
        torch.cat([image_cond, image_cond]),
        torch.cat([sigma, sigma]),
        0,
        6,
        DictWithShape({"crossattn": cond, "vector": torch.ones(1, 3)}),
        DictWithShape({"crossattn": uncond, "vector": torch.zeros(1, 3)}),
        HostDenoiser(),
    )
    run = run_for(unet)
    run.on_cfg_denoiser(params)
    assert isinstance(params.text_cond, DictWithShape) and params.text_cond.shape[0] == 2
    assert params.x.shape[0] == 3 and torch.equal(params.text_cond["vector"], torch.ones(2, 3))
    run.close()
    notes = []
    and_prompt = CFGDenoiserParams(
        torch.cat([x, x, x]),
        torch.cat([image_cond] * 3),
        torch.cat([sigma] * 3),
        0,
        6,
        torch.cat([cond, cond]),
        uncond,
        HostDenoiser(),
    )
    run = sg.A1111SEG(SEGOptions(), unet, notify=notes.append)
    run.on_cfg_denoiser(and_prompt)
    run.on_cfg_denoiser(and_prompt)
    assert and_prompt.x.shape[0] == 3 and not run.handles and len(notes) == 1 and "AND" in notes[0]


def test_non_square_grid_blur_matches_the_library(unet):
    x, sigma, uncond, cond, image_cond = inputs(1, 7, 11)
    run = run_for(unet, seg_blur_sigma="1.5", seg_applied_layers="d1")
    assert run.layers[0][0] == "input_blocks.3.1.transformer_blocks.0.attn1"  # d1: the second down layer
    guided, x_out = a1111_forward(CompVisDenoiser(unet), x, sigma, uncond, cond, 5.0, image_cond, Callbacks(run))
    assert guided.shape == x.shape and torch.isfinite(guided).all() and run.blurred_layer_calls == 1
    assert run.state.latent_size == (7, 11) and run.state.grid(4 * 6) == (4, 6)  # 7×11 halved, rounding up
    # the to_q hook blurs exactly the blurred rows, on the layer's true 4×6 grid
    q = torch.randn(3, 24, 16)
    run.state.blur_rows = slice(1, 2)
    out = run._blur_output(None, (), q)
    assert torch.equal(out, torch.cat([q[:1], blur_queries(q[1:2], 4, 6, 1.5), q[2:]]))
    run.close()


# --- settings, infotext, X/Y/Z, API order ---------------------------------------------------------------------


def test_script_args_options_and_hires_modes():
    assert sg.args_in_order() == [
        "enabled",
        "seg_scale",
        "seg_blur_sigma",
        "seg_applied_layers",
        "sigma_low",
        "sigma_high",
        "hires",
        "hr_seg_scale",
        "hr_seg_blur_sigma",
    ]
    args = sg.SEGArgs.from_script_args([True, 2.5, "infinite", "m0, u1", 0.3, 8.0, sg.HIRES_OWN, 1.5, "4"])
    first, hires = args.options(), args.options(hires_pass=True)
    assert first.seg_scale == 2.5 and first.seg_blur_sigma == 9999999.0 and first.seg_interval.sigma_high == 8.0
    assert hires.seg_scale == 1.5 and hires.seg_blur_sigma == 4.0
    assert sg.SEGArgs.from_script_args([True]).options() == SEGOptions()  # API defaults: the official ones
    assert sg.SEGArgs(enabled=True, hires=sg.HIRES_OFF).options(hires_pass=True) is None
    assert sg.SEGArgs(enabled=True, hires=sg.HIRES_SAME).options(hires_pass=True) == SEGOptions()
    assert sg.SEGArgs(enabled=False).options() is None and sg.SEGArgs(enabled=True, seg_scale=0.0).options() is None
    for bad, match in [
        (dict(seg_blur_sigma="0"), r"seg_blur_sigma must be 'infinite' or a number > 0"),
        (dict(seg_blur_sigma="soft"), r"seg_blur_sigma must be 'infinite' or a number > 0"),
        (dict(seg_scale=-1.0), r"seg_scale must be a finite number >= 0"),
        (
            dict(sigma_low=5.0, sigma_high=1.0),
            r"seg_interval must have sigma_low <= sigma_high|sigma_low <= sigma_high",
        ),
        (dict(seg_applied_layers="left"), r"seg_applied_layers has an unknown layer name 'left'"),
        (dict(hires="sometimes"), r"SEG hires must be one of"),
    ]:
        with pytest.raises(ValueError, match=match):
            sg.SEGArgs(enabled=True, **bad).options()
    with pytest.raises(ValueError, match=r"takes at most 9 arguments"):
        sg.SEGArgs.from_script_args([True] * 10)


def test_unknown_layers_fail_before_any_hook(unet):
    for names, match in [("m1", r"names m1, which does not exist"), ("input:2", r"names 'input:2', which has no")]:
        with pytest.raises(ValueError, match=match):
            run_for(unet, seg_applied_layers=names)
    assert not any(m._forward_hooks for m in unet.modules())
    assert [n for n, _ in run_for(unet, seg_applied_layers="input:3").layers] == [
        "input_blocks.3.1.transformer_blocks.0.attn1",
        "input_blocks.3.1.transformer_blocks.1.attn1",
    ]
    assert [n for n, _ in run_for(unet, seg_applied_layers="d2").layers] == [
        "input_blocks.3.1.transformer_blocks.1.attn1"
    ]


@pytest.mark.parametrize(
    "args",
    [
        sg.SEGArgs(enabled=True),
        sg.SEGArgs(
            enabled=True,
            seg_scale=4.5,
            seg_blur_sigma="16",
            seg_applied_layers="m0,u1",
            sigma_low=0.28,
            sigma_high=5.42,
        ),
        sg.SEGArgs(enabled=True, sigma_low=1.0, hires=sg.HIRES_OWN, hr_seg_scale=2.0, hr_seg_blur_sigma="4"),
        sg.SEGArgs(enabled=True, hires=sg.HIRES_OFF),
    ],
)
def test_infotext_round_trip(args):
    params = sg.infotext_params(args)
    pasted = {key: str(value) for key, value in params.items()}  # the webui parses infotext into strings
    back = sg.args_from_infotext(pasted)
    assert back.options() == args.options() and back.options(hires_pass=True) == args.options(hires_pass=True)
    assert sg.infotext_params(back) == params
    assert sg.args_from_infotext({"Steps": "20"}) == sg.SEGArgs() and sg.infotext_params(sg.SEGArgs()) == {}


def test_xyz_axes_added_once_apply_and_confirm():
    class AxisOption:
        def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None, prepare=None):
            self.label, self.type, self.apply, self.confirm = label, type, apply, confirm

    xyz = types.SimpleNamespace(AxisOption=AxisOption, axis_options=[])
    assert sg.add_xyz_axes(xyz) == ["SEG scale", "SEG blur sigma", "SEG layers"]
    assert sg.add_xyz_axes(xyz) == [] and len(xyz.axis_options) == 3
    p = types.SimpleNamespace()
    scale_axis, blur_axis, _ = xyz.axis_options
    scale_axis.apply(p, 1.5, [1.5])
    blur_axis.apply(p, "8", ["8"])
    args = sg.SEGArgs().with_overrides(getattr(p, sg.OVERRIDES_ATTR))
    assert args.options() == SEGOptions(seg_scale=1.5, seg_blur_sigma=8.0)  # an axis turns SEG on
    with pytest.raises(ValueError, match="seg_blur_sigma"):
        blur_axis.confirm(p, ["4", "none"])
    with pytest.raises(ValueError, match="seg_scale"):
        scale_axis.confirm(p, [1.0, -2.0])


# --- Forge: post-CFG function with one extra cond-only call ----------------------------------------------------


def test_forge_post_cfg_extra_call_blurs_every_row_and_adds_the_seg_term(unet):
    calls = []

    def set_patch_replace(model_options, patch, name, block_name, number, transformer_index=None):
        to = dict(model_options["transformer_options"])
        to["patches_replace"] = {**to.get("patches_replace", {})}
        to["patches_replace"][name] = {
            **to["patches_replace"].get(name, {}),
            (block_name, number, transformer_index): patch,
        }
        return {**model_options, "transformer_options": to}

    def attention(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False):
        return q + 0 * k + 0 * v

    def calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options):
        calls.append((cond, uncond, model_options))
        return torch.full_like(x_in, 0.25), torch.zeros_like(x_in)

    host = sg.ForgeHost(calc_cond_uncond_batch, set_patch_replace, attention)

    class UnetPatcher:  # backend.patcher.unet.UnetPatcher as far as the patch uses it
        def __init__(self, model_options=None):
            self.model = types.SimpleNamespace(diffusion_model=unet)
            self.model_options = model_options or {"transformer_options": {}}

        def clone(self):
            return UnetPatcher({**self.model_options})

        def set_model_sampler_post_cfg_function(self, post_cfg_function, disable_cfg1_optimization=False):
            self.model_options["sampler_post_cfg_function"] = [
                *self.model_options.get("sampler_post_cfg_function", []),
                post_cfg_function,
            ]

    inversion = {"now": False}
    original = UnetPatcher()
    options = sg.SEGArgs(enabled=True, seg_blur_sigma="2", seg_applied_layers="m0,d2", sigma_high=10.0).options()
    patched = sg.patch_forge_unet(original, options, host, lambda: inversion["now"], "m0,d2")
    assert "sampler_post_cfg_function" not in original.model_options
    (post,) = patched.model_options["sampler_post_cfg_function"]
    x = torch.randn(1, 4, 6, 10)
    args = {
        "denoised": torch.ones_like(x),
        "cond": ["c"],
        "uncond": ["u"],
        "model": "unet",
        "uncond_denoised": None,
        "cond_denoised": torch.full_like(x, 0.5),
        "sigma": torch.tensor([3.0]),
        "model_options": patched.model_options,
        "input": x,
    }
    out = post(args)
    assert torch.equal(out, args["denoised"] + (0.5 - 0.25) * 3.0)
    ((cond, uncond, model_options),) = calls
    assert cond == ["c"] and uncond is None  # one cond-only call
    replaced = model_options["transformer_options"]["patches_replace"]["attn1"]
    assert sorted(replaced) == [("input", 3, 1), ("middle", 0, 0)]
    q = torch.randn(2, 3 * 5, 16)
    torch.testing.assert_close(replaced[("input", 3, 1)](q, q, q, {"n_heads": 2}), blur_queries(q, 3, 5, 2.0))
    calls.clear()
    inversion["now"] = True
    assert post(args) is args["denoised"] and not calls
    # inversion-neutral (no inversion SEG): Zigzag's one-branch inversion at γ₂ = 0 stays on with SEG
    assert sg.INVERSION_NEUTRAL == zforge.INVERSION_NEUTRAL and getattr(post, sg.INVERSION_NEUTRAL) is True
    inversion["now"] = False
    assert post({**args, "sigma": torch.tensor([12.0])}) is args["denoised"] and not calls  # outside the interval
    p = types.SimpleNamespace(sampler=types.SimpleNamespace(model_wrap_cfg=types.SimpleNamespace()))
    assert sg.forge_is_inversion(p)() is False
    setattr(p.sampler.model_wrap_cfg, sg.INVERSION_ATTR, True)
    assert sg.forge_is_inversion(p)() is True


# --- the glue script, imported as the webui imports it ------------------------------------------------------


class _Component:
    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs

    @property
    def default(self):
        """The value the webui's API takes for an argument a request leaves out (the component's start value)."""
        return self.kwargs["value"] if "value" in self.kwargs else self.args[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def _glue(monkeypatch, forge: bool):
    callbacks: dict[str, list] = {}

    def register(kind):
        def on(callback, *, name=None):  # script_callbacks.on_cfg_denoiser(callback, *, name=None) in 1.10.1
            callbacks.setdefault(kind, []).append((name, callback))

        return on

    xyz = types.SimpleNamespace(
        AxisOption=lambda label, type, apply, confirm=None: types.SimpleNamespace(
            label=label, type=type, apply=apply, confirm=confirm
        ),
        axis_options=[],
    )

    class Script:  # modules.scripts.Script
        infotext_fields = None

    fake = {
        "script_callbacks": types.SimpleNamespace(
            on_cfg_denoiser=register("cfg_denoiser"),
            on_cfg_denoised=register("cfg_denoised"),
            on_cfg_after_cfg=register("cfg_after_cfg"),
            on_before_ui=lambda f: callbacks.setdefault("before_ui", [f]),
        ),
        "scripts": types.SimpleNamespace(
            Script=Script, AlwaysVisible=object(), scripts_data=[types.SimpleNamespace(module=xyz)]
        ),
        "ui_components": types.SimpleNamespace(InputAccordion=_Component),
        "shared": types.SimpleNamespace(sd_model=None),  # modules.shared.sd_model: the loaded model
    }
    package = types.ModuleType("modules")
    for name, module in fake.items():
        setattr(package, name, module)
        monkeypatch.setitem(sys.modules, f"modules.{name}", module)
    monkeypatch.setitem(sys.modules, "modules", package)
    gradio = types.SimpleNamespace(
        **{n: _Component for n in ("Row", "Slider", "Dropdown", "Textbox", "Number", "Radio")}
    )
    monkeypatch.setitem(sys.modules, "gradio", gradio)
    if forge:
        host = {
            "backend": types.ModuleType("backend"),
            "backend.attention": types.SimpleNamespace(attention_function=lambda q, k, v, heads: q),
            "backend.patcher": types.ModuleType("backend.patcher"),
            "backend.patcher.base": types.SimpleNamespace(set_model_options_patch_replace=lambda *a, **k: a[0]),
            "backend.sampling": types.ModuleType("backend.sampling"),
            "backend.sampling.sampling_function": types.SimpleNamespace(calc_cond_uncond_batch=None),
        }
        for name, module in host.items():
            monkeypatch.setitem(sys.modules, name, module)
    else:
        monkeypatch.setitem(sys.modules, "backend", None)  # A1111: no Forge backend
    spec = importlib.util.spec_from_file_location("seg.py", EXTENSION_DIR / "scripts" / "seg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, callbacks, xyz


def test_glue_registers_once_builds_the_accordion_and_runs_a1111_seg(monkeypatch, unet):
    glue, callbacks, xyz = _glue(monkeypatch, forge=False)
    assert glue.FORGE_HOST is None
    assert {k: len(v) for k, v in callbacks.items()} == {
        "cfg_denoiser": 1,
        "cfg_denoised": 1,
        "cfg_after_cfg": 1,
        "before_ui": 1,
    }
    # the axes exist from import on (API-only mode builds the X/Y/Z list before before_ui), and once
    assert [a.label for a in xyz.axis_options] == ["SEG scale", "SEG blur sigma", "SEG layers"]
    callbacks["before_ui"][0]()
    assert [a.label for a in xyz.axis_options] == ["SEG scale", "SEG blur sigma", "SEG layers"]
    script = glue.Script()
    components = script.ui(is_img2img=False)
    assert len(components) == len(sg.args_in_order()) == len(script.infotext_fields)
    pasted = {"SEG scale": "4.5", "SEG blur sigma": "16", "SEG layers": "m0"}
    assert [f(pasted) for _, f in script.infotext_fields][:4] == [True, 4.5, "16", "m0"]

    p = types.SimpleNamespace(
        sd_model=types.SimpleNamespace(model=types.SimpleNamespace(diffusion_model=unet)),
        extra_generation_params={},
        is_hr_pass=False,
    )
    dispatch = Callbacks(
        types.SimpleNamespace(
            **{
                method: (lambda params, kind=kind: callbacks[kind][0][1](params))
                for method, kind in [
                    ("on_cfg_denoiser", "cfg_denoiser"),
                    ("on_cfg_denoised", "cfg_denoised"),
                    ("on_cfg_after_cfg", "cfg_after_cfg"),
                ]
            }
        )
    )
    sys.modules["modules.shared"].sd_model = p.sd_model
    x, sigma, uncond, cond, image_cond = inputs()
    inner = CompVisDenoiser(unet)
    script.process(p, True, 3.0)
    script.process_before_every_sampling(p, True, 3.0, "infinite", "mid")
    assert p.extra_generation_params == {"SEG scale": 3.0, "SEG blur sigma": "infinite", "SEG layers": "mid"}
    guided, _ = a1111_forward(inner, x, sigma, uncond, cond, 5.0, image_cond, dispatch)
    assert inner.calls == [3] and glue.ACTIVE["run"] is not None
    script.postprocess(p, None, True, 3.0)
    assert glue.ACTIVE["run"] is None and not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())
    inner.calls.clear()
    plain, _ = a1111_forward(inner, x, sigma, uncond, cond, 5.0, image_cond, dispatch)
    assert inner.calls == [2] and not torch.allclose(plain, guided)  # after the generation: the host's own path
    script.process_before_every_sampling(p, False, 3.0)  # SEG off: nothing installed
    assert glue.ACTIVE["run"] is None
    with pytest.raises(ValueError, match="seg_applied_layers"):
        script.process_before_every_sampling(p, True, 3.0, "infinite", "u9")
    assert glue.ACTIVE["run"] is None and not any(m._forward_hooks for m in unet.modules())


@pytest.mark.parametrize(
    "args, match",
    [
        ((True, 3.0, "infinite", "u9"), "seg_applied_layers"),  # a layer the model lacks
        ((True, 3.0, "infinite", "input:4"), "seg_applied_layers"),
        ((True, -2.0), "seg_scale"),
        ((True, 3.0, "-1"), "seg_blur_sigma"),
    ],
)
def test_glue_bad_input_fails_the_request_before_sampling(monkeypatch, unet, args, match):
    """The webuis log a script hook's exception and generate anyway: ``process`` makes ``p.sample`` raise it
    (called unguarded right after the scripts' ``process``), so the request fails and no infotext claims SEG."""
    glue, _, _ = _glue(monkeypatch, forge=False)
    sampled = []
    p = types.SimpleNamespace(
        sd_model=types.SimpleNamespace(model=types.SimpleNamespace(diffusion_model=unet)),
        extra_generation_params={},
        is_hr_pass=False,
        enable_hr=False,
        sample=lambda *a, **k: sampled.append(1),
    )
    glue.Script().process(p, *args)
    with pytest.raises(ValueError, match=match):
        p.sample()
    assert sampled == [] and p.extra_generation_params == {} and glue.ACTIVE["run"] is None
    good = types.SimpleNamespace(**{**vars(p), "sample": lambda *a, **k: sampled.append(1)})
    glue.Script().process(good, True, 3.0, "infinite", "mid")
    good.sample()
    assert sampled == [1]


def test_glue_on_forge_patches_a_clone_of_forge_objects_unet(monkeypatch, unet):
    glue, callbacks, _ = _glue(monkeypatch, forge=True)
    assert glue.FORGE_HOST is not None

    class UnetPatcher:
        def __init__(self):
            self.model = types.SimpleNamespace(diffusion_model=unet)
            self.model_options = {"transformer_options": {}}

        def clone(self):
            clone = UnetPatcher()
            clone.model_options = dict(self.model_options)
            return clone

        def set_model_sampler_post_cfg_function(self, function, disable_cfg1_optimization=False):
            self.model_options["sampler_post_cfg_function"] = [function]

    original = UnetPatcher()
    p = types.SimpleNamespace(
        sd_model=types.SimpleNamespace(forge_objects=types.SimpleNamespace(unet=original)),
        extra_generation_params={},
        is_hr_pass=True,
    )
    glue.Script().process_before_every_sampling(p, True, 3.0, "8", "mid", 0.0, 0.0, sg.HIRES_OWN, 1.5, "2")
    patched = p.sd_model.forge_objects.unet
    assert patched is not original and "sampler_post_cfg_function" not in original.model_options
    (post,) = patched.model_options["sampler_post_cfg_function"]
    assert post.options.seg_scale == 1.5 and post.options.seg_blur_sigma == 2.0  # the hires pass's own settings
    assert glue.ACTIVE["run"] is None  # no A1111 callbacks on Forge


# --- A1111 conditioning and API argument contracts -----------------------------------------------------------


class ComposableScheduledPromptConditioning:  # modules/prompt_parser.py, A1111 1.10.1
    def __init__(self, schedules, weight=1.0):
        self.schedules, self.weight = schedules, weight


class MulticondLearnedConditioning:  # modules/prompt_parser.py: batch[i] = the AND-parts of image i's prompt
    def __init__(self, shape, batch):
        self.shape, self.batch = shape, batch


def test_multicond_stand_ins_have_the_hosts_signatures():
    assert str(inspect.signature(ComposableScheduledPromptConditioning)) == "(schedules, weight=1.0)"
    assert str(inspect.signature(MulticondLearnedConditioning)) == "(shape, batch)"


def test_glue_and_prompt_skips_seg_before_the_infotext_is_written(monkeypatch, unet):
    """A1111 cannot add the blurred rows to an AND-prompt batch: the pass runs without SEG, and the infotext (the
    HTTP API's ``info``) says so instead of claiming a SEG scale."""
    glue, _, _ = _glue(monkeypatch, forge=False)
    comments = []
    p = types.SimpleNamespace(
        sd_model=types.SimpleNamespace(model=types.SimpleNamespace(diffusion_model=unet)),
        extra_generation_params={"SEG scale": 9.0, "SEG note": "skipped: AND prompt", "Seed": 1},
        is_hr_pass=False,
        enable_hr=False,
        comment=comments.append,
    )
    sys.modules["modules.shared"].sd_model = p.sd_model
    script = glue.Script()
    script.process(p, True, 3.0)
    assert p.extra_generation_params == {"Seed": 1}  # another X/Y/Z cell's SEG entries are gone
    and_prompt = MulticondLearnedConditioning(
        (1,), [[ComposableScheduledPromptConditioning([]), ComposableScheduledPromptConditioning([], 0.5)]]
    )
    script.process_before_every_sampling(p, True, 3.0, x=None, noise=None, c=and_prompt, uc=None)
    assert p.extra_generation_params == {"Seed": 1, "SEG note": "skipped: AND prompt"}
    assert glue.ACTIVE["run"] is None and len(comments) == 1 and "AND prompts" in comments[0]
    p.is_hr_pass = True  # a hires pass with AND prompts: noted for that pass
    script.process_before_every_sampling(p, True, 3.0, x=None, noise=None, c=and_prompt, uc=None)
    assert p.extra_generation_params["SEG note"] == "skipped: AND prompt; hires pass skipped: AND prompt"

    p.is_hr_pass, p.extra_generation_params = False, {}
    plain = MulticondLearnedConditioning((2,), [[ComposableScheduledPromptConditioning([])]] * 2)
    script.process_before_every_sampling(p, True, 3.0, x=None, noise=None, c=plain, uc=None)
    assert glue.ACTIVE["run"] is not None and p.extra_generation_params["SEG scale"] == 3.0
    assert "SEG note" not in p.extra_generation_params
    script.postprocess(p, None, True, 3.0)

    assert sg.a1111_skip_reason(plain, edit_model=True) == "InstructPix2Pix model"
    edit = types.SimpleNamespace(sd_model=types.SimpleNamespace(cond_stage_key="edit"), image_cfg_scale=1.5)
    assert sg.a1111_edit_model(edit) and not sg.a1111_edit_model(
        types.SimpleNamespace(**{**vars(edit), "image_cfg_scale": 1.0})
    )
    assert not sg.a1111_edit_model(p)


def a1111_api_script_args(defaults, args_from, args_to, request_args):
    """What an always-on script receives from an HTTP request, as A1111 1.10.1's ``Api.init_script_args`` (also
    Forge's) builds it: the UI components' start values, overwritten by the first ``args_to − args_from`` items
    of the request's ``args``; further items are dropped without an error."""
    script_args = list(defaults)
    for index, value in enumerate(request_args[: args_to - args_from]):
        script_args[args_from + index] = value
    return script_args[args_from:args_to]


def test_api_takes_exactly_nine_seg_arguments_and_fills_missing_ones_with_the_defaults(monkeypatch):
    glue, _, _ = _glue(monkeypatch, forge=False)
    components = glue.Script().ui(is_img2img=False)
    count = len(sg.args_in_order())
    assert count == len(components) == 9
    defaults = [component.default for component in components]
    assert defaults == [getattr(sg.SEGArgs(), name) for name in sg.args_in_order()]  # UI start values = SEGArgs()
    full = [True, 4.0, "8", "mid", 0, 0, sg.HIRES_SAME, 3.0, "infinite"]
    assert a1111_api_script_args(defaults, 0, count, [*full, "a 10th"]) == full  # dropped by the webui
    short = a1111_api_script_args(defaults, 0, count, [True, 4.0])
    assert sg.SEGArgs.from_script_args(short) == sg.SEGArgs(enabled=True, seg_scale=4.0)
    page = " ".join((Path(__file__).resolve().parents[1] / "docs" / "a1111-forge.md").read_text().split())
    assert f"takes exactly {count} arguments" in page and "a 10th and later ones are dropped" in page


@pytest.mark.parametrize(
    "sd_model",
    [
        types.SimpleNamespace(is_sd3=True),  # A1111 1.10: SD3 medium
        types.SimpleNamespace(  # Forge: Flux, SD3.5, Chroma predict on flow latents
            forge_objects=types.SimpleNamespace(
                unet=types.SimpleNamespace(
                    model=types.SimpleNamespace(predictor=types.SimpleNamespace(prediction_type="const"))
                )
            )
        ),
    ],
)
def test_glue_refuses_seg_on_flow_models_before_sampling(monkeypatch, sd_model):
    glue, _, _ = _glue(monkeypatch, forge=False)
    p = types.SimpleNamespace(sd_model=sd_model, extra_generation_params={}, is_hr_pass=False, enable_hr=False)
    glue.Script().process(p, True, 3.0)
    with pytest.raises(ValueError, match=r"self-attention; this model is a flow transformer \(Flux, SD3: joint"):
        p.sample()
    assert p.extra_generation_params == {} and glue.ACTIVE["run"] is None
    eps_forge = types.SimpleNamespace(
        forge_objects=types.SimpleNamespace(
            unet=types.SimpleNamespace(
                model=types.SimpleNamespace(predictor=types.SimpleNamespace(prediction_type="epsilon"))
            )
        )
    )
    sg.check_not_flow(eps_forge)  # SD1.5/SDXL on Forge: allowed
    sg.check_not_flow(types.SimpleNamespace(is_sd3=False))
