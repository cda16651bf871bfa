"""Run by the webui at every start (``launch_utils.run_extension_installer``).

Makes ``zigzag_kdiff`` importable in the webui's Python: if it is missing, or installed from
somewhere other than the checkout this extension lives in, install that checkout in editable mode
with ``--no-deps`` (torch and tqdm are the webui's own; nothing of the webui is upgraded).
"""

import importlib.util
import os
import subprocess
import sys

EXTENSION_DIR = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, EXTENSION_DIR)

from zigzag_checkout import find_checkout_root, is_inside  # noqa: E402


def pip_install(args: list, desc: str) -> None:
    try:
        import launch  # the webui's own pip runner (honours --skip-install and the index URL)
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", *args], check=True)
    else:
        launch.run_pip(" ".join(f'"{a}"' if " " in a else a for a in args), desc)


def main() -> None:
    root = find_checkout_root(EXTENSION_DIR)
    spec = importlib.util.find_spec("zigzag_kdiff")
    if spec is not None and (root is None or is_inside(spec.origin, root)):
        return
    if root is None:
        print(
            "[Zigzag] zigzag_kdiff is not installed and this extension is not inside a zigzag-kdiff checkout: "
            "link <checkout>/extensions/sd-webui-zigzag into the webui's extensions folder, or run "
            "'pip install --no-deps <checkout>' in the webui's Python."
        )
        return
    pip_install(["install", "--no-deps", "-e", root], f"zigzag-kdiff from {root}")


main()
