"""Run by the webui at every start (``launch_utils.run_extension_installer``); the repository root's ``install.py``
runs this file, so ComfyUI Manager runs it too after it clones the repository.

Installs nothing (no pip, no network, nothing outside the folder): the extension imports an installed
``zigzag_kdiff`` if there is one, else the checkout's own copy (``zigzag_checkout.import_library``). An editable
install would point at a deleted folder once the extension is removed, and a copied one would outlive it and
shadow the checkout after every ``git pull``. Prints one line only when something needs the user: no library
at all, or an installed copy of another version than the checkout's.
"""

import importlib.util
import os

EXTENSION_DIR = os.path.dirname(os.path.realpath(__file__))


def main() -> None:
    spec = importlib.util.spec_from_file_location("zigzag_checkout", os.path.join(EXTENSION_DIR, "zigzag_checkout.py"))
    checkout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checkout)
    report = checkout.install_report(EXTENSION_DIR)
    if report:
        print(report)


main()
