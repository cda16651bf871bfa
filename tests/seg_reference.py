"""The official SEG pieces written out from ``SusungHong/SEG-SDXL``'s ``pipeline_seg.py`` (our reading, not
their code), shared by the blur tests (``test_seg.py``) and the parity loop (``test_seg_parity.py``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def official_kernel_size(sigma: float) -> int:
    """``ceil(6σ)`` made odd, as the official processor computes it before calling the blur."""
    return math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2


def _taps(sigma: float, size: int, like: torch.Tensor) -> torch.Tensor:
    x = torch.linspace(-(size - 1) * 0.5, (size - 1) * 0.5, steps=size)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    return (pdf / pdf.sum()).to(device=like.device, dtype=like.dtype)


def official_blur(img: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """The official ``gaussian_blur_2d``: the kernel capped on the last side, a 2-D kernel (outer product),
    reflect padding, one depthwise conv."""
    side = img.shape[-1]
    kernel_size = min(kernel_size, side - (side % 2 - 1))
    taps = _taps(sigma, kernel_size, img)
    kernel = torch.mm(taps[:, None], taps[None, :]).expand(img.shape[-3], 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    return F.conv2d(F.pad(img, [pad] * 4, mode="reflect"), kernel, groups=img.shape[-3])


def true_grid_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """The official 2-D Gaussian on an H×W grid, its kernel size capped per axis (square: the official blur)."""
    taps = []
    for side in img.shape[-2:]:
        size = min(official_kernel_size(sigma), side - (side % 2 - 1))
        taps.append(_taps(sigma, size, img))
    kernel = torch.outer(taps[0], taps[1]).expand(img.shape[-3], 1, len(taps[0]), len(taps[1]))
    ph, pw = len(taps[0]) // 2, len(taps[1]) // 2
    return F.conv2d(F.pad(img, [pw, pw, ph, ph], mode="reflect"), kernel, groups=img.shape[-3])


def official_layers(unet: torch.nn.Module) -> dict[str, list[torch.nn.Module]]:
    """The official count: 'attn1' in the name and 'to' not in it, grouped by the first part of the name."""
    groups: dict[str, list[torch.nn.Module]] = {"down": [], "mid": [], "up": []}
    for name, module in unet.named_modules():
        if "attn1" in name and "to" not in name:
            groups[name.split(".")[0].split("_")[0]].append(module)
    return groups
