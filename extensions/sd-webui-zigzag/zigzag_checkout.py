"""Where the zigzag-kdiff checkout is, relative to this extension (standard library only).

The extension lives at ``<checkout>/extensions/sd-webui-zigzag`` and is linked (or junctioned)
into the webui's ``extensions/`` folder; links are resolved, so the checkout is two levels up.
"""

from __future__ import annotations

import os


def find_checkout_root(extension_dir: str) -> str | None:
    """The zigzag-kdiff checkout two levels above ``extension_dir`` (links resolved), or ``None``."""
    root = os.path.dirname(os.path.dirname(os.path.realpath(extension_dir)))
    has_package = os.path.isfile(os.path.join(root, "zigzag_kdiff", "__init__.py"))
    return root if has_package and os.path.isfile(os.path.join(root, "setup.cfg")) else None


def is_inside(path: str | None, root: str) -> bool:
    """Whether ``path`` (e.g. a module's ``__file__``) lies in ``root``."""
    if not path:
        return False
    path, root = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([path, root]) == root
