"""Build the Comfy Registry zip of the node pack: what ``comfy node publish`` uploads, unpacked into ``custom_nodes/``.

The zip has the repository's layout, so the pack loads exactly as a ``git clone`` does (the root ``__init__.py``
loads ``extensions/comfyui_zigzag``, which imports the ``zigzag_kdiff`` next to it):

- ``pyproject.toml``: the pack's registry metadata (``extensions/comfyui_zigzag/pyproject.toml``: ``[project]`` name,
  version, dependencies; ``[tool.comfy]`` PublisherId, DisplayName);
- ``requirements.txt``: that pyproject's ``dependencies``, one per line (PyPI packages only);
- ``__init__.py``, ``example_workflows/``, ``extensions/comfyui_zigzag/`` and the library ``zigzag_kdiff/`` (with
  its bundled model): zigzag-kdiff is not on PyPI, so the library travels inside the zip;
- nothing of the webui extension (root ``scripts/``, ``install.py``), tests, tools or results.

Files are the tracked ones (``git ls-files``, working-tree content), written in sorted order with fixed timestamps,
so one commit gives one zip. ::

    python tools/build_comfy_registry_zip.py                      # dist/comfyui-zigzag-<version>.zip
    python tools/build_comfy_registry_zip.py --stage dist/registry  # also the unpacked folder (comfy node publish)
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACK = "extensions/comfyui_zigzag"
INCLUDED = ("__init__.py", "example_workflows", PACK, "zigzag_kdiff")
"""Repository paths that go into the zip as they are (files, or folders of tracked files)."""
EXCLUDED = (f"{PACK}/pyproject.toml",)
"""Written at the zip root instead."""
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def pack_pyproject(root: Path = ROOT) -> str:
    return (root / PACK / "pyproject.toml").read_text(encoding="utf-8")


def pack_metadata(pyproject: str) -> tuple[str, str, list[str]]:
    """``(name, version, dependencies)`` of the pack's ``[project]`` table."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: the three fields are plain one-line values
        name = re.search(r'^name = "(.*)"$', pyproject, flags=re.M).group(1)
        version = re.search(r'^version = "(.*)"$', pyproject, flags=re.M).group(1)
        dependencies = re.findall(r'"([^"]+)"', re.search(r"^dependencies = \[(.*)\]$", pyproject, flags=re.M).group(1))
        return name, version, dependencies
    project = tomllib.loads(pyproject)["project"]
    return project["name"], project["version"], list(project.get("dependencies", []))


def tracked_files(root: Path = ROOT) -> list[str]:
    """The repository paths that go into the zip, sorted (``git ls-files``; files deleted in the tree skipped)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--", *INCLUDED], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    return sorted(path for path in listed if path and path not in EXCLUDED and (root / path).is_file())


def registry_files(root: Path = ROOT) -> dict[str, bytes]:
    """Every file of the registry zip: its name in the zip → its content."""
    pyproject = pack_pyproject(root)
    _, _, dependencies = pack_metadata(pyproject)
    files = {path: (root / path).read_bytes() for path in tracked_files(root)}
    files["pyproject.toml"] = pyproject.encode()
    files["requirements.txt"] = "".join(f"{dependency}\n" for dependency in dependencies).encode()
    return dict(sorted(files.items()))


def build_zip(out_dir: Path, root: Path = ROOT, stage: Path | None = None) -> Path:
    """Write ``<out_dir>/<name>-<version>.zip`` (and the unpacked folder at ``stage``); return the zip's path."""
    name, version, _ = pack_metadata(pack_pyproject(root))
    files = registry_files(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}-{version}.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for member, content in files.items():
            info = zipfile.ZipInfo(member, date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, content)
    if stage is not None:
        shutil.rmtree(stage, ignore_errors=True)
        for member, content in files.items():
            (stage / member).parent.mkdir(parents=True, exist_ok=True)
            (stage / member).write_bytes(content)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="folder for the zip (default: dist/)")
    parser.add_argument("--stage", type=Path, help="also write the unpacked pack here (run comfy node publish in it)")
    args = parser.parse_args(argv)
    path = build_zip(args.out, stage=args.stage)
    with zipfile.ZipFile(path) as archive:
        count = len(archive.namelist())
    print(f"{path} ({count} files, {path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
