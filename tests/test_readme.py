"""Every command in README.md and docs/*.md runs as written.

- every ```python block runs (a few get a tiny pipeline in place of real weights, see ``PREPARE``), and the
  numbers its comments state are checked where they are cheap to check (``CHECKS``);
- every ``zigzag-kdiff …`` command (in ```bash blocks and in inline code) parses with the CLI's own parser, and
  the files a ``python …``, ``bash …``, ``pytest …`` or ``ln -s`` command names exist;
- the JSON bodies of the ``curl`` examples parse and name samplers and script arguments that exist;
- every relative link and image points at an existing file, and every ``#anchor`` at a heading of its page.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _blocks(language: str) -> list[tuple[Path, int, str]]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match.group(1) == language:
                found.append((page, text[: match.start()].count("\n") + 1, match.group(2)))
    return found


PYTHON = _blocks("python")
BASH = _blocks("bash")

# Examples that load real weights: the test runs them on a tiny random pipeline instead (text replaced as given).
PREPARE: dict[str, tuple[str, str]] = {
    'StableDiffusionXLPipeline.from_pretrained("path/to/sdxl", torch_dtype=torch.float16).to("cuda")': (
        'StableDiffusionXLPipeline.from_pretrained("path/to/sdxl", torch_dtype=torch.float16).to("cuda")',
        '__import__("zigzag_kdiff.tiny", fromlist=["tiny_pipeline"]).tiny_pipeline("sdxl")',
    ),
}
# Examples that use a pipeline `pipe` loaded "as above": they get a tiny one.
NEEDS_PIPE = "generate(\n    pipe,"


def _check_kdiffusion(ns: dict) -> None:
    assert ns["latents"].shape == (1, 4, 16, 16) and torch.isfinite(ns["latents"]).all()


def _check_generate_zigzag(ns: dict) -> None:  # "58 denoiser calls, 97 UNet rows: T + 2λ and 2T + 3λ"
    assert (ns["result"].model_calls, ns["result"].batch_rows) == (58, 97)


def _check_generate_sdxl(ns: dict) -> None:  # "148 denoiser calls; 2 × 247 UNet rows"
    assert (ns["result"].model_calls, ns["result"].batch_rows) == (148, 2 * 247)
    assert len(ns["result"].images) == 2


def _check_generate_seg(ns: dict) -> None:  # "30 calls, 90 rows: [uncond, cond, cond_blur] per step"
    assert (ns["result"].model_calls, ns["result"].batch_rows) == (30, 90)


def _check_seg_script(ns: dict) -> None:  # non-square latent; the SEG processors are gone after the `with`
    assert ns["latents"].shape == (1, 4, 16, 24) and torch.isfinite(ns["latents"]).all()
    assert not any(type(p).__name__ == "SEGAttnProcessor" for p in ns["unet"].attn_processors.values())


def _check_shapes_pipeline(ns: dict) -> None:
    assert ns["pipe"].unet.config.in_channels == 3 and ns["pipe"].vae is None


def _check_generate_flux(ns: dict) -> None:  # "22 transformer calls, 22 rows: T + 2λ, one row each"
    assert (ns["result"].model_calls, ns["result"].batch_rows) == (22, 22)


# A distinctive line of an example → what its result must be.
CHECKS = {
    "zigzag_rounds=1,  # γ₂, λ, T_max": _check_kdiffusion,
    'sampler_options={"inversion_scale": 0.0})': _check_generate_zigzag,
    'result.images[0].save("dog.png")': _check_generate_sdxl,
    "seg_interval=None,\n)": _check_generate_seg,
    "with seg_attention(unet": _check_seg_script,
    "from_pretrained(BUNDLED_MODEL, vae=None)": _check_shapes_pipeline,
    'load_pipeline("tiny-flux")': _check_generate_flux,
}


def test_the_examples_are_found():
    """The test looks where the examples are: each check and replacement matches at least one example."""
    code = "\n".join(block for _, _, block in PYTHON)
    for key in [*CHECKS, *PREPARE]:
        assert key in code, key
    pages = {_rel(page) for page, _, _ in PYTHON}
    assert {"README.md", "docs/diffusers-and-k-diffusion.md", "docs/evidence.md"} <= pages


@pytest.mark.parametrize("page, line, code", PYTHON, ids=[f"{_rel(p)}:{n}" for p, n, _ in PYTHON])
def test_python_example_runs(page, line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that save files write them here
    namespace: dict = {}
    for original, replacement in PREPARE.values():
        code = code.replace(original, replacement)
    if NEEDS_PIPE in code and "pipe =" not in code:
        from zigzag_kdiff.tiny import tiny_pipeline

        namespace["pipe"] = tiny_pipeline("sdxl")
    exec(compile(code, f"{_rel(page)}:{line}", "exec"), namespace)  # noqa: S102 - our own documentation
    for key, check in CHECKS.items():
        if key in code:
            check(namespace)


def _commands(text: str) -> list[str]:
    """The shell commands of a bash block: continuation lines joined, comments dropped, `&&` split."""
    text = re.sub(r"-d '\{.*?\}'", "-d BODY", text, flags=re.S)  # curl's JSON bodies: see the API test
    joined = re.sub(r"\\\n\s*", " ", text)
    commands = []
    for line in joined.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        commands.extend(part.strip() for part in line.split("&&") if part.strip())
    return commands


def _inline_cli_commands() -> list[tuple[Path, str]]:
    found = []
    for page in PAGES:
        text = FENCE.sub("", page.read_text(encoding="utf-8"))
        for span in re.findall(r"`(zigzag-kdiff [^`]+)`", text):
            if not any(mark in span for mark in ("|", "…", "...")):  # "bench cost|gmm" lists choices
                found.append((page, span))
    return found


def _exists(relative: str) -> bool:
    relative = relative.rstrip("/")
    return (ROOT / relative).exists()


def test_cli_commands_parse_and_named_files_exist():
    from zigzag_kdiff.cli import build_parser

    parsed = files = 0
    shown = [(page, command) for page, _, block in BASH for command in _commands(block)]
    shown += _inline_cli_commands()
    for page, command in shown:
        words = shlex.split(command)
        while words and "=" in words[0] and not words[0].startswith("-"):  # PYTHONPATH=. python …
            words = words[1:]
        if words[:1] == ["zigzag-kdiff"]:
            try:
                build_parser().parse_args(words[1:])
            except SystemExit as error:
                pytest.fail(f"{_rel(page)}: `{command}` does not parse ({error})")
            parsed += 1
        elif words[:1] in (["python"], ["bash"]) or words[:3] == ["python", "-m", "pytest"]:
            for word in words[1:]:
                if word.endswith((".py", ".sh")):
                    assert _exists(word), f"{_rel(page)}: `{command}` names a missing {word}"
                    files += 1
        elif words[:2] == ["ln", "-s"]:
            source = words[2].replace("$PWD/", "").replace("$PWD", ".")
            assert _exists(source), f"{_rel(page)}: `{command}` links a missing {source}"
            files += 1
    assert parsed >= 10 and files >= 5, (parsed, files)


def _curl_bodies() -> list[tuple[Path, dict]]:
    bodies = []
    for page, _, block in BASH:
        for body in re.findall(r"curl .*?-d '(\{.*?\})'", block, re.S):
            bodies.append((page, json.loads(body)))
    return bodies


def test_http_api_examples_are_valid_json_with_existing_names():
    sys.path.insert(0, str(ROOT / "extensions" / "sd-webui-zigzag"))
    try:
        from zigzag_webui.names import SAMPLER_NAMES
    finally:
        sys.path.remove(str(ROOT / "extensions" / "sd-webui-zigzag"))
    bodies = _curl_bodies()
    assert len(bodies) >= 2
    for page, body in bodies:
        name = body["sampler_name"]
        assert not name.startswith("Zigzag") or name in SAMPLER_NAMES.values(), (_rel(page), name)
        for key in body.get("override_settings", {}):
            assert key.startswith("zigzag_"), (_rel(page), key)
        seg = body.get("alwayson_scripts", {}).get("Smoothed Energy Guidance")
        if seg is not None:  # enabled, seg_scale, seg_blur_sigma, seg_applied_layers, σ low, σ high, hires, hr …
            assert len(seg["args"]) == 9 and seg["args"][0] is True and seg["args"][3] == "mid"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        slug, n = _slug(heading), 1
        while slug in anchors:
            slug, n = f"{_slug(heading)}-{n}", n + 1
        anchors.add(slug)
    return anchors


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_relative_links_point_at_existing_files_and_headings():
    checked = 0
    for page in PAGES:
        text = re.sub(r"`[^`\n]*`", "", FENCE.sub("", page.read_text(encoding="utf-8")))
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            relative = resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) else str(resolved)
            assert _exists(relative), f"{_rel(page)}: link to a missing {target}"
            if anchor and resolved.exists():
                assert anchor in _anchors(resolved), f"{_rel(page)}: no heading for #{anchor} in {relative}"
            checked += 1
    assert checked >= 50, checked


def test_every_host_and_page_is_one_click_from_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in [
        "docs/a1111-forge.md",
        "docs/comfyui.md",
        "docs/diffusers-and-k-diffusion.md#k-diffusion-scripts",
        "docs/diffusers-and-k-diffusion.md#diffusers-generate",
        "docs/README.md",
        "docs/evidence.md",
        "docs/parity.md",
        "docs/design.md",
        "CHANGELOG.md",
    ]:
        assert f"]({target})" in readme, target
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    for page in (ROOT / "docs").glob("*.md"):
        assert page.name == "README.md" or f"]({page.name})" in index, page.name
    assert len(readme.splitlines()) <= 200
