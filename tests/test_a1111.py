"""The AUTOMATIC1111/Forge extension's logic (the ``extensions/sd-webui-zigzag/zigzag_webui`` package).

No webui can be installed here, so the host is played by *contract stand-ins*: plain objects with the
attributes and call signatures the real webui code has (read in A1111 1.10.1, Forge, reForge and
Forge Classic/Neo; see the README). Sampling runs for real: zigzag_kdiff on k-diffusion's
``DiscreteEpsDDPMDenoiser`` over a small ε-network, compared with k-diffusion's ``sample_euler`` and
with calling the library directly.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import sys
import types
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from conftest import TinyEps, sd_alphas_cumprod
from torch import nn

import zigzag_kdiff
from zigzag_kdiff import count_model_calls

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


_load("zigzag_webui")
from zigzag_webui import forge as zforge  # noqa: E402
from zigzag_webui import infotext as zinfo  # noqa: E402
from zigzag_webui import names as znames  # noqa: E402
from zigzag_webui import registry as zreg  # noqa: E402
from zigzag_webui import settings as zset  # noqa: E402
from zigzag_webui import xyz as zxyz  # noqa: E402

checkout = _load("zigzag_checkout")

# Schedule type labels, names and aliases of A1111 1.10.1, Forge, reForge and Forge Neo (modules/sd_schedulers.py).
HOST_SCHEDULER_NAMES = [
    *["Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "SGMUniform"],
    *["KL Optimal", "Align Your Steps", "Simple", "Normal", "DDIM", "Beta", "Turbo", "Align Your Steps GITS"],
    *["Align Your Steps 11", "Align Your Steps 32", "Sinusoidal SF", "Invcosinusoidal SF", "Cosine", "Phi"],
    *["React Cosinusoidal DynSF", "Align Your Steps Custom", "Cosine-exponential Blend", "Laplace"],
    *["Karras Dynamic", "SD Turbo", "Variance Preserving", "CFG++", "Flux2"],
    *["automatic", "uniform", "karras", "exponential", "sgm_uniform", "kl_optimal", "ddim", "beta", "simple"],
]


class InterruptedException(BaseException):
    """Like ``modules.sd_samplers_common.InterruptedException`` (a BaseException)."""


class StandInP:
    """Contract stand-in for ``StableDiffusionProcessing``: the attributes the extension reads/writes."""

    def __init__(self, **attributes) -> None:
        self.is_hr_pass = False
        self.extra_generation_params = {}
        self.comments = {}
        self.override_settings = {}
        self.__dict__.update(attributes)

    def comment(self, text: str) -> None:
        self.comments[text] = 1


Call = namedtuple("Call", "received_scale scale sigma rows")


class StandInCFGDenoiser(nn.Module):
    """Contract stand-in for the webui's ``CFGDenoiser``: A1111's exact ``forward`` signature (no ``**kwargs``:
    any extra key raises), counts calls in ``step``, carries ``p``, ``steps`` and ``total_steps``, raises
    ``InterruptedException`` when interrupted, applies NGMS (``s_min_uncond``: the conditional branch alone on
    odd call indices below that σ, or on every call with ``s_min_uncond_all``) as A1111 and Forge do.

    ``forge=True`` adds Forge's behaviour: the hires pass uses ``p.hr_cfg``, and the branches are evaluated as
    Forge's ``sampling_function_inner`` does with the UNet patcher's ``model_options``
    (``inner_model.inner_model.forge_objects.unet.model_options``, read on every call): no unconditional batch
    at scale 1 (unless ``disable_cfg1_optimization``) or when ``uncond`` is None, then the
    ``sampler_pre_cfg_function`` list as ``fn(model, cond, uncond, x, timestep, model_options)``, one batch of
    all remaining rows, a branch without rows predicts zeros, then ``sampler_post_cfg_function``."""

    def __init__(
        self, p: StandInP, *, forge: bool = False, interrupt_at: int | None = None, s_min_uncond_all: bool = False
    ) -> None:
        super().__init__()
        from k_diffusion.external import DiscreteEpsDDPMDenoiser

        self.inner_model = DiscreteEpsDDPMDenoiser(TinyEps(), sd_alphas_cumprod(), quantize=True)
        if forge:
            unet = types.SimpleNamespace(model_options={})
            self.inner_model.inner_model.forge_objects = types.SimpleNamespace(unet=unet)
        self.p, self.forge, self.interrupt_at, self.s_min_uncond_all = p, forge, interrupt_at, s_min_uncond_all
        self.step, self.steps, self.total_steps, self.calls = 0, None, None, []

    @property
    def model_options(self) -> dict:
        return self.inner_model.inner_model.forge_objects.unet.model_options

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        if self.interrupt_at is not None and self.step == self.interrupt_at:
            self.hr_cfg_at_interrupt = getattr(self.p, "hr_cfg", None)
            self.model_options_at_interrupt = self.model_options if self.forge else None
            raise InterruptedException
        received = cond_scale
        if self.forge and self.p.is_hr_pass:
            cond_scale = self.p.hr_cfg
        ngms = (self.step % 2 or self.s_min_uncond_all) and s_min_uncond > 0 and float(sigma[0]) < s_min_uncond
        if ngms:
            cond_scale = 1.0
        if self.forge:
            denoised, rows = self._forge_branches(x, sigma, uncond, cond, cond_scale)
        elif ngms:  # A1111 skips the unconditional rows
            denoised, rows = self.inner_model(x, sigma, cond=cond), len(x)
        else:  # one batch of cond and uncond rows, as A1111 (also at scale 1)
            both = self.inner_model(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=torch.cat([cond, uncond]))
            denoised_cond, denoised_uncond = both.chunk(2)
            denoised, rows = denoised_uncond + (denoised_cond - denoised_uncond) * cond_scale, 2 * len(x)
        self.calls.append(Call(received, float(cond_scale), float(sigma.max()), rows))
        self.step += 1
        return denoised

    def _forge_branches(self, x, sigma, uncond, cond, cond_scale):
        options = self.model_options
        skip_uncond = cond_scale == 1 and not options.get("disable_cfg1_optimization", False)
        conds, unconds = [cond], (None if skip_uncond or uncond is None else [uncond])
        for fn in options.get("sampler_pre_cfg_function", []):
            _, conds, unconds, x, sigma, options = fn(self, conds, unconds, x, sigma, options)
        rows = [(c, 0) for c in conds] + [(u, 1) for u in unconds or []]
        predictions = [torch.zeros_like(x), torch.zeros_like(x)]
        if rows:
            batch = len(rows)
            out = self.inner_model(
                torch.cat([x] * batch), torch.cat([sigma] * batch), cond=torch.cat([c for c, _ in rows])
            )
            for chunk, (_, branch) in zip(out.chunk(batch), rows):
                predictions[branch] = predictions[branch] + chunk
        cond_pred, uncond_pred = predictions
        denoised = uncond_pred + (cond_pred - uncond_pred) * cond_scale
        for fn in options.get("sampler_post_cfg_function", []):
            denoised = fn({"denoised": denoised, "cond_denoised": cond_pred, "uncond_denoised": uncond_pred})
        return denoised, len(rows) * len(x)


def settings_opts(**values) -> types.SimpleNamespace:
    """A stand-in for ``shared.opts`` with the extension's settings (defaults unless given)."""
    return types.SimpleNamespace(**{s.key: values.get(s.key, s.default) for s in zset.SETTINGS})


def extra_args(batch: int = 2, scale: float = 7.0, uncond: bool = True) -> dict:
    """What ``KDiffusionSampler.sample`` passes (A1111 1.10.1): cond, image_cond, uncond, cond_scale, s_min_uncond."""
    cond = torch.linspace(-1, 1, 3).repeat(batch, 1)
    return {
        "cond": cond,
        "image_cond": None,
        "uncond": torch.zeros_like(cond) if uncond else None,
        "cond_scale": scale,
        "s_min_uncond": 0.0,
    }


def karras(steps: int) -> torch.Tensor:
    import k_diffusion

    return k_diffusion.sampling.get_sigmas_karras(steps, 0.0292, 14.6146)


def run(rule: str, model: StandInCFGDenoiser, sigmas: torch.Tensor, args: dict, opts=None, seed: int = 0, steps=None):
    """Sample as ``KDiffusionSampler`` does: launch_sampling sets ``steps`` (requested, default: the schedule's)
    and ``total_steps``, then calls the function."""
    sampler_data = zreg.sampler_data_class(StandInSamplerData, lambda: opts or settings_opts())
    model.steps = len(sigmas) - 1 if steps is None else steps
    model.total_steps = sampler_data("n", None, [], {}).total_steps(model.steps)
    model.step = 0
    func = zreg.make_sampler_function(rule, lambda: opts or settings_opts())
    steps_seen = []
    cond = args["cond"]
    batch = len(cond["crossattn"] if isinstance(cond, dict) else cond)  # Flux/SDXL conds are dicts
    x = torch.randn(batch, 4, generator=torch.Generator().manual_seed(seed)) * sigmas[0]
    out = func(model, x, sigmas=sigmas, extra_args=args, disable=True, callback=lambda d: steps_seen.append(d["i"]))
    return out, x, steps_seen


# --- settings, names, bookkeeping -------------------------------------------------------------------------


def test_sampler_names_survive_every_hosts_scheduler_parser():
    assert list(znames.SAMPLER_NAMES.values()) == ["Zigzag Euler", "Zigzag (DDIM)", "Zigzag DPM++ 2M"]
    for name in znames.SAMPLER_NAMES.values():
        znames.check_sampler_name(name, HOST_SCHEDULER_NAMES)
    with pytest.raises(ValueError, match="DDIM"):
        znames.check_sampler_name("Zigzag DDIM", HOST_SCHEDULER_NAMES)


def test_settings_accept_api_and_infotext_strings_and_name_the_bad_key():
    settings = zset.read_settings(
        settings_opts(zigzag_steps_fraction="0.5", zigzag_rounds="2", zigzag_inversion_scale=1)
    )
    assert (settings.steps_fraction, settings.rounds, settings.inversion_scale) == (0.5, 2, 1.0)
    assert zset.read_settings(types.SimpleNamespace()) == zset.ZigzagSettings()
    bad = [
        ({"zigzag_steps_fraction": 1.5}, r"zigzag_steps_fraction must be in \[0, 1\]"),
        ({"zigzag_rounds": 1.5}, "zigzag_rounds .* integer >= 0"),
        ({"zigzag_rounds": -1}, "zigzag_rounds .* integer >= 0"),
        ({"zigzag_inversion_scale": "nan"}, "zigzag_inversion_scale must be a finite number"),
        ({"zigzag_guidance_sigma_low": -0.1}, "zigzag_guidance_sigma_low must be a noise level"),
        ({"zigzag_guidance_sigma_low": 3.0, "zigzag_guidance_sigma_high": 2.0}, "sigma_low <= zigzag_guidance"),
        ({"zigzag_ddim_inversion_update": "diffusers"}, r"must be one of \['paper', 'released'\]"),
        ({"zigzag_inversion_guidance": -1}, r"zigzag_inversion_guidance \(g₂\) must be a distilled guidance >= 0"),
    ]
    for values, message in bad:
        with pytest.raises(ValueError, match=message):
            zset.read_settings(settings_opts(**values))


def test_guidance_interval_setting():
    assert zset.ZigzagSettings().guidance_interval is None
    assert zset.ZigzagSettings(sigma_low=0.3).guidance_interval == (0.3, float("inf"))
    assert zset.ZigzagSettings(sigma_low=0.3, sigma_high=5.0).guidance_interval == (0.3, 5.0)


def test_zigzag_steps_scale_with_the_step_count():
    table = {(20, 1.0): 19, (20, 0.5): 10, (25, 0.5): 13, (20, 0.0): 0, (1, 1.0): 0, (7, 0.99): 6, (40, 0.25): 10}
    assert {key: zset.zigzag_steps_for(*key) for key in table} == table


@pytest.mark.parametrize("steps", [1, 2, 7, 20, 33])
@pytest.mark.parametrize("fraction,rounds", [(1.0, 1), (0.5, 2), (0.0, 3), (0.3, 0)])
def test_total_steps_is_the_librarys_call_count(steps, fraction, rounds):
    settings = zset.ZigzagSettings(steps_fraction=fraction, rounds=rounds)
    lam = zset.zigzag_steps_for(steps, fraction)
    assert zset.total_model_calls(steps, settings) == count_model_calls(karras(steps), lam, rounds)


def test_infotext_holds_non_defaults_and_pasting_restores_them():
    assert zinfo.infotext_params(zset.ZigzagSettings()) == {}
    settings = zset.ZigzagSettings(
        inversion_scale=1.5, inversion_guidance=2.0, steps_fraction=0.5, rounds=2, sigma_low=0.28, sigma_high=5.42
    )
    params = zinfo.infotext_params(settings)
    assert params == {
        "Zigzag inversion scale": 1.5,
        "Zigzag inversion guidance": 2.0,
        "Zigzag steps fraction": 0.5,
        "Zigzag rounds": 2,
        "Zigzag guidance sigma low": 0.28,
        "Zigzag guidance sigma high": 5.42,
    }
    # pasting: the webui maps each OptionInfo(infotext=...) label back to its key and casts the string
    by_label = {s.infotext: s.key for s in zset.SETTINGS}
    pasted = {"Sampler": "Zigzag Euler", **{label: str(value) for label, value in params.items()}}
    zinfo.fill_infotext_defaults(pasted, znames.SAMPLER_NAMES.values())
    restored = {by_label[label]: zset.validate_setting(by_label[label], pasted[label]) for label in by_label}
    assert zset.read_settings(types.SimpleNamespace(**restored)) == settings
    assert pasted["Zigzag DDIM update"] == "paper"  # missing means default: pasted so the setting resets
    other = {"Sampler": "Euler"}
    zinfo.fill_infotext_defaults(other, znames.SAMPLER_NAMES.values())
    assert other == {"Sampler": "Euler"}


# --- the registered sampler on a stand-in CFGDenoiser ---------------------------------------------------


StandInSamplerDataTuple = namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])


class StandInSamplerData(StandInSamplerDataTuple):
    """Contract stand-in for ``modules.sd_samplers_common.SamplerData`` (a namedtuple with total_steps)."""

    def total_steps(self, steps):
        return steps * 2 if self.options.get("second_order", False) else steps


@pytest.mark.parametrize("rule", ["euler", "ddim", "dpmpp_2m"])
def test_call_count_scales_progress_and_untouched_extra_args(rule):
    p = StandInP()
    model = StandInCFGDenoiser(p)
    sigmas = karras(8)
    args = extra_args(scale=6.0)
    snapshot = dict(args)
    opts = settings_opts(zigzag_inversion_scale=1.5, zigzag_rounds=2, zigzag_steps_fraction=0.5)
    out, _, steps_seen = run(rule, model, sigmas, args, opts)

    assert torch.isfinite(out).all()
    assert steps_seen == list(range(8))  # the progress callback: once per step
    assert len(model.calls) == model.step == model.total_steps == 8 + 2 * 2 * 4
    assert args.keys() == snapshot.keys() and all(args[k] is snapshot[k] for k in args)
    # cond_scale is replaced only on inversion calls: step i = denoise, then (inversion, denoise) × T_max
    expected = []
    for i in range(8):
        expected += [6.0] + ([1.5, 6.0] * 2 if i < 4 else [])
    assert [c.received_scale for c in model.calls] == expected
    inversion_sigmas = [c.sigma for c in model.calls if c.received_scale == 1.5]
    level = 0 if rule == "ddim" else 1  # the Euler inversion evaluates at σ_{i+1}, the DDIM rule at σ_i
    assert inversion_sigmas == pytest.approx([float(sigmas[i + level]) for i in range(4) for _ in range(2)])


def test_without_zigzag_steps_it_is_k_diffusions_euler():
    import k_diffusion

    sigmas, args = karras(10), extra_args()
    opts = settings_opts(zigzag_steps_fraction=0.0, zigzag_inversion_scale=30.0)  # no zigzag: γ₂ is never used
    ours, x, _ = run("euler", StandInCFGDenoiser(StandInP()), sigmas, args, opts)
    reference = k_diffusion.sampling.sample_euler(StandInCFGDenoiser(StandInP()), x, sigmas, args, disable=True)
    assert torch.equal(ours, reference)


def test_zigzag_dpmpp_2m_without_zigzag_steps_is_k_diffusions_dpmpp_2m():
    import k_diffusion

    sigmas, args = karras(10), extra_args()
    opts = settings_opts(zigzag_steps_fraction=0.0)
    ours, x, steps_seen = run("dpmpp_2m", StandInCFGDenoiser(StandInP()), sigmas, args, opts)
    reference = k_diffusion.sampling.sample_dpmpp_2m(StandInCFGDenoiser(StandInP()), x, sigmas, args, disable=True)
    assert torch.equal(ours, reference) and steps_seen == list(range(10))


@pytest.mark.parametrize("rule,update", [("euler", "paper"), ("ddim", "released"), ("dpmpp_2m", "released")])
def test_the_extension_adds_no_sampling_of_its_own(rule, update):
    sigmas, args = karras(10), extra_args()
    opts = settings_opts(zigzag_ddim_inversion_update=update, zigzag_rounds=2)
    ours, x, _ = run(rule, StandInCFGDenoiser(StandInP()), sigmas, args, opts)
    library = getattr(zigzag_kdiff, f"sample_zigzag_{rule}")
    kwargs = {"inversion_update": update} if rule == "ddim" else {}
    direct = library(StandInCFGDenoiser(StandInP()), x, sigmas, args, disable=True, zigzag_rounds=2, **kwargs)
    assert torch.equal(ours, direct)


def test_img2img_partial_schedule_and_batch_count_bookkeeping():
    sigmas = karras(20)[8:]  # denoising strength ~0.6: 12 of 20 steps, as KDiffusionSampler.sample_img2img
    model = StandInCFGDenoiser(StandInP())
    _, _, steps_seen = run("euler", model, sigmas, extra_args(batch=3), settings_opts(zigzag_steps_fraction=0.5))
    assert steps_seen == list(range(12))
    assert len(model.calls) == model.total_steps == 12 + 2 * 6


def test_forge_hires_pass_uses_hr_cfg_and_restores_it():
    p = StandInP(is_hr_pass=True, hr_cfg=4.0)
    model = StandInCFGDenoiser(p, forge=True)
    run("euler", model, karras(6), extra_args(scale=7.0), settings_opts(zigzag_inversion_scale=1.0))
    scales = [c.scale for c in model.calls]
    assert scales == [4.0, 1.0, 4.0] * 5 + [4.0] and p.hr_cfg == 4.0  # γ₁ = Hires CFG Scale, γ₂ = 1
    assert [c.rows for c in model.calls][:2] == [4, 2]  # Forge skips the unconditional pass at scale 1
    with pytest.raises(ValueError, match="zigzag_inversion_scale or raise the Hires CFG Scale"):
        run("euler", model, karras(6), extra_args(scale=7.0), settings_opts(zigzag_inversion_scale=5.0))


def test_a1111_hires_pass_keeps_the_cfg_scale():
    p = StandInP(is_hr_pass=True)  # A1111 1.10 has no hr_cfg
    model = StandInCFGDenoiser(p)
    run("euler", model, karras(4), extra_args(scale=5.0))
    assert [c.scale for c in model.calls] == [5.0, 0.0, 5.0] * 3 + [5.0]


def test_negative_guidance_gap_raises_before_any_model_call():
    model = StandInCFGDenoiser(StandInP())
    with pytest.raises(ValueError, match="γ₂ = 8 must not exceed the CFG Scale γ₁ = 7"):
        run("ddim", model, karras(6), extra_args(scale=7.0), settings_opts(zigzag_inversion_scale=8.0))
    assert model.calls == []


def test_forge_cfg_1_without_uncond_inverts_at_the_same_scale():
    p = StandInP()
    model = StandInCFGDenoiser(p, forge=True)
    out, _, _ = run("euler", model, karras(6), extra_args(scale=1.0, uncond=False))
    assert torch.isfinite(out).all()
    assert {c.scale for c in model.calls} == {1.0} and len(model.calls) == model.total_steps == 16
    assert any("guidance gap 0" in text for text in p.comments)
    assert p.extra_generation_params["Zigzag note"] == "gap 0 (CFG Scale 1)"  # the API's info carries the infotext


def test_ddim_schedule_with_an_extra_step_is_noted_as_such():
    """A1111/Forge's "DDIM" schedule gives 7 steps for 6 requested (1000 not divisible by 6)."""
    p = StandInP()
    model = StandInCFGDenoiser(p)
    run("euler", model, karras(7), extra_args(), steps=6)
    assert len(model.calls) == model.total_steps == 7 + 2 * 6
    (note,) = p.comments
    assert "19 model calls instead of the planned 16 (the schedule has 7 steps for the 6 requested)" in note
    assert "guidance interval" not in note
    assert p.extra_generation_params["Zigzag note"] == "19 model calls (planned 16)"
    quiet = StandInP()
    run("euler", StandInCFGDenoiser(quiet), karras(6), extra_args(), steps=6)
    assert quiet.comments == {} and "Zigzag note" not in quiet.extra_generation_params


def test_notes_are_told_once_and_markers_accumulate():
    p = StandInP()
    zinfo.notify(p, "first thing", "a")
    zinfo.notify(p, "first thing", "a")
    zinfo.notify(p, "second thing", "b")
    assert list(p.comments) == ["Zigzag: first thing", "Zigzag: second thing"]
    assert p.extra_generation_params == {"Zigzag note": "a; b"}


def test_grid_cells_sharing_one_infotext_dict_get_their_own_entries():
    """X/Y/Z makes each cell with ``copy(p)``: one ``extra_generation_params`` dict for all cells."""
    grid_p = StandInP()
    cells = [copy.copy(grid_p) for _ in range(4)]
    assert cells[0].extra_generation_params is cells[3].extra_generation_params
    shared_params = grid_p.extra_generation_params

    run("euler", StandInCFGDenoiser(cells[0]), karras(6), extra_args(), settings_opts(zigzag_rounds=0))
    assert shared_params == {"Zigzag rounds": 0}
    run("euler", StandInCFGDenoiser(cells[1]), karras(6), extra_args())  # rounds back at the default 1
    assert shared_params == {}
    forge_cfg_1 = StandInCFGDenoiser(cells[2], forge=True)
    run("euler", forge_cfg_1, karras(6), extra_args(scale=1.0, uncond=False), settings_opts(zigzag_rounds=2))
    assert shared_params == {"Zigzag rounds": 2, "Zigzag note": "gap 0 (CFG Scale 1)"}
    # the same p again (hires pass, next batch iteration) keeps its first pass's markers
    run("euler", StandInCFGDenoiser(cells[2], forge=True), karras(6), extra_args(), settings_opts(zigzag_rounds=2))
    assert shared_params == {"Zigzag rounds": 2, "Zigzag note": "gap 0 (CFG Scale 1)"}
    run("euler", StandInCFGDenoiser(cells[3]), karras(6), extra_args(), settings_opts(zigzag_inversion_scale=1.5))
    assert shared_params == {"Zigzag inversion scale": 1.5}  # no stale rounds, no stale note


@pytest.mark.parametrize(
    "hires,refused",
    [
        ({"hr_cfg": 3.0}, True),  # the hires pass would run γ₂ = 5 against γ₁ = 3
        ({"hr_cfg": 3.0, "hr_sampler_name": "Zigzag (DDIM)"}, True),
        ({"hr_cfg": 3.0, "hr_sampler_name": "zigzag_euler"}, True),
        ({"hr_cfg": 3.0, "hr_sampler_name": "Euler"}, False),  # the hires pass does not zigzag
        ({"hr_cfg": 6.0}, False),
        ({"hr_cfg": 1.0}, False),  # Forge drops the negative prompt: hires inversions at scale 1 (noted there)
        ({}, False),  # A1111 1.10: no hr_cfg, the hires pass uses the CFG Scale (checked now)
        ({"hr_cfg": 3.0, "enable_hr": False}, False),
    ],
)
def test_hires_cfg_scale_is_checked_before_the_first_pass(hires, refused):
    p = StandInP(**{"enable_hr": True, "sampler_name": "Zigzag Euler", "hr_sampler_name": None, **hires})
    model = StandInCFGDenoiser(p, forge="hr_cfg" in hires)
    opts = settings_opts(zigzag_inversion_scale=5.0)
    if refused:
        with pytest.raises(ValueError, match=r"γ₂ = 5 must not exceed the Hires CFG Scale γ₁ = 3 of the hires pass"):
            run("euler", model, karras(6), extra_args(scale=7.0), opts)
        assert model.calls == [] and p.extra_generation_params == {}
    else:
        run("euler", model, karras(6), extra_args(scale=7.0), opts)
        assert len(model.calls) == 16


@pytest.mark.parametrize("s_min_uncond_all", [False, True])
def test_ngms_is_kept_out_of_the_inversion_calls(s_min_uncond_all):
    model = StandInCFGDenoiser(StandInP(), s_min_uncond_all=s_min_uncond_all)
    args = {**extra_args(scale=6.0), "s_min_uncond": 100.0}  # NGMS below σ = 100: every call
    run("euler", model, karras(6), args)
    inversions = [c for c in model.calls if c.received_scale == 0.0]
    denoising = [c for c in model.calls if c.received_scale == 6.0]
    assert len(inversions) == 5 and {c.scale for c in inversions} == {0.0}  # γ₂ = 0 on every inversion
    ngms = [i % 2 == 1 or s_min_uncond_all for i, c in enumerate(model.calls) if c.received_scale == 6.0]
    assert [c.scale for c in denoising] == [1.0 if hit else 6.0 for hit in ngms]  # the webui's NGMS, untouched
    assert args["s_min_uncond"] == 100.0


def rows_per_image(model: StandInCFGDenoiser, batch: int) -> int:
    return sum(c.rows for c in model.calls) // batch


@pytest.mark.parametrize("rule", ["euler", "ddim"])
def test_forge_inversion_at_scale_0_is_one_branch_and_the_same_result(rule):
    """Forge evaluates an inversion at γ₂ = 0 as the unconditional batch alone; the result is today's (both
    branches, forced by a CFG hook in model_options) to float rounding: ``u + (0 − u)·0`` is ``u`` exactly, but
    the network's matrix products round differently in a batch of 2 rows than in one of 4."""
    sigmas, batch = karras(8), 2
    one_branch = StandInCFGDenoiser(StandInP(), forge=True)
    both = StandInCFGDenoiser(StandInP(), forge=True)
    identity = lambda args: args["denoised"]  # noqa: E731  (a post-CFG hook: Forge extensions such as SAG)
    both.inner_model.inner_model.forge_objects.unet.model_options = hook_options = {
        "sampler_post_cfg_function": [identity]
    }
    fast, _, _ = run(rule, one_branch, sigmas, extra_args(batch=batch))
    slow, _, _ = run(rule, both, sigmas, extra_args(batch=batch))
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(
        fast,
        run(
            rule,
            StandInCFGDenoiser(StandInP(), forge=True),
            sigmas,
            extra_args(batch=batch),
            settings_opts(zigzag_inversion_scale=1.0),
        )[0],
    )
    assert [c.rows for c in one_branch.calls][:4] == [4, 2, 4, 4]  # denoise, inversion (uncond rows only), ...
    assert [c.rows for c in both.calls][:4] == [4, 4, 4, 4]
    assert rows_per_image(one_branch, batch) == 2 * 8 + 3 * 7 and rows_per_image(both, batch) == 2 * 8 + 4 * 7
    assert one_branch.model_options == {}
    assert both.inner_model.inner_model.forge_objects.unet.model_options is hook_options


def test_forge_one_branch_keeps_out_of_cfg_hooks_and_scale_1_paths():
    def options_with(**entries):
        model = StandInCFGDenoiser(StandInP(), forge=True)
        model.inner_model.inner_model.forge_objects.unet.model_options = dict(entries)
        return model

    for key in zforge.FORGE_CFG_HOOKS:
        with zforge.unconditional_branch_only(options_with(**{key: [object()]})) as installed:
            assert not installed
    with zforge.unconditional_branch_only(options_with(disable_cfg1_optimization=True)) as installed:
        assert not installed
    # a hook marked inversion-neutral (SEG's post-CFG function without inversion SEG) does not block it
    neutral = type("Neutral", (), {zforge.INVERSION_NEUTRAL: True})()
    model = options_with(sampler_post_cfg_function=[neutral])
    with zforge.unconditional_branch_only(model) as installed:
        options = model.inner_model.inner_model.forge_objects.unet.model_options
        assert installed and options["sampler_post_cfg_function"] == [neutral]
        assert options["sampler_pre_cfg_function"] == [zforge.skip_conditional_branch]
    assert model.inner_model.inner_model.forge_objects.unet.model_options == {"sampler_post_cfg_function": [neutral]}
    with zforge.unconditional_branch_only(StandInCFGDenoiser(StandInP())) as installed:  # A1111: no forge_objects
        assert not installed
    # at scale 1 (NGMS, skip early CFG) Forge has already dropped the uncond: the hook leaves the cond
    cond, uncond = [object()], [object()]
    assert zforge.skip_conditional_branch("m", cond, None, "x", "t", {})[1] is cond
    assert zforge.skip_conditional_branch("m", cond, uncond, "x", "t", {})[1:3] == ([], uncond)
    # reForge / Forge Classic call pre-CFG functions ComfyUI-style, after the branches ran: nothing changes
    out = [object(), object()]
    assert zforge.skip_conditional_branch({"conds_out": out, "cond_scale": 0.0}) is out


def test_forge_hires_pass_at_scale_0_is_one_branch():
    p = StandInP(is_hr_pass=True, hr_cfg=4.0)
    model = StandInCFGDenoiser(p, forge=True)
    run("euler", model, karras(6), extra_args(scale=7.0))
    assert [(c.scale, c.rows) for c in model.calls][:3] == [(4.0, 4), (0.0, 2), (4.0, 4)]
    assert p.hr_cfg == 4.0 and model.model_options == {}


@pytest.mark.parametrize("forge", [False, True])
def test_rows_per_image_at_the_defaults(forge):
    """T = 50, λ = 49, T_max = 1: 2T + 4λ = 296 rows per image on A1111 at γ₂ = 0 (no per-call branch switch),
    2T + 3λ = 247 on Forge at γ₂ = 0 and 1; A1111 runs both branches also at γ₂ = 1."""
    rows = {}
    for inversion_scale in (0.0, 1.0):
        model = StandInCFGDenoiser(StandInP(), forge=forge)
        run("euler", model, karras(50), extra_args(batch=1), settings_opts(zigzag_inversion_scale=inversion_scale))
        rows[inversion_scale] = rows_per_image(model, 1)
    assert rows == ({0.0: 247, 1.0: 247} if forge else {0.0: 296, 1.0: 296})


def test_guidance_interval_scales_and_exact_call_count():
    p = StandInP()
    model = StandInCFGDenoiser(p)
    sigmas = karras(10)
    opts = settings_opts(zigzag_guidance_sigma_low=0.5, zigzag_guidance_sigma_high=6.0)
    run("euler", model, sigmas, extra_args(scale=7.0), opts)
    exact = count_model_calls(sigmas, 9, 1, (0.5, 6.0))
    assert len(model.calls) == model.total_steps == exact < 10 + 2 * 9
    for call in model.calls:
        inside = 0.5 <= call.sigma <= 6.0
        assert call.scale == (7.0 if inside else 1.0) or call.received_scale == 0.0
    (note,) = p.comments
    assert f"{exact} model calls instead of the planned 28 (only steps inside the guidance interval zigzag)" in note
    assert p.extra_generation_params["Zigzag note"] == f"{exact} model calls (planned 28)"
    assert p.extra_generation_params["Zigzag guidance sigma low"] == 0.5


def test_interrupt_propagates_and_nothing_stays_changed():
    p = StandInP(is_hr_pass=True, hr_cfg=4.0)
    model = StandInCFGDenoiser(p, forge=True, interrupt_at=4)  # call 4: the inversion of step 1, at γ₂
    args = extra_args()
    snapshot = dict(args)
    with pytest.raises(InterruptedException):
        run("euler", model, karras(6), args)
    assert model.hr_cfg_at_interrupt == 0.0  # interrupted inside the inversion call, with hr_cfg set to γ₂ ...
    assert p.hr_cfg == 4.0 and len(model.calls) == 4  # ... and restored
    assert model.model_options_at_interrupt["sampler_pre_cfg_function"] == [zforge.skip_conditional_branch]
    assert model.model_options == {}  # the one-branch hook is gone with the interrupted call
    assert args.keys() == snapshot.keys() and all(args[k] is snapshot[k] for k in args)


@pytest.mark.parametrize("rule", ["euler", "ddim", "dpmpp_2m"])
def test_flow_models_sample_with_flow_true(rule):
    """A1111 1.10's SD3 (``SD3Denoiser``: a ``DiscreteSchedule`` of flow sigmas returning ``x − σ·v``) and Forge's
    flow models: the model's noise levels stay in [0, 1], so the engine samples flow latents (``flow=True``)."""
    model = StandInCFGDenoiser(StandInP())
    model.inner_model.sigmas = torch.linspace(0.001, 1.0, 1000)  # a rectified-flow model's noise levels
    sigmas, args = torch.linspace(1, 0, 6), extra_args()
    ours, x, _ = run(rule, model, sigmas, args)
    library = getattr(zigzag_kdiff, f"sample_zigzag_{rule}")
    direct = library(StandInCFGDenoiser(StandInP()), x, sigmas, args, disable=True, flow=True)
    assert torch.equal(ours, direct) and len(model.calls) == 5 + 2 * 4
    if rule != "euler":  # the Euler rule is the same on both latents; the others are not
        assert not torch.allclose(ours, library(StandInCFGDenoiser(StandInP()), x, sigmas, args, disable=True))
    released = StandInCFGDenoiser(StandInP())
    released.inner_model.sigmas = model.inner_model.sigmas
    if rule == "ddim":  # the released code's update reproduces VP rescalings a flow latent does not have
        with pytest.raises(ValueError, match="zigzag_ddim_inversion_update = 'released'.*rectified flow"):
            run(rule, released, sigmas, args, settings_opts(zigzag_ddim_inversion_update="released"))
        with pytest.raises(ValueError, match="zigzag_ddim_inversion_update = 'released'"):  # also without zigzag
            opts = settings_opts(zigzag_ddim_inversion_update="released", zigzag_rounds=0)
            run(rule, released, sigmas, args, opts)
        assert released.calls == []


def test_flow_model_with_timesteps_for_sigmas_names_the_schedule_type():
    """Seen in the real Forge with Flux dev: Schedule type Automatic hands the sampler timesteps (9999 … 0) as
    sigmas; the entry says which Schedule type to choose, before any model call."""
    model = StandInCFGDenoiser(StandInP())
    model.inner_model.sigmas = torch.linspace(0.001, 1.0, 1000)
    with pytest.raises(ValueError, match=r"σ₀ = 9999 .*Schedule type 'Simple'"):
        run("euler", model, torch.linspace(9999, 0, 6), extra_args())
    assert model.calls == []


# --- Forge with Flux: distilled guidance ----------------------------------------------------------------


class CFGDenoiserParams:
    """Contract stand-in for ``modules.script_callbacks.CFGDenoiserParams`` (A1111 1.10.1 and Forge)."""

    def __init__(
        self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None
    ):
        self.x, self.image_cond, self.sigma = x, image_cond, sigma
        self.sampling_step, self.total_sampling_steps = sampling_step, total_sampling_steps
        self.text_cond, self.text_uncond, self.denoiser = text_cond, text_uncond, denoiser


class TinyDistilledFlow(nn.Module):
    """A guidance-distilled flow model on 4-vectors: ``D = x − σ·v(x, σ, c, g)``, the distilled guidance g an input
    of the network (as Flux dev's guidance embedding), one value per row."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Linear(4 + 3 + 2, 32), nn.SiLU(), nn.Linear(32, 4))

    def forward(self, x, sigma, cond, guidance, **unused):
        guidance = torch.as_tensor(guidance, dtype=x.dtype).expand(x.shape[0])
        velocity = self.net(torch.cat([x, cond, sigma[:, None], guidance[:, None] / 10], dim=1))
        return x - sigma[:, None] * velocity


class ForgeScheduleLinker(nn.Module):
    """Contract stand-in for Forge's ``k_diffusion.external.ForgeScheduleLinker``: ``sigmas`` are the predictor's
    (``PredictionFlux``: flow levels in (0, 1]) and ``inner_model`` is ``shared.sd_model`` (``forge_objects``)."""

    def __init__(self, sd_model) -> None:
        super().__init__()
        self.register_buffer("sigmas", torch.arange(1, 1001) / 1000)
        self.inner_model = sd_model


class StandInForgeFlux(StandInCFGDenoiser):
    """Forge's ``CFGDenoiser.forward`` with a Flux model (``modules/sd_samplers_cfg_denoiser.py``,
    ``backend/sampling/sampling_function.py`` at dfdcbab): ``text_cond`` / ``text_uncond`` rebuilt for every call
    (dicts with ``crossattn`` and, on Flux dev, ``guidance``: one value per row), the ``cfg_denoiser`` callbacks
    called with ``CFGDenoiserParams(x, image_cond, sigma, step, steps, text_cond, text_uncond, self)`` (an
    exception there is reported and ignored), ``p.hr_cfg`` in the hires pass, the uncond dropped at scale 1 or when
    it is None, then ``sampler_pre_cfg_function``s and one batch of the remaining rows through the model with
    each row's own guidance."""

    def __init__(self, p: StandInP, callbacks=(), *, distilled: bool = True) -> None:
        super().__init__(p, forge=True)
        p.sd_model = types.SimpleNamespace(
            use_distilled_cfg_scale=distilled,
            forge_objects=types.SimpleNamespace(unet=types.SimpleNamespace(model_options={})),
        )
        self.inner_model = ForgeScheduleLinker(p.sd_model)
        self.flow_model, self.callbacks, self.guidance_per_call = TinyDistilledFlow(), list(callbacks), []

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        received = cond_scale
        if self.p.is_hr_pass:
            cond_scale = self.p.hr_cfg
        text_cond = {key: value.clone() for key, value in cond.items()}  # reconstruct_multicond_batch: a new dict
        text_uncond = None if uncond is None else {key: value.clone() for key, value in uncond.items()}
        params = CFGDenoiserParams(x, image_cond, sigma, self.step, self.total_steps, text_cond, text_uncond, self)
        for callback in self.callbacks:
            try:
                callback(params)
            except Exception:  # script_callbacks.cfg_denoiser_callback: report_exception, go on
                pass
        options = self.model_options
        skip_uncond = cond_scale == 1 and not options.get("disable_cfg1_optimization", False)
        conds = [params.text_cond]
        unconds = None if skip_uncond or params.text_uncond is None else [params.text_uncond]
        for fn in options.get("sampler_pre_cfg_function", []):
            _, conds, unconds, x, sigma, options = fn(self, conds, unconds, x, sigma, options)
        rows = [(c, 0) for c in conds] + [(u, 1) for u in unconds or []]
        predictions = [torch.zeros_like(x), torch.zeros_like(x)]
        if rows:
            batch = len(rows)
            out = self.flow_model(
                torch.cat([x] * batch),
                torch.cat([sigma] * batch),
                cond=torch.cat([c["crossattn"] for c, _ in rows]),
                guidance=torch.cat([c["guidance"] for c, _ in rows]) if "guidance" in rows[0][0] else 0.0,
            )
            for chunk, (_, branch) in zip(out.chunk(batch), rows):
                predictions[branch] = predictions[branch] + chunk
        cond_pred, uncond_pred = predictions
        self.guidance_per_call.append(sorted({float(g) for c, _ in rows for g in c.get("guidance", [])}))
        self.calls.append(Call(received, float(cond_scale), float(sigma.max()), len(rows) * len(x)))
        self.step += 1
        return uncond_pred + (cond_pred - uncond_pred) * cond_scale


def flux_args(batch: int = 2, scale: float = 1.0, g1: float = 3.5) -> dict:
    """Forge's extra_args for Flux dev: conds are dicts; at CFG Scale 1 ``processing`` sets ``p.uc = None``."""
    cond = {"crossattn": torch.linspace(-1, 1, 3).repeat(batch, 1), "guidance": torch.full((batch,), g1)}
    uncond = None if scale == 1 else {"crossattn": torch.zeros(batch, 3), "guidance": torch.full((batch,), g1)}
    return {"cond": cond, "image_cond": None, "uncond": uncond, "cond_scale": scale, "s_min_uncond": 0.0}


def flux_sigmas(steps: int) -> torch.Tensor:
    return torch.cat([torch.linspace(1.0, 0.05, steps), torch.zeros(1)])


def test_forge_flux_inversions_run_at_g2_one_row_each_at_cfg_1():
    p = StandInP(distilled_cfg_scale=3.5)
    model = StandInForgeFlux(p, [zforge.apply_inversion_guidance])
    out, x, _ = run("euler", model, flux_sigmas(6), flux_args(), settings_opts(zigzag_inversion_guidance=1.0))
    # step i = denoise at g₁, then (inversion at g₂, denoise at g₁); the last step is plain
    assert model.guidance_per_call == [[3.5], [1.0], [3.5]] * 5 + [[3.5]]
    assert [c.rows for c in model.calls] == [2] * 16 and {c.scale for c in model.calls} == {1.0}
    assert p.comments == {} and "Zigzag note" not in p.extra_generation_params  # the gap is g₁ − g₂: no note
    assert getattr(model, zforge.INVERSION_GUIDANCE_ATTR) is None
    # the same numbers as the library on the model itself, with inversion_guidance (the engine's own g₂)
    flow = TinyDistilledFlow()
    direct = zigzag_kdiff.sample_zigzag_euler(
        lambda x, sigma, cond, guidance, **rest: flow(x, sigma, cond, guidance),
        x,
        flux_sigmas(6),
        {"cond": flux_args()["cond"]["crossattn"], "guidance": torch.full((2,), 3.5), "cond_scale": 1.0},
        disable=True,
        flow=True,
        inversion_scale=1.0,  # true CFG off: one call, one row per call
        inversion_guidance=1.0,
    )
    assert torch.equal(out, direct)
    # without the callback (A1111-style host, or the glue not loaded) the inversions keep g₁: a different image
    plain = StandInForgeFlux(StandInP(distilled_cfg_scale=3.5))
    assert not torch.equal(run("euler", plain, flux_sigmas(6), flux_args())[0], out)


def test_forge_flux_with_true_cfg_keeps_both_gaps():
    p = StandInP(distilled_cfg_scale=3.0)
    model = StandInForgeFlux(p, [zforge.apply_inversion_guidance])
    opts = settings_opts(zigzag_inversion_guidance=1.5, zigzag_inversion_scale=0.0)
    run("dpmpp_2m", model, flux_sigmas(5), flux_args(scale=4.0, g1=3.0), opts)
    calls = list(zip(model.calls, model.guidance_per_call))
    inversions = [(c, g) for c, g in calls if c.received_scale == 0.0]
    assert len(inversions) == 4 and all(c.rows == 2 and g == [1.5] for c, g in inversions)  # uncond rows, at g₂
    assert all(c.rows == 4 and g == [3.0] for c, g in calls if c.received_scale == 4.0)


@pytest.mark.parametrize(
    "attributes,message",
    [
        ({"distilled_cfg_scale": 3.5}, r"g₂ = 5 must not exceed the Distilled CFG Scale g₁ = 3.5"),
        ({"distilled_cfg_scale": 0}, r"g₂ = 5 must not exceed the Distilled CFG Scale g₁ = 3.5"),  # Forge: 0 → 3.5
        ({"is_hr_pass": True, "hr_cfg": 1.0, "hr_distilled_cfg": 2.0}, r"Hires Distilled CFG Scale g₁ = 2"),
        (
            {"distilled_cfg_scale": 6.0, "enable_hr": True, "hr_cfg": 1.0, "hr_distilled_cfg": 2.0},
            r"g₂ = 5 must not exceed the Hires Distilled CFG Scale g₁ = 2 of the hires pass",
        ),
    ],
)
def test_forge_flux_guidance_gap_is_checked_before_any_model_call(attributes, message):
    p = StandInP(**{"sampler_name": "Zigzag Euler", "hr_sampler_name": None, **attributes})
    model = StandInForgeFlux(p, [zforge.apply_inversion_guidance])
    with pytest.raises(ValueError, match=message + ".*zigzag_inversion_guidance"):
        run("euler", model, flux_sigmas(5), flux_args(), settings_opts(zigzag_inversion_guidance=5.0))
    assert model.calls == [] and p.extra_generation_params == {}


def test_forge_flux_hires_pass_uses_the_hires_distilled_cfg_scale():
    p = StandInP(is_hr_pass=True, hr_cfg=1.0, distilled_cfg_scale=3.5, hr_distilled_cfg=2.5)
    model = StandInForgeFlux(p, [zforge.apply_inversion_guidance])
    args = flux_args(g1=2.5)  # the hires conds carry hr_distilled_cfg
    run("euler", model, flux_sigmas(4), args, settings_opts(zigzag_inversion_guidance=2.5))
    assert model.guidance_per_call == [[2.5]] * 10  # g₂ = g₁ is allowed (gap 0)


def test_forge_flow_model_without_distilled_guidance_notes_an_unused_setting():
    p = StandInP()
    model = StandInForgeFlux(p, [zforge.apply_inversion_guidance], distilled=False)  # Flux schnell, SD3.5
    args = flux_args(scale=3.0)
    for branch in ("cond", "uncond"):
        del args[branch]["guidance"]
    run("euler", model, flux_sigmas(4), args, settings_opts(zigzag_inversion_guidance=2.0))
    assert p.extra_generation_params["Zigzag note"] == "inversion guidance unused"
    assert p.extra_generation_params["Zigzag inversion guidance"] == 2.0


def test_inversion_guidance_callback_leaves_everything_else_alone():
    text_cond = {"crossattn": torch.ones(2, 3), "guidance": torch.full((2,), 3.5)}
    host = types.SimpleNamespace()
    params = CFGDenoiserParams(None, None, None, 0, 1, text_cond, None, host)
    zforge.apply_inversion_guidance(params)  # not an inversion call
    assert params.text_cond["guidance"].tolist() == [3.5, 3.5]
    setattr(host, zforge.INVERSION_GUIDANCE_ATTR, 1.0)
    a1111 = CFGDenoiserParams(None, None, None, 0, 1, torch.ones(2, 3), torch.zeros(2, 3), host)
    zforge.apply_inversion_guidance(a1111)  # A1111 / UNet models: tensor conds without guidance
    assert torch.equal(a1111.text_cond, torch.ones(2, 3))
    uncond = {"crossattn": torch.zeros(2, 3), "guidance": torch.full((2,), 3.5)}
    params = CFGDenoiserParams(None, None, None, 0, 1, dict(text_cond), uncond, host)
    zforge.apply_inversion_guidance(params)
    assert params.text_cond["guidance"].tolist() == [1.0, 1.0] == params.text_uncond["guidance"].tolist()
    assert text_cond["guidance"].tolist() == [3.5, 3.5]  # the stored conditioning is not touched


def on_cfg_denoiser(callback, *, name=None):
    """``modules.script_callbacks.on_cfg_denoiser``'s signature (A1111 1.10.1, Forge)."""


def test_stand_ins_have_forges_signatures():
    assert str(inspect.signature(on_cfg_denoiser)) == "(callback, *, name=None)"
    assert str(inspect.signature(CFGDenoiserParams)) == (
        "(x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None)"
    )
    assert str(inspect.signature(StandInForgeFlux.forward)) == (
        "(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond)"
    )


# --- registration, X/Y/Z axes: contract tests against plain objects --------------------------------------


class StandInKDiffusionSampler:
    """Contract stand-in for ``KDiffusionSampler(funcname, sd_model)``: takes a callable and, like the webui,
    passes ``sigmas`` only if the function declares it, and ``n``/``sigma_min``/``sigma_max``/``eta`` if declared."""

    def __init__(self, funcname, sd_model) -> None:
        self.func, self.model = funcname, sd_model
        self.parameters = inspect.signature(funcname).parameters


def standin_sd_samplers() -> types.SimpleNamespace:
    """Contract stand-in for ``modules.sd_samplers``: all_samplers, all_samplers_map, set_samplers()."""
    registry = types.SimpleNamespace(set_calls=0, cache_clears=0, samplers_map={})
    registry.all_samplers = [
        StandInSamplerData("Euler", lambda model: None, ["k_euler"], {}),
        StandInSamplerData("Restart", lambda model: None, ["restart"], {"scheduler": "karras", "second_order": True}),
    ]
    registry.all_samplers_map = {x.name: x for x in registry.all_samplers}

    def set_samplers():
        registry.set_calls += 1
        registry.samplers_map.clear()
        for sampler in registry.all_samplers:
            for label in (sampler.name, *sampler.aliases):
                registry.samplers_map[label.lower()] = sampler.name

    def get_sampler_and_scheduler(sampler_name, scheduler_name):
        return sampler_name, scheduler_name

    get_sampler_and_scheduler.cache_clear = lambda: setattr(registry, "cache_clears", registry.cache_clears + 1)
    registry.set_samplers, registry.get_sampler_and_scheduler = set_samplers, get_sampler_and_scheduler
    return registry


def test_registration_contract_in_place_idempotent_and_refusing():
    registry = standin_sd_samplers()
    same_list, same_map = registry.all_samplers, registry.all_samplers_map
    opts = settings_opts(zigzag_steps_fraction=0.5, zigzag_rounds=2)
    names = zreg.register_samplers(registry, StandInSamplerData, StandInKDiffusionSampler, lambda: opts)
    ours = ["Zigzag Euler", "Zigzag (DDIM)", "Zigzag DPM++ 2M"]
    assert names == ours
    assert registry.all_samplers is same_list and registry.all_samplers_map is same_map
    assert [x.name for x in registry.all_samplers] == ["Euler", "Restart", *ours]
    assert registry.samplers_map["zigzag_ddim"] == "Zigzag (DDIM)" and registry.cache_clears == 1
    assert registry.samplers_map["zigzag_dpmpp_2m"] == "Zigzag DPM++ 2M"
    dpmpp = registry.all_samplers_map["Zigzag DPM++ 2M"]
    assert dpmpp.options == {"zigzag_rule": "dpmpp_2m", "scheduler": "karras"}
    assert dpmpp.total_steps(20) == 20 + 2 * 2 * 10
    assert dpmpp.constructor("sd_model").func.__name__ == "sample_zigzag_dpmpp_2m_webui"

    entry = registry.all_samplers_map["Zigzag Euler"]
    assert isinstance(entry, StandInSamplerData) and entry.options == {"zigzag_rule": "euler"}
    assert entry.total_steps(20) == 20 + 2 * 2 * 10 and registry.all_samplers_map["Restart"].total_steps(20) == 40
    sampler = entry.constructor("sd_model")
    assert sampler.model == "sd_model" and "sigmas" in sampler.parameters
    assert not {"n", "sigma_min", "sigma_max", "sigma_sched", "eta", "s_noise"} & set(sampler.parameters)

    zreg.register_samplers(registry, StandInSamplerData, StandInKDiffusionSampler, lambda: opts)  # Reload UI
    assert [x.name for x in registry.all_samplers] == ["Euler", "Restart", *ours]
    assert registry.all_samplers_map["Zigzag Euler"] is not entry and registry.set_calls == 2

    foreign = standin_sd_samplers()
    foreign.all_samplers.append(StandInSamplerData("Zigzag Euler", None, [], {}))
    before = list(foreign.all_samplers)
    with pytest.raises(ValueError, match="already used by 'Zigzag Euler'"):
        zreg.register_samplers(foreign, StandInSamplerData, StandInKDiffusionSampler, lambda: opts)
    assert foreign.all_samplers == before and foreign.set_calls == 0
    with pytest.raises(ValueError, match="scheduler label"):
        zreg.register_samplers(
            standin_sd_samplers(), StandInSamplerData, StandInKDiffusionSampler, lambda: opts, ["(DDIM)"]
        )


# A1111 1.10.1's built-in entries (modules/sd_samplers_kdiffusion.py samplers_k_diffusion, sd_samplers_timesteps.py):
# (label, options); DDIM's timesteps sampler spaces its timesteps 1000 // T apart, the "DDIM" Schedule type's sigmas.
HOST_ENTRIES = {"Euler": {}, "DPM++ 2M": {"scheduler": "karras"}, "DDIM": {}}
HOST_SCHEDULE_AT_AUTOMATIC = {"Euler": None, "DPM++ 2M": "karras", "DDIM": "ddim"}
SCHEDULERS_MAP = {**{n: n for n in ("uniform", "karras", "exponential", "ddim")}, "Karras": "karras", "DDIM": "ddim"}


def schedule_used(sampler_data, scheduler: str = "Automatic") -> str | None:
    """The schedule ``KDiffusionSampler.get_sigmas`` (A1111 1.10.1, Forge) uses: the Schedule type, at "Automatic"
    the entry's ``options['scheduler']`` looked up by name or label; None = the model's own ``get_sigmas``."""
    name = scheduler if scheduler != "Automatic" else sampler_data.options.get("scheduler", None)
    return SCHEDULERS_MAP.get(name)


def test_each_entry_defaults_to_the_schedule_of_the_sampler_it_extends():
    registry = standin_sd_samplers()
    zreg.register_samplers(registry, StandInSamplerData, StandInKDiffusionSampler, settings_opts)
    extends = {"Zigzag Euler": "Euler", "Zigzag DPM++ 2M": "DPM++ 2M", "Zigzag (DDIM)": "DDIM"}
    for ours, host in extends.items():
        entry = registry.all_samplers_map[ours]
        host_schedule = HOST_SCHEDULE_AT_AUTOMATIC[host]
        if host != "DDIM":
            assert schedule_used(StandInSamplerData(host, None, [], HOST_ENTRIES[host])) == host_schedule
        assert schedule_used(entry) == host_schedule, ours
        assert schedule_used(entry, "Exponential".lower()) == "exponential"  # a chosen Schedule type wins


class StandInAxisOption:
    """Contract stand-in for the X/Y/Z grid's ``AxisOption(label, type, apply, format_value, confirm, cost,
    choices, prepare)``."""

    def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None, prepare=None):
        self.label, self.type, self.apply, self.confirm, self.choices = label, type, apply, confirm, choices


def test_xyz_axes_contract():
    xyz = types.SimpleNamespace(AxisOption=StandInAxisOption, axis_options=[StandInAxisOption("Seed", int, None)])
    script = type("XYZ", (), {"__module__": "xyz_grid.py"})
    data = namedtuple("ScriptClassData", "script_class path basedir module")
    assert zxyz.find_xyz_module([data(object, "", "", None), data(script, "", "", xyz)]) is xyz

    labels = zxyz.add_xyz_axes(xyz)
    zxyz.add_xyz_axes(xyz)  # idempotent
    assert [a.label for a in xyz.axis_options] == ["Seed", *labels] and len(labels) == len(zset.SETTINGS)
    axes = {a.label: a for a in xyz.axis_options}
    p = StandInP()
    axes["Zigzag steps fraction"].apply(p, 0.25, [0.25])
    axes["Zigzag rounds"].apply(p, 2, [2])
    assert p.override_settings == {"zigzag_steps_fraction": 0.25, "zigzag_rounds": 2}
    assert axes["Zigzag DDIM update"].choices() == ["paper", "released"]
    with pytest.raises(ValueError, match="zigzag_steps_fraction"):
        axes["Zigzag steps fraction"].confirm(p, [0.5, 2.0])


def test_host_notes_and_checkout_discovery(tmp_path):
    assert "both CFG branches" in zreg.host_notes(False)[0]
    assert "skip the unconditional pass" in zreg.host_notes(True)[0] and "γ₂ = 0 skip" in zreg.host_notes(True)[0]
    assert "Distilled CFG Scale is g₁" in zreg.host_notes(True)[1] and "SD3 medium" in zreg.host_notes(False)[1]
    assert "Zigzag Euler and Zigzag (DDIM)" in zreg.host_notes(True, hide_samplers_invert=True)[2]
    root = checkout.find_checkout_root(str(EXTENSION_DIR))
    assert root == str(EXTENSION_DIR.parents[1]) and checkout.is_inside(zigzag_kdiff.__file__, root)
    assert checkout.is_inside(str(EXTENSION_DIR / "install.py"), root)
    assert checkout.find_checkout_root(str(tmp_path / "extensions" / "sd-webui-zigzag")) is None
    link = tmp_path / "webui-extensions-link"
    link.symlink_to(EXTENSION_DIR, target_is_directory=True)
    assert checkout.find_checkout_root(str(link)) == root


def options_set(opts, key, value) -> bool:
    """``modules.options.Options.set(key, value)`` as A1111 1.10.1 and Forge run it (also for ``POST
    /sdapi/v1/options``): store the value, call the option's ``onchange()``; if that raises, print the error, put
    the old value back and return False (the API then saves the settings with the old value)."""
    old = getattr(opts, key)
    if old == value:
        return False
    setattr(opts, key, value)
    onchange = opts.data_labels[key].onchange
    if onchange is not None:
        try:
            onchange()
        except Exception:
            setattr(opts, key, old)
            return False
    return True


def test_glue_script_against_standin_webui_modules(monkeypatch):
    """``scripts/zigzag.py`` imported the way the webui imports it, with contract stand-ins for the
    ``modules.*`` it uses (and gradio): registration, settings section, X/Y/Z axes, infotext pasting."""
    callbacks = {}
    registry = standin_sd_samplers()

    class OptionInfo:  # modules.options.OptionInfo's signature (A1111 1.10.1, Forge, reForge, Classic)
        def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                     refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                     category_id=None):  # fmt: skip
            self.default, self.label, self.component, self.component_args = default, label, component, component_args
            self.onchange = onchange
            self.section, self.infotext, self.category_id, self.comment_after = section, infotext, category_id, ""

        def info(self, info):
            self.comment_after += info
            return self

    class OptionHTML(OptionInfo):
        def __init__(self, text):
            super().__init__(text)

    opts = settings_opts(hide_samplers=[])
    opts.data_labels = {}
    opts.add_option = opts.data_labels.__setitem__
    xyz = types.SimpleNamespace(AxisOption=StandInAxisOption, axis_options=[])
    script_data = namedtuple("ScriptClassData", "script_class path basedir module")
    fake = {
        "script_callbacks": types.SimpleNamespace(
            on_ui_settings=lambda f: callbacks.setdefault("ui_settings", f),
            on_before_ui=lambda f: callbacks.setdefault("before_ui", f),
            on_infotext_pasted=lambda f: callbacks.setdefault("infotext_pasted", f),
            on_cfg_denoiser=lambda f, *, name=None: callbacks.setdefault("cfg_denoiser", (name, f)),
        ),
        "scripts": types.SimpleNamespace(
            scripts_data=[script_data(type("XYZ", (), {"__module__": "xyz_grid.py"}), "", "", xyz)],
            Script=type("Script", (), {}),
            AlwaysVisible=object(),
        ),
        "sd_samplers": registry,
        "sd_samplers_common": types.SimpleNamespace(SamplerData=StandInSamplerData),
        "sd_samplers_kdiffusion": types.SimpleNamespace(KDiffusionSampler=StandInKDiffusionSampler),
        "shared": types.SimpleNamespace(opts=opts, OptionInfo=OptionInfo, OptionHTML=OptionHTML),
        "sd_schedulers": types.SimpleNamespace(
            schedulers=[types.SimpleNamespace(label="DDIM", name="ddim", aliases=None)]
        ),
    }
    package = types.ModuleType("modules")
    for name, module in fake.items():
        setattr(package, name, module)
        monkeypatch.setitem(sys.modules, f"modules.{name}", module)
    monkeypatch.setitem(sys.modules, "modules", package)
    monkeypatch.setitem(sys.modules, "gradio", types.SimpleNamespace(Slider="Slider", Radio="Radio"))
    for key in [k for k in sys.modules if k == "zigzag_webui" or k.startswith("zigzag_webui.")]:
        monkeypatch.setitem(sys.modules, key, sys.modules[key])  # the glue loads the package afresh

    script = _load_script(EXTENSION_DIR / "scripts" / "zigzag.py")
    assert script.REGISTERED == ["Zigzag Euler", "Zigzag (DDIM)", "Zigzag DPM++ 2M"]
    assert "Zigzag DPM++ 2M" in registry.all_samplers_map
    assert set(callbacks) == {"ui_settings", "before_ui", "infotext_pasted", "cfg_denoiser"}
    assert callbacks["cfg_denoiser"][0] == "zigzag_inversion_guidance"
    assert callbacks["cfg_denoiser"][1].__name__ == "apply_inversion_guidance"
    # the X/Y/Z axes exist at import: in API-only mode the X/Y/Z UI copies them before before_ui runs
    axis_labels = [axis[0] for axis in zxyz.XYZ_AXES]
    assert [a.label for a in xyz.axis_options] == axis_labels

    callbacks["ui_settings"]()
    labels = opts.data_labels
    assert {s.key for s in zset.SETTINGS} | {"zigzag_host_notes"} == set(labels)
    assert (
        labels["zigzag_rounds"].infotext == "Zigzag rounds" and labels["zigzag_rounds"].section == zset.SETTINGS_SECTION
    )
    assert labels["zigzag_ddim_inversion_update"].component == "Radio"
    assert "both CFG branches" in labels["zigzag_host_notes"].default
    # POST /sdapi/v1/options and Settings → Apply: an invalid value is refused when it is set
    assert options_set(opts, "zigzag_steps_fraction", 7) is False and opts.zigzag_steps_fraction == 1.0
    assert options_set(opts, "zigzag_rounds", -1) is False and opts.zigzag_rounds == 1
    assert options_set(opts, "zigzag_ddim_inversion_update", "diffusers") is False
    assert options_set(opts, "zigzag_steps_fraction", "0.5") is True and opts.zigzag_steps_fraction == "0.5"
    assert zset.read_settings(opts).steps_fraction == 0.5

    callbacks["before_ui"]()  # web UI mode: before_ui runs before the UI is built; nothing is added twice
    assert [a.label for a in xyz.axis_options] == axis_labels

    # every generation (an X/Y/Z cell with another sampler too) starts without another cell's zigzag entries
    hook = script.ZigzagInfotext()
    assert hook.show(False) is fake["scripts"].AlwaysVisible and hook.show(True) is fake["scripts"].AlwaysVisible
    zigzag_cell = StandInP()
    zigzag_cell.extra_generation_params.update({"Zigzag rounds": 2, "Zigzag note": "a", "Hires upscale": 2})
    euler_cell = copy.copy(zigzag_cell)
    hook.process(euler_cell)
    assert euler_cell.extra_generation_params == {"Hires upscale": 2}
    params = {"Sampler": "Zigzag (DDIM)"}
    callbacks["infotext_pasted"]("", params)
    assert params["Zigzag rounds"] == "1"
    params = {"Sampler": "Zigzag DPM++ 2M", "Zigzag rounds": "2"}
    callbacks["infotext_pasted"]("", params)
    assert params["Zigzag rounds"] == "2" and params["Zigzag inversion scale"] == "0.0"

    # Reload UI: the webui clears scripts_data and callbacks and imports every script again, X/Y/Z first
    reloaded = types.SimpleNamespace(AxisOption=StandInAxisOption, axis_options=[StandInAxisOption("Seed", int, None)])
    fake["scripts"].scripts_data[:] = [script_data(type("XYZ", (), {"__module__": "xyz_grid.py"}), "", "", reloaded)]
    callbacks.clear()
    _load_script(EXTENSION_DIR / "scripts" / "zigzag.py")
    callbacks["before_ui"]()
    assert [a.label for a in reloaded.axis_options] == ["Seed", *axis_labels]
    assert [a.label for a in xyz.axis_options] == axis_labels  # the old module is left as it was


def _load_script(path: Path) -> types.ModuleType:
    """As ``modules.script_loading.load_module``: the module is named after the file."""
    spec = importlib.util.spec_from_file_location(path.name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
