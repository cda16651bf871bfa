"""``zigzag-kdiff compare`` end to end on tiny random pipelines (the real CLI entry point)."""

from __future__ import annotations

import json
import re

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("k_diffusion")

from zigzag_kdiff.cli import main  # noqa: E402
from zigzag_kdiff.compare import (  # noqa: E402
    METHODS,
    CompareSettings,
    a1111_parameters,
    build_methods,
    column_label,
    default_threads,
    row_label,
)

FAST = ["--threads", "1", "--quiet"]


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def pixels(path) -> bytes:
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB").tobytes()


def test_default_methods_write_pngs_grid_and_json(tmp_path):
    out = tmp_path / "out"
    argv = ["compare", "--model", "tiny", "--steps", "3", "--seeds", "0", "--out", str(out)]
    assert main(argv + ["--prompt", "a dog", "--prompt", "a cat", "--negative-prompt", "blurry"] + FAST) == 0
    from PIL import Image

    summary = json.loads((out / "compare.json").read_text())
    assert [m["key"] for m in summary["methods"]] == list(METHODS)
    assert len(summary["images"]) == 2 * len(METHODS)
    calls = {m["key"]: (m["model_calls_per_image"], m["batch_rows_per_image"]) for m in summary["methods"]}
    # T = 3, λ = 2, T_max = 1, γ₂ = 0: T + 2λ calls; 2T + 3λ rows (uncond-only inversions)
    assert calls == {
        "euler": (3, 6),
        "dpmpp_2m": (3, 6),
        "zigzag_euler": (7, 12),
        "zigzag_ddim": (7, 12),
        "zigzag_dpmpp_2m": (7, 12),
        "cfg_matched": (3, 6),
    }
    assert summary["settings"]["matched_scale"] == 11.0 and summary["wall_seconds"] > 0
    with Image.open(out / summary["images"][0]["file"]) as first:
        parameters = first.text["parameters"]
        assert first.size == (64, 64)
    assert parameters.splitlines()[:2] == ["a dog", "Negative prompt: blurry"]
    assert "Steps: 3, Sampler: Euler, Schedule type: Karras, CFG scale: 5.5, Seed: 0, Size: 64x64" in parameters
    with Image.open(out / "grid.png") as grid:  # 6 columns of 128-pixel tiles (64 enlarged), 2 rows
        assert 6 * 128 < grid.width < 7 * 128 and 2 * 128 < grid.height < 3 * 128
    # methods differ from one another on the same noise
    assert len({pixels(out / r["file"]) for r in summary["images"] if r["seed"] == 0 and r["prompt"] == "a dog"}) == 6


def test_every_method_starts_from_the_same_noise(tmp_path):
    """With λ = 0 Z-Sampling is Euler, and with γ₂ = γ₁ the matched scale 2γ₁ − γ₂ is γ₁: all three
    columns must then be the same image, which they are only if they share the initial noise."""
    out = tmp_path / "same"
    argv = ["compare", "--model", "tiny-sdxl", "--steps", "3", "--seeds", "5", "--out", str(out)]
    argv += [
        "--cfg",
        "4",
        "--inversion-scale",
        "4",
        "--zigzag-steps",
        "0",
        "--methods",
        "euler,zigzag_euler,cfg_matched",
    ]
    assert main(argv + FAST) == 0
    images = {pixels(path) for path in out.glob("p00-seed5-*.png")}
    assert len(list(out.glob("p00-seed5-*.png"))) == 3 and len(images) == 1


def test_a_saved_folder_round_trips_through_the_cli(tmp_path):
    from zigzag_kdiff.tiny import tiny_pipeline

    tiny_pipeline("sd2-v").save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    argv = ["compare", "--model", str(tmp_path / "model"), "--steps", "2", "--methods", "zigzag_ddim"]
    assert main(argv + ["--ddim-update", "released", "--schedule", "ddim", "--out", str(out)] + FAST) == 0
    summary = json.loads((out / "compare.json").read_text())
    assert summary["methods"][0]["options"]["inversion_update"] == "released"
    assert summary["methods"][0]["model_calls_per_image"] == 2 + 2 * 1


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--cfg", "3", "--inversion-scale", "4"], r"--inversion-scale \(γ₂\) must be <= --cfg"),
        (["--steps", "4", "--zigzag-steps", "4"], r"--zigzag-steps \(λ\) must be in \[0, 3\]"),
        (["--methods", "euler,heun"], "--methods must be"),
        (["--model", "someone/some-model"], "needs network access"),
        (["--model", "model.ckpt"], "only .safetensors"),
        (["--threads", "0"], "argument --threads: must be an integer >= 1"),
        (["--guidance-interval", "5", "1"], "--guidance-interval must have sigma_low <= sigma_high"),
    ],
)
def test_bad_settings_fail_fast_with_one_clear_line(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.ckpt").write_bytes(b"never unpickled")
    assert main(["compare", "--out", str(tmp_path / "out")] + extra) == 2
    error = capsys.readouterr().err
    assert error.startswith("zigzag-kdiff compare: error:") and re.search(message, error)
    assert not (tmp_path / "out").exists()


def test_parameters_string_for_a_guidance_interval_and_released_ddim():
    settings = CompareSettings(
        steps=10, cfg_scale=5.5, inversion_scale=0.0, guidance_interval=(0.28, 5.42), ddim_update="released"
    )
    settings.schedule = "ddim"
    zigzag_ddim = build_methods(settings)[3]
    text = a1111_parameters("a dog", settings, zigzag_ddim, 42, 64, 48)
    assert text.splitlines()[0] == "a dog" and "Negative prompt" not in text
    assert "Sampler: Z-Sampling DDIM, Schedule type: DDIM" in text
    assert "Zigzag inversion scale: 0, Zigzag steps: 9, Zigzag rounds: 1, Zigzag DDIM update: released" in text
    assert 'Guidance interval: "0.28-5.42"' in text and "Size: 64x48" in text


def test_default_model_is_the_bundled_shapes_model(tmp_path):
    """With no --model and no --prompt, compare runs the bundled pixel-space model on its task's prompts."""
    from zigzag_kdiff.cli import DEFAULT_PROMPTS

    out = tmp_path / "out"
    assert main(["compare", "--steps", "3", "--methods", "euler,zigzag_euler", "--out", str(out)] + FAST) == 0
    summary = json.loads((out / "compare.json").read_text())
    assert summary["settings"]["model"] == "shapes"
    assert [record["prompt"] for record in summary["images"]][::2] == DEFAULT_PROMPTS["shapes"]
    from PIL import Image

    with Image.open(out / summary["images"][0]["file"]) as image:
        assert image.size == (16, 16)


def test_grid_labels_show_the_prompt_the_seed_and_the_scales():
    assert row_label("two red squares on the left", 3) == "two red squares on\nthe left\nseed 3"
    long = row_label("a very small yellow dog sitting on a red chair beside a window at night", 0)
    assert long.splitlines()[-1] == "seed 0" and len(long.splitlines()) == 4 and long.splitlines()[2].endswith("...")
    settings = CompareSettings(steps=10, cfg_scale=5.5, inversion_scale=1.0, zigzag_rounds=2)
    labels = {m.key: column_label(m) for m in build_methods(settings)}
    assert labels["euler"] == "Euler\nγ₁=5.5"
    assert labels["zigzag_euler"] == "Z-Sampling (Euler)\nγ₁=5.5, γ₂=1, λ=9, T_max=2"
    assert labels["cfg_matched"] == "Euler, CFG 10 (matched)\n= 2·γ₁ − γ₂"
    seg = build_methods(CompareSettings(steps=4, cfg_scale=5.5, inversion_scale=0.0, methods=["zigzag_euler_seg"]))[0]
    assert column_label(seg) == "Z-Sampling (Euler) + SEG\nγ₁=5.5, γ₂=0, λ=3, s_seg=3"


def test_default_threads_do_not_oversubscribe_a_small_cpu(monkeypatch):
    assert default_threads("shapes", "cpu") == 1 and default_threads("tiny-sdxl", "cpu") == 1
    assert default_threads("/models/sd15", "cuda") is None and default_threads("shapes", "cuda:0") is None
    for cores, threads in [(1, 1), (2, 1), (6, 3), (64, 4), (None, 1)]:
        monkeypatch.setattr("os.cpu_count", lambda cores=cores: cores)
        assert default_threads("/models/sd15", "cpu") == threads


def test_compare_without_threads_runs_the_bundled_model_on_one_thread(tmp_path):
    torch.set_num_threads(2)
    out = tmp_path / "out"
    argv = ["compare", "--steps", "1", "--methods", "euler", "--seeds", "0", "--device", "cpu", "--quiet"]
    assert main(argv + ["--out", str(out)]) == 0
    assert torch.get_num_threads() == 1
    assert json.loads((out / "compare.json").read_text())["settings"]["threads"] == 1


def test_flux_defaults_are_distilled_guidance_z_sampling_one_row_per_call(tmp_path):
    """tiny-flux (guidance embeds) at compare's defaults: true CFG off (γ₁ = γ₂ = 1), g₁ the pipeline's 3.5,
    g₂ = min(1, g₁); every call one row; the matched column is Euler at distilled guidance 2·g₁ − g₂ = 6."""
    from PIL import Image

    out = tmp_path / "flux"
    assert main(["compare", "--model", "tiny-flux", "--steps", "3", "--out", str(out)] + FAST) == 0
    summary = json.loads((out / "compare.json").read_text())
    settings = summary["settings"]
    assert (settings["cfg_scale"], settings["inversion_scale"]) == (1.0, 1.0)
    assert (settings["distilled_guidance"], settings["inversion_guidance"]) == (3.5, 1.0)
    assert (settings["matched_scale"], settings["matched_guidance"], settings["schedule"]) == (1.0, 6.0, "model")
    calls = {m["key"]: (m["model_calls_per_image"], m["batch_rows_per_image"]) for m in summary["methods"]}
    # T = 3, λ = 2: T calls for the plain samplers, T + 2λ for Z-Sampling, one row each
    assert calls == {key: (7, 7) if key.startswith("zigzag") else (3, 3) for key in METHODS}
    methods = {m["key"]: m for m in summary["methods"]}
    assert methods["cfg_matched"]["distilled_guidance"] == 6.0 and methods["euler"]["distilled_guidance"] == 3.5
    assert methods["zigzag_ddim"]["options"]["inversion_guidance"] == 1.0
    assert methods["cfg_matched"]["label"] == "Euler, distilled CFG 6 (matched)"
    with Image.open(out / "p00-seed0-zigzag_euler.png") as image:
        zigzag = image.text["parameters"]
    with Image.open(out / "p00-seed0-cfg_matched.png") as image:
        matched = image.text["parameters"]
    assert "CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 0" in zigzag and "Zigzag inversion guidance: 1" in zigzag
    assert "Schedule type: Model default" in zigzag
    assert "CFG scale: 1, Distilled CFG Scale: 6, Seed: 0" in matched and "Zigzag" not in matched
    assert pixels(out / "p00-seed0-cfg_matched.png") != pixels(out / "p00-seed0-euler.png")  # guidance reaches it


def test_flux_matched_column_at_equal_guidance_is_euler(tmp_path):
    """λ = 0 and g₂ = g₁: Z-Sampling is Euler and the matched guidance 2·g₁ − g₂ is g₁: three equal images."""
    out = tmp_path / "same"
    argv = ["compare", "--model", "tiny-flux", "--steps", "2", "--seeds", "3", "--out", str(out), "--zigzag-steps"]
    argv += ["0", "--distilled-guidance", "2.5", "--inversion-guidance", "2.5"]
    assert main(argv + ["--methods", "euler,zigzag_euler,cfg_matched"] + FAST) == 0
    summary = json.loads((out / "compare.json").read_text())
    assert summary["settings"]["matched_guidance"] == 2.5
    assert len({pixels(path) for path in out.glob("p00-seed3-*.png")}) == 1


def test_sd3_keeps_true_cfg_at_the_pipelines_scale(tmp_path):
    """tiny-sd3 (no guidance embeds): true CFG at the pipeline's default γ₁ = 7, γ₂ = 0 (uncond-only inversions),
    matched 2·γ₁ − γ₂ = 14; no distilled guidance anywhere."""
    out = tmp_path / "sd3"
    assert main(["compare", "--model", "tiny-sd3", "--steps", "3", "--out", str(out)] + FAST) == 0
    summary = json.loads((out / "compare.json").read_text())
    settings = summary["settings"]
    assert (settings["cfg_scale"], settings["inversion_scale"], settings["matched_scale"]) == (7.0, 0.0, 14.0)
    assert settings["distilled_guidance"] is None and settings["inversion_guidance"] is None
    calls = {m["key"]: (m["model_calls_per_image"], m["batch_rows_per_image"]) for m in summary["methods"]}
    # T = 3, λ = 2: 2T rows for the plain samplers, 2T + 3λ for Z-Sampling (2 rows denoising, 1 inversion)
    assert calls == {key: (7, 12) if key.startswith("zigzag") else (3, 6) for key in METHODS}
    from PIL import Image

    with Image.open(out / "p00-seed0-cfg_matched.png") as image:
        assert "CFG scale: 14, Seed" in image.text["parameters"] and "Distilled" not in image.text["parameters"]


def test_labels_and_parameters_carry_the_distilled_guidance():
    settings = CompareSettings(
        steps=4, cfg_scale=1.0, inversion_scale=1.0, distilled_guidance=3.5, inversion_guidance=1.0, schedule="model"
    )
    labels = {m.key: column_label(m) for m in build_methods(settings)}
    assert labels["euler"] == "Euler\nγ₁=1, g₁=3.5"
    assert labels["zigzag_euler"] == "Z-Sampling (Euler)\nγ₁=1, g₁=3.5, γ₂=1, g₂=1, λ=3"
    assert labels["cfg_matched"] == "Euler, distilled CFG 6 (matched)\n= 2·g₁ − g₂, γ₁=1"
    true_cfg = build_methods(CompareSettings(steps=4, cfg_scale=3.0, inversion_scale=0.0, distilled_guidance=3.5))
    assert column_label(true_cfg[-1]) == "Euler, CFG 6 (matched)\n= 2·γ₁ − γ₂, g₁=3.5"
    assert "Distilled CFG Scale: 3.5" in a1111_parameters("a dog", settings, build_methods(settings)[0], 1, 64, 64)


def test_distilled_guidance_on_a_folder_without_guidance_embeds_is_refused_before_any_image(tmp_path, capsys):
    """A folder's guidance embeddings are known once it is loaded: refused there, naming the flag, nothing written."""
    from zigzag_kdiff.tiny import tiny_pipeline

    tiny_pipeline("flux-schnell").save_pretrained(tmp_path / "schnell")
    capsys.readouterr()  # save_pretrained's progress bar
    out = tmp_path / "out"
    for flag in ("--distilled-guidance", "--inversion-guidance"):
        assert main(["compare", "--model", str(tmp_path / "schnell"), flag, "1", "--out", str(out)] + FAST) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"zigzag-kdiff compare: error: {flag} ") and "guidance embeddings" in error, error
        assert not out.exists()
