"""Run by AUTOMATIC1111/Forge when this repository is installed as an extension (at every start), and by ComfyUI
Manager after it clones the repository into ``custom_nodes/``: runs the extension's own installer,
``extensions/sd-webui-zigzag/install.py``, which installs nothing and prints a line only when the library cannot
be found or an installed copy of another version will be used. Standard library only; harmless in either host.
"""

import os
import runpy

runpy.run_path(
    os.path.join(os.path.dirname(os.path.realpath(__file__)), "extensions", "sd-webui-zigzag", "install.py"),
    run_name="__main__",
)
