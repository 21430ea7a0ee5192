"""Preview images sampled with ComfyUI's own sampler (``comfy/sample.py`` ``sample``, the KSampler
path) on the training ModelPatcher itself, and decoded with the VAE."""
from __future__ import annotations

from typing import Callable

import torch

from .encode import latent_downscale


def sampler_names() -> tuple[list[str], list[str]]:
    """(samplers, schedulers) as KSampler lists them (``comfy/samplers.py``)."""
    import comfy.samplers

    return list(comfy.samplers.KSampler.SAMPLERS), list(comfy.samplers.KSampler.SCHEDULERS)


def sample_preview(model_patcher, positive, negative, vae, *, sampler: str, scheduler: str, steps: int,
                   cfg: float, width: int, height: int, seed: int,
                   on_step: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Sample one image with ComfyUI's own sampler on ``model_patcher`` itself (no reload, no copy) and
    decode it with ``vae``. ``positive``/``negative`` are CONDITIONING lists. ``on_step(done, total)`` is
    called after every sampler step. Returns IMAGE (B, H, W, 3). The caller handles grad mode and RNG
    isolation (``trainer.previews``)."""
    import comfy.sample

    ds = latent_downscale(vae)
    latent = torch.zeros([1, 4, max(1, height // ds), max(1, width // ds)])
    latent = comfy.sample.fix_empty_latent_channels(model_patcher, latent)
    noise = comfy.sample.prepare_noise(latent, seed)
    callback = None
    if on_step is not None:
        def callback(step, x0, x, total_steps):  # comfy/samplers.py KSAMPLER callback signature
            on_step(step + 1, total_steps)
    samples = comfy.sample.sample(model_patcher, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                                  seed=seed, disable_pbar=True, callback=callback)
    images = vae.decode(samples)
    if images.ndim == 5:  # video VAEs: (B, T, H, W, C)
        images = images.reshape((-1,) + tuple(images.shape[-3:]))
    return images[..., :3].float().cpu()
