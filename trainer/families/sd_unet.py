"""Shared target selection for the ComfyUI ``UNetModel`` families (SD1.x, SD2.x, SDXL)."""
from __future__ import annotations

from typing import Any, Callable, Optional

from torch import nn

from ..network import Target
from .base import UNET_ROOT, Family, collect_targets, kohya_name
from .unet_naming import DiffusersNamer

# kohya UNET_TARGET_REPLACE_MODULE (Transformer2DModel) and ..._CONV2D_3X3 (ResnetBlock2D, Downsample2D,
# Upsample2D) as ComfyUI classes. Tuples, never extended in place (sd-scripts' networks/lora.py
# create_network extends LoRANetwork.UNET_TARGET_REPLACE_MODULE in place, which leaks into later networks).
LIERLA_PARENTS = ("SpatialTransformer",)
C3LIER_PARENTS = ("SpatialTransformer", "ResBlock", "Downsample", "Upsample")


class UNetFamily(Family):
    supports_conv = True
    diffusers_names = True  # SD1/SD2: diffusers-style names; SDXL: SGM names

    def namer(self, unet_config: dict) -> Callable[[str], Optional[str]]:
        if not self.diffusers_names:
            return lambda p: kohya_name("lora_unet", p)
        to_diffusers = DiffusersNamer(unet_config)

        def name_of(p: str) -> Optional[str]:
            d = to_diffusers(p)
            if d is None:
                raise ValueError(f"{self.display_name}: no diffusers name for U-Net module {p!r}; the unet_config "
                                 "does not describe this model")
            return kohya_name("lora_unet", d)

        return name_of

    def unet_targets(self, root: nn.Module, unet_config: dict, conv: bool = False, options: Any = None) -> list[Target]:
        parents = C3LIER_PARENTS if conv else LIERLA_PARENTS
        return collect_targets(root, parents, root_key=UNET_ROOT, name_of=self.namer(unet_config), conv3x3=conv)
