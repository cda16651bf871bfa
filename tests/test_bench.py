"""The evidence rig: exact-mixture metrics, the shapes checker and the benchmark tables (not their conclusions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zigzag_kdiff.bench import gmm as bench_gmm
from zigzag_kdiff.bench import shapes_task as shapes
from zigzag_kdiff.bench.shapes_task import ShapeSpec, check_image

# --- exact Gaussian mixtures --------------------------------------------------------------------------


def test_mixture_denoiser_is_the_closed_form_posterior_mean():
    """The matrix-product denoiser equals E[x₀|x,c] = Σ_k r_k (μ_k + v_k/(v_k + σ²)(x − μ_k)) written out
    component by component, for conditional and unconditional rows and for mixed σ in one batch."""
    model = bench_gmm.Mixture(16, 0.2).build()
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    cond = torch.arange(64) % 4 - 1  # includes the unconditional label -1
    for sigma in (torch.full((64,), 0.05), torch.full((64,), 7.0), torch.linspace(0.01, 20, 64)):
        sigma = sigma.to(torch.float64)
        var = model.variances[None] + sigma[:, None, None] ** 2  # [batch, K, D]
        diff = x[:, None] - model.means[None]
        log_n = -0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(-1) + model.log_weights
        allowed = (model.classes[None] == cond[:, None]) | (cond[:, None] == -1)
        resp = log_n.masked_fill(~allowed, -math.inf).softmax(-1)
        expected = (resp[:, :, None] * (model.means[None] + model.variances[None] / var * diff)).sum(1)
        torch.testing.assert_close(model(x, sigma, cond), expected, rtol=0, atol=1e-12)


def test_frechet_distance_closed_form():
    cov = np.diag([1.0, 4.0])
    assert bench_gmm.frechet_distance(np.zeros(2), cov, np.zeros(2), cov) == pytest.approx(0, abs=1e-12)
    # 1-D: (μ₁ − μ₂)² + (σ₁ − σ₂)²
    got = bench_gmm.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([0.0]), np.array([[1.0]]))
    assert got == pytest.approx(1 + 1)


def test_metrics_on_exact_data_and_on_swapped_labels():
    """Exact class samples: FD ≈ 0 (sampling noise only), spread ≈ 1, logit and accuracy well above chance;
    the same samples with wrong labels score far worse in adherence (the metrics can fail)."""
    mixture = bench_gmm.Mixture(2, 0.6, seed=0).build()
    labels = torch.arange(3).repeat_interleave(2000)
    x = mixture.sample(labels, generator=torch.Generator().manual_seed(0))
    good = bench_gmm.sample_metrics(mixture, x, labels)
    assert good["fd"] < 0.02 and abs(good["spread"] - 1) < 0.05
    assert good["accuracy"] > 0.55 and good["logit"] > 0
    bad = bench_gmm.sample_metrics(mixture, x, (labels + 1) % 3)
    assert bad["accuracy"] < 0.3 and bad["logit"] < good["logit"] - 1
    assert bad["fd"] > 10 * good["fd"]


def test_interpolation_and_bootstrap():
    adherence, values = np.array([3.0, 1.0, 2.0]), np.array([30.0, 10.0, 20.0])
    assert bench_gmm.interpolate_curve(adherence, values, 1.5) == pytest.approx(15)
    assert math.isnan(bench_gmm.interpolate_curve(adherence, values, 3.5))
    mean, low, high = bench_gmm.mean_ci(np.arange(20.0))
    assert mean == pytest.approx(9.5) and low < mean < high
    assert bench_gmm.mean_ci([1.0, 1.0, 1.0]) == (1.0, 1.0, 1.0)


TINY = bench_gmm.Config(
    mixtures=(bench_gmm.Mixture(2, 0.6),),
    steps=6,
    seeds=3,
    per_class=32,
    cfg_scales=(1.0, 2.0, 4.0, 8.0, 14.0),
    zigzag_scales=(2.0, 4.0),
    lambda_scale=2.0,
    lambdas=(0, 2, 5),
    gap_scale=4.0,
    inversion_scales=(0.0, 2.0),
    compute_steps_standard=(3, 6),
    compute_steps_zigzag=(3, 6),
    target_scale=4.0,
)


@pytest.fixture(scope="module")
def tiny_gmm():
    return bench_gmm.run_gmm(TINY)


def test_gmm_bench_runs_paired_and_counts_rows(tiny_gmm):
    (result,) = tiny_gmm
    standard = {run.method.scale: run for run in result.find(family="standard")}
    assert standard[1.0].rows_per_sample == 6 and standard[4.0].rows_per_sample == 12
    zigzag = result.find(family="Z-Sampling euler γ₂=0", scale=4.0)[0]
    assert zigzag.rows_per_sample == 2 * 6 + 3 * 5  # 2T + 3λ
    equal = result.find(family="standard, equal rows", scale=4.0)[0]
    assert equal.method.steps == TINY.equal_row_steps == 14 and equal.rows_per_sample >= zigzag.rows_per_sample
    # λ = 0 in the sweep is standard sampling from the same noise: identical metrics
    lam0 = result.find(family="λ sweep", zigzag_steps=0)[0]
    assert lam0.metrics == result.find(family="standard", scale=2.0)[0].metrics
    # the sweep's own matched delta is zero, its equivalent scale is its scale
    np.testing.assert_allclose(bench_gmm.matched(result, standard[4.0], "fd"), 0)
    np.testing.assert_allclose(bench_gmm.equivalent_scale(result, standard[4.0]), 4.0)
    # adherence rises with the CFG scale
    logits = [np.mean(standard[s].metrics["logit"]) for s in TINY.cfg_scales]
    assert logits == sorted(logits)


def test_gmm_tables_shape(tiny_gmm):
    text = bench_gmm.format_gmm(tiny_gmm, TINY)
    header = next(line for line in text.splitlines() if line.startswith("| method |"))
    columns = header.count("|") - 1
    table = [line for line in text.splitlines() if line.startswith("| CFG ") or line.startswith("| Z ")]
    summary = bench_gmm.summary_rows(tiny_gmm[0])
    # standard, equal rows: 5 scales each; interval: 4 (scale 1 is plain); 4 Z families and Z interval: 2 each
    assert len(summary) == len(table) == 5 + 5 + 4 + 4 * 2 + 2
    assert all(line.count("|") - 1 == columns for line in table)
    assert "λ sweep" in text and "guidance gap" in text and "equal compute" in text


def test_gmm_outputs(tiny_gmm, tmp_path):
    paths = bench_gmm.write_outputs(tiny_gmm, TINY, tmp_path)
    assert {p.name for p in paths} >= {"gmm.md", "gmm.json", "gmm_frontier.png", "gmm_lambda.png"}
    assert all(p.stat().st_size > 0 for p in paths)


# --- the shapes task ---------------------------------------------------------------------------------


def test_prompts_and_vocabulary():
    specs = shapes.all_specs()
    assert len(specs) == 72 and len({s.prompt for s in specs}) == 72
    assert ShapeSpec(2, "red", "left").prompt == "two red squares on the left"
    assert shapes.parse_prompt("one blue square at the top") == ShapeSpec(1, "blue", "top")
    with pytest.raises(ValueError, match="count"):
        ShapeSpec(4, "red", "left")
    with pytest.raises(ValueError, match="prompt"):
        shapes.parse_prompt("four red squares")
    assert max(len(s.prompt.split()) for s in specs) + 2 == shapes.MAX_TOKENS


def test_checker_scores_real_data_100_percent():
    images, specs = shapes.make_dataset(720, seed=1)
    results = [check_image(image, spec) for image, spec in zip(images, specs)]
    assert all(r.all_correct and r.clean for r in results)
    assert {r.found for r in results} == {1, 2, 3}


def _blank() -> np.ndarray:
    return np.full((3, 16, 16), shapes.BACKGROUND, dtype=np.float32)


def test_checker_catches_each_error():
    spec = ShapeSpec(2, "red", "left")
    image = _blank()
    image[:, 1:4, 1:4] = np.array([1, 0, 0])[:, None, None]
    image[:, 8:12, 2:6] = np.array([1, 0, 0])[:, None, None]
    assert check_image(image, spec).all_correct and check_image(image, spec).clean
    assert not check_image(image, ShapeSpec(3, "red", "left")).count
    assert not check_image(image, ShapeSpec(2, "yellow", "left")).colour
    assert not check_image(image, ShapeSpec(2, "red", "right")).position
    assert check_image(image, ShapeSpec(2, "red", "top")).position is False
    touching = image.copy()
    # a third square touching the first at a corner: one blob, not a square
    touching[:, 4:7, 4:7] = np.array([1, 0, 0])[:, None, None]
    result = check_image(touching, ShapeSpec(3, "red", "left"))
    assert result.found == 2 and not result.count and not result.clean
    smudged = image.copy()
    smudged[1, 14, 14] = 0.7  # an ambiguous pixel (0.2 from grey: background, but not clean)
    assert check_image(smudged, spec).all_correct and not check_image(smudged, spec).clean
    rectangle = _blank()
    rectangle[:, 1:4, 1:5] = np.array([1, 0, 0])[:, None, None]
    assert not check_image(rectangle, ShapeSpec(1, "red", "left")).clean
    assert not check_image(_blank(), spec).colour  # nothing there: nothing right
    washed = image.copy()
    washed[1:, 1:4, 1:4] = 0.5  # red channel right, the others grey: not a palette colour
    assert not check_image(washed, spec).colour and not check_image(washed, spec).clean
    with pytest.raises(ValueError, match="shape"):
        check_image(np.zeros((16, 16)), spec)


def test_tokenizer_round_trips_through_auto_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    shapes.build_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    ids = tokenizer(["three magenta squares at the bottom", ""], padding="max_length", max_length=8).input_ids
    vocab = shapes.vocabulary()
    assert [vocab[i] for i in ids[0]] == ["<bos>", "three", "magenta", "squares", "at", "the", "bottom", "<eos>"]
    assert [vocab[i] for i in ids[1]] == ["<bos>", "<eos>"] + ["<pad>"] * 6


def test_cli_bench_gmm_quick_prints_every_table(capsys):
    from zigzag_kdiff.cli import main

    assert main(["bench", "gmm", "--quick"]) == 0
    out = capsys.readouterr().out
    for dim in (m.dim for m in bench_gmm.QUICK.mixtures):
        assert f"### d = {dim} " in out and f"#### d = {dim}: λ sweep" in out
    assert out.count("| method | rows/sample |") == len(bench_gmm.QUICK.mixtures)
