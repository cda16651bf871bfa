"""The bundled shapes16 model and the shapes benchmark (quick configuration): loading, paired runs, tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zigzag_kdiff.bench import shapes_task as shapes

# --- the bundled model and the shapes benchmark -----------------------------------------------------------


def test_bundled_model_is_safetensors_only_and_loads_as_a_diffusers_folder():
    from diffusers import StableDiffusionPipeline

    files = [p for p in shapes.BUNDLED_MODEL.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in weights) < 8e6
    # the same loader as any SD folder; pixel space, so there is no VAE to load
    pipe = StableDiffusionPipeline.from_pretrained(shapes.BUNDLED_MODEL, vae=None, use_safetensors=True)
    assert pipe.unet.config.in_channels == 3 and pipe.unet.config.cross_attention_dim == 64
    assert pipe.scheduler.config.beta_schedule == "scaled_linear" and pipe.scheduler.config.beta_start == 0.00085
    emb, neg = pipe.encode_prompt("two red squares on the left", "cpu", 1, True, "")
    assert emb.shape == neg.shape == (1, shapes.MAX_TOKENS, 64)


@pytest.fixture(scope="module")
def quick_shapes():
    from zigzag_kdiff.bench import shapes as bench_shapes

    return bench_shapes.run_shapes(bench_shapes.QUICK)


def test_shapes_bench_quick_runs_paired_and_counts_rows(quick_shapes):
    from zigzag_kdiff.bench import shapes as bench_shapes

    config = bench_shapes.QUICK
    runs = {run.method.label: run for run in quick_shapes}
    T = config.steps
    assert runs[f"CFG 1 T={T}"].rows_per_image == T and runs[f"CFG 3 T={T}"].rows_per_image == 2 * T
    assert runs[f"Z {config.rule} γ₁=3 γ₂=0 λ={T - 1} T={T}"].rows_per_image == 2 * T + 3 * (T - 1)
    assert runs[f"CFG 3 T={config.equal_row_steps}"].rows_per_image >= 2 * T + 3 * (T - 1)
    for run in quick_shapes:
        assert set(run.outcomes) == set(bench_shapes.ATTRIBUTES)
        assert all(v.shape == (config.seeds, config.prompts) and v.dtype == bool for v in run.outcomes.values())
        all_correct = run.outcomes["count"] & run.outcomes["colour"] & run.outcomes["position"]
        assert np.array_equal(run.outcomes["all_correct"], all_correct)
        assert np.array_equal(run.outcomes["count_colour"], run.outcomes["count"] & run.outcomes["colour"])


def test_shapes_sampling_is_deterministic():
    from zigzag_kdiff.bench import shapes as bench_shapes

    model = bench_shapes.load_model()
    cond = model.encode(["one red square on the left", "three blue squares at the top"])
    uncond = model.encode([""])
    noise = bench_shapes.initial_noise(1, 2)[0]
    method = bench_shapes.Method("z", "euler", 3.0, 4)
    first, rows = bench_shapes.generate(model, method, noise, cond, uncond, batch=2)
    again, _ = bench_shapes.generate(model, method, noise.clone(), cond, uncond, batch=2)
    split, _ = bench_shapes.generate(model, method, noise, cond, uncond, batch=1)
    assert torch.equal(first, again) and rows == 2 * 4 + 3 * 3
    torch.testing.assert_close(first, split, rtol=1e-4, atol=1e-4)
    assert first.shape == (2, 3, 16, 16) and 0 <= float(first.min()) and float(first.max()) <= 1


def test_first_seed_selects_an_independent_seed_range():
    from zigzag_kdiff.bench import shapes as bench_shapes

    base = bench_shapes.initial_noise(3, 2)
    shifted = bench_shapes.initial_noise(2, 2, first_seed=1)
    assert torch.equal(shifted, base[1:]) and not torch.equal(shifted[0], base[0])


def test_shapes_tables_shape(quick_shapes):
    from zigzag_kdiff.bench import shapes as bench_shapes

    text = bench_shapes.format_shapes(quick_shapes, bench_shapes.QUICK)
    lines = text.splitlines()
    header = lines.index(
        "| method | images | rows/image | count | colour | position | all correct | count ∧ colour | clean |"
    )
    body = [line for line in lines[header + 2 :] if line.startswith("|")][: len(quick_shapes)]
    assert len(body) == len(quick_shapes) and all(line.count("|") == 10 for line in body)
    tests = bench_shapes.comparisons(quick_shapes, bench_shapes.QUICK)
    assert tests and all(t.images == 16 and set(t.tests) == set(bench_shapes.TESTED) for t in tests)
    for test in tests:
        for attribute in test.tests.values():
            assert 0 <= attribute.p_value <= 1 and attribute.wins + attribute.losses <= 16
            assert attribute.delta[1] <= attribute.delta[0] <= attribute.delta[2]
    assert "McNemar" in text and "λ sweep" in text


def test_shapes_results_round_trip_through_json(quick_shapes, tmp_path):
    import json

    from zigzag_kdiff.bench import shapes as bench_shapes

    path = tmp_path / "shapes.json"
    path.write_text(json.dumps(bench_shapes.to_json(quick_shapes, bench_shapes.QUICK)))
    runs, config = bench_shapes.load_json(path)
    assert config == bench_shapes.QUICK and [r.method for r in runs] == [r.method for r in quick_shapes]
    assert bench_shapes.format_shapes(runs, config) == bench_shapes.format_shapes(quick_shapes, bench_shapes.QUICK)


def test_cli_bench_shapes_renders_stored_outcomes(quick_shapes, tmp_path, capsys):
    import json

    from zigzag_kdiff.bench import shapes as bench_shapes
    from zigzag_kdiff.cli import main

    path = tmp_path / "shapes.json"
    path.write_text(json.dumps(bench_shapes.to_json(quick_shapes, bench_shapes.QUICK)))
    assert main(["bench", "shapes", "--from-json", str(path)]) == 0
    assert capsys.readouterr().out.strip() == bench_shapes.format_shapes(quick_shapes, bench_shapes.QUICK).strip()
