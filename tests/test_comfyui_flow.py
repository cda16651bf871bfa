"""Flow models in the real ComfyUI core (0.3.75) on CPU: tiny random Flux dev, Flux schnell and SD3.

The models are built from ComfyUI's own ``comfy.supported_models`` configs (``Flux``: guidance embedding,
``FluxSchnell``: none, shift 1; ``SD3``: MMDiT, shift 3) with small transformers and deterministic random
weights (:mod:`comfyui_harness`). Rows are ComfyUI's own batch bookkeeping (``cond_or_uncond`` seen by
``model_function_wrapper``) per sampling step; the distilled guidance of each call is what the diffusion
model's forward receives (a forward pre-hook), after every APPLY_MODEL wrapper.

Cost per step with T_max = 1 (batch 1): Flux dev at cfg 1, zigzag: 3 calls of one positive row (denoise at g₁,
inversion at g₂, denoise at g₁), a plain step 1; so T + 2λ calls, one row each. SD3 with CFG: as SD (2 + 3
rows at γ₂ = 0). Flux schnell (no distilled guidance) at cfg 1: the inversion evaluates the negative row.
"""

from __future__ import annotations

import pytest
import torch
from comfyui_harness import PassCounter, comfyui_or_skip, flow_conditioning, tiny_flux, tiny_sd3

STEPS = 4
G1 = 3.5  # FluxGuidance's default and the Flux model's default for a conditioning without it
POS_TEXT = flow_conditioning(0.5, seed=1)
NEG = flow_conditioning(-0.5, seed=2)
INVERSION_KEY = "zigzag_kdiff_inversion"
INVERSION_GUIDANCE_KEY = "zigzag_kdiff_inversion_guidance"
ZIGZAG_DEFAULTS = dict(
    rule="euler",
    inversion_scale=-1.0,
    zigzag_steps=1.0,
    zigzag_steps_unit="fraction",
    zigzag_rounds=1,
    guidance_interval=False,
    sigma_low=0.28,
    sigma_high=5.42,
    inversion_guidance=-1.0,
)


@pytest.fixture(scope="module")
def comfyui():
    return comfyui_or_skip(keep_progress_hook=True)


@pytest.fixture(scope="module")
def flow(comfyui):
    """This module's tiny Flux dev, Flux schnell and SD3, all counted by one PassCounter, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    counter = PassCounter()
    models = {"dev": tiny_flux(counter), "schnell": tiny_flux(counter, guidance_embed=False), "sd3": tiny_sd3(counter)}
    yield type("Flow", (), {"counter": counter, "node": comfyui.node, "nodes": comfyui.nodes, **models})
    torch.set_num_threads(threads)


@pytest.fixture
def counter(flow):
    flow.counter.reset()
    yield flow.counter
    flow.counter.on_call = None
    flow.counter.reset()


# --- helpers: the real nodes -----------------------------------------------------------------------


def flux_guidance(flow, guidance: float = G1) -> list:
    return flow.node["FluxGuidance"].execute(POS_TEXT, guidance)[0]


def latent(batch: int = 1, seed: int | None = None) -> dict:
    if seed is None:
        return {"samples": torch.zeros(batch, 16, 8, 8)}
    return {"samples": torch.randn(batch, 16, 8, 8, generator=torch.Generator().manual_seed(seed))}


def ksampler(flow, model, name, *, cfg=1.0, positive=None, steps=STEPS, image=None):
    flow.counter.reset()
    positive = flux_guidance(flow) if positive is None else positive
    (out,) = flow.nodes.KSampler().sample(model, 0, steps, cfg, name, "simple", positive, NEG, image or latent(), 1.0)
    return out["samples"]


def zigzag_node(flow, **options):
    return flow.node["ZigzagSampler"].execute(**{**ZIGZAG_DEFAULTS, **options})[0]


def sigmas(flow, model, steps=STEPS):
    return flow.node["BasicScheduler"].execute(model, "simple", steps, 1.0)[0]


def advanced(flow, guider, sampler, model, *, image=None):
    flow.counter.reset()
    noise = flow.node["RandomNoise"].execute(0)[0]
    out = flow.node["SamplerCustomAdvanced"].execute(noise, guider, sampler, sigmas(flow, model), image or latent())
    return out[0]["samples"]


def cfg_guider(flow, model, cfg=1.0, positive=None):
    positive = flux_guidance(flow) if positive is None else positive
    return flow.node["CFGGuider"].execute(model, positive, NEG, cfg)[0]


def basic_guider(flow, model, positive=None):
    return flow.node["BasicGuider"].execute(model, flux_guidance(flow) if positive is None else positive)[0]


def zigzag_guidance(g1: float, g2: float) -> list[list[float]]:
    """Distilled guidance per call, one row each: zigzag steps (g₁, g₂, g₁), then the plain last step."""
    return [[g1], [g2], [g1]] * (STEPS - 1) + [[g1]]


def nothing_registered(model) -> bool:
    """No zigzag wrapper or marker left in the model's options (the per-call copies are gone)."""
    options = model.model_options.get("transformer_options", {})
    wrappers = options.get("wrappers", {})
    return INVERSION_KEY not in options and all(INVERSION_GUIDANCE_KEY not in keyed for keyed in wrappers.values())


# --- the tiny models are ComfyUI's flow models --------------------------------------------------------


def test_tiny_models_are_comfyuis_flux_and_sd3(flow):
    import comfy.model_base
    import comfy.model_sampling
    import comfy.supported_models

    expected = {
        "dev": (comfy.supported_models.Flux, comfy.model_base.Flux, True),
        "schnell": (comfy.supported_models.FluxSchnell, comfy.model_base.Flux, False),
        "sd3": (comfy.supported_models.SD3, comfy.model_base.SD3, None),
    }
    for name, (config, base, guidance_embed) in expected.items():
        model = getattr(flow, name).model
        assert type(model.model_config) is config and type(model) is base
        assert isinstance(model.model_sampling, comfy.model_sampling.CONST)
        assert model.model_config.unet_config.get("guidance_embed") is guidance_embed
        assert float(model.model_sampling.sigma_max) == 1.0
        assert sum(p.numel() for p in model.diffusion_model.parameters()) < 200_000
    assert flow.dev.model.model_sampling.shift == 1.15 and flow.schnell.model.model_sampling.shift == 1.0
    assert flow.sd3.model.model_sampling.shift == 3.0


# --- rows per step and the guidance each call sees -----------------------------------------------------

DEV_ZIGZAG = [(3, 0)] * (STEPS - 1) + [(1, 0)]
PLAIN_COND = [(1, 0)] * STEPS
CFG_ZIGZAG = [(2, 3)] * (STEPS - 1) + [(1, 1)]


@pytest.mark.parametrize(
    "model,sampler,cfg,rows,guidance",
    [
        ("dev", "euler", 1.0, PLAIN_COND, [[G1]] * STEPS),
        ("dev", "zigzag_euler", 1.0, DEV_ZIGZAG, zigzag_guidance(G1, 1.0)),
        ("dev", "zigzag_ddim", 1.0, DEV_ZIGZAG, zigzag_guidance(G1, 1.0)),
        ("dev", "zigzag_dpmpp_2m", 1.0, DEV_ZIGZAG, zigzag_guidance(G1, 1.0)),
        # true CFG on Flux dev as well: γ₂ = 0 (the negative alone) and g₂ = 1 in the inversion, both gaps
        ("dev", "zigzag_euler", 2.0, CFG_ZIGZAG, [[G1, G1], [1.0], [G1, G1]] * (STEPS - 1) + [[G1, G1]]),
        ("schnell", "euler", 1.0, PLAIN_COND, [[G1]] * STEPS),  # ComfyUI passes 3.5; schnell has no embedding
        ("schnell", "zigzag_euler", 1.0, [(2, 1)] * (STEPS - 1) + [(1, 0)], None),
        ("sd3", "euler", 4.5, [(1, 1)] * STEPS, None),
        ("sd3", "zigzag_euler", 4.5, CFG_ZIGZAG, None),
        ("sd3", "zigzag_ddim", 4.5, CFG_ZIGZAG, None),
    ],
)
def test_ksampler_rows_per_step_and_guidance_per_call(flow, counter, model, sampler, cfg, rows, guidance):
    samples = ksampler(flow, getattr(flow, model), sampler, cfg=cfg)
    assert torch.isfinite(samples).all() and samples.shape == (1, 16, 8, 8)
    assert counter.per_step() == rows
    assert counter.steps == list(range(STEPS))
    if guidance is not None:
        assert counter.guidance == guidance
    if model == "sd3":
        assert counter.guidance == []  # the recorder sits on the Flux models only


def test_flux_dev_zigzag_is_t_plus_2_lambda_calls_of_one_row(flow, counter):
    steps = 10
    ksampler(flow, flow.dev, "zigzag_euler", steps=steps)
    assert counter.calls == steps + 2 * (steps - 1) and counter.rows_total() == counter.calls
    assert all(chunks == (0,) for chunks in counter.chunks)  # never the negative conditioning
    ksampler(flow, flow.dev, "euler", steps=steps)
    assert counter.calls == steps == counter.rows_total()


def test_denoising_guidance_follows_flux_guidance_and_inversion_default_is_capped_at_g1(flow, counter):
    ksampler(flow, flow.dev, "zigzag_euler", positive=flux_guidance(flow, 5.0))
    assert counter.guidance == zigzag_guidance(5.0, 1.0)
    ksampler(flow, flow.dev, "zigzag_euler", positive=flux_guidance(flow, 0.5))  # default g₂ = min(1, g₁)
    assert counter.guidance == zigzag_guidance(0.5, 0.5)
    ksampler(flow, flow.dev, "zigzag_euler", positive=POS_TEXT)  # no FluxGuidance: the model's own 3.5
    assert counter.guidance == zigzag_guidance(G1, 1.0)


@pytest.mark.parametrize("guider", ["cfg1", "basic"])
def test_zigzag_node_inversion_guidance_with_cfg_guider_and_basic_guider(flow, counter, guider):
    make = (lambda: cfg_guider(flow, flow.dev)) if guider == "cfg1" else (lambda: basic_guider(flow, flow.dev))
    results = {}
    for g2 in (2.0, 0.0, G1):
        results[g2] = advanced(flow, make(), zigzag_node(flow, inversion_guidance=g2), flow.dev)
        assert counter.per_step() == DEV_ZIGZAG
        assert counter.guidance == zigzag_guidance(G1, g2)
    assert not torch.allclose(results[2.0], results[0.0])
    auto = advanced(flow, make(), zigzag_node(flow), flow.dev)
    assert counter.guidance == zigzag_guidance(G1, 1.0)
    dropdown = advanced(flow, make(), flow.node["KSamplerSelect"].execute("zigzag_euler")[0], flow.dev)
    assert torch.equal(auto, dropdown)
    euler = advanced(flow, make(), flow.node["KSamplerSelect"].execute("euler")[0], flow.dev)
    assert counter.per_step() == PLAIN_COND
    for result in results.values():
        assert not torch.allclose(result, euler)
    assert torch.equal(auto, advanced(flow, make(), zigzag_node(flow), flow.dev))  # deterministic


def test_zigzag_steps_zero_is_comfyuis_euler_on_flux_dev_bit_for_bit(flow, counter):
    guider = cfg_guider(flow, flow.dev)
    euler = advanced(flow, guider, flow.node["KSamplerSelect"].execute("euler")[0], flow.dev)
    for rule in ("euler", "ddim"):
        plain = zigzag_node(flow, rule=rule, zigzag_steps=0.0, inversion_guidance=2.0)
        assert torch.equal(advanced(flow, guider, plain, flow.dev), euler)
        assert counter.per_step() == PLAIN_COND and counter.guidance == [[G1]] * STEPS


def test_sd3_with_cfg_zigzag_node_scales_and_rules(flow, counter):
    guider = cfg_guider(flow, flow.sd3, cfg=4.5, positive=POS_TEXT)
    expected = {
        (0.0, "euler"): CFG_ZIGZAG,
        (-1.0, "euler"): CFG_ZIGZAG,  # auto: γ₂ = 0 (no distilled guidance on SD3)
        (1.0, "euler"): [(3, 2)] * (STEPS - 1) + [(1, 1)],
        (2.0, "ddim"): [(3, 3)] * (STEPS - 1) + [(1, 1)],
        (0.0, "dpmpp_2m"): CFG_ZIGZAG,
    }
    outputs = []
    for (scale, rule), rows in expected.items():
        outputs.append(advanced(flow, guider, zigzag_node(flow, rule=rule, inversion_scale=scale), flow.sd3))
        assert counter.per_step() == rows and torch.isfinite(outputs[-1]).all()
    assert torch.equal(outputs[0], outputs[1]) and not torch.allclose(outputs[0], outputs[2])
    assert guider.cfg == 4.5


def test_flow_models_are_sampled_as_flow_latents(flow, counter):
    """The pack passes flow=True for CONST sampling: DPM++ 2M at λ = 0 is the engine's flow rule (half-log-SNR
    log((1 − σ)/σ)), not ComfyUI's dpmpp_2m (which uses −log σ on flow sigmas too)."""
    import comfy.samplers

    import zigzag_kdiff

    def engine(flow_latent: bool):
        def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
            return zigzag_kdiff.sample_zigzag_dpmpp_2m(
                model, x, sigmas, extra_args, callback, disable, zigzag_steps=0, flow=flow_latent
            )

        return comfy.samplers.KSAMPLER(sample)

    guider = cfg_guider(flow, flow.sd3, cfg=4.5, positive=POS_TEXT)
    pack = advanced(flow, guider, zigzag_node(flow, rule="dpmpp_2m", zigzag_steps=0.0), flow.sd3)
    assert torch.equal(pack, advanced(flow, guider, engine(True), flow.sd3))
    comfy_dpmpp = advanced(flow, guider, flow.node["KSamplerSelect"].execute("dpmpp_2m")[0], flow.sd3)
    assert torch.equal(comfy_dpmpp, advanced(flow, guider, engine(False), flow.sd3))
    assert not torch.allclose(pack, comfy_dpmpp)


def test_flux_dev_zigzag_equals_the_engine_on_comfyuis_own_apply_model(flow, counter):
    """The whole pack path (SamplerCustomAdvanced, CFGGuider at cfg 1, g₂ = 2) equals the library's engine driven
    directly on ComfyUI's ``BaseModel.apply_model`` with ``guidance`` g₁ in the denoising calls and g₂ in the
    inversions (the library's own ``call_with_cond_scale``), with ComfyUI's noise and latent scaling."""
    import comfy.sample

    import zigzag_kdiff

    g2 = 2.0
    pack = advanced(flow, cfg_guider(flow, flow.dev), zigzag_node(flow, inversion_guidance=g2), flow.dev)
    base = flow.dev.model
    context, extra = POS_TEXT[0]

    def denoiser(x, sigma, cond_scale, guidance):
        assert cond_scale == 1.0  # true CFG off: the conditional prediction alone
        guidance = torch.full((x.shape[0],), guidance)
        return base.apply_model(x, sigma, c_crossattn=context, y=extra["pooled_output"], guidance=guidance)

    sigmas_ = sigmas(flow, flow.dev)
    noise = comfy.sample.prepare_noise(latent()["samples"], 0)

    def engine(inversion_guidance):
        with torch.no_grad():
            x = zigzag_kdiff.sample_zigzag_euler(
                denoiser,
                sigmas_[0] * noise,  # CONST noise scaling of an empty latent
                sigmas_,
                {"cond_scale": 1.0, "guidance": G1},
                disable=True,
                inversion_scale=1.0,
                inversion_guidance=inversion_guidance,
                flow=True,
            )
        return base.process_latent_out(x)

    assert torch.equal(pack, engine(g2))  # bit for bit on CPU float32
    assert not torch.allclose(pack, engine(1.0), rtol=1e-5, atol=1e-6)  # the inversions' guidance matters


# --- the APPLY_MODEL wrapper: per call, coexisting, nothing left behind ---------------------------------------


def test_inversion_guidance_wrapper_coexists_with_other_apply_model_wrappers(flow, counter):
    """Another node's keyed APPLY_MODEL wrapper on the model runs in every call and sees ComfyUI's guidance
    (it is outside ours); the zigzag wrapper is only in the inversion calls' own options, and the single
    ``model_function_wrapper`` slot stays the counter's."""
    import comfy.patcher_extension

    seen = []

    def recording_wrapper(executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        keyed = transformer_options.get("wrappers", {}).get(comfy.patcher_extension.WrappersMP.APPLY_MODEL, {})
        seen.append((float(kwargs["guidance"][0]), bool(transformer_options.get(INVERSION_KEY)), len(keyed)))
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    model = flow.dev.clone()
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "other-node", recording_wrapper)
    ksampler(flow, model, "zigzag_euler")
    assert counter.guidance == zigzag_guidance(G1, 1.0)  # what the network got
    assert seen == [(G1, False, 1), (G1, True, 2), (G1, False, 1)] * (STEPS - 1) + [(G1, False, 1)]
    assert model.model_options["model_function_wrapper"] is counter
    assert nothing_registered(model) and nothing_registered(flow.dev)


def test_exception_or_interrupt_in_an_inversion_leaves_nothing_registered(flow, counter):
    import comfy.model_management as mm

    guider = cfg_guider(flow, flow.dev)

    def fail_in_first_inversion(counter):
        if counter.calls == 2:
            raise RuntimeError("failure inside the inversion call")

    counter.on_call = fail_in_first_inversion
    with pytest.raises(RuntimeError, match="inside the inversion call"):
        advanced(flow, guider, zigzag_node(flow, inversion_guidance=2.0), flow.dev)
    assert counter.calls == 2 and counter.guidance == [[G1]]  # raised in the inversion call, inside its options
    assert guider.cfg == 1.0 and nothing_registered(flow.dev) and nothing_registered(guider)

    def stop_in_second_inversion(counter):
        if counter.calls == 5:
            mm.interrupt_current_processing(True)

    counter.on_call = stop_in_second_inversion
    with pytest.raises(mm.InterruptProcessingException):
        advanced(flow, guider, zigzag_node(flow), flow.dev)
    assert not mm.processing_interrupted() and nothing_registered(flow.dev) and nothing_registered(guider)
    counter.on_call = None
    again = advanced(flow, guider, zigzag_node(flow), flow.dev)
    assert counter.guidance == zigzag_guidance(G1, 1.0)
    assert torch.equal(again, advanced(flow, cfg_guider(flow, flow.dev), zigzag_node(flow), flow.dev))
    plain = ksampler(flow, flow.dev, "euler")  # a later plain run sees no inversion guidance
    assert counter.guidance == [[G1]] * STEPS and torch.isfinite(plain).all()


# --- bad values fail before any model call ---------------------------------------------------------------


def test_bad_distilled_guidance_settings_fail_before_sampling(flow, counter):
    node = flow.node["ZigzagSampler"]
    with pytest.raises(ValueError, match=r"inversion_guidance must be -1 \(auto\) or >= 0, got -0.5"):
        node.execute(**{**ZIGZAG_DEFAULTS, "inversion_guidance": -0.5})
    with pytest.raises(ValueError, match=r"inversion_guidance must be a finite number"):
        node.execute(**{**ZIGZAG_DEFAULTS, "inversion_guidance": float("nan")})
    with pytest.raises(ValueError, match=r"inversion_scale must be -1 \(auto\) or >= 0"):
        node.execute(**{**ZIGZAG_DEFAULTS, "inversion_scale": -2.0})
    cases = [
        # g₂ above the FluxGuidance value g₁
        (cfg_guider(flow, flow.dev), {"inversion_guidance": 4.0}, r"inversion_guidance \(g₂\) must be <= .* g₁ = 3.5"),
        (
            cfg_guider(flow, flow.dev, positive=flux_guidance(flow, 2.0)),
            {"inversion_guidance": 3.0},
            r"inversion_guidance \(g₂\) must be <= .* g₁ = 2 \(the FluxGuidance value",
        ),
        # no distilled guidance on the model
        (
            cfg_guider(flow, flow.sd3, 4.5),
            {"inversion_guidance": 1.0},
            r"inversion_guidance .*\(it has no guidance input",
        ),
        (cfg_guider(flow, flow.schnell), {"inversion_guidance": 1.0}, r"Flux schnell, SD3 and UNets do not"),
        (
            cfg_guider(flow, flow.dev, positive=flow.node["FluxDisableGuidance"].execute(POS_TEXT)[0]),
            {"inversion_guidance": 1.0},
            r"its guidance is disabled",
        ),
        # true-CFG gap checks stay
        (cfg_guider(flow, flow.dev), {"inversion_scale": 2.0}, r"inversion_scale \(γ₂\) must be <= the denoising"),
        # BasicGuider where an inversion would need the negative conditioning
        (basic_guider(flow, flow.dev), {"inversion_scale": 0.0}, r"inversion_scale \(γ₂\) = 0 with the negative"),
        (basic_guider(flow, flow.schnell), {}, r"inversion_scale \(γ₂\) = 0 with the negative conditioning"),
        # the released DDIM update is VP-only
        (cfg_guider(flow, flow.dev), {"rule": "ddim_released"}, r"rule 'ddim_released' .* flow model"),
    ]
    for guider, options, message in cases:
        with pytest.raises(ValueError, match=message):
            advanced(flow, guider, zigzag_node(flow, **options), flow.dev)
        assert counter.calls == 0 and guider.cfg in (1.0, 4.5) and nothing_registered(guider)


# --- SEG on flow transformers ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["dev", "schnell", "sd3"])
def test_seg_refuses_flow_transformers_naming_joint_attention(flow, model):
    patcher = getattr(flow, model)
    for node in ("ZigzagSmoothedEnergyGuidance", "ZigzagSmoothedEnergyGuidanceSigmas"):  # percent / sigma bounds
        with pytest.raises(ValueError, match=r"seg_scale.*joint attention over text and image tokens"):
            flow.node[node].execute(patcher, 3.0, -1.0, "mid", 0.0, 1.0)
    assert "sampler_calc_cond_batch_function" not in patcher.model_options
