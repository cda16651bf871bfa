"""The CFG wrapper: branch skipping, batching, pass-through of per-branch conditioning."""

from __future__ import annotations

import torch
from torch import nn

from zigzag_kdiff import CallCounter, CFGDenoiser


class Recorder(nn.Module):
    """A denoiser whose output depends on every conditioning input, recording what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict] = []

    def forward(self, x, sigma, encoder_hidden_states, added_cond_kwargs, scale=1.0):
        self.seen.append({"rows": x.shape[0], "ehs": encoder_hidden_states, "added": added_cond_kwargs})
        pooled = added_cond_kwargs["text_embeds"].sum(-1) + added_cond_kwargs["time_ids"].sum(-1)
        return x * scale + encoder_hidden_states.mean(dim=(1, 2))[:, None] + pooled[:, None] + sigma[:, None]


def branch(value: float, batch: int = 2) -> dict:
    return {
        "encoder_hidden_states": torch.full((batch, 3, 4), value),
        "added_cond_kwargs": {"text_embeds": torch.full((batch, 5), value), "time_ids": torch.full((1, 6), value)},
    }


def test_scale_one_and_zero_evaluate_one_branch_exactly():
    inner = Recorder()
    model = CFGDenoiser(CallCounter(inner))
    x, sigma = torch.randn(2, 4), torch.full((2,), 3.0)
    cond, uncond = branch(1.0), branch(-1.0)
    only_cond = model(x, sigma, cond=cond, uncond=uncond, cond_scale=1.0)
    only_uncond = model(x, sigma, cond=cond, uncond=uncond, cond_scale=0.0)
    assert [s["rows"] for s in inner.seen] == [2, 2]
    assert torch.equal(only_cond, inner(x, sigma, **cond)) and torch.equal(only_uncond, inner(x, sigma, **uncond))


def test_guided_call_is_one_batch_uncond_first_with_nested_conditioning():
    inner = Recorder()
    counter = CallCounter(inner)
    model = CFGDenoiser(counter)
    x, sigma = torch.randn(2, 4), torch.full((2,), 3.0)
    cond, uncond = branch(1.0), branch(-1.0)
    out = model(x, sigma, cond=cond, uncond=uncond, cond_scale=5.5, scale=2.0)  # extra kwarg passes through
    assert counter.calls == 1 and counter.rows == 4
    seen = inner.seen[0]
    assert torch.equal(seen["ehs"][:2], uncond["encoder_hidden_states"])
    assert seen["added"]["time_ids"].shape == (4, 6)  # batch-1 entries broadcast, then batched
    u, c = inner(x, sigma, **uncond, scale=2.0), inner(x, sigma, **cond, scale=2.0)
    torch.testing.assert_close(out, u + 5.5 * (c - u))


def test_unbatchable_branches_use_two_calls():
    inner = Recorder()
    counter = CallCounter(inner)
    cond, uncond = branch(1.0), branch(-1.0)
    uncond["encoder_hidden_states"] = torch.zeros(2, 7, 4)  # other token length
    CFGDenoiser(counter)(torch.randn(2, 4), torch.ones(2), cond=cond, uncond=uncond, cond_scale=3.0)
    assert counter.calls == 2 and counter.rows == 4


def test_guidance_interval_skips_uncond_outside():
    inner = Recorder()
    counter = CallCounter(inner)
    model = CFGDenoiser(counter, guidance_interval=(0.5, 2.0))
    x, cond, uncond = torch.randn(2, 4), branch(1.0), branch(-1.0)
    for sigma, rows in ((3.0, 2), (2.0, 4), (0.5, 4), (0.4, 2)):
        counter.reset()
        out = model(x, torch.full((2,), sigma), cond=cond, uncond=uncond, cond_scale=4.0)
        assert counter.rows == rows, sigma
        if rows == 2:
            assert torch.equal(out, inner(x, torch.full((2,), sigma), **cond))


def test_the_core_modules_import_one_way_at_module_level():
    """guidance → seg → interval (issue #17's import circle): no cycle among the core modules' imports
    and no package import inside a function of guidance.py or seg.py."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "zigzag_kdiff"
    graph, inner = {}, []
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        graph[path.stem] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                graph[path.stem].add((node.module or "").split(".")[0])
        for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and node.level == 1 and path.stem in ("guidance", "seg"):
                    inner.append(f"{path.stem}.{function.name}: from .{node.module}")
    assert inner == []
    assert "seg" in graph["guidance"] and "guidance" not in graph["seg"] and graph["interval"] == set()

    def reaches(start, goal, seen=()):
        return any(m == goal or (m not in seen and reaches(m, goal, (*seen, m))) for m in graph.get(start, ()))

    cycles = [m for m in ("sampling", "flow", "guidance", "seg", "interval") if reaches(m, m)]
    assert cycles == []
