"""zigzag-kdiff: Z-Sampling and guidance-interval samplers for k-diffusion, diffusers, A1111/Forge
and ComfyUI.

The core imports only torch and tqdm; host integrations are thin adapters over
:mod:`zigzag_kdiff.sampling` and :mod:`zigzag_kdiff.guidance`.
"""

from .flow import FlowDenoiser, is_flow
from .guidance import CallCounter, CFGDenoiser, GuidanceInterval
from .kdiffusion import SAMPLERS, register_k_diffusion
from .sampling import (
    count_model_calls,
    ddim_sigmas,
    ddim_timesteps,
    rf_text_embedding,
    sample_rf_euler,
    sample_zigzag_ddim,
    sample_zigzag_dpmpp_2m,
    sample_zigzag_euler,
    zigzag_plan,
)

__version__ = "0.4.0"

__all__ = [
    "CFGDenoiser",
    "CallCounter",
    "FlowDenoiser",
    "GuidanceInterval",
    "SAMPLERS",
    "count_model_calls",
    "ddim_sigmas",
    "ddim_timesteps",
    "is_flow",
    "register_k_diffusion",
    "rf_text_embedding",
    "sample_rf_euler",
    "sample_zigzag_ddim",
    "sample_zigzag_dpmpp_2m",
    "sample_zigzag_euler",
    "zigzag_plan",
]
