"""Wan 2.1 / 2.2 text-to-video, trained on images: ComfyUI ``WAN21_T2V`` / ``WAN22_T2V`` (``comfy/ldm/wan/model.py``);
musubi-tuner ``networks.lora_wan``.

Targets (musubi-tuner ``networks/lora_wan.py``, parent class ``WanAttentionBlock``): every Linear in ``blocks.N``:
``self_attn.q/k/v/o``, ``cross_attn.q/k/v/o``, ``ffn.0`` and ``ffn.2``: 40 x 10 = 400 for the 14B models, 30 x 10 =
300 for 1.3B and 2.2's TI2V-5B. Names are ComfyUI's (the original Wan names musubi writes:
``lora_unet_blocks_0_self_attn_q``). An image is a one-frame clip: latents (B, C, 1, h, w) from the Wan VAE. Wan 2.2
A14B ships two experts (high and low noise) that ComfyUI loads as two WAN21_T2V models; each trains on its own
MODEL, over the whole sigma range (musubi's ``--min_timestep`` / ``--max_timestep`` split is not applied). Both files
say ``wan2.1/lora``, as musubi writes them. Timesteps: musubi's documented ``shift`` with ``discrete_flow_shift``
3.0. ``train_text_encoder`` trains UMT5 (``text_encoders.`` keys). Image-to-video checkpoints (more input
channels than latent channels: the image goes in concatenated) are refused.
"""
from __future__ import annotations

from typing import Optional

from .generic import GenericFamily


class WanFamily(GenericFamily):
    name = "wan"
    display_name = "Wan 2.1 / 2.2 (text-to-video, on images)"
    config_classes = ("WAN21_T2V", "WAN22_T2V")
    network_module = "networks.lora_wan"
    supports_conv = False
    block_lists = ("blocks",)
    text_encoders = (("umt5xxl", "umt5"),)
    architecture = "wan2.1"  # musubi-tuner's, for 2.2 too
    flow_sampling = ("shift", 3.0)
    resolution = (832, 480)
    modelspec_implementation = "https://github.com/Wan-Video/Wan2.1"

    def base_model_version(self, unet_config=None, objective=None, config_class_names=None) -> str:
        return "wan2.2" if "WAN22_T2V" in (config_class_names or []) else "wan2.1"

    def refuse(self, unet_config: Optional[dict], latent_channels: int) -> Optional[str]:
        in_dim = (unet_config or {}).get("in_dim")
        if isinstance(in_dim, int) and in_dim > latent_channels:
            return (f"this Wan model takes {in_dim} input channels for {latent_channels} latent channels: an "
                    "image-to-video checkpoint, which needs an input image concatenated to the latent")
        return None

    def latent_downscale(self, unet_config=None) -> int:
        return 16 if (unet_config or {}).get("in_dim") == 48 else 8  # Wan 2.2's 48-channel VAE: 16x


FAMILY = WanFamily()
