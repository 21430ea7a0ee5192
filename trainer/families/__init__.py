"""Model families (SD1, SD2, SDXL, SD3, FLUX): one strategy object each, looked up here.

``detect_family(config_class_names, unet_config)`` walks the MRO class names of ComfyUI's
``model_config`` (e.g. ``["TinySD15", "SD15", "BASE", "object"]``) and returns the first family
that claims one of them.
"""
from __future__ import annotations

from typing import Optional, Sequence

from .base import Family
from .flux import FAMILY as FLUX
from .sd1 import FAMILY as SD1
from .sd2 import FAMILY as SD2
from .sd3 import FAMILY as SD3
from .sdxl import FAMILY as SDXL

FAMILIES: dict[str, Family] = {f.name: f for f in (SD1, SD2, SDXL, SD3, FLUX)}

# Subclasses of supported configs whose training needs inputs this trainer does not provide.
UNSUPPORTED: dict[str, str] = {
    "Flux2": "FLUX.2 has a different architecture",
    "FluxInpaint": "FLUX Fill/inpaint models need concatenated image conditioning",
    "SD_X4Upscaler": "the x4 upscaler needs a low-resolution image input",
    "LotusD": "Lotus depth models are not text-to-image models",
    "SD15_instructpix2pix": "InstructPix2Pix needs a concatenated input image",
    "SDXL_instructpix2pix": "InstructPix2Pix needs a concatenated input image",
}

_BY_CLASS: dict[str, Family] = {c: f for f in FAMILIES.values() for c in f.config_classes}


def supported_text() -> str:
    return ", ".join(f"{f.display_name} ({'/'.join(f.config_classes)})" for f in FAMILIES.values())


def detect_family(config_class_names: Sequence[str], unet_config: Optional[dict] = None) -> Family:
    """The family for a ComfyUI model config given its MRO class names (most derived first)."""
    names = [str(n) for n in config_class_names]
    model = names[0] if names else "<unknown>"
    for n in names:
        if n in UNSUPPORTED:
            raise ValueError(f"model class {model} ({n}) is not supported for LoRA training: {UNSUPPORTED[n]}. "
                             f"Supported: {supported_text()}")
        fam = _BY_CLASS.get(n)
        if fam is not None:
            return fam
    raise ValueError(f"model class {model} is not supported for LoRA training. Supported: {supported_text()}")


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}") from None


__all__ = ["FAMILIES", "Family", "detect_family", "get_family", "supported_text"]
