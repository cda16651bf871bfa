"""``bench convergence`` and ``bench shapes-dpmpp``: the tables, files and bookkeeping (not their conclusions)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from zigzag_kdiff.bench import convergence as bc
from zigzag_kdiff.bench import gmm as bench_gmm
from zigzag_kdiff.cli import main

TINY = bc.Config(
    mixtures=(bench_gmm.Mixture(16, 0.2),),
    seeds=3,
    per_class=8,
    steps=(5, 10),
    reference_steps=40,
    matched_steps=(10,),
    cfg_scales=(1.0, 4.0, 14.0),
    zigzag_scales=(4.0,),
)


@pytest.fixture(scope="module")
def tiny_convergence():
    return bc.run_convergence(TINY)


def test_convergence_rows_cover_every_method_and_the_diagnostics(tiny_convergence):
    (dim,) = tiny_convergence
    names = [c.name for c in dim.convergence]
    assert names == [
        "zigzag Euler",
        "zigzag DDIM",
        "zigzag DPM++ 2M",
        "Euler",
        "DPM++ 2M",
        bc.UNMOVED_NAME,
        bc.EXACT_INVERSION,
    ]
    for conv in dim.convergence:
        assert all(len(v) == TINY.seeds and all(e > 0 for e in v) for v in conv.errors.values())
        assert np.mean(conv.errors[10]) < np.mean(conv.errors[5])  # closer to the T = 40 run with more steps
    rows = {row["method"]: row for row in bc.convergence_rows(dim)}
    order = rows["zigzag Euler"]["order"]["5"]
    assert order[1] <= order[0] <= order[2]
    assert rows["zigzag Euler"]["vs_zigzag_euler"]["10"][0] == pytest.approx(1.0)
    assert rows["Euler"]["vs_zigzag_euler"] == {}


def test_matched_rows_compare_each_zigzag_rule_with_both_cfg_sweeps(tiny_convergence):
    (dim,) = tiny_convergence
    rows = bc.matched_rows(dim)
    assert [(r["steps"], r["rule"]) for r in rows] == [(10, "euler"), (10, "ddim"), (10, "dpmpp_2m")]
    assert all(r["rows"] == 2 * 10 + 3 * 9 for r in rows)  # 2T + 3λ rows at γ₂ = 0
    assert all(len(r["vs_dpmpp_2m_fd"]) == 3 and len(r["vs_euler_fd"]) == 3 for r in rows)


def test_convergence_outputs(tiny_convergence, tmp_path):
    written = bc.write_outputs(tiny_convergence, TINY, tmp_path)
    assert [p.name for p in written] == [
        "convergence.md",
        "convergence.json",
        "convergence.png",
        "convergence_matched.png",
    ]
    text = (tmp_path / "convergence.md").read_text()
    assert "| zigzag DPM++ 2M |" in text and "order 5→10" in text and "ΔFD vs DPM++ 2M CFG" in text
    data = json.loads((tmp_path / "convergence.json").read_text())
    assert data["config"]["reference_steps"] == 40 and len(data["dims"][0]["matched"]) == 3


def test_cli_bench_shapes_dpmpp_quick_pairs_each_zigzag_run(tmp_path, capsys):
    assert main(["bench", "shapes-dpmpp", "--quick", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "| CFG 3 DPM++ 2M T=4 | 16 | 8 |" in text  # 8 prompts × 2 seeds, 2T rows
    assert "| Z dpmpp_2m γ₁=3 γ₂=0 λ=3 T=4 | 16 | 17 |" in text  # 2T + 3λ rows
    assert "(same T)" in text and "(moved history)" in text
    data = json.loads((tmp_path / "shapes_dpmpp.json").read_text())
    assert [run["method"]["seeds"] for run in data["runs"]] == [None, None, 1]
    assert [len(run["outcomes"]["all_correct"]) for run in data["runs"]] == [2, 2, 1]
    assert [p["relation"] for p in data["paired"]] == ["same T", "moved history"]
    assert (tmp_path / "shapes_dpmpp.png").is_file()
    assert main(["bench", "shapes-dpmpp", "--from-json", str(tmp_path / "shapes_dpmpp.json")]) == 0
    assert capsys.readouterr().out == text  # the stored outcomes re-render the same tables
