"""The package, the ComfyUI pack's registry metadata, the webui extension's metadata and the changelog
name one version."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import zigzag_kdiff

ROOT = Path(__file__).resolve().parents[1]


def test_host_metadata_and_changelog_carry_the_package_version():
    version = zigzag_kdiff.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    comfy = (ROOT / "extensions/comfyui_zigzag/pyproject.toml").read_text()  # no tomllib on Python 3.10
    assert re.findall(r'^version = "(.*)"$', comfy, flags=re.M) == [version]
    assert f'dependencies = ["zigzag-kdiff>={version}"]' in comfy
    webui = configparser.ConfigParser()
    assert webui.read(ROOT / "extensions/sd-webui-zigzag/metadata.ini")
    assert webui.get("Extension", "Version") == version
    assert webui.get("Extension", "Name") == "zigzag-kdiff"  # A1111/Forge's canonical extension name
    headings = re.findall(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), flags=re.M)
    released = headings[1] if headings[0] == "Unreleased" else headings[0]  # changes not yet in a version come first
    assert released == version, "the newest CHANGELOG.md version entry is the package version"
    assert "version = attr: zigzag_kdiff.__version__" in (ROOT / "setup.cfg").read_text()
