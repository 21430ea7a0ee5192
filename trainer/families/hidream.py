"""HiDream-I1: ComfyUI ``HiDream`` (``comfy/ldm/hidream/model.py``); ai-toolkit's HiDream trainer.

Targets (ai-toolkit ``hidream_model.py``): the Linear layers of ``double_stream_blocks`` and ``single_stream_blocks``
(each a ``HiDreamImageBlock`` wrapping the real block: ``block.adaLN_modulation.1``, ``block.attn1.to_q/k/v/out``
(+ the ``_t`` text versions in double blocks), the shared experts and the text feed-forward); the routed MoE
``experts`` and the router stay frozen, as in ai-toolkit: 16 x 15 + 32 x 8 = 496 at full size. ai-toolkit writes
peft keys (``diffusion_model.<path>.lora_A``); we write kohya keys on the same paths, which ComfyUI maps alike.
Timesteps: ai-toolkit's static ``shift`` 3.0. ``train_text_encoder`` trains CLIP-L / CLIP-G (``lora_te1`` /
``lora_te2``) and Llama 3.1 (``text_encoders.`` keys), ``train_t5`` T5-XXL (``lora_te3``): the names ComfyUI maps for HiDream.
"""
from __future__ import annotations

import re

from .generic import GenericFamily


class HiDreamFamily(GenericFamily):
    name = "hidream"
    display_name = "HiDream-I1"
    config_classes = ("HiDream",)
    network_module = "networks.lora"
    supports_conv = False
    block_lists = ("double_stream_blocks", "single_stream_blocks")
    exclude = re.compile(r"(^|\.)experts\.")
    text_encoders = (("clip_l", "clip_l"), ("clip_g", "clip_g"), ("llama", "llm"))
    t5 = ("t5xxl", "lora_te3")
    t5_prefix = "lora_te3"
    base_version, architecture = "hidream_i1", "hidream-i1"
    flow_sampling = ("shift", 3.0)
    guidance = False
    modelspec_implementation = "https://github.com/HiDream-ai/HiDream-I1"


FAMILY = HiDreamFamily()
