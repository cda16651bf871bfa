"""Which ``zigzag_kdiff`` the A1111/Forge extension uses (standard library only).

The extension is either the repository root (Extensions → Install from URL clones the whole repository into
``extensions/<name>``; its ``scripts/`` glue runs the scripts of this folder) or this folder linked into the
webui's ``extensions/``; links are resolved, so the checkout is two levels above this folder either way.

An installed ``zigzag_kdiff`` (``pip install zigzag-kdiff`` in the webui's Python) is used when there is one;
otherwise the checkout's own copy is imported in place. Nothing is installed: an update is the webui's
``git pull``, and removing the folder leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterator
from importlib.machinery import ModuleSpec
from types import ModuleType

PACKAGE = "zigzag_kdiff"


def find_checkout_root(extension_dir: str) -> str | None:
    """The zigzag-kdiff checkout two levels above ``extension_dir`` (links resolved), or ``None``."""
    root = os.path.dirname(os.path.dirname(os.path.realpath(extension_dir)))
    has_package = os.path.isfile(os.path.join(root, PACKAGE, "__init__.py"))
    return root if has_package and os.path.isfile(os.path.join(root, "setup.cfg")) else None


def is_inside(path: str | None, root: str) -> bool:
    """Whether ``path`` (e.g. a module's ``__file__``) lies in ``root``."""
    if not path:
        return False
    path, root = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([path, root]) == root


def package_version(init_file: str) -> str | None:
    """``__version__`` of a ``zigzag_kdiff/__init__.py`` (read, not imported), or ``None``."""
    try:
        with open(init_file, encoding="utf-8") as file:
            match = re.search(r'^__version__ = "([^"]+)"', file.read(), flags=re.M)
    except OSError:
        return None
    return match.group(1) if match else None


def checkout_version(root: str) -> str | None:
    """``__version__`` of the checkout's ``zigzag_kdiff``, or ``None``."""
    return package_version(os.path.join(root, PACKAGE, "__init__.py"))


@contextlib.contextmanager
def _path_without(root: str | None) -> Iterator[None]:
    """``sys.path`` without the entries that are ``root`` (the webui puts the extension's root first while it loads
    the extension's scripts; a script run as ``python install.py`` has its own folder first), restored after."""
    saved = list(sys.path)
    if root is not None:
        real_root = os.path.realpath(root)
        sys.path[:] = [entry for entry in saved if os.path.realpath(entry or os.getcwd()) != real_root]
    try:
        yield
    finally:
        sys.path[:] = saved


def find_installed(root: str | None) -> ModuleSpec | None:
    """The spec of a ``zigzag_kdiff`` importable without the checkout ``root`` on ``sys.path`` (an installed copy,
    or the one already imported), or ``None``."""
    with _path_without(root):
        return importlib.util.find_spec(PACKAGE)


def describe(module: ModuleType, root: str | None) -> str:
    """One log line: the version and folder of ``module`` and whether it is the checkout's or an installed one."""
    folder = os.path.dirname(os.path.realpath(module.__file__ or ""))
    version = getattr(module, "__version__", "?")
    if root is not None and is_inside(folder, root):
        return f"[Zigzag] zigzag_kdiff {version} from this checkout ({folder})"
    line = f"[Zigzag] zigzag_kdiff {version} installed at {folder}"
    checkout = checkout_version(root) if root is not None else None
    if checkout is not None and checkout != version:
        line += f"; this checkout has {checkout} (pip uninstall zigzag-kdiff to use it)"
    return line


def import_library(extension_dir: str, log: Callable[[str], object] = print) -> ModuleType:
    """Import ``zigzag_kdiff``: the installed package if there is one, else the checkout's copy (``import_from``).
    Logs which copy once, when it imports it; an already imported one is returned as it is."""
    if PACKAGE in sys.modules:  # Reload UI, or the other glue script of this extension imported it first
        return sys.modules[PACKAGE]
    root = find_checkout_root(extension_dir)
    module = None
    if find_installed(root) is not None:
        with _path_without(root):
            module = importlib.import_module(PACKAGE)
    elif root is None:
        raise ModuleNotFoundError(
            f"zigzag_kdiff not found: {extension_dir} is not inside a zigzag-kdiff checkout and the package is not "
            "installed. Install the extension from the repository URL (the whole repository), or run "
            "'pip install zigzag-kdiff' in the webui's Python.",
            name=PACKAGE,
        )
    else:
        module = import_from(root)
    log(describe(module, root))
    return module


def import_from(root: str) -> ModuleType:
    """Import the ``zigzag_kdiff`` folder of ``root`` as the package, without putting ``root`` on ``sys.path`` (it
    also holds ``scripts/``, ``tools/``, ``tests/``, ``install.py``: names other code may import)."""
    folder = os.path.join(root, PACKAGE)
    spec = importlib.util.spec_from_file_location(
        PACKAGE, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
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


def install_report(extension_dir: str) -> str | None:
    """What ``install.py`` prints (``None``: nothing): the library cannot be found, or an installed copy of another
    version than the checkout's will be used."""
    root = find_checkout_root(extension_dir)
    spec = find_installed(root)
    if spec is None and root is None:
        return (
            "[Zigzag] zigzag_kdiff not found: this folder is not inside a zigzag-kdiff checkout and the package is "
            "not installed; install the extension from the repository URL, or 'pip install zigzag-kdiff'."
        )
    if spec is None or root is None or is_inside(spec.origin, root):
        return None
    checkout, installed = checkout_version(root), package_version(spec.origin or "")
    if installed == checkout:
        return None
    folder = os.path.dirname(os.path.realpath(spec.origin or ""))
    return (
        f"[Zigzag] the installed zigzag_kdiff {installed} at {folder} is used, not this checkout's {checkout}: "
        "'pip uninstall zigzag-kdiff' in the webui's Python to use the checkout's."
    )
