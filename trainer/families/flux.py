"""FLUX.1 dev/schnell: ComfyUI ``Flux`` / ``FluxSchnell``; kohya ``networks.lora_flux``.

Targets: every Linear in ``DoubleStreamBlock`` (img/txt mod.lin, attn.qkv, attn.proj, mlp.0, mlp.2)
and ``SingleStreamBlock`` (linear1, linear2, modulation.lin): 19 x 10 + 38 x 3 = 304 at full size.
``train_blocks`` = all | single | double. TEs: CLIP-L ``lora_te1``; T5-XXL ``lora_te3`` only with train_t5.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from torch import nn

from ..network import Target
from .base import UNET_ROOT, Family, clip_targets, collect_targets, kohya_name, opt, t5_targets

BLOCK_CLASSES = {"all": ("DoubleStreamBlock", "SingleStreamBlock"), "double": ("DoubleStreamBlock",),
                 "single": ("SingleStreamBlock",)}


class FluxFamily(Family):
    name = "flux"
    display_name = "FLUX.1"
    config_classes = ("Flux", "FluxSchnell")
    network_module = "networks.lora_flux"
    te_prefixes = ("lora_te1", "lora_te3")
    default_objective = "flow"
    t5_prefix = "lora_te3"
    modelspec_implementation = "https://github.com/black-forest-labs/flux"
    latent_channels = 16

    def unet_targets(self, root: nn.Module, unet_config: dict, conv: bool = False, options: Any = None) -> list[Target]:
        blocks = str(opt(options, "train_blocks", "all") or "all").lower()
        if blocks not in BLOCK_CLASSES:
            raise ValueError(f"train_blocks must be one of {sorted(BLOCK_CLASSES)}, got {blocks!r}")
        return collect_targets(root, BLOCK_CLASSES[blocks], root_key=UNET_ROOT,
                               name_of=lambda p: kohya_name("lora_unet", p))

    def text_encoder_targets(self, clip_model: nn.Module, options: Any = None) -> list[Target]:
        out: list[Target] = []
        if opt(options, "train_text_encoder", True):
            out += clip_targets(clip_model, "clip_l", "lora_te1")
        if opt(options, "train_t5", False):
            out += t5_targets(clip_model, "t5xxl", "lora_te3")
        return out

    def network_args(self, targets: Sequence[Target]) -> dict[str, str]:
        args = super().network_args(targets)
        unet = {t.path.split(".", 1)[0] for t in targets if t.root == UNET_ROOT}
        blocks = {"single_blocks": "single", "double_blocks": "double"}
        present = [blocks[b] for b in sorted(unet) if b in blocks]
        if len(present) == 1:
            args["train_blocks"] = present[0]
        return args

    def base_model_version(self, unet_config: Optional[dict] = None, objective: Optional[str] = None,
                           config_class_names: Optional[list[str]] = None) -> str:
        return "flux1"

    def modelspec_architecture(self, unet_config=None, objective=None, config_class_names=None) -> str:
        names = list(config_class_names or [])
        schnell = "FluxSchnell" in names or (unet_config is not None and unet_config.get("guidance_embed") is False)
        return "flux-1-schnell" if schnell else "flux-1-dev"

    def default_resolution(self, objective: Optional[str] = None) -> tuple[int, int]:
        return (1024, 1024)

    def prediction_type(self, objective: Optional[str] = None) -> Optional[str]:
        return None  # sd-scripts omits modelspec.prediction_type for FLUX

    def takes_guidance(self, unet_config: Optional[dict] = None) -> bool:
        return True  # schnell has no guidance input and ignores it

    def model_timestep_sampling(self, shift: float) -> tuple[str, float]:
        # dev (ComfyUI's ModelSamplingFlux shift 1.15): kohya's resolution-dependent flux_shift; schnell: none
        return ("flux_shift", shift) if shift != 1.0 else ("shift", shift)


FAMILY = FluxFamily()
