"""SEG in the evidence rig and the CLI: ``bench shapes --seg`` (quick), ``bench cost`` rows, ``compare`` methods."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("k_diffusion")

from zigzag_kdiff.bench import shapes as bench_shapes  # noqa: E402
from zigzag_kdiff.bench.common import Method  # noqa: E402
from zigzag_kdiff.cli import main  # noqa: E402

QUICK_SEG = replace(bench_shapes.QUICK, seeds=1, prompts=4, steps=4)


@pytest.fixture(scope="module")
def seg_runs():
    threads = torch.get_num_threads()
    yield bench_shapes.run_shapes(QUICK_SEG, seg=True)
    torch.set_num_threads(threads)


def test_seg_methods_count_their_rows(seg_runs):
    T = QUICK_SEG.steps
    rows = {run.method.label: run.rows_per_image for run in seg_runs}
    assert rows[f"CFG 3 T={T}"] == 2 * T
    assert rows[f"CFG 3 T={T} + SEG 3 σ=∞ mid"] == 3 * T
    assert rows[f"CFG 1 T={T} + SEG 3 σ=∞ mid"] == 2 * T  # [cond, cond_blur]
    zigzag = f"Z ddim γ₁=3 γ₂=0 λ={T - 1} T={T}"
    assert rows[zigzag] == 2 * T + 3 * (T - 1)
    assert rows[f"{zigzag} + SEG 3 σ=∞ mid"] == 3 * T + (1 + 3) * (T - 1)  # 3 + 1 + 3 per zigzag step
    assert rows[f"{zigzag} + SEG 3 σ=∞ down,mid,up inversion SEG 3"] == 3 * T + (3 + 3) * (T - 1)
    interval = [r for label, r in rows.items() if "SEG interval" in label]
    assert len(interval) == 1 and 2 * T < interval[0] < 3 * T


def test_seg_tables_pair_each_seg_run_with_its_sampler_without_seg(seg_runs):
    tests = bench_shapes.seg_comparisons(seg_runs)
    seg_count = sum(run.method.seg_scale > 0 for run in seg_runs)
    zigzag_seg = sum(run.method.seg_scale > 0 and run.method.rule != "standard" for run in seg_runs)
    assert len(tests) == seg_count + zigzag_seg
    assert all(" + SEG " in t.method and " + SEG " not in t.baseline for t in tests)
    text = bench_shapes.format_seg(seg_runs, QUICK_SEG)
    assert "same sampler without SEG" in text and "McNemar" in text


def test_seg_results_round_trip_and_plain_methods_keep_their_json(seg_runs, tmp_path):
    written = bench_shapes.write_seg_outputs(seg_runs, QUICK_SEG, tmp_path)
    runs, config = bench_shapes.load_json(written[1])
    assert [r.method for r in runs] == [r.method for r in seg_runs]
    assert bench_shapes.format_seg(runs, config) == written[0].read_text()
    data = json.loads(written[1].read_text())
    assert "equal_compute" not in data and "lambda_sweep" not in data
    plain = data["runs"][0]["method"]
    assert plain["family"] == "standard" and not any(k.startswith("seg") for k in plain)


def test_seg_changes_the_images_and_is_deterministic():
    model = bench_shapes.load_model()
    cond, uncond = model.encode(["two red squares on the left"]), model.encode([""])
    noise = bench_shapes.initial_noise(1, 1)[0]
    plain, _ = bench_shapes.generate(model, Method("s", "standard", 3.0, 4), noise, cond, uncond, batch=1)
    method = Method("s", "standard", 3.0, 4, seg_scale=3.0, seg_layers=("down", "mid", "up"))
    first, rows = bench_shapes.generate(model, method, noise, cond, uncond, batch=1)
    again, _ = bench_shapes.generate(model, method, noise.clone(), cond, uncond, batch=1)
    assert torch.equal(first, again) and rows == 12 and not torch.equal(first, plain)
    assert not any(type(p).__name__ == "SEGAttnProcessor" for p in model.unet.attn_processors.values())


def test_bench_cost_counts_the_blurred_rows():
    from zigzag_kdiff.bench.common import format_cost, run_cost

    steps = 3
    threads = torch.get_num_threads()
    try:
        rows = {row.method: (row.calls, row.rows) for row in run_cost(steps=steps, repeats=1)}
    finally:
        torch.set_num_threads(threads)
    assert rows["Euler + SEG"] == (steps, 3 * steps)
    assert rows["zigzag euler γ₂=0 + SEG"] == (steps + 2 * (steps - 1), 3 * steps + 4 * (steps - 1))
    assert rows["zigzag euler γ₂=0 + SEG in inversions"][1] == 3 * steps + 6 * (steps - 1)
    assert rows["Euler"] == (steps, 2 * steps)
    assert "Euler + SEG" in format_cost(run_cost(steps=2, repeats=1), 2)


def test_compare_seg_methods_and_flags(tmp_path):
    out = tmp_path / "out"
    argv = ["compare", "--model", "tiny", "--steps", "3", "--out", str(out), "--threads", "1", "--quiet"]
    argv += ["--methods", "euler,seg_euler,zigzag_euler_seg", "--seg-scale", "2", "--seg-blur-sigma", "4"]
    argv += ["--seg-layers", "mid,u0"]
    threads = torch.get_num_threads()
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    summary = json.loads((out / "compare.json").read_text())
    calls = {m["key"]: (m["model_calls_per_image"], m["batch_rows_per_image"]) for m in summary["methods"]}
    assert calls == {"euler": (3, 6), "seg_euler": (3, 9), "zigzag_euler_seg": (7, 9 + 2 * (1 + 3))}
    from PIL import Image

    with Image.open(out / "p00-seed0-seg_euler.png") as image:
        parameters = image.text["parameters"]
    assert 'SEG scale: 2, SEG blur sigma: 4, SEG layers: "mid,u0"' in parameters


@pytest.mark.parametrize(
    "flags,match",
    [
        (["--seg-scale", "-1"], "argument --seg-scale: must be a finite number >= 0"),
        (["--seg-blur-sigma", "0"], "argument --seg-blur-sigma: must be a number > 0"),
        (["--seg-layers", "middle"], "--seg-layers has an unknown layer name 'middle'"),
        (["--seg-interval", "3", "1"], "--seg-interval must have sigma_low <= sigma_high"),
    ],
)
def test_compare_rejects_bad_seg_flags_before_loading_a_model(flags, match, capsys, tmp_path):
    argv = ["compare", "--model", "no-such-model", "--methods", "seg_euler", "--out", str(tmp_path)] + flags
    assert main(argv) == 2
    assert match in capsys.readouterr().err
