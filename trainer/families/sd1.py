"""SD 1.x: ComfyUI ``SD15``; kohya ``networks.lora`` with diffusers-style U-Net names, TE ``lora_te``."""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

from ..network import Target
from .base import clip_targets, opt
from .sd_unet import UNetFamily


class SD1Family(UNetFamily):
    name = "sd1"
    display_name = "Stable Diffusion 1.x"
    config_classes = ("SD15",)
    te_prefixes = ("lora_te",)
    default_objective = "eps"
    clip_attr = "clip_l"

    def text_encoder_targets(self, clip_model: nn.Module, options: Any = None) -> list[Target]:
        if not opt(options, "train_text_encoder", True):
            return []
        return clip_targets(clip_model, self.clip_attr, "lora_te")

    def base_model_version(self, unet_config: Optional[dict] = None, objective: Optional[str] = None,
                           config_class_names: Optional[list[str]] = None) -> str:
        return "sd_v1_v" if (objective or self.default_objective) == "v" else "sd_v1"

    def modelspec_architecture(self, unet_config=None, objective=None, config_class_names=None) -> str:
        return "stable-diffusion-v1"


FAMILY = SD1Family()
