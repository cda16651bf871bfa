"""Run by the webui at every start (``launch_utils.run_extension_installer``).

Makes ``zigzag_kdiff`` importable in the webui's Python: if it is missing, or installed from
somewhere other than the checkout this extension lives in, install that checkout in editable mode
with ``--no-deps`` (torch and tqdm are the webui's own; nothing of the webui is upgraded). When pip
fails (offline, no build backend) it prints one line: ``scripts/zigzag.py`` then imports the library
from the checkout.
"""

import importlib.util
import os
import subprocess
import sys

EXTENSION_DIR = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, EXTENSION_DIR)

from zigzag_checkout import find_checkout_root, is_inside  # noqa: E402


def pip_install(args: list, desc: str) -> None:
    """Run pip in the webui's Python; raises with pip's output when it fails."""
    try:
        import launch  # the webui's own pip runner (honours --skip-install and the index URL)
    except ImportError:
        launch = None
    if launch is not None:
        launch.run_pip(" ".join(f'"{a}"' if " " in a else a for a in args), desc)
        return
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"pip exited with code {result.returncode}\n{result.stdout}\n{result.stderr}")


def pip_failure_reason(error: BaseException) -> str:
    """One line out of pip's output: its last ``ERROR:`` line, else the error's last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or [type(error).__name__])[-1]


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
    try:
        pip_install(["install", "--no-deps", "-e", root], f"zigzag-kdiff from {root}")
    except Exception as error:  # e.g. offline: pip cannot fetch the build backend; the script's fallback works
        fallback = "imports zigzag_kdiff from the checkout" if spec is None else f"uses the one at {spec.origin}"
        print(f"[Zigzag] pip could not install {root} ({pip_failure_reason(error)}); the extension {fallback}")


main()
