"""Find the zigzag_kdiff engine: installed in ComfyUI's Python, else the copy in the repository this pack is part of.

The pack sits at ``extensions/comfyui_zigzag`` of the zigzag-kdiff repository. Cloned into
``ComfyUI/custom_nodes/`` (ComfyUI-Manager, ``git clone``) or unzipped from the registry zip, the repository's root
``__init__.py`` loads this pack and the root holds the ``zigzag_kdiff`` package. Symlinked alone into
``custom_nodes/``, its real location (symlinks resolved) is still inside the checkout. Either way the root is two
levels up. Copied elsewhere, the package must be installed (``pip install zigzag-kdiff``). Nothing is installed
here; the log says which copy is used.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType

PACKAGE = "zigzag_kdiff"


def checkout_root(pack_dir: Path) -> Path | None:
    """The repository root two levels above the pack's real folder, if it holds ``zigzag_kdiff``."""
    root = Path(pack_dir).resolve().parents[1]
    return root if (root / PACKAGE / "__init__.py").is_file() else None


def describe(module: ModuleType, root: Path | None) -> str:
    """One log line: the version and folder of ``module``, and whether it is the repository's copy or installed."""
    folder = Path(module.__file__ or "").resolve().parent
    version = getattr(module, "__version__", "?")
    if root is not None and folder.is_relative_to(root):
        return f"[Zigzag] zigzag_kdiff {version} from this repository ({folder})"
    return f"[Zigzag] zigzag_kdiff {version} installed at {folder}"


def import_zigzag_kdiff(pack_dir: Path | None = None) -> ModuleType:
    """Import ``zigzag_kdiff``: the installed package, else the repository's copy (``import_from``)."""
    pack_dir = Path(__file__).parent if pack_dir is None else pack_dir
    try:
        module = importlib.import_module(PACKAGE)
    except ModuleNotFoundError as error:
        if error.name != PACKAGE:  # installed, but one of its own imports is missing: report that
            raise
        root = checkout_root(pack_dir)
        if root is None:
            raise ModuleNotFoundError(
                "comfyui_zigzag needs the zigzag-kdiff package: install the whole repository into custom_nodes/ "
                "(ComfyUI-Manager's Install via Git URL, or git clone), or `pip install zigzag-kdiff` into "
                "ComfyUI's Python",
                name=PACKAGE,
            ) from error
        module = import_from(root)
    logging.info(describe(module, checkout_root(pack_dir)))
    return module


def import_from(root: Path) -> ModuleType:
    """Import ``root/zigzag_kdiff`` as the package, without putting ``root`` on ``sys.path`` (the repository root also
    holds ``scripts/``, ``tools/``, ``tests/``, ``install.py``: names other packs may import)."""
    folder = root / PACKAGE
    spec = importlib.util.spec_from_file_location(
        PACKAGE, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]:
            del sys.modules[name]
        raise
    return module
