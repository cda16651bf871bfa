"""The wheel (``python -m build``): the library with its bundled model, the console script, nothing else.

``tools/check_wheel.py`` (run by CI) goes further: ``twine check``, a fresh virtual environment and
``zigzag-kdiff compare`` from a folder outside the checkout.
"""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import pytest

import zigzag_kdiff

ROOT = Path(__file__).resolve().parents[1]


def _check_wheel():
    spec = importlib.util.spec_from_file_location("check_wheel", ROOT / "tools" / "check_wheel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wheel_holds_the_library_its_model_and_the_cli(tmp_path):
    if importlib.util.find_spec("build") is None:
        pytest.skip("the build package is not installed (the [test] extra has it)")
    check_wheel = _check_wheel()
    (wheel,) = check_wheel.build(tmp_path, sdist=False)
    names = check_wheel.wheel_names(wheel)
    assert {name.split("/")[0] for name in names} == {
        "zigzag_kdiff",
        f"zigzag_kdiff-{zigzag_kdiff.__version__}.dist-info",
    }
    model = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "zigzag_kdiff" / "models_data").rglob("*"))
    assert {path for path in model if (ROOT / path).is_file()} <= set(names)
    assert "zigzag_kdiff/py.typed" in names and "zigzag_kdiff/cli.py" in names
    assert not any("__pycache__" in name or name.startswith(("tools/", "tests/", "extensions/")) for name in names)
    with zipfile.ZipFile(wheel) as archive:
        info = next(name for name in names if name.endswith(".dist-info/METADATA"))
        metadata = archive.read(info).decode()
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert "zigzag-kdiff = zigzag_kdiff.cli:main" in entry_points
    requires = [line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist: ")]
    assert [r for r in requires if "extra ==" not in r] == ["torch>=2.0", "tqdm"]
