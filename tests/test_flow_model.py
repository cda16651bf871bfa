"""The bundled flow model shapes16-flow (an MMDiT trained with flow matching), its training script, the shapes
benchmark on it and ``bench device --device cpu --quick``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zigzag_kdiff.bench import shapes_task

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def flow_pipe():
    from zigzag_kdiff.diffusers import load_pipeline

    return load_pipeline("shapes-flow")


def test_bundled_flow_model_is_a_small_sd3_folder_of_safetensors(flow_pipe):
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    folder = shapes_task.BUNDLED_FLOW_MODEL
    files = [p for p in folder.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in weights) <= 15e6
    assert isinstance(flow_pipe, StableDiffusion3Pipeline) and isinstance(flow_pipe.transformer, SD3Transformer2DModel)
    assert flow_pipe.vae is None and flow_pipe.text_encoder_3 is None  # pixel space, no T5
    config = flow_pipe.transformer.config
    assert (config.in_channels, config.patch_size, config.sample_size) == (3, 2, 16)
    assert flow_pipe.scheduler.config.shift == 1.0
    training = (folder / "training.json").read_text()
    assert '"steps"' in training and "train_shapes_flow.py" in training


def test_generate_on_the_flow_model_is_deterministic_and_follows_the_pipeline(flow_pipe):
    from zigzag_kdiff.diffusers import generate

    kwargs = dict(sampler="zigzag_euler", steps=6, seed=3, cfg_scale=3.0, output_type="pt")
    first = generate(flow_pipe, "two red squares on the left", **kwargs)
    second = generate(flow_pipe, "two red squares on the left", **kwargs)
    assert first.images.shape == (1, 3, 16, 16)
    assert torch.equal(first.images, second.images)
    assert first.settings["family"] == "sd3" and float(first.sigmas[0]) == 1.0 and float(first.sigmas[-1]) == 0.0
    # Z-Sampling's rows: 2 per denoising call (T), 1 per inversion at γ₂ = 0 and 2 per re-denoising (T − 1 each)
    assert first.batch_rows == 2 * 6 + 3 * 5


def test_flow_model_follows_position_on_a_seed(flow_pipe):
    """A guard on the committed weights: plain Euler, T = 20, CFG 3, one seed of the 72 prompts (the full
    targets table is in docs/evidence.md, from ``bench shapes --model shapes-flow``)."""
    from zigzag_kdiff.bench import shapes as bench_shapes
    from zigzag_kdiff.bench.common import Method

    model = bench_shapes.FlowShapesModel(flow_pipe)
    specs = shapes_task.all_specs()
    cond, uncond = model.encode([s.prompt for s in specs]), model.encode([""])
    noise = bench_shapes.initial_noise(1, len(specs)).reshape(-1, 3, 16, 16)
    images, rows = bench_shapes.generate(model, Method("standard", "standard", 3.0, 20), noise, cond, uncond, 72)
    scores = bench_shapes.score(images, specs)
    assert rows == 40
    assert scores["position"].mean() >= 0.9, scores["position"].mean()
    assert scores["count_colour"].mean() >= 0.25, scores["count_colour"].mean()


def test_bench_shapes_on_the_flow_model_uses_flow_settings_and_refuses_seg(flow_pipe):
    from zigzag_kdiff.bench import shapes as bench_shapes
    from zigzag_kdiff.bench.common import Method

    config = bench_shapes.for_model(bench_shapes.QUICK, "shapes-flow")
    assert config.rule == "euler" and config.interval == bench_shapes.FLOW_INTERVAL
    labels = [m.label for m in bench_shapes.variant_methods(config)]
    assert "CFG 3 DPM++ 2M T=6" in labels and any(label.startswith("Z dpmpp_2m") for label in labels)
    assert any(label.startswith("Z ddim") for label in labels)
    model = bench_shapes.FlowShapesModel(flow_pipe)
    specs = shapes_task.all_specs()[:4]
    cond, uncond = model.encode([s.prompt for s in specs]), model.encode([""])
    noise = bench_shapes.initial_noise(1, 4).reshape(-1, 3, 16, 16)
    full = Method("standard", "standard", 3.0, 6)
    _, rows = bench_shapes.generate(model, full, noise, cond, uncond, 4)
    # inside the flow interval only (σ ∈ [0.219, 0.844]) the uncond row is evaluated
    interval = Method("standard", "standard", 3.0, 6, interval=bench_shapes.FLOW_INTERVAL)
    _, interval_rows = bench_shapes.generate(model, interval, noise, cond, uncond, 4)
    inside = sum(1 for s in model.sigmas(6)[:-1] if 0.219 <= float(s) <= 0.844)
    assert (rows, interval_rows) == (12, 6 + inside)
    with pytest.raises(ValueError, match="seg_scale must be 0 on the flow model"):
        bench_shapes.generate(model, Method("SEG", "standard", 3.0, 6, seg_scale=3.0), noise, cond, uncond, 4)


def test_cli_bench_shapes_seg_on_the_flow_model_is_a_usage_error(capsys):
    from zigzag_kdiff.cli import main

    assert main(["bench", "shapes", "--model", "shapes-flow", "--seg", "--quick"]) == 2
    assert "--seg: SEG is defined on the UNet's self-attention only" in capsys.readouterr().err


def _train(tmp_path: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "tools" / "train_shapes_flow.py"), "--steps", "4", "--batch", "4"]
    command += ["--warmup", "2", "--threads", "1", "--save-every", "2", "--out", str(tmp_path / name), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)


def test_training_is_deterministic_and_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    _train(tmp_path, "straight", "--state", str(tmp_path / "state-a"))
    stopped = _train(tmp_path, "resumed", "--state", str(tmp_path / "state-b"), "--until", "2")
    assert "stopped after step 2" in stopped.stdout and not (tmp_path / "resumed").exists()
    resumed = _train(tmp_path, "resumed", "--state", str(tmp_path / "state-b"))
    assert "starting at step 2" in resumed.stdout
    for part in ("transformer", "text_encoder", "text_encoder_2"):
        (a,) = (tmp_path / "straight" / part).glob("*.safetensors")
        (b,) = (tmp_path / "resumed" / part).glob("*.safetensors")
        wa, wb = load_file(str(a)), load_file(str(b))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), part
    # other settings on the same state folder are refused, not mixed
    with pytest.raises(subprocess.CalledProcessError) as error:
        _train(tmp_path, "other", "--state", str(tmp_path / "state-b"), "--seed", "1")
    assert "holds a run with other settings" in error.value.stderr


def test_cli_bench_device_quick_on_cpu_prints_one_table(capsys):
    from zigzag_kdiff.bench.device import SAMPLERS
    from zigzag_kdiff.cli import main

    assert main(["bench", "device", "--device", "cpu", "--quick"]) == 0
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    models = {"tiny SDXL-layout UNet (random)", "shapes16 (bundled ε-UNet)", "shapes16-flow (bundled MMDiT)"}
    assert {r[0].lstrip("| ") for r in rows} == models
    assert len(rows) == len(models) * 2 * len(SAMPLERS)  # fp32 and bf16 on a CPU
    for row in rows:
        model, dtype, sampler = row[0].lstrip("| "), row[1], row[2]
        if sampler == "euler + SEG" and "MMDiT" in model:
            assert "SEG is not defined on an MMDiT" in row[-1]
            continue
        assert row[-1].rstrip(" |") == "yes", row  # run-to-run equal
        if sampler == "euler":
            assert row[6] == "1.00"
        assert (row[8] == "ref") == (dtype == "fp32")
        if dtype == "bf16":
            assert float(row[8]) > 0  # bf16 differs from fp32 on the same noise
    zigzag = next(r for r in rows if r[2] == "zigzag_euler" and r[1] == "fp32" and "MMDiT" in r[0])
    assert float(zigzag[4]) == 2 * 3 + 3 * 2  # rows per image at T = 3


def test_cli_bench_device_full_needs_a_gpu(capsys):
    from zigzag_kdiff.cli import main

    assert main(["bench", "device", "--device", "cpu"]) == 2
    assert "needs a GPU" in capsys.readouterr().err
