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
    settings = CompareSettings(steps=10, guidance_interval=(0.28, 5.42), ddim_update="released", schedule="ddim")
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
    seg = build_methods(CompareSettings(steps=4, methods=["zigzag_euler_seg"]))[0]
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
