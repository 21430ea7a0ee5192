"""Chroma: ComfyUI ``Chroma`` (``comfy/ldm/chroma/model.py``); sd-scripts ``flux_train_network.py --model_type
chroma`` with ``networks.lora_flux``.

Targets: every Linear in ``double_blocks`` and ``single_blocks`` (the FLUX.1 block layout without per-block
modulation: 8 and 2 Linear), 19 x 8 + 38 x 2 = 228 at full size; the ``distilled_guidance_layer`` approximator
stays frozen, as in sd-scripts. Keys are the BFL names ComfyUI uses (``lora_unet_double_blocks_0_img_attn_qkv``).
Timesteps: sd-scripts' documented ``sigmoid``; no guidance input (sd-scripts ``--guidance_scale 0``). The T5-XXL
text encoder can train (``train_t5`` or ``train_text_encoder``): saved as ``lora_te1_`` (ComfyUI's name for the only
T5 of a model; sd-scripts writes ``lora_te3_``, which ComfyUI does not map for Chroma).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ..network import Target
from .base import opt, t5_targets
from .generic import GenericFamily


class ChromaFamily(GenericFamily):
    name = "chroma"
    display_name = "Chroma"
    config_classes = ("Chroma",)
    network_module = "networks.lora_flux"
    supports_conv = False
    te_prefixes = ("lora_te1",)
    t5_prefix = "lora_te1"
    block_lists = ("double_blocks", "single_blocks")
    base_version = architecture = "chroma"
    flow_sampling = ("sigmoid", None)
    guidance = False
    modelspec_implementation = "https://huggingface.co/lodestones/Chroma"

    def text_encoder_targets(self, clip_model: nn.Module, options: Any = None) -> list[Target]:
        if opt(options, "train_text_encoder", False) or opt(options, "train_t5", False):
            return t5_targets(clip_model, "t5xxl", "lora_te1")
        return []


FAMILY = ChromaFamily()
