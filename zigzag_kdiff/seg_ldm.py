"""SEG layer names on ldm-style UNets (the UNets of A1111, Forge and ComfyUI), for the host adapters.

The hosts' SD1.x/SD2.x/SDXL UNets name modules as CompVis ``ldm`` does: ``input_blocks.4.1.transformer_blocks.0.attn1``,
``middle_block.1.transformer_blocks.0.attn1``, ``output_blocks.3.1.transformer_blocks.1.attn1``. The official SEG
names count self-attention layers in the diffusers UNet (:func:`zigzag_kdiff.seg.select_layers`); the diffusers
order is the ldm order (down = ``input_blocks``, mid = ``middle_block``, up = ``output_blocks``, each by block,
then transformer), so ``"m0"``, ``"d4"``, ``"u0"`` name the same layer on every host. Block names as ComfyUI's
``transformer_options`` give them are accepted too: ``input:4`` (every transformer of block 4), ``middle:0``,
``output:3.1`` (transformer 1 of output block 3).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .seg import LAYER_GROUPS, select_layers

__all__ = ["BLOCK_GROUPS", "block_name", "ldm_self_attention_layers", "select_ldm_layers"]

BLOCK_GROUPS = {"input_blocks": "down", "middle_block": "mid", "output_blocks": "up"}
"""ldm block lists and the official group each one is."""

_BLOCK_NAME = re.compile(r"^(input|middle|output):(\d+)(?:\.(\d+))?$")
_LDM_NAME = re.compile(
    r"^(input_blocks|middle_block|output_blocks)(?:\.(\d+))?\.\d+\.transformer_blocks\.(\d+)\.attn1$"
)


def ldm_self_attention_layers(named_modules: Iterable[tuple[str, Any]]) -> dict[str, list[str]]:
    """The ``…transformer_blocks.<k>.attn1`` module names of an ldm UNet by official group, in model order."""
    groups: dict[str, list[str]] = {group: [] for group in LAYER_GROUPS}
    for name, _ in named_modules:
        match = _LDM_NAME.match(name)
        if match:
            groups[BLOCK_GROUPS[match.group(1)]].append(name)
    return groups


def block_name(module_name: str) -> tuple[str, int, int]:
    """ComfyUI's patch key of an ldm ``attn1`` module name: ``("input", 4, 0)``, ``("middle", 0, 0)``, …"""
    match = _LDM_NAME.match(module_name)
    if match is None:
        raise ValueError(f"{module_name!r} is not an ldm self-attention module name")
    block = match.group(1).split("_")[0]
    return block, int(match.group(2) or 0), int(match.group(3))


def select_ldm_layers(
    named_modules: Iterable[tuple[str, Any]], names: str | Iterable[str], parameter: str = "seg_applied_layers"
) -> list[str]:
    """Module names of the self-attention layers ``names`` selects, in model order.

    ``names``: comma-separated (or a list) official names (``down``, ``mid``, ``up``, ``d0``, ``m0``, ``u5``)
    and block names (``input:4``, ``middle:0``, ``output:3.1``). ``ValueError`` naming ``parameter`` for an
    unknown name, a layer the model lacks, no name, or a model without ldm self-attention layers.
    """
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if str(n).strip()]
    if not items:
        raise ValueError(
            f"{parameter} must name at least one layer ('mid', 'd0', 'm0', 'u5', or blocks such as 'middle:0', "
            f"'input:4', 'output:3.1'), got {names!r}"
        )
    groups = ldm_self_attention_layers(named_modules)
    order = [name for group in LAYER_GROUPS for name in groups[group]]
    if not order:
        raise ValueError(
            f"{parameter}: this model has no ldm self-attention layers (input_blocks/middle_block/output_blocks); "
            "Smoothed Energy Guidance here supports SD1.x, SD2.x and SDXL UNets"
        )
    # official names through the library's own count, on diffusers-like names of the same modules
    as_official = {f"{group}_blocks.{name}": name for group in LAYER_GROUPS for name in groups[group]}
    chosen: set[str] = set()
    official = [item for item in items if not _BLOCK_NAME.match(item.lower())]
    if official:
        chosen.update(as_official[n] for n in select_layers(((n, None) for n in as_official), official, parameter))
    for item in items:
        match = _BLOCK_NAME.match(item.lower())
        if not match:
            continue
        block, block_id, index = match.group(1), int(match.group(2)), match.group(3)
        found = [n for n in order if block_name(n)[:2] == (block, block_id) and index in (None, str(block_name(n)[2]))]
        if not found:
            available = ", ".join("{}:{}.{}".format(*block_name(n)) for n in order)
            raise ValueError(
                f"{parameter} names {item!r}, which has no self-attention layer; this model has {available}"
            )
        chosen.update(found)
    return [name for name in order if name in chosen]
