"""VAE and CLIP encoding through ComfyUI's ``VAE.encode`` and ``CLIP.tokenize`` /
``encode_from_tokens_scheduled`` (``comfy/sd.py``), and cheap fingerprints of their weights for the caches."""
from __future__ import annotations

import hashlib

import torch


def weights_fingerprint(module: torch.nn.Module, samples: int = 64, extra: str = "") -> str:
    """Cheap identity of a module's weights: names, shapes, dtypes and a strided sample of values."""
    h = hashlib.sha256(extra.encode())
    sd = module.state_dict()
    with torch.inference_mode(False), torch.no_grad():
        for k in sorted(sd):
            t = sd[k]
            h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
            flat = t.detach().reshape(-1)
            if flat.numel():
                step = max(1, flat.numel() // samples)
                h.update(flat[::step][:samples].float().cpu().numpy().tobytes())
    return h.hexdigest()[:24]


def vae_fingerprint(vae) -> str:
    return weights_fingerprint(vae.first_stage_model)


def clip_fingerprint(clip) -> str:
    return weights_fingerprint(clip.cond_stage_model, 32, repr(getattr(clip, "layer_idx", None)))


def encode_latents(vae, pixels: torch.Tensor) -> torch.Tensor:
    """pixels (B,H,W,3) in [0,1] -> raw VAE latents (B,C,h,w) float32 on CPU (no latent scaling)."""
    return vae.encode(pixels[:, :, :, :3]).float().cpu()


def encode_caption(clip, text: str, max_token_length: int = 0):
    """One caption -> a CONDITIONING list ([[cond, {"pooled_output": ...}]]). ``max_token_length`` (75, 150, 225;
    sd-scripts' option): each CLIP encoder keeps only its first ``max_token_length / 75`` windows of ComfyUI's
    tokenization (``comfy/sd1_clip.py`` ``tokenize_with_weights`` splits a prompt into 77-token windows; it keeps
    a short word whole, so a window can end a few tokens early). Encoders that do not split (T5, LLMs) are kept."""
    tokens = clip.tokenize(text)
    if max_token_length:
        windows = max(1, max_token_length // 75)
        tokens = {k: (v[:windows] if isinstance(v, list) and len(v) > windows else v) for k, v in tokens.items()} \
            if isinstance(tokens, dict) else tokens
    return clip.encode_from_tokens_scheduled(tokens, show_pbar=False)


def latent_downscale(vae) -> int:
    try:
        return int(vae.spacial_compression_encode())
    except Exception:  # older VAEs
        return 8
