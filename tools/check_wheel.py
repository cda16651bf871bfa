"""The release check of the PyPI distribution: build, ``twine check``, install the wheel into a fresh virtual
environment and run ``zigzag-kdiff compare`` on the bundled model from a folder outside the checkout.

::

    python tools/check_wheel.py            # CI runs this (.ci/run); needs the [test] extra (build, twine)

The build runs on a copy of the package sources (``python -m build --no-isolation``: the build backend of the
current environment, no download; nothing is written into the checkout). The fresh environment is
``python -m venv --without-pip``; the wheel goes in with ``pip --python <venv> install --no-deps --no-index``
(offline, seconds). Its runtime requirements (torch, diffusers, transformers for the compare CLI) are not
downloaded again: one ``.pth`` line lets the new environment see the current environment's site-packages. A path
listed in a ``.pth`` file is not scanned for ``.pth`` files itself, so an editable zigzag-kdiff of the current
environment stays invisible; the check asserts the imported copy is the wheel's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("setup.cfg", "pyproject.toml", "README.md")


def build(out_dir: Path, sdist: bool = True, root: Path = ROOT) -> list[Path]:
    """``python -m build`` (wheel, and the sdist) of a copy of the package sources; the built files."""
    with tempfile.TemporaryDirectory(prefix="zigzag-build-") as work:
        source = Path(work) / "src"
        source.mkdir()
        for name in SOURCES:
            shutil.copy2(root / name, source / name)
        shutil.copytree(root / "zigzag_kdiff", source / "zigzag_kdiff", ignore=shutil.ignore_patterns("__pycache__"))
        kinds = ["--sdist", "--wheel"] if sdist else ["--wheel"]
        command = [sys.executable, "-m", "build", "--no-isolation", *kinds, "--outdir", str(out_dir), str(source)]
        subprocess.run(command, check=True, capture_output=True, text=True)
    return sorted(path for path in out_dir.iterdir() if path.suffix in (".whl", ".gz"))


def wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def fresh_venv(venv: Path, wheel: Path) -> Path:
    """A new virtual environment with the wheel installed (no dependencies fetched) that sees this environment's
    packages; its Python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index"]
    subprocess.run([*pip, str(wheel)], check=True)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    host = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    Path(purelib, "zigzag-check-host-packages.pth").write_text("".join(f"{path}\n" for path in host))
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="zigzag-wheel-"))
    try:
        work.mkdir(parents=True, exist_ok=True)
        dist = build(work / "dist")
        subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist)], check=True)
        (wheel,) = [path for path in dist if path.suffix == ".whl"]
        python = fresh_venv(work / "venv", wheel)
        outside = work / "elsewhere"
        outside.mkdir()
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        where = subprocess.run(
            [str(python), "-c", "import zigzag_kdiff; print(zigzag_kdiff.__file__)"],
            cwd=outside,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if not Path(where).is_relative_to(work / "venv"):
            raise SystemExit(f"zigzag_kdiff came from {where}, not from the wheel")
        cli = python.parent / ("zigzag-kdiff.exe" if os.name == "nt" else "zigzag-kdiff")
        command = [str(cli), "compare", "--steps", "4", "--seeds", "0", "--threads", "1", "--out", "out", "--quiet"]
        subprocess.run(command, cwd=outside, env=env, check=True)
        report = json.loads((outside / "out" / "compare.json").read_text())
        if not (outside / "out" / "grid.png").is_file() or not report:
            raise SystemExit("compare wrote no grid")
        print(f"wheel OK: {wheel.name} installed in a fresh venv, zigzag_kdiff from {where}, compare wrote grid.png")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
