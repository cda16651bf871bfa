"""ComfyUI entry point when this repository is the node pack (ComfyUI-Manager's "Install via Git URL" or a
``git clone`` into ``custom_nodes/``, and the registry zip built by ``tools/build_comfy_registry_zip.py``).

ComfyUI imports this file; it loads the pack in ``extensions/comfyui_zigzag`` and exposes what the pack defines for
ComfyUI's loader (``comfy_entrypoint``, and ``NODE_CLASS_MAPPINGS`` & co. if it has them). Imported anywhere else
(no ComfyUI core loaded: pytest, setuptools, a webui) it does nothing: no import, no output. The webuis never import
it; they run ``scripts/*.py``.
"""

import importlib.util
import os
import sys

_EXPORTS = ("comfy_entrypoint", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY")

if "comfy" in sys.modules and "nodes" in sys.modules:  # inside ComfyUI (its core is imported before custom nodes)
    _pack_dir = os.path.join(os.path.dirname(os.path.realpath(__file__)), "extensions", "comfyui_zigzag")
    _name = f"{__name__}.comfyui_zigzag"
    _spec = importlib.util.spec_from_file_location(
        _name, os.path.join(_pack_dir, "__init__.py"), submodule_search_locations=[_pack_dir]
    )
    _pack = importlib.util.module_from_spec(_spec)
    sys.modules[_name] = _pack
    _spec.loader.exec_module(_pack)
    globals().update({name: getattr(_pack, name) for name in _EXPORTS if hasattr(_pack, name)})
    if getattr(_pack, "WEB_DIRECTORY", None) is not None:  # ComfyUI resolves it against this folder, not the pack's
        WEB_DIRECTORY = os.path.join(_pack_dir, _pack.WEB_DIRECTORY)
