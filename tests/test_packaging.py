"""What a fresh clone and an sdist hold: the license, the sdist's files, the metadata, the install script."""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JUNK = re.compile(r"(^|/)(__pycache__|\.pytest_cache|\.ruff_cache|[^/]*\.egg-info|build|dist|\.?venv)(/|$)|\.py[cod]$")


def _setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    return config


def test_the_license_file_is_the_mit_license_the_metadata_names():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "Copyright (c) 2026 zigzag-kdiff contributors" in text
    assert "WITHOUT WARRANTY OF ANY KIND" in text
    metadata = _setup_cfg()["metadata"]
    assert metadata["license"] == "MIT" and metadata["license_files"].strip() == "LICENSE"


def test_project_urls_are_only_real_addresses():
    """No placeholder addresses: every project URL is an http(s) address (none are set while the project has no
    public home; paths inside the repository are not URLs)."""
    urls = _setup_cfg()["metadata"].get("project_urls", "")
    for line in filter(None, (line.strip() for line in urls.splitlines())):
        label, _, url = line.partition("=")
        assert re.fullmatch(r"https://[\w.-]+\.[a-z]{2,}(/\S*)?", url.strip()), line
        assert not re.search(r"example\.(com|org)|your-?(name|org)|TODO", url, re.I), line


def _source_files() -> list[str]:
    """The checkout's files: git's list where there is a git checkout, else (an unpacked sdist) the files on disk."""
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        files = [f for f in listed.splitlines() if (ROOT / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        files = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if p.is_file()]
    return sorted(f for f in files if not JUNK.search(f) and f not in {".gitignore", "PKG-INFO", "setup.py"})


def test_the_sdist_ships_every_file_of_the_checkout(tmp_path):
    """An unpacked sdist runs the tests: their helpers (conftest.py, seg_reference.py, comfyui_harness.py), the docs
    they check and the files those link to are all in it. Built from a copy (the build writes an egg-info)."""
    pytest.importorskip("build")
    source = tmp_path / "source"
    for name in _source_files():
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((ROOT / name).read_bytes())
    result = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (archive,) = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(archive) as sdist:
        members = {name.partition("/")[2] for name in sdist.getnames()}
    for helper in ("tests/conftest.py", "tests/seg_reference.py", "tests/comfyui_harness.py", "LICENSE"):
        assert helper in members, helper
    missing = [name for name in _source_files() if name not in members]
    assert not missing, f"the sdist lacks {missing[:10]} ({len(missing)} files): add them to MANIFEST.in"


def _install_script() -> Path:
    """The install script README's "two commands" name (wherever it lives)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (path,) = set(re.findall(r"^bash (\S*install-dev\.sh)", readme, re.M))
    return ROOT / path


def test_the_install_script_ends_with_one_line_saying_what_it_installed():
    """pip prints its red "dependency resolver" ERROR block after any install that leaves a --no-deps package's
    requirements unmet, so the --no-deps install comes last; then one line says what was installed."""
    lines = [line.strip() for line in _install_script().read_text(encoding="utf-8").splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    pip = [i for i, line in enumerate(commands) if re.match(r"python -m pip install\b", line)]
    assert "--no-deps" in commands[pip[-1]], "the --no-deps install must be the last pip install"
    assert all("--no-deps" not in commands[i] for i in pip[:-1]), "a pip install after a --no-deps one reports it"
    last = shlex.split(commands[-1])
    assert last[0] == "echo" and len(last) == 2 and "installed" in last[1], commands[-1]
    assert pip[-1] == len(commands) - 2, "nothing between the last pip install and the closing line"
