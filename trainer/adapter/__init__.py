"""The only part of the trainer that touches ``comfy.*`` (always imported lazily, inside functions).

One module per ComfyUI mechanism it leans on, so a ComfyUI update that breaks one shows up in one file:

- ``model``: family detection, the objective from ``model_sampling``, loading for training and the
  denoiser the loop calls (``comfy/model_base.py``, ``comfy/model_sampling.py``, ``comfy/model_management.py``);
- ``inject``: the bypass LoRA as a ``PatcherInjection`` on a clone, and the trained LoRA merged for sampling as
  LoraLoader merges it (``comfy/model_patcher.py``, ``comfy/sd.py``);
- ``autograd``: what makes ComfyUI's inference code trainable (inference tensors, fused kernels without a
  backward, blocks that update their residual stream in place, gradient checkpointing);
- ``quant``: ComfyUI 0.8's quantized checkpoints (``comfy/ops.py`` ``mixed_precision_ops``, ``comfy/quant_ops.py``);
- ``encode``: VAE and CLIP encoding and cheap weight fingerprints;
- ``preview``: sampling preview images with ComfyUI's own sampler (``comfy/sample.py``);
- ``memory``: free device memory, and a step's memory measured on the meta device (``comfy/model_management.py``,
  ``comfy/supported_models_base.py``, ``comfy/ldm/modules/attention.py``);
- ``interrupt``: ComfyUI's Cancel (``comfy/model_management.py``);
- ``verify``: reload a saved file through ComfyUI's LoRA loader and compare (``comfy/sd.py``, ``comfy/lora.py``).
"""
from .autograd import (checkpoint_blocks, dense_weight, differentiable_kernels, functional_residuals, gradient_checkpointing,
                       recast_in_backward)
from .encode import clip_fingerprint, encode_caption, encode_latents, latent_downscale, vae_fingerprint
from .inject import for_sampling, install_network, install_text_encoder_network, load_base_weights
from .memory import device_budget, free_device_memory, plan_training
from .interrupt import interrupted, is_interrupt, raise_if_interrupted
from .model import (ComfyTrainModel, ObjectiveSpec, autocast_dtype, detect_family, diffusion_root,
                    load_clip_for_training, load_for_training, model_config_names, objective_spec, unet_config)
from .preview import sample_preview, sampler_names
from .verify import VerifyReport, verify_saved_lora

__all__ = [
    "ComfyTrainModel", "ObjectiveSpec", "VerifyReport", "autocast_dtype", "checkpoint_blocks", "clip_fingerprint",
    "dense_weight", "detect_family", "device_budget", "differentiable_kernels", "diffusion_root", "encode_caption",
    "encode_latents", "for_sampling", "free_device_memory", "functional_residuals", "gradient_checkpointing",
    "install_network", "install_text_encoder_network", "interrupted", "is_interrupt", "latent_downscale",
    "load_base_weights", "load_clip_for_training", "load_for_training", "model_config_names", "objective_spec",
    "plan_training", "raise_if_interrupted", "recast_in_backward", "sample_preview", "sampler_names", "unet_config",
    "vae_fingerprint", "verify_saved_lora",
]
