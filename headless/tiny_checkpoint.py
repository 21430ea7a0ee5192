"""A small SD1.5 checkpoint built in code, for the demo and the command-line tests: no download.

The file is a real single-file SD1.5 checkpoint (``model.diffusion_model.*``, ``cond_stage_model.*``,
``first_stage_model.*``) that ComfyUI's own CheckpointLoaderSimple detects as SD1.5, written by ComfyUI's own
``comfy.sd.save_checkpoint``. Only the U-Net is shallow: SD1.5's width (320 channels, 768-wide context, 8 heads,
which ComfyUI's detection requires) with one level, one ResBlock and one transformer block (about 16 M
parameters). CLIP-L and the VAE have the real SD1.5 sizes, because ComfyUI builds them from fixed configs. Every
weight is drawn from a seeded generator, so the model samples noise-like images: it shows the loop works, not
what a real model learns."""
from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)

UNET = {"use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
        "num_res_blocks": [1], "channel_mult": [1], "transformer_depth": [1], "transformer_depth_middle": 1,
        "transformer_depth_output": [1, 1], "context_dim": 768, "use_linear_in_transformer": False,
        "adm_in_channels": None, "use_spatial_transformer": True, "legacy": False, "use_temporal_attention": False,
        "use_temporal_resblock": False}
VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def _fill(module: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """Norms: weight 1, bias 0; other weights N(0, std) scaled down for wide inputs; biases 0."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in module.modules():
            norm = "norm" in type(mod).__name__.lower()
            for name, p in mod.named_parameters(recurse=False):
                if p.ndim == 0:
                    continue
                if norm or name == "bias" or p.ndim == 1:
                    p.fill_(1.0 if norm and name != "bias" else 0.0)
                    continue
                fan_in = max(1, p[0].numel())
                scale = min(std, 1.0 / fan_in ** 0.5)
                p.copy_((torch.randn(p.shape, generator=gen) * scale).to(p.dtype))


def write_sd15(path: str, seed: int = 0) -> str:
    """Write the checkpoint to ``path`` (fp16 U-Net and CLIP, fp32 VAE: about 630 MB) unless it is already there; returns ``path``.
    Needs ComfyUI importable (the headless commands and the tests boot it first)."""
    if os.path.isfile(path):
        return path
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models as sm
    from comfy.ldm.models.autoencoder import AutoencoderKL

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with torch.inference_mode(False), torch.no_grad():
        mc = sm.SD15(dict(UNET))
        mc.set_inference_dtype(torch.float32, None)
        model = mc.get_model({}, "")
        _fill(model.diffusion_model, seed)
        model.diffusion_model.half()  # the file holds fp16, like the checkpoints people download
        mp = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                              offload_device=torch.device("cpu"))
        clip = comfy.sd.CLIP(mc.clip_target({}), model_options={"dtype": torch.float32})
        _fill(clip.cond_stage_model, seed + 1)
        clip.cond_stage_model.half()
        ae = AutoencoderKL(ddconfig=dict(VAE_DDCONFIG), embed_dim=4)
        _fill(ae, seed + 2)
        vae = comfy.sd.VAE(sd=ae.half().state_dict())
        tmp = path + ".partial"
        comfy.sd.save_checkpoint(tmp, mp, clip, vae, metadata={"lora_loop": "tiny SD1.5 test checkpoint"})
        os.replace(tmp, path)
    mm.soft_empty_cache()
    log.info("wrote a tiny SD1.5 checkpoint (%d U-Net parameters, real CLIP-L and VAE sizes): %s",
             sum(p.numel() for p in model.diffusion_model.parameters()), path)
    return path
