"""FLUX.2: ComfyUI ``Flux2`` (``comfy/ldm/flux/model.py`` with FLUX.2's parameters); musubi-tuner
``networks.lora_flux_2``.

Targets (musubi-tuner ``networks/lora_flux_2.py``): every Linear in ``double_blocks`` (``img_attn.qkv/proj``,
``txt_attn.qkv/proj``, ``img_mlp.0/2``, ``txt_mlp.0/2``) and ``single_blocks`` (``linear1``, ``linear2``): 8 x 8 +
48 x 2 = 160 for FLUX.2-dev. FLUX.2's modulation is shared by all blocks (``double_stream_modulation_img/txt``,
``single_stream_modulation``) and stays frozen, as in musubi. Names are the BFL names ComfyUI uses
(``lora_unet_double_blocks_0_img_attn_qkv``). Timesteps: musubi's ``flux2_shift`` (FLUX's resolution-dependent
shift on one token per latent pixel); the guidance input gets ``guidance_scale`` (musubi feeds 1.0). ComfyUI 0.8.0
loads FLUX.2-dev only: its detection builds every FLUX.2 checkpoint with dev's 48 heads, so the klein models do
not load there. ``train_text_encoder`` trains the Mistral encoder's layers it reads (``text_encoders.`` keys).
"""
from __future__ import annotations

from .generic import GenericFamily


class Flux2Family(GenericFamily):
    name = "flux2"
    display_name = "FLUX.2"
    config_classes = ("Flux2",)
    network_module = "networks.lora_flux_2"
    supports_conv = False
    block_lists = ("double_blocks", "single_blocks")
    text_encoders = (("mistral3_24b", "llm"), ("qwen3_4b", "llm"))
    base_version, architecture = "flux2", "Flux.2-dev"
    flow_sampling = ("flux2_shift", None)
    downscale = 16
    modelspec_implementation = "https://github.com/black-forest-labs/flux2"


FAMILY = Flux2Family()
