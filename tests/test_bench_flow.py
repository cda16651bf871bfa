"""``zigzag-kdiff bench gmm --flow``: flow schedules, the flow mixture methods and the tables (not the conclusions)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from zigzag_kdiff.bench import flow as bench_flow
from zigzag_kdiff.bench.gmm import Mixture, initial_noise
from zigzag_kdiff.cli import main


@pytest.mark.parametrize("steps", [4, 28])
def test_flow_schedules_are_fluxs_unshifted_linspace_and_sd3s_scheduler(steps):
    from diffusers import FlowMatchEulerDiscreteScheduler

    linspace = bench_flow.flow_sigmas(steps, "linspace")
    expected = np.append(np.linspace(1.0, 1 / steps, steps), 0.0)  # FluxPipeline's sigmas, no shift
    np.testing.assert_allclose(linspace.numpy(), expected, rtol=0, atol=1e-12)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)  # SD3's scheduler config
    scheduler.set_timesteps(steps)
    shifted = bench_flow.flow_sigmas(steps, "shift3")
    np.testing.assert_allclose(shifted.numpy(), scheduler.sigmas.double().numpy(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="schedule"):
        bench_flow.flow_sigmas(steps, "karras")


def test_rows_per_sample_true_cfg_against_distilled():
    """True CFG: 2 rows per guided call (1 at scale 1, 1 for a γ₂ = 0 inversion); distilled: 1 row per call."""
    spec = Mixture(2, 0.6)
    config = bench_flow.FlowConfig(mixtures=(spec,), steps=5, seeds=1, per_class=4)
    noise, labels = initial_noise(config, spec)
    mixture = spec.build()

    def rows(**fields) -> float:
        method = bench_flow.FlowMethod("m", steps=5, schedule="linspace", **fields)
        out, rows_per_sample = bench_flow.flow_sample(mixture, method, noise, labels)
        assert torch.isfinite(out).all()
        return rows_per_sample

    assert rows(rule="standard", guidance="cfg", scale=4.0) == 10
    assert rows(rule="standard", guidance="cfg", scale=1.0) == 5
    assert rows(rule="standard", guidance="distilled", scale=4.0) == 5
    assert rows(rule="euler", guidance="cfg", scale=4.0, inversion_scale=0.0) == 10 + 4 * (1 + 2)
    assert rows(rule="euler", guidance="distilled", scale=4.0, inversion_scale=1.0) == 5 + 4 * 2
    assert rows(rule="rf", guidance="distilled", scale=2.0, rf_high=4.0, rf_low=1.0) == 5 + 4 * 2


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flow")
    assert main(["bench", "gmm", "--flow", "--quick", "--out", str(folder)]) == 0
    return folder, json.loads((folder / "flow.json").read_text())


def test_cli_quick_writes_every_table_and_output(quick_run, capsys):
    folder, data = quick_run
    assert {p.name for p in folder.iterdir()} == {"flow.md", "flow.json", "flow_frontier.png"}
    text = (folder / "flow.md").read_text()
    for heading in ("## Summary", "linspace schedule", "shift3 schedule", "Identity", "Sweeps"):
        assert heading in text
    assert [r["schedule"] for r in data["results"]] == ["linspace", "shift3"]
    families = {row["family"] for row in data["results"][0]["summary"]}
    for rule in ("euler", "ddim", "dpmpp_2m"):
        assert {f"Z {rule}, CFG γ₂=0", f"Z {rule}, distilled g₂=1"} <= families
    assert any(family.startswith("RF analogue") for family in families)


def test_quick_run_distilled_guidance_is_true_cfg_at_fewer_rows(quick_run):
    """The identity in the bench: distilled (g₁, g₂) gives the true-CFG samples at (g₁, g₂), with fewer rows;
    the distilled sweep's metrics equal the CFG sweep's."""
    _, data = quick_run
    for result in data["results"]:
        for row in result["identity"]:
            assert row["max_abs_diff"] < 1e-12
            assert row["rows_distilled"] < row["rows_cfg"]
        runs = {(r["method"]["family"], r["method"]["scale"]): r for r in result["runs"]}
        for (family, scale), run in runs.items():
            if family == "distilled":
                for metric, values in run["metrics"].items():  # equal up to rounding (u + 1·(c − u) at g = 1)
                    assert values == pytest.approx(runs[("CFG", scale)]["metrics"][metric], rel=1e-9, abs=1e-12)
                assert run["rows_per_sample"] <= runs[("CFG", scale)]["rows_per_sample"]
        deltas = [row["vs_cfg_fd"][0] for row in result["summary"]]
        assert any(np.isfinite(deltas))  # matched adherence found for some rows


def test_quick_run_equal_rows_baselines_and_json_round_trip(quick_run, tmp_path, capsys):
    """Each summary row names its equal-rows sweep (true CFG at ⌈(5T − 3)/2⌉ steps, distilled at 3T − 2), and
    --from-json re-renders the same tables from the stored per-seed metrics."""
    folder, data = quick_run
    T = data["config"]["steps"]
    steps = {(r["method"]["family"]): r["method"]["steps"] for r in data["results"][0]["runs"]}
    assert steps["CFG, equal rows"] == -(-(5 * T - 3) // 2) and steps["distilled, equal rows"] == 3 * T - 2
    for row in data["results"][0]["summary"]:
        distilled = "distilled" in row["family"] or row["family"].startswith("RF")
        assert row["equal_rows_baseline"] == ("distilled, equal rows" if distilled else "CFG, equal rows")
    assert main(["bench", "gmm", "--flow", "--from-json", str(folder / "flow.json"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "flow.md").read_text() == (folder / "flow.md").read_text()
