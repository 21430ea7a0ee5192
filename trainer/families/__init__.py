"""Model families: one strategy object each, looked up here.

``detect_family(config_class_names, unet_config)`` walks the MRO class names of ComfyUI's
``model_config`` (e.g. ``["TinySD15", "SD15", "BASE", "object"]``) and returns the first family
that claims one of them; a model no family claims, and that needs no input this trainer cannot give,
gets the generic family.
"""
from __future__ import annotations

from typing import Optional, Sequence

from .base import Family
from .chroma import FAMILY as CHROMA
from .flux import FAMILY as FLUX
from .flux2 import FAMILY as FLUX2
from .generic import FAMILY as GENERIC
from .hidream import FAMILY as HIDREAM
from .hunyuan_image import FAMILY as HUNYUAN_IMAGE
from .lumina import LUMINA2, Z_IMAGE
from .qwen_image import FAMILY as QWEN_IMAGE
from .wan import FAMILY as WAN
from .sd1 import FAMILY as SD1
from .sd2 import FAMILY as SD2
from .sd3 import FAMILY as SD3
from .sdxl import FAMILY as SDXL

FAMILIES: dict[str, Family] = {f.name: f for f in (SD1, SD2, SDXL, SD3, FLUX, FLUX2, QWEN_IMAGE, Z_IMAGE, LUMINA2,
                                                    CHROMA, HIDREAM, HUNYUAN_IMAGE, WAN, GENERIC)}

# Subclasses of supported configs whose training needs inputs this trainer does not provide.
# Models that need an input this trainer does not provide (it trains on images and their captions only).
UNSUPPORTED: dict[str, str] = {
    "FluxInpaint": "FLUX Fill/inpaint models need a concatenated image and mask",
    "SD_X4Upscaler": "the x4 upscaler needs a low-resolution image input",
    "LotusD": "Lotus depth models are not text-to-image models",
    "SD15_instructpix2pix": "InstructPix2Pix needs a concatenated input image",
    "SDXL_instructpix2pix": "InstructPix2Pix needs a concatenated input image",
    "SDXLRefiner": "the SDXL refiner (aesthetic-score conditioning, CLIP-G only) is not supported yet",
    "SVD_img2vid": "Stable Video Diffusion needs an input image (CLIP vision and concatenated latent)",
    "SV3D_u": "SV3D needs an input image and camera poses",
    "SV3D_p": "SV3D needs an input image and camera poses",
    "Stable_Zero123": "Zero123 needs an input image and a camera",
    "Stable_Cascade_C": "Stable Cascade's two-stage sampling (StableCascadeSampling) is not supported",
    "Stable_Cascade_B": "Stable Cascade's stage B needs stage C's output as its input",
    "StableAudio": "Stable Audio is an audio model; LoRA Loop trains on images",
    "ACEStep": "ACE-Step is an audio model; LoRA Loop trains on images",
    "Hunyuan3Dv2": "Hunyuan3D makes 3D shapes from an input image",
    "LTXAV": "LTX audio-video needs audio latents",
    "HunyuanVideoI2V": "image-to-video models need an input image",
    "HunyuanVideoSkyreelsI2V": "image-to-video models need an input image",
    "HunyuanImage21Refiner": "the HunyuanImage 2.1 refiner needs the base model's image latent",
    "HunyuanVideo15_SR_Distilled": "the super-resolution model needs a low-resolution video latent",
    "CosmosI2V": "image-to-video models need an input image",
    "CosmosI2VPredict2": "image-to-video models need an input image",
    "WAN21_I2V": "Wan image-to-video needs an input image (CLIP vision and concatenated latent)",
    "WAN21_FunControl2V": "Wan Fun-Control needs a control video",
    "WAN21_Camera": "Wan camera models need camera conditions",
    "WAN22_Camera": "Wan camera models need camera conditions",
    "WAN21_Vace": "Wan VACE needs control frames and masks",
    "WAN21_HuMo": "Wan HuMo needs audio and reference images",
    "WAN22_S2V": "Wan speech-to-video needs audio",
    "WAN22_Animate": "Wan Animate needs pose and face videos",
    "ChromaRadiance": "Chroma Radiance works in pixel space; LoRA Loop trains on VAE latents",
}

_BY_CLASS: dict[str, Family] = {c: f for f in FAMILIES.values() for c in f.config_classes}


def supported_text() -> str:
    named = ", ".join(f"{f.display_name} ({'/'.join(f.config_classes)})" for f in FAMILIES.values()
                      if f.config_classes)
    return f"{named}; and, through the generic family, any other text-to-image model ComfyUI loads"


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
    if "BASE" not in names:  # not a comfy/supported_models_base.py config
        raise ValueError(f"model class {model} is not a ComfyUI diffusion model config; Supported: {supported_text()}")
    return GENERIC


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}") from None


__all__ = ["FAMILIES", "Family", "detect_family", "get_family", "supported_text"]
