"""Qwen-Image: ComfyUI ``QwenImage`` (``comfy/ldm/qwen_image/model.py``); musubi-tuner ``networks.lora_qwen_image``.

Targets (musubi-tuner ``networks/lora_qwen_image.py``, parent class ``QwenImageTransformerBlock``): every Linear in
each ``transformer_blocks.N``: ``img_mod.1`` / ``txt_mod.1``, ``attn.to_q/k/v``, ``attn.add_q/k/v_proj``,
``attn.to_out.0``, ``attn.to_add_out``, ``img_mlp`` / ``txt_mlp`` ``net.0.proj`` and ``net.2``: 60 x 14 = 840 at
full size. ComfyUI's module names are the diffusers names musubi uses, so ``lora_unet_transformer_blocks_0_attn_to_q``
is musubi's key and ComfyUI's ``model_lora_keys_unet`` maps it. Timesteps: musubi's documented ``shift`` with
``discrete_flow_shift`` 2.2; no guidance input. ``train_text_encoder`` trains Qwen2.5-VL's language layers
(``text_encoders.`` keys; no other trainer offers it).
"""
from __future__ import annotations

from .generic import GenericFamily


class QwenImageFamily(GenericFamily):
    name = "qwen_image"
    display_name = "Qwen-Image"
    config_classes = ("QwenImage",)
    network_module = "networks.lora_qwen_image"
    supports_conv = False
    block_lists = ("transformer_blocks",)
    text_encoders = (("qwen25_7b", "llm"),)
    base_version, architecture = "qwen_image", "Qwen-Image"
    flow_sampling = ("shift", 2.2)
    resolution = (1328, 1328)
    modelspec_implementation = "https://github.com/QwenLM/Qwen-Image"


FAMILY = QwenImageFamily()
