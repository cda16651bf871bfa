"""AUTOMATIC1111/Forge entry point when this repository is the extension (Extensions → Install from URL clones the
whole repository into ``extensions/<name>`` and executes every ``scripts/*.py`` of its root).

Thin on purpose: it executes the extension's glue script of the same name in ``extensions/sd-webui-zigzag/scripts/``
(with the webui's own loader semantics: a fresh module named after the file) and hands the webui the script classes
defined there. Everything else (which ``zigzag_kdiff`` is used, the samplers, SEG) is that script's.
"""

import importlib.util
import os

_GLUE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.realpath(__file__))),
    "extensions",
    "sd-webui-zigzag",
    "scripts",
    os.path.basename(__file__),
)
_spec = importlib.util.spec_from_file_location(os.path.basename(_GLUE), _GLUE)
_glue = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_glue)
# The webui registers the scripts.Script subclasses it finds in this module's namespace.
globals().update(
    {
        name: value
        for name, value in vars(_glue).items()
        if getattr(value, "__module__", None) == _glue.__name__ and isinstance(value, type)
    }
)
