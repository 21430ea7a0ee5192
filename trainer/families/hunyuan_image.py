"""HunyuanImage 2.1: ComfyUI ``HunyuanImage21`` (``comfy/ldm/hunyuan_video/model.py``); sd-scripts
``networks.lora_hunyuan_image``.

Targets (sd-scripts ``networks/lora_hunyuan_image.py``, parents ``MMDoubleStreamBlock`` / ``MMSingleStreamBlock``):
every Linear in ``double_blocks`` (``img_mod.lin``, ``img_attn.qkv/proj``, ``img_mlp.0/2`` and the ``txt_`` ones: 10)
and ``single_blocks`` (``linear1``, ``linear2``, ``modulation.lin``: 3): 20 x 10 + 40 x 3 = 320; the text token
refiner and the byT5 projector stay frozen. Names are ComfyUI's module names, which is what sd-scripts'
``networks/convert_hunyuan_image_lora_to_comfy.py`` writes (sd-scripts' own ``img_mlp_fc1`` / ``img_mod_linear``
names do not load in ComfyUI 0.8.0). Timesteps: sd-scripts' flow shift 5.0 (its ``sigma`` sampling draws the shifted
sigma uniformly; we draw it logit-normal). No guidance input on the base model. ``train_text_encoder`` trains
Qwen2.5-VL (``text_encoders.`` keys); byT5 stays frozen. The refiner model is refused (it needs the base model's
latent).
"""
from __future__ import annotations

from .generic import GenericFamily


class HunyuanImageFamily(GenericFamily):
    name = "hunyuan_image"
    display_name = "HunyuanImage 2.1"
    config_classes = ("HunyuanImage21",)
    network_module = "networks.lora_hunyuan_image"
    supports_conv = False
    block_lists = ("double_blocks", "single_blocks")
    text_encoders = (("qwen25_7b", "llm"),)
    base_version, architecture = "hunyuan_image_2.1", "hunyuan-image-2.1"
    flow_sampling = ("shift", 5.0)
    resolution = (2048, 2048)
    downscale = 32
    modelspec_implementation = "https://github.com/Tencent-Hunyuan/HunyuanImage-2.1"


FAMILY = HunyuanImageFamily()
