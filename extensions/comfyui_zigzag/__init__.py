"""zigzag-kdiff for ComfyUI: Z-Sampling (zigzag diffusion sampling) and the guidance interval.

Nodes (V3 API): "Zigzag Sampler" (a SAMPLER for SamplerCustom / SamplerCustomAdvanced), "Guidance
Interval" and "Guidance Interval (Sigmas)" (MODEL patches); loading the pack also adds ``zigzag_euler``,
``zigzag_ddim`` and ``zigzag_dpmpp_2m`` to the KSampler and KSamplerSelect dropdowns. The engine is the ``zigzag_kdiff``
package, found installed or in the checkout this folder belongs to (see ``locate.py``).
"""

from .locate import import_zigzag_kdiff

import_zigzag_kdiff()

from .adapter import register_samplers  # noqa: E402  (needs zigzag_kdiff on the path)
from .zigzag_nodes import ZigzagExtension  # noqa: E402


async def comfy_entrypoint() -> ZigzagExtension:
    """ComfyUI's V3 entry point: register the dropdown samplers, return the extension (its nodes)."""
    register_samplers()
    return ZigzagExtension()
