"""The README's k-diffusion example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_k_diffusion_example_runs():
    section = README.read_text(encoding="utf-8").split("## k-diffusion scripts", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    latents = namespace["latents"]
    assert latents.shape == (1, 4, 16, 16) and torch.isfinite(latents).all()
