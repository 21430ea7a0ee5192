"""Lumina-Image 2.0 and Z-Image: ComfyUI ``Lumina2`` / ``ZImage`` (both ``comfy/ldm/lumina/model.py`` NextDiT).

The model has three block lists of ``JointTransformerBlock``: ``noise_refiner`` (2), ``context_refiner`` (2, no
adaLN) and ``layers`` (26 for Lumina 2, 30 for Z-Image), each with ``attention.qkv`` (fused), ``attention.out``,
``feed_forward.w1/w2/w3`` and ``adaLN_modulation``.

* Lumina 2 follows sd-scripts ``networks/lora_lumina.py`` (``networks.lora_lumina``): every block list, adaLN
  included, and ``final_layer``: 178 + 2 = 180 at full size. Timesteps: sd-scripts' ``nextdit_shift`` is
  ``flux_shift``'s resolution-dependent shift (sd-scripts draws the sigma uniformly before shifting, we draw it
  logit-normal as for FLUX).
* Z-Image follows musubi-tuner ``networks/lora_zimage.py`` (``networks.lora_zimage``): the main ``layers`` only,
  ``adaLN_modulation`` excluded: 30 x 5 = 150 at full size. Keys are ComfyUI's fused names
  (``lora_unet_layers_0_attention_qkv``), what musubi's ``convert_z_image_lora_to_comfy.py`` writes; musubi's
  own split ``attention_to_q`` names do not load in ComfyUI 0.8.0. Timesteps: musubi's documented ``shift`` 2.0.

``train_text_encoder`` trains Gemma 2 / Qwen3 under ``text_encoders.<path>`` keys, the only ones ComfyUI maps for
them (sd-scripts' ``lora_te_`` names for Lumina's Gemma do not load in ComfyUI).
"""
from __future__ import annotations

import re

from .generic import GenericFamily


class Lumina2Family(GenericFamily):
    name = "lumina2"
    display_name = "Lumina-Image 2.0"
    config_classes = ("Lumina2",)
    network_module = "networks.lora_lumina"
    supports_conv = False
    block_lists = ("noise_refiner", "context_refiner", "layers")
    also = ("final_layer",)
    text_encoders = (("gemma2_2b", "llm"),)
    base_version, architecture = "lumina2", "lumina-2"
    flow_sampling = ("flux_shift", None)
    modelspec_implementation = "https://github.com/Alpha-VLLM/Lumina-Image-2.0"


class ZImageFamily(Lumina2Family):
    name = "z_image"
    display_name = "Z-Image"
    config_classes = ("ZImage",)
    network_module = "networks.lora_zimage"
    block_lists = ("layers",)
    also = ()
    exclude = re.compile(r"(^|\.)adaLN_modulation\.")
    text_encoders = (("qwen3_4b", "llm"),)
    base_version, architecture = "z_image", "Z-Image"
    flow_sampling = ("shift", 2.0)
    modelspec_implementation = "https://github.com/Tongyi-MAI/Z-Image"


LUMINA2 = Lumina2Family()
Z_IMAGE = ZImageFamily()
