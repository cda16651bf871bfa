"""What the installed diffusers' ``SmoothedEnergyGuidance`` guider computes, against the official SEG code.

The official code (SusungHong/SEG-SDXL, ``pipeline_seg.py``) is the reference; on square grids
:func:`zigzag_kdiff.seg.blur_queries` computes exactly its blur (tests/test_seg.py). Run:
``PYTHONPATH=. python tools/check_diffusers_seg.py`` (prints one line per finding; nothing is written).
"""

from __future__ import annotations

import inspect

import diffusers
import torch
from diffusers.guiders import SmoothedEnergyGuidance
from diffusers.hooks import smoothed_energy_guidance_utils as hook_utils

from zigzag_kdiff.seg import blur_kernel_size, blur_queries


def main() -> None:
    print(f"diffusers {diffusers.__version__}")
    gen = torch.Generator().manual_seed(0)
    queries = torch.randn(1, 64, 4, generator=gen)  # an 8×8 grid of 4 channels
    mean = queries.mean(dim=1, keepdim=True).expand_as(queries)

    def theirs(sigma: float) -> torch.Tensor:
        size = blur_kernel_size(sigma)  # the hook's kernel size, as the official one
        return hook_utils._gaussian_blur_2d(queries.clone(), size, sigma, 9999.0)

    for sigma in (1.0, 9999999.0):
        out = theirs(sigma)
        official = blur_queries(queries, 8, 8, sigma)
        print(
            f"blur σ={sigma:g}: max |diffusers − official| = {float((out - official).abs().max()):.3g}, "
            f"max |diffusers − token mean| = {float((out - mean).abs().max()):.3g}"
        )
    source = inspect.getsource(hook_utils._apply_smoothed_energy_guidance_hook)
    passed = "SmoothedEnergyGuidanceHook(blur_sigma)" in source
    print(f"threshold passed to the hook: {not passed} (the hook is built as SmoothedEnergyGuidanceHook(blur_sigma))")

    guider = SmoothedEnergyGuidance(guidance_scale=5.0, seg_guidance_scale=3.0, seg_guidance_layers=[0])
    enabled = []
    for step in range(4):
        guider.set_state(step=step, num_inference_steps=4, timestep=torch.tensor(999))
        enabled.append(guider._is_seg_enabled())
    print(f"SEG enabled per step with seg_guidance_start=0, stop=1, 4 steps: {enabled}")

    cond, blurred = torch.ones(3), torch.zeros(3)
    guider = SmoothedEnergyGuidance(guidance_scale=1.0, seg_guidance_scale=3.0, seg_guidance_layers=[0])
    guider.set_state(step=1, num_inference_steps=4, timestep=torch.tensor(999))
    pred = guider.forward(cond, None, blurred).pred
    print(
        f"without CFG (guidance_scale=1): diffusers {pred.tolist()[0]:g}, official ε_c + s(ε_c − ε_ptb) = "
        f"{float(cond[0] + 3 * (cond[0] - blurred[0])):g}"
    )
    rect = torch.randn(1, 96, 4, generator=gen)  # 8×12 tokens
    out = hook_utils._gaussian_blur_2d(rect.clone(), 7, 1.0, 9999.0)
    changed = int((out != rect).any(-1).sum())
    print(f"non-square 8×12 (96 tokens): tokens changed = {changed} of 96 (the first 9×9 = 81)")


if __name__ == "__main__":
    main()
