"""Tiny, deterministic models of every architecture LoRA Loop supports, built in code through ComfyUI.

``build(family, seed)`` returns ``(ModelPatcher, comfy.sd.CLIP, comfy.sd.VAE)`` the way a checkpoint loader
would, but with tiny configs and no downloads:

* the diffusion model comes from ``comfy.supported_models.<SD15|SD20|SDXL|SD3|Flux|FluxSchnell>(unet_config)``
  with the real block layout in miniature (same module names as the real checkpoints, so LoRA key maps apply),
  and the real ``model_type`` (SD2 is detected as V_PREDICTION through ComfyUI's own ``SD20.model_type`` check);
* the text encoders come from the family's real ``clip_target()`` with ``<name>_model_config`` overrides
  (``clip_l``, ``clip_h``, ``clip_g``, ``t5xxl``); the tokenizers bundled with ComfyUI are used unchanged;
* the VAE is a tiny ``AutoencoderKL`` (ch=32, downscale 8; 4 latent channels for SD1/SD2/SDXL, 16 for SD3/Flux).

Everything is built inside ``torch.inference_mode()`` like ComfyUI's loader nodes, so the weights are inference
tensors, and every parameter is filled deterministically from ``seed`` (comfy ops skip init). Must be called
after ``comfy_env.boot()`` (or any other way of making ``comfy`` importable in CPU mode).

Known deviation from the real SD3: the tiny SD3 has CLIP-L + CLIP-G but no T5, because ComfyUI's SD3 text
encoder concatenates T5 output with the 4096-padded CLIP output along the token axis, which forces T5's
``d_model`` to be 4096 (a 130 M-parameter embedding). Real SD3 checkpoints without T5 exist and behave the same.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

BASE_FAMILIES = ("sd15", "sd2v", "sdxl", "sd3", "flux", "flux_schnell")
# the newer families and generic-family models are built by tiny_dits.py (same contract)
DIT_FAMILIES = ("qwen_image", "z_image", "lumina2", "hidream", "chroma", "flux2", "hunyuan_image", "wan21", "wan22",
                "auraflow", "kandinsky5_image", "hunyuan_dit", "cosmos_predict2")
FAMILIES = BASE_FAMILIES + DIT_FAMILIES

# Tiny text encoder configs (CLIP-L and CLIP-G/T5 differ in width, so a mix-up of encoders breaks loudly).
# ComfyUI's CLIP text projection is square (hidden -> hidden), so the pooled width is the hidden size.
CLIP_L = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3,
          "projection_dim": 32}
CLIP_H = {"hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 2, "num_hidden_layers": 3,
          "projection_dim": 48}
CLIP_G = {"hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 2, "num_hidden_layers": 3,
          "projection_dim": 48}
T5XXL = {"d_model": 40, "d_kv": 16, "num_heads": 2, "d_ff": 64, "num_layers": 2}

_UNET_COMMON = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
                "legacy": False, "in_channels": 4, "model_channels": 32, "num_res_blocks": [1, 1],
                "channel_mult": [1, 2], "use_temporal_attention": False, "use_temporal_resblock": False}

WEIGHT_STD = 0.05
BIAS_STD = 0.02


def _unet_config(family: str) -> dict:
    cfg = dict(_UNET_COMMON)
    if family == "sd15":
        cfg.update(adm_in_channels=None, context_dim=CLIP_L["hidden_size"], use_linear_in_transformer=False,
                   transformer_depth=[1, 1], transformer_depth_middle=1, transformer_depth_output=[1, 1, 1, 1])
    elif family == "sd2v":
        cfg.update(adm_in_channels=None, context_dim=CLIP_H["hidden_size"], use_linear_in_transformer=True,
                   transformer_depth=[1, 1], transformer_depth_middle=1, transformer_depth_output=[1, 1, 1, 1])
    elif family == "sdxl":
        # Real SDXL: no attention in the first level, depth > 1 deeper ([0,0,2,2,10,10]); pooled CLIP-G + 6*256.
        cfg.update(adm_in_channels=CLIP_G["hidden_size"] + 6 * 256, num_classes="sequential",
                   context_dim=CLIP_L["hidden_size"] + CLIP_G["hidden_size"], use_linear_in_transformer=True,
                   transformer_depth=[0, 2], transformer_depth_middle=2, transformer_depth_output=[0, 0, 2, 2])
    else:
        raise KeyError(family)
    return cfg


def _sd3_config() -> dict:
    return {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "input_size": None,
            "adm_in_channels": CLIP_L["hidden_size"] + CLIP_G["hidden_size"],
            "context_embedder_config": {"target": "torch.nn.Linear",
                                        "params": {"in_features": 4096, "out_features": 64 * 2}},
            "num_patches": 32 * 32, "pos_embed_max_size": 32, "pos_embed_scaling_factor": None,
            "x_block_self_attn_layers": []}


def _flux_config(guidance_embed: bool) -> dict:
    return {"image_model": "flux", "guidance_embed": guidance_embed, "in_channels": 16, "out_channels": 16,
            "vec_in_dim": CLIP_L["hidden_size"], "context_in_dim": T5XXL["d_model"], "hidden_size": 64,
            "mlp_ratio": 4.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2, "axes_dim": [8, 12, 12],
            "theta": 10000, "patch_size": 2, "qkv_bias": True, "txt_ids_dims": []}


def _vae_config(latent_channels: int) -> dict:
    return {"params": {"embed_dim": latent_channels, "ddconfig": {
        "double_z": True, "z_channels": latent_channels, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
        "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}}


def _is_norm(module: torch.nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


def init_module(module: torch.nn.Module, seed: int) -> None:
    """Fill every parameter of ``module`` deterministically: norms weight/scale 1 and bias 0, other weights
    N(0, 0.05), other biases N(0, 0.02). 0-dim parameters (e.g. CLIP ``logit_scale``) keep their value."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    with torch.no_grad():
        for mod_name, mod in module.named_modules():
            norm = _is_norm(mod)
            for p_name, p in mod.named_parameters(recurse=False):
                if p.ndim == 0:
                    continue
                if norm:
                    p.fill_(0.0 if p_name == "bias" else 1.0)
                    continue
                std = BIAS_STD if (p_name == "bias" or p.ndim == 1) else WEIGHT_STD
                val = torch.randn(p.shape, generator=gen, dtype=torch.float32) * std
                p.copy_(val.to(device=p.device, dtype=p.dtype))


def _model_config(family: str):
    import comfy.supported_models as sm

    if family == "sd15":
        return sm.SD15(_unet_config(family))
    if family == "sd2v":
        mc = sm.SD20(_unet_config(family))
        # SD20's extra config pins 64-channel heads; the tiny 32-channel level needs smaller heads.
        mc.unet_config["num_head_channels"] = 16
        return mc
    if family == "sdxl":
        return sm.SDXL(_unet_config(family))
    if family == "sd3":
        return sm.SD3(_sd3_config())
    if family == "flux":
        return sm.Flux(_flux_config(True))
    if family == "flux_schnell":
        return sm.FluxSchnell(_flux_config(False))
    raise ValueError(f"unknown tiny model family {family!r}; expected one of {FAMILIES}")


def _detection_state_dict(family: str) -> dict:
    """Keys that make ComfyUI's own detection pick the real variant (no weights are loaded from it)."""
    if family == "sd2v":
        # SD20.model_type: std of this bias > 0.09 means SD2-768-v (V_PREDICTION).
        return {"output_blocks.11.1.transformer_blocks.0.norm1.bias": torch.tensor([-1.0, 1.0])}
    if family == "sd3":
        one = torch.ones(1)
        return {"text_encoders.clip_l.transformer.text_model.final_layer_norm.weight": one,
                "text_encoders.clip_g.transformer.text_model.final_layer_norm.weight": one}
    return {}


def _te_overrides(family: str) -> dict:
    if family == "sd15":
        return {"clip_l_model_config": dict(CLIP_L)}
    if family == "sd2v":
        return {"clip_h_model_config": dict(CLIP_H)}
    if family in ("sdxl", "sd3"):
        return {"clip_l_model_config": dict(CLIP_L), "clip_g_model_config": dict(CLIP_G)}
    return {"clip_l_model_config": dict(CLIP_L), "t5xxl_model_config": dict(T5XXL)}


def _init_buffers(model) -> None:
    dm = model.diffusion_model
    pos = getattr(dm, "pos_embed", None)
    if isinstance(pos, torch.Tensor):
        from comfy.ldm.modules.diffusionmodules.mmdit import get_2d_sincos_pos_embed

        size = int(round(pos.shape[1] ** 0.5))
        table = torch.from_numpy(get_2d_sincos_pos_embed(pos.shape[2], size)).float()
        pos.copy_(table.reshape(pos.shape).to(pos.dtype))


def build(family: str, seed: int = 0, dtype: torch.dtype | None = None):
    """Build ``(ModelPatcher, comfy.sd.CLIP, comfy.sd.VAE)`` for a tiny ``family`` model (see ``FAMILIES``).

    ``dtype`` forces the diffusion-model weight dtype; by default it is chosen like ComfyUI's checkpoint loader
    (fp32 on CPU). Same ``(family, seed)`` gives identical weights."""
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny model family {family!r}; expected one of {FAMILIES}")
    if family in DIT_FAMILIES:
        import tiny_dits

        return tiny_dits.build(family, seed, dtype)
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd

    with torch.inference_mode():
        mc = _model_config(family)
        load_device = mm.get_torch_device()
        if dtype is None:
            dtype = mm.unet_dtype(model_params=0, supported_dtypes=mc.supported_inference_dtypes)
        manual_cast = mm.unet_manual_cast(dtype, load_device, mc.supported_inference_dtypes)
        mc.set_inference_dtype(dtype, manual_cast)
        det = _detection_state_dict(family)
        model = mc.get_model(det, "")
        init_module(model.diffusion_model, seed)
        _init_buffers(model)
        model.eval()
        mp = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device())

        # fp32 text encoders (ComfyUI's CPU default would be fp16) so the exactness checks (<= 1e-5) measure
        # our LoRA, not fp16 rounding of merged vs bypass weights
        clip = comfy.sd.CLIP(mc.clip_target(det), model_options={**_te_overrides(family), "dtype": torch.float32})
        init_module(clip.cond_stage_model, seed + 1)

        channels = 16 if family in ("sd3", "flux", "flux_schnell") else 4
        logging.disable(logging.WARNING)  # "Missing VAE keys": expected, the weights are initialised below
        try:
            vae = comfy.sd.VAE(sd={}, config=_vae_config(channels))
        finally:
            logging.disable(logging.NOTSET)
        vae.latent_channels = channels
        init_module(vae.first_stage_model, seed + 2)
    log.debug("built tiny %s (seed %d): %d diffusion params", family, seed, count_params(model.diffusion_model))
    return mp, clip, vae


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
