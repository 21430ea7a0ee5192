"""Pure mapping of ComfyUI (SGM/LDM) U-Net module paths to diffusers module paths.

sd-scripts names SD1/SD2 LoRA modules after its diffusers-style U-Net (``down_blocks.0.attentions.0``,
``mid_block.resnets.1``, ``up_blocks.3.upsamplers.0.conv`` ...). This reproduces the block layout
ComfyUI's ``comfy.utils.unet_to_diffusers`` uses (the mapping ComfyUI's LoRA loader accepts), but at
module level: SGM path -> diffusers path, computed from ``unet_config`` alone.
"""
from __future__ import annotations

from typing import Optional

RESNET_CHILDREN = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}


def _per_level(value, levels: int) -> list[int]:
    if isinstance(value, int):
        return [value] * levels
    return list(value)


def sgm_to_diffusers_prefixes(unet_config: dict) -> dict[str, str]:
    """SGM module-path prefix -> diffusers module-path prefix for every mappable block."""
    channel_mult = list(unet_config["channel_mult"])
    levels = len(channel_mult)
    nrb = _per_level(unet_config["num_res_blocks"], levels)
    depth = list(unet_config.get("transformer_depth") or [])
    depth_out = list(unet_config.get("transformer_depth_output") or [])
    if isinstance(unet_config.get("transformer_depth"), int):
        depth = [unet_config["transformer_depth"]] * sum(nrb)
    m: dict[str, str] = {}

    def resnet(sgm: str, diff: str) -> None:
        for s, d in RESNET_CHILDREN.items():
            m[f"{sgm}.{s}"] = f"{diff}.{d}"

    for x in range(levels):
        n = 1 + (nrb[x] + 1) * x
        for i in range(nrb[x]):
            resnet(f"input_blocks.{n}.0", f"down_blocks.{x}.resnets.{i}")
            if (depth.pop(0) if depth else 0) > 0:
                m[f"input_blocks.{n}.1"] = f"down_blocks.{x}.attentions.{i}"
            n += 1
        m[f"input_blocks.{n}.0.op"] = f"down_blocks.{x}.downsamplers.0.conv"

    m["middle_block.1"] = "mid_block.attentions.0"
    for i, n in enumerate((0, 2)):
        resnet(f"middle_block.{n}", f"mid_block.resnets.{i}")

    rev = list(reversed(nrb))
    for x in range(levels):
        n = (rev[x] + 1) * x
        count = rev[x] + 1
        for i in range(count):
            c = 1
            resnet(f"output_blocks.{n}.0", f"up_blocks.{x}.resnets.{i}")
            if (depth_out.pop() if depth_out else 0) > 0:
                c += 1
                m[f"output_blocks.{n}.1"] = f"up_blocks.{x}.attentions.{i}"
            if i == count - 1:
                m[f"output_blocks.{n}.{c}.conv"] = f"up_blocks.{x}.upsamplers.0.conv"
            n += 1
    return m


class DiffusersNamer:
    """Converts SGM module paths to diffusers paths (longest matching block prefix wins)."""

    def __init__(self, unet_config: dict) -> None:
        self.prefixes = sgm_to_diffusers_prefixes(unet_config)

    def __call__(self, sgm_path: str) -> Optional[str]:
        parts = sgm_path.split(".")
        for cut in range(len(parts), 0, -1):
            head = ".".join(parts[:cut])
            if head in self.prefixes:
                rest = ".".join(parts[cut:])
                return self.prefixes[head] + ("." + rest if rest else "")
        return None
