"""Find the zigzag_kdiff engine: installed in ComfyUI's Python, or in the checkout this pack lives in.

The pack sits at ``extensions/comfyui_zigzag`` of the zigzag-kdiff repository. Symlinked into
``ComfyUI/custom_nodes/``, its real location (symlinks resolved) is still inside the checkout, whose
root (two levels up) holds the ``zigzag_kdiff`` package. Copied elsewhere, the package must be
installed (``pip install zigzag-kdiff`` or ``pip install -e <checkout>``).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

PACKAGE = "zigzag_kdiff"


def checkout_root(pack_dir: Path) -> Path | None:
    """The repository root two levels above the pack's real folder, if it holds ``zigzag_kdiff``."""
    root = Path(pack_dir).resolve().parents[1]
    return root if (root / PACKAGE / "__init__.py").is_file() else None


def import_zigzag_kdiff(pack_dir: Path | None = None) -> ModuleType:
    """Import ``zigzag_kdiff``: the installed package, else the checkout's copy (its root goes on sys.path)."""
    try:
        return importlib.import_module(PACKAGE)
    except ModuleNotFoundError as error:
        if error.name != PACKAGE:  # installed, but one of its own imports is missing: report that
            raise
        root = checkout_root(Path(__file__).parent if pack_dir is None else pack_dir)
        if root is None:
            raise ModuleNotFoundError(
                "comfyui_zigzag needs the zigzag-kdiff package: install it into ComfyUI's Python "
                "(`pip install zigzag-kdiff`, or `pip install -e <zigzag-kdiff checkout>`), or symlink "
                "extensions/comfyui_zigzag of a checkout into ComfyUI/custom_nodes/",
                name=PACKAGE,
            ) from error
        sys.path.append(str(root))
        return importlib.import_module(PACKAGE)
