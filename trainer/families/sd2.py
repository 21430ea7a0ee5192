"""SD 2.x: ComfyUI ``SD20`` / ``SD21UnclipL`` / ``SD21UnclipH``; names as SD1 (``lora_te`` for OpenCLIP-H).

kohya loads SD2's OpenCLIP-H as a 23-layer HF CLIP (the last layer is never used: SD2 conditions on
the penultimate layer), so its TE has 23 x 6 = 138 modules. ComfyUI's ``clip_h`` holds all 24
layers; layers past the one in use (``layer="hidden"``, ``layer_idx=-2``) get no LoRA.
"""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

from ..network import Target
from .base import clip_layers_in_use, clip_targets, opt
from .sd_unet import UNetFamily


class SD2Family(UNetFamily):
    name = "sd2"
    display_name = "Stable Diffusion 2.x"
    config_classes = ("SD20", "SD21UnclipL", "SD21UnclipH")
    te_prefixes = ("lora_te",)
    default_objective = "v"  # SD 2.x 768-v; the trainer follows the model's model_sampling
    clip_attr = "clip_h"

    def text_encoder_targets(self, clip_model: nn.Module, options: Any = None) -> list[Target]:
        if not opt(options, "train_text_encoder", True):
            return []
        enc = getattr(clip_model, self.clip_attr, None)
        if enc is None:
            return []
        used = clip_layers_in_use(enc)
        if used is None:
            n = getattr(enc, "num_layers", None)
            used = n - 1 if isinstance(n, int) else None  # SD2 always conditions on the penultimate layer
        return clip_targets(clip_model, self.clip_attr, "lora_te", max_layers=used)

    def is_v2(self) -> bool:
        return True

    def base_model_version(self, unet_config: Optional[dict] = None, objective: Optional[str] = None,
                           config_class_names: Optional[list[str]] = None) -> str:
        return "sd_v2_v" if (objective or self.default_objective) == "v" else "sd_v2"

    def modelspec_architecture(self, unet_config=None, objective=None, config_class_names=None) -> str:
        return "stable-diffusion-v2-768-v" if (objective or self.default_objective) == "v" else "stable-diffusion-v2-512"

    def default_resolution(self, objective: Optional[str] = None) -> tuple[int, int]:
        return (768, 768) if (objective or self.default_objective) == "v" else (512, 512)


FAMILY = SD2Family()
