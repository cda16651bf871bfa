"""`zigzag-kdiff replicate`: pairing estimates of two benchmark JSONs and judging them against their CIs."""

from __future__ import annotations

import json

from zigzag_kdiff import cli
from zigzag_kdiff.bench.replicate import compare, format_pairs


def bench_json(delta: list[float], logit: list[float]) -> dict:
    return {
        "config": {"seeds": 20, "interval": [0.28, 5.42, 1.0]},  # config is never compared
        "paired": [
            {"method": "Z", "baseline": "CFG 3", "tests": {"clean": {"delta": delta, "wins": 3}}},
            {"method": "Z", "baseline": "CFG 3", "relation": "equal rows", "tests": {"clean": {"delta": [0, 0, 0]}}},
        ],
        "dims": [{"mixture": {"dim": 2}, "summary": [{"method": "CFG 1", "logit": logit, "fd": [1.0, 1.0, 1.0]}]}],
    }


def test_estimates_pair_by_name_and_are_judged_against_both_intervals():
    reference = bench_json([0.10, 0.05, 0.15], [1.0, 0.9, 1.1])
    pairs = {p.path: p for p in compare(reference, bench_json([0.16, 0.10, 0.22], [float("nan"), 0.0, 1.0]))}
    # zero-width intervals, NaN estimates and the config are skipped; the rest pair by method/baseline
    assert list(pairs) == ["/paired/{method=Z, baseline=CFG 3}/tests/clean/delta"]
    pair = pairs["/paired/{method=Z, baseline=CFG 3}/tests/clean/delta"]
    assert not pair.inside and pair.consistent  # 0.16 > 0.15, but |Δ| = 0.06 ≤ √(0.05² + 0.06²)
    far = compare(reference, bench_json([0.30, 0.25, 0.35], [1.0, 0.9, 1.1]))
    assert [p.consistent for p in far] == [False, True]
    assert "2 estimates" in format_pairs(far) and "consistent (|Δ| ≤ √(h₁² + h₂²)) for 1 (50 %)" in format_pairs(far)


def test_cli_replicate_prints_the_summary_and_names_a_missing_file(tmp_path, capsys):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(bench_json([0.10, 0.05, 0.15], [1.0, 0.9, 1.1])))
    second.write_text(json.dumps(bench_json([0.12, 0.07, 0.17], [1.05, 0.95, 1.15])))
    assert cli.main(["replicate", str(first), str(second)]) == 0
    assert "inside the reference's 95 % CI for 2 (100 %)" in capsys.readouterr().out
    assert cli.main(["replicate", str(first), str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
