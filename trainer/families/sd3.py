"""SD3 / SD3.5: ComfyUI ``SD3`` (MMDiT); kohya ``networks.lora_sd3``.

Targets (sd-scripts ``lora_sd3``, parent class ``SingleDiTBlock`` = ComfyUI ``DismantledBlock``): in
every ``joint_blocks.N`` both ``context_block`` and ``x_block``: ``attn.qkv``, ``attn.proj``,
``mlp.fc1``, ``mlp.fc2``, ``adaLN_modulation.1`` (+ ``attn2.qkv``/``attn2.proj`` on SD3.5M x-blocks
with self-attention). The last block's context_block is ``pre_only`` (only qkv + adaLN exist).
Counts for depth d with s attn2 layers: 10 (d-1) + 7 + 2 s: SD3-M 237, SD3.5-M 263, SD3.5-L 377.
"""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

from ..network import Target
from .base import UNET_ROOT, Family, clip_targets, collect_targets, kohya_name, opt, t5_targets


def sd3_variant(unet_config: Optional[dict]) -> str:
    """sd-scripts model type: ``medium`` (SD3-M), ``5-medium`` (SD3.5-M, attn2 layers), ``5-large``."""
    cfg = unet_config or {}
    if cfg.get("x_block_self_attn_layers"):
        return "5-medium"
    depth = cfg.get("depth")
    if isinstance(depth, int) and depth >= 38:
        return "5-large"
    return "medium"


class SD3Family(Family):
    name = "sd3"
    display_name = "Stable Diffusion 3 / 3.5"
    config_classes = ("SD3",)
    network_module = "networks.lora_sd3"
    te_prefixes = ("lora_te1", "lora_te2", "lora_te3")
    default_objective = "flow"
    t5_prefix = "lora_te3"
    latent_channels = 16

    def unet_targets(self, root: nn.Module, unet_config: dict, conv: bool = False, options: Any = None) -> list[Target]:
        def name_of(p: str) -> Optional[str]:
            return kohya_name("lora_unet", p) if p.startswith("joint_blocks.") else None

        return collect_targets(root, ("DismantledBlock",), root_key=UNET_ROOT, name_of=name_of)

    def text_encoder_targets(self, clip_model: nn.Module, options: Any = None) -> list[Target]:
        out: list[Target] = []
        if opt(options, "train_text_encoder", True):
            out += clip_targets(clip_model, "clip_l", "lora_te1") + clip_targets(clip_model, "clip_g", "lora_te2")
        if opt(options, "train_t5", False):
            out += t5_targets(clip_model, "t5xxl", "lora_te3")
        return out

    def base_model_version(self, unet_config: Optional[dict] = None, objective: Optional[str] = None,
                           config_class_names: Optional[list[str]] = None) -> str:
        return sd3_variant(unet_config)

    def modelspec_architecture(self, unet_config=None, objective=None, config_class_names=None) -> str:
        return "stable-diffusion-3-" + sd3_variant(unet_config)

    def default_resolution(self, objective: Optional[str] = None) -> tuple[int, int]:
        return (1024, 1024)

    def prediction_type(self, objective: Optional[str] = None) -> Optional[str]:
        return "epsilon"  # what sd-scripts writes for SD3 LoRAs (library/train_util.py get_sai_model_spec)


FAMILY = SD3Family()
