"""Tiny, deterministic models of the newer families (Qwen-Image, Z-Image, Lumina 2, HiDream, Chroma, FLUX.2,
HunyuanImage 2.1, Wan 2.1 and 2.2) and of models only the generic family handles (AuraFlow, Kandinsky 5 image,
HunyuanDiT; Cosmos Predict2, which it refuses), built in code through ComfyUI's real classes.

Same contract as ``tiny_models.build`` (which dispatches here): ``(ModelPatcher, comfy.sd.CLIP, comfy.sd.VAE)``
built inside ``torch.inference_mode()``, every parameter filled from ``seed`` by ``tiny_models.init_module``, text
encoders in fp32.

* diffusion models: the real ``comfy.supported_models`` classes with tiny ``unet_config`` values (same block classes
  and module names as the released checkpoints; only widths, depths and head counts shrink);
* text encoders: the family's real ``clip_target()`` shrunk through ``<model_name>_model_config`` model_options
  (which ``comfy/sd1_clip.py`` ``SDClipModel`` writes over the ``comfy/text_encoders/llama.py`` config dataclasses);
  vocab sizes stay real, since the bundled tokenizers produce real ids;
* VAEs: Qwen-Image and Wan 2.1 get a tiny real Wan 2.1 VAE (``comfy/ldm/wan/vae.py``, detected by ``comfy.sd.VAE``
  from its state-dict keys), so their latents are 5-D (B, 16, 1, h, w), Wan 2.2 its 48-channel 16x VAE; the others a
  tiny AutoencoderKL with the family's channels and downscale (FLUX.2 128 at 16x, HunyuanImage 64 at 32x);
* FLUX.2's captions come from the tiny Qwen3 encoder: ComfyUI 0.8.0 takes FLUX.2's Mistral tokenizer from the
  checkpoint file, and its converter does not run on transformers 5.

Deviations forced by ComfyUI's code:
* ``head_dim`` of the llama.py configs is a class attribute, not a dataclass field: tiny Qwen / Llama encoders
  keep 128, Gemma 256;
* Qwen2.5-VL's vision tower (``comfy/text_encoders/qwen_vl.py``, ~670 M parameters) has no size option: it is
  built tiny (same class and module names) while the CLIP is constructed;
* ComfyUI ships no Gemma tokenizer (checkpoints carry it as the ``spiece_model`` tensor): a tiny SentencePiece
  model with Gemma's special ids is trained in code and passed as ``tokenizer_data`` as a checkpoint would;
* Z-Image's timestep embedder is 256 wide and its adaLN reads ``min(dim, 256)``: tiny Z-Image has dim 256;
* ``HiDream.clip_target()`` is None in ComfyUI 0.8.0: the target ``comfy.sd.load_clip`` builds for its four files
  is used;
* ComfyUI ships no UMT5 / mT5 tokenizer (checkpoints carry them): a stand-in SentencePiece model (``t5_style_spiece``).
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging

import torch

from tiny_models import CLIP_G, CLIP_L, T5XXL, _vae_config, init_module

# ----------------------------------------------------------------------------- text encoder configs
QWEN25_7B = {"vocab_size": 152064, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 1}
# layer="hidden", layer_idx=-2 (Qwen3, Gemma): SDClipModel needs more than 2 layers
QWEN3_4B = {"vocab_size": 151936, "hidden_size": 40, "intermediate_size": 64, "num_hidden_layers": 3,
            "num_attention_heads": 2, "num_key_value_heads": 1}
GEMMA2_2B = {"vocab_size": 256000, "hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 3,
             "num_attention_heads": 2, "num_key_value_heads": 1}
LLAMA31_8B = {"vocab_size": 128256, "hidden_size": 56, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1}
QWEN_VL_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "num_layers": 2}
UMT5 = {"d_model": 32, "d_kv": 16, "num_heads": 2, "d_ff": 64, "num_layers": 2}        # vocab 256384 (real)
PILE_T5XL = {"d_model": 48, "d_kv": 16, "num_heads": 2, "d_ff": 64, "num_layers": 2}   # AuraFlow
MT5XL = {"d_model": 48, "d_kv": 16, "num_heads": 2, "d_ff": 64, "num_layers": 2}       # HunyuanDiT
HYDIT_BERT = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2}
BYT5 = {"d_model": 1472, "d_kv": 16, "num_heads": 2, "d_ff": 32, "num_layers": 1}      # width fixed by the DiT

# ----------------------------------------------------------------------------- diffusion model configs
UNET = {
    "qwen_image": {"image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16,
                   "num_layers": 2, "attention_head_dim": 16, "num_attention_heads": 2,
                   "joint_attention_dim": QWEN25_7B["hidden_size"], "axes_dims_rope": (4, 6, 6)},
    "lumina2": {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 32,
                "cap_feat_dim": GEMMA2_2B["hidden_size"], "n_layers": 2, "n_refiner_layers": 2, "qk_norm": True,
                "n_heads": 2, "n_kv_heads": 1, "axes_dims": [4, 6, 6], "axes_lens": [300, 512, 512],
                "rope_theta": 10000.0, "ffn_dim_multiplier": 4.0, "multiple_of": 16},
    "z_image": {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 256,
                "cap_feat_dim": QWEN3_4B["hidden_size"], "n_layers": 2, "n_refiner_layers": 2, "qk_norm": True,
                "n_heads": 8, "n_kv_heads": 8, "axes_dims": [8, 12, 12], "axes_lens": [1536, 512, 512],
                "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True,
                "time_scale": 1000.0, "pad_tokens_multiple": 32, "multiple_of": 16},
    # one llama hidden state per block (num_layers + num_single_layers), each below the llama depth
    "hidream": {"image_model": "hidream", "patch_size": 2, "in_channels": 16, "out_channels": 16,
                "attention_head_dim": 16, "num_attention_heads": 2, "axes_dims_rope": [8, 4, 4],
                "caption_channels": [T5XXL["d_model"], LLAMA31_8B["hidden_size"]],
                "text_emb_dim": CLIP_L["projection_dim"] + CLIP_G["projection_dim"],
                "max_resolution": [128, 128], "num_routed_experts": 4, "num_activated_experts": 2,
                "num_layers": 1, "num_single_layers": 2, "llama_layers": [0, 1, 1]},
    # the approximator's in_dim stays 64 and its out_dim equals hidden_size (comfy/ldm/chroma/model.py)
    "chroma": {"image_model": "chroma", "axes_dim": [8, 12, 12], "num_heads": 2, "mlp_ratio": 4.0, "theta": 10000,
               "out_channels": 64, "qkv_bias": True, "txt_ids_dims": [], "in_channels": 64, "hidden_size": 64,
               "context_in_dim": T5XXL["d_model"], "patch_size": 2, "vec_in_dim": None, "depth": 2,
               "depth_single_blocks": 2, "in_dim": 64, "out_dim": 64, "hidden_dim": 96, "n_layers": 2},
}
_WAN = {"image_model": "wan2.1", "model_type": "t2v", "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1),
        "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6, "dim": 32, "ffn_dim": 64, "num_heads": 2,
        "num_layers": 2, "text_dim": UMT5["d_model"]}
UNET.update({
    "wan21": {**_WAN, "in_dim": 16, "out_dim": 16},
    # WAN22_T2V is Wan 2.2's TI2V-5B layout: 48-channel latents from its 16x VAE
    "wan22": {**_WAN, "in_dim": 48, "out_dim": 48},
    # models only the generic family handles
    "auraflow": {"cond_seq_dim": PILE_T5XL["d_model"], "max_seq": 16 * 16, "n_double_layers": 1, "n_layers": 3,
                 "dim": 64, "n_heads": 2, "global_conddim": 64, "in_channels": 4, "out_channels": 4, "patch_size": 2},
    "kandinsky5_image": {"image_model": "kandinsky5", "model_dim": 64, "visual_embed_dim": 64, "axes_dims": (4, 6, 6),
                         "rope_scale_factor": (1.0, 1.0, 1.0), "time_dim": 32, "ff_dim": 128, "num_text_blocks": 1,
                         "num_visual_blocks": 2, "in_text_dim": QWEN25_7B["hidden_size"],
                         "in_text_dim2": CLIP_L["hidden_size"]},
    "hunyuan_dit": {"image_model": "hydit", "depth": 4, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 4.3637,
                    "text_states_dim": HYDIT_BERT["hidden_size"], "text_states_dim_t5": MT5XL["d_model"],
                    "input_size": 16, "patch_size": 2, "in_channels": 4},
    # FLUX.2 layout (shared modulation, no biases, one token per 128-channel latent pixel); its captions come
    # from the tiny Qwen3 encoder (ComfyUI 0.8.0 takes FLUX.2's Mistral tokenizer from the checkpoint file)
    "flux2": {"image_model": "flux2", "axes_dim": [8, 8, 8, 8], "num_heads": 2, "mlp_ratio": 3.0, "theta": 2000,
              "out_channels": 128, "global_modulation": True, "mlp_silu_act": True, "qkv_bias": False,
              "ops_bias": False, "default_ref_method": "index", "ref_index_scale": 10.0, "txt_ids_dims": [3],
              "in_channels": 128, "hidden_size": 64, "context_in_dim": QWEN3_4B["hidden_size"], "patch_size": 1,
              "vec_in_dim": None, "depth": 2, "depth_single_blocks": 2, "guidance_embed": True, "yak_mlp": False,
              "txt_norm": False},
    # the byT5 projector's input width (1472) is fixed in comfy/ldm/hunyuan_video/model.py
    "hunyuan_image": {"image_model": "hunyuan_video", "in_channels": 64, "patch_size": [1, 1], "out_channels": 64,
                      "vec_in_dim": None, "axes_dim": [16, 16], "meanflow": False,
                      "context_in_dim": QWEN25_7B["hidden_size"], "hidden_size": 64, "mlp_ratio": 4.0,
                      "num_heads": 2, "depth": 2, "depth_single_blocks": 2, "theta": 256, "qkv_bias": True,
                      "byt5": True, "guidance_embed": False, "use_cond_type_embedding": False,
                      "vision_in_dim": None, "meanflow_sum": False},
    # refused (Cosmos rectified flow): a tiny one proves the refusal names it
    "cosmos_predict2": {"image_model": "cosmos_predict2", "max_img_h": 240, "max_img_w": 240, "max_frames": 128,
                        "in_channels": 16, "out_channels": 16, "patch_spatial": 2, "patch_temporal": 1,
                        "model_channels": 64, "concat_padding_mask": True,
                        "crossattn_emb_channels": T5XXL["d_model"], "pos_emb_cls": "rope3d",
                        "pos_emb_learnable": True, "pos_emb_interpolation": "crop", "min_fps": 1, "max_fps": 30,
                        "use_adaln_lora": True, "adaln_lora_dim": 16, "num_blocks": 2, "num_heads": 2,
                        "extra_per_block_abs_pos_emb": False, "rope_h_extrapolation_ratio": 4.0,
                        "rope_w_extrapolation_ratio": 4.0, "rope_t_extrapolation_ratio": 1.0,
                        "extra_h_extrapolation_ratio": 1.0, "extra_w_extrapolation_ratio": 1.0,
                        "extra_t_extrapolation_ratio": 1.0, "rope_enable_fps_modulation": False},
})
CONFIG_CLASS = {"qwen_image": "QwenImage", "z_image": "ZImage", "lumina2": "Lumina2", "hidream": "HiDream",
                "chroma": "Chroma", "wan21": "WAN21_T2V", "wan22": "WAN22_T2V", "auraflow": "AuraFlow", "kandinsky5_image": "Kandinsky5Image",
                "hunyuan_dit": "HunyuanDiT", "cosmos_predict2": "CosmosT2IPredict2", "flux2": "Flux2",
                "hunyuan_image": "HunyuanImage21"}
FAMILIES = tuple(UNET)
WAN_VAE_DIM = 8  # the real Wan 2.1 VAE: 96


# ----------------------------------------------------------------------------- pieces
@contextlib.contextmanager
def _tiny_qwen_vision():
    """Build Qwen2.5-VL's vision tower tiny (same class, same module names) while a CLIP is constructed."""
    import comfy.text_encoders.qwen_vl as qwen_vl

    orig = qwen_vl.Qwen2VLVisionTransformer

    def tiny(*args, **kwargs):
        kwargs.update(QWEN_VL_VISION)
        return orig(*args, **kwargs)

    qwen_vl.Qwen2VLVisionTransformer = tiny
    try:
        yield
    finally:
        qwen_vl.Qwen2VLVisionTransformer = orig


_CORPUS = ("a photo of a cat sitting on a red chair", "a dog running in the park at sunset",
           "an illustration of a castle on a hill, watercolor", "portrait of a woman with blue eyes and short hair",
           "a bowl of fruit on a wooden table, studio lighting", "a futuristic city at night with neon lights",
           "the quick brown fox jumps over the lazy dog", "a landscape with mountains, a lake and pine trees")
_SPIECE: dict = {}


def gemma_standin_spiece() -> torch.Tensor:
    """A tiny SentencePiece model, as the uint8 tensor checkpoints store under ``spiece_model``, with Gemma's
    special ids (pad 0, eos 1, bos 2, unk 3) and byte fallback; deterministic (one training thread)."""
    if "gemma" not in _SPIECE:
        import sentencepiece as spm

        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_CORPUS * 6), model_writer=buf, vocab_size=400, model_type="bpe", pad_id=0,
            eos_id=1, bos_id=2, unk_id=3, byte_fallback=True, num_threads=1, character_coverage=1.0,
            minloglevel=2, hard_vocab_limit=False)
        _SPIECE["gemma"] = torch.ByteTensor(list(buf.getvalue()))
    return _SPIECE["gemma"].clone()


@functools.lru_cache(maxsize=1)
def t5_style_spiece() -> bytes:
    """A deterministic SentencePiece unigram model (4000 pieces; pad 0, eos 1, unk 2 like (u)mT5) trained from the
    word pieces of ComfyUI's bundled Pile-T5 tokenizer: ComfyUI takes the UMT5 (Wan) and mT5 (HunyuanDiT)
    tokenizers from the text-encoder checkpoints, so a stand-in goes the same ``tokenizer_data`` way. Its ids fit
    the real vocabularies; they are not the real ids."""
    import os

    import sentencepiece as spm

    import comfy.text_encoders.aura_t5 as aura

    path = os.path.join(os.path.dirname(os.path.realpath(aura.__file__)), "t5_pile_tokenizer", "tokenizer.model")
    pile = spm.SentencePieceProcessor(model_file=path)
    pieces = [p for p in (pile.id_to_piece(i).replace("\u2581", "") for i in range(3, pile.get_piece_size()))
              if p.isalpha()]
    sents = [" ".join(pieces[i:i + 16]) for i in range(0, len(pieces), 16)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sents), model_writer=buf, vocab_size=4000,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1,
                                   minloglevel=2, hard_vocab_limit=False)
    return buf.getvalue()


def _diffusion(mc, seed: int, dtype=None):
    import comfy.model_management as mm
    import comfy.model_patcher

    load_device = mm.get_torch_device()
    if dtype is None:
        dtype = mm.unet_dtype(model_params=0, supported_dtypes=mc.supported_inference_dtypes)
    mc.set_inference_dtype(dtype, mm.unet_manual_cast(dtype, load_device, mc.supported_inference_dtypes))
    model = mc.get_model({}, "")
    init_module(model.diffusion_model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device())


def _clip(target, overrides: dict, seed: int, tokenizer_data=None):
    import comfy.sd

    clip = comfy.sd.CLIP(target, tokenizer_data=tokenizer_data or {}, model_options={**overrides,
                                                                                      "dtype": torch.float32})
    init_module(clip.cond_stage_model, seed)
    return clip


def kl_vae(channels: int, seed: int, levels: int = 4):
    """A tiny AutoencoderKL with ``channels`` latent channels and ``2 ** (levels - 1)`` downscale."""
    import comfy.sd

    cfg = _vae_config(channels)
    cfg["params"]["ddconfig"]["ch_mult"] = [1] * levels
    logging.disable(logging.WARNING)  # "Missing VAE keys": expected, the weights are filled below
    try:
        vae = comfy.sd.VAE(sd={}, config=cfg)
    finally:
        logging.disable(logging.NOTSET)
    vae.latent_channels = channels
    init_module(vae.first_stage_model, seed)
    return vae


def wan21_vae(seed: int):
    """A tiny real Wan 2.1 VAE: ``comfy.sd.VAE`` detects it from the state-dict keys (``decoder.middle.0.residual.
    0.gamma``) and reads its width from ``decoder.head.0.gamma``; images encode to (B, 16, 1, h, w)."""
    import comfy.ldm.wan.vae
    import comfy.sd

    ref = comfy.ldm.wan.vae.WanVAE(dim=WAN_VAE_DIM, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                   attn_scales=[], temperal_downsample=[False, True, True], image_channels=3,
                                   dropout=0.0)
    init_module(ref, seed)
    return comfy.sd.VAE(sd=ref.state_dict())


def wan22_vae(seed: int):
    """A tiny real Wan 2.2 VAE (``comfy/ldm/wan/vae2_2.py``, 48 channels, 16x) through ``comfy.sd.VAE``'s own
    detection; comfy/sd.py fixes its widths (160 / 256), so the class is given tiny ones while the VAE is built."""
    import comfy.ldm.wan.vae2_2 as wv2

    widths = {"dim": WAN_VAE_DIM, "dec_dim": WAN_VAE_DIM}
    ref = wv2.WanVAE(z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                     temperal_downsample=[False, True, True], dropout=0.0, **widths)
    init_module(ref, seed)
    org = wv2.WanVAE

    def tiny(**cfg):
        return org(**{**cfg, **widths})

    wv2.WanVAE = tiny
    try:
        import comfy.sd

        vae = comfy.sd.VAE(sd=ref.state_dict())
    finally:
        wv2.WanVAE = org
    return vae


def _hidream_clip_target():
    import comfy.supported_models_base
    import comfy.text_encoders.hidream as hidream

    return comfy.supported_models_base.ClipTarget(
        hidream.HiDreamTokenizer,
        hidream.hidream_clip(clip_l=True, clip_g=True, t5=True, llama=True, dtype_t5=None, dtype_llama=None))


# ----------------------------------------------------------------------------- builders
def model_config(family: str):
    import comfy.supported_models as sm

    return getattr(sm, CONFIG_CLASS[family])(dict(UNET[family]))


def build(family: str, seed: int = 0, dtype: torch.dtype | None = None):
    if family not in UNET:
        raise ValueError(f"unknown tiny model family {family!r}; expected one of {FAMILIES}")
    with torch.inference_mode():
        mc = model_config(family)
        mp = _diffusion(mc, seed, dtype)
        if family == "qwen_image":
            with _tiny_qwen_vision():
                clip = _clip(mc.clip_target({}), {"qwen25_7b_model_config": dict(QWEN25_7B)}, seed + 1)
            vae = wan21_vae(seed + 2)
        elif family == "lumina2":
            clip = _clip(mc.clip_target({}), {"gemma2_2b_model_config": dict(GEMMA2_2B)}, seed + 1,
                         tokenizer_data={"spiece_model": gemma_standin_spiece()})
            vae = kl_vae(16, seed + 2)
        elif family == "z_image":
            clip = _clip(mc.clip_target({}), {"qwen3_4b_model_config": dict(QWEN3_4B)}, seed + 1)
            vae = kl_vae(16, seed + 2)
        elif family == "hidream":
            clip = _clip(mc.clip_target({}) or _hidream_clip_target(),
                         {"clip_l_model_config": dict(CLIP_L), "clip_g_model_config": dict(CLIP_G),
                          "t5xxl_model_config": dict(T5XXL), "llama_model_config": dict(LLAMA31_8B)}, seed + 1)
            vae = kl_vae(16, seed + 2)
        elif family in ("chroma", "cosmos_predict2"):
            clip = _clip(mc.clip_target({}), {"t5xxl_model_config": dict(T5XXL)}, seed + 1)
            vae = kl_vae(16, seed + 2) if family == "chroma" else wan21_vae(seed + 2)
        elif family in ("wan21", "wan22"):
            clip = _clip(mc.clip_target({}), {"umt5xxl_model_config": dict(UMT5)}, seed + 1,
                         tokenizer_data={"spiece_model": t5_style_spiece()})
            vae = wan21_vae(seed + 2) if family == "wan21" else wan22_vae(seed + 2)
        elif family == "auraflow":
            clip = _clip(mc.clip_target({}), {"pile_t5xl_model_config": dict(PILE_T5XL)}, seed + 1)
            vae = kl_vae(4, seed + 2)
        elif family == "kandinsky5_image":
            with _tiny_qwen_vision():
                clip = _clip(mc.clip_target({}), {"qwen25_7b_model_config": dict(QWEN25_7B),
                                                  "clip_l_model_config": dict(CLIP_L)}, seed + 1)
            vae = kl_vae(16, seed + 2)
        elif family == "flux2":
            import comfy.supported_models_base as smb
            import comfy.text_encoders.z_image as z_image

            clip = _clip(smb.ClipTarget(z_image.ZImageTokenizer, z_image.te()),
                         {"qwen3_4b_model_config": dict(QWEN3_4B)}, seed + 1)
            vae = kl_vae(128, seed + 2, levels=5)  # 128 channels at 16x, FLUX.2's latent layout
        elif family == "hunyuan_image":
            # byT5's options reach it without a model name in ComfyUI 0.8.0 (hence "_model_config")
            with _tiny_qwen_vision():  # layer_idx -3: the encoder needs 4 layers
                clip = _clip(mc.clip_target({}), {"qwen25_7b_model_config": {**QWEN25_7B, "num_hidden_layers": 4},
                                                  "_model_config": dict(BYT5), "byt5_small_model_config": dict(BYT5)},
                             seed + 1)
            vae = kl_vae(64, seed + 2, levels=6)  # 64 channels at 32x
        elif family == "hunyuan_dit":
            clip = _clip(mc.clip_target({}), {"hydit_clip_model_config": dict(HYDIT_BERT),
                                              "mt5xl_model_config": dict(MT5XL)}, seed + 1,
                         tokenizer_data={"mt5xl.spiece_model": t5_style_spiece()})
            vae = kl_vae(4, seed + 2)
    return mp, clip, vae
