"""SDXL: ComfyUI ``SDXL`` (and its subclasses SSD-1B, Vega, KOALA); SGM U-Net names, ``lora_te1``
(CLIP-L, 12 layers) + ``lora_te2`` (CLIP-bigG, 32 layers), as kohya's sdxl_train_network."""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

from ..network import Target
from .base import clip_targets, opt
from .sd_unet import UNetFamily


class SDXLFamily(UNetFamily):
    name = "sdxl"
    display_name = "Stable Diffusion XL"
    config_classes = ("SDXL",)
    te_prefixes = ("lora_te1", "lora_te2")
    default_objective = "eps"
    diffusers_names = False
    modelspec_implementation = "https://github.com/Stability-AI/generative-models"

    def text_encoder_targets(self, clip_model: nn.Module, options: Any = None) -> list[Target]:
        if not opt(options, "train_text_encoder", True):
            return []
        return clip_targets(clip_model, "clip_l", "lora_te1") + clip_targets(clip_model, "clip_g", "lora_te2")

    def base_model_version(self, unet_config: Optional[dict] = None, objective: Optional[str] = None,
                           config_class_names: Optional[list[str]] = None) -> str:
        return "sdxl_base_v1-0"

    def modelspec_architecture(self, unet_config=None, objective=None, config_class_names=None) -> str:
        return "stable-diffusion-xl-v1-base"

    def default_resolution(self, objective: Optional[str] = None) -> tuple[int, int]:
        return (1024, 1024)


FAMILY = SDXLFamily()
