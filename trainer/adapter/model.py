"""The MODEL as the loop sees it: family, objective, loading for training, and the denoiser.

Leans on ``comfy/supported_models.py`` (the model config classes families are detected by),
``comfy/model_sampling.py`` (EPS / V_PREDICTION / CONST: what the model predicts and its sigmas),
``comfy/model_management.py`` (``load_models_gpu``) and ``comfy/model_base.py`` (``apply_model``,
``extra_conds``, ``process_latent_in``), with conds built like ``comfy/samplers.py`` builds them."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from .autograd import replace_inference_tensors
from .quant import inference_wrappers

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- model family

def model_config_names(model_patcher) -> list[str]:
    """MRO class names of the model's supported_models config (e.g. ['TinySD15', 'SD15', ...])."""
    cfg = model_patcher.model.model_config
    return [c.__name__ for c in type(cfg).__mro__]


def unet_config(model_patcher) -> dict:
    return dict(model_patcher.model.model_config.unet_config)


def detect_family(model_patcher):
    """The model's family; a model whose forward takes concatenated image inputs (``concat_keys`` in
    ``comfy/model_base.py``: inpainting, image-to-video) is refused by name."""
    from ..families import detect_family as _detect

    family = _detect(model_config_names(model_patcher), unet_config(model_patcher))
    reason = family.refuse(unet_config(model_patcher), model_patcher.model.latent_format.latent_channels)
    if reason:
        raise ValueError(f"model class {model_config_names(model_patcher)[0]} is not supported for LoRA training: "
                         f"{reason}")
    keys = tuple(getattr(model_patcher.model, "concat_keys", ()) or ())
    if keys:
        raise ValueError(f"model class {model_config_names(model_patcher)[0]} needs a concatenated "
                         f"{' + '.join(keys)} input besides the caption, which LoRA Loop does not provide; "
                         "train its text-to-image sibling instead")
    return family


def diffusion_root(model_patcher) -> torch.nn.Module:
    """The diffusion model, its ComfyUI 0.8 quantized Linear layers recognisable as Linear (``quant.as_linear``:
    value-preserving), so LoRA targets them like every other Linear."""
    from .quant import as_linear

    root = model_patcher.model.diffusion_model
    as_linear(root)
    return root


# ----------------------------------------------------------------------------- objective

@dataclass(frozen=True)
class ObjectiveSpec:
    """What the model's own model_sampling says about training targets."""
    kind: str                 # "discrete" (SD1/SD2/SDXL) or "flow" (SD3/FLUX)
    prediction: str           # "eps", "v" or "flow"
    sigmas: torch.Tensor | None   # discrete: the 1000 training sigmas
    shift: float              # flow: the model's shift (SD3 3.0, FLUX mu 1.15, schnell 1.0)
    multiplier: float         # flow: timestep multiplier (SD3 1000, FLUX 1)
    model_type: str           # ComfyUI ModelType name


def objective_spec(model_patcher) -> ObjectiveSpec:
    """The training objective the model's own ``model_sampling`` defines: eps / v on the discrete DDPM sigma
    table (``ModelSamplingDiscrete``), or rectified flow (``CONST``: ``ModelSamplingDiscreteFlow``,
    ``ModelSamplingFlux``). Every other parameterisation ComfyUI defines is refused by name."""
    import comfy.model_sampling as ms_mod

    ms = model_patcher.get_model_object("model_sampling")
    model_type = getattr(model_patcher.model, "model_type", None)
    mt_name = getattr(model_type, "name", str(model_type))
    kinds = [c.__name__ for c in type(ms).__mro__ if c.__module__ == ms_mod.__name__]
    refuse = {ms_mod.EDM: "EDM", ms_mod.X0: "x0 prediction", ms_mod.COSMOS_RFLOW: "Cosmos rectified flow"}
    for cls, what in refuse.items():
        if isinstance(ms, cls):
            raise ValueError(f"this model's sampling is {what} ({'/'.join(kinds)}, model type {mt_name}); "
                             "LoRA Loop trains eps, v-prediction and flow (CONST) models")
    if isinstance(ms, ms_mod.CONST):
        return ObjectiveSpec("flow", "flow", None, float(getattr(ms, "shift", 1.0)),
                             float(getattr(ms, "multiplier", 1.0)), mt_name)
    if isinstance(ms, ms_mod.V_PREDICTION):
        pred = "v"
    elif isinstance(ms, ms_mod.EPS):
        pred = "eps"
    else:
        raise ValueError(f"unsupported model_sampling {'/'.join(kinds)} (model type {mt_name}); "
                         "LoRA Loop trains eps, v-prediction and flow (CONST) models")
    sigmas = getattr(ms, "sigmas", None)
    if not isinstance(ms, ms_mod.ModelSamplingDiscrete) or sigmas is None or sigmas.numel() < 2:
        raise ValueError(f"model_sampling {'/'.join(kinds)} (model type {mt_name}) has no discrete DDPM sigma "
                         "table; continuous (EDM-style) schedules are not supported")
    with torch.inference_mode(False):
        sig = sigmas.detach().float().cpu().clone()
    return ObjectiveSpec("discrete", pred, sig, 1.0, 1.0, mt_name)


# ----------------------------------------------------------------------------- loading

def load_for_training(model_patcher, memory_required: int = 0, stream: bool = False) -> None:
    """Load the patcher (injections applied) through ComfyUI's loader and make its weights usable by autograd.

    ``memory_required``: what the step needs besides the weights (the memory plan's estimate), so ComfyUI frees
    room for it, unloading other models (text encoders, VAE) when it must. ``stream``: let ComfyUI load only
    the weights that fit next to that, as it does for sampling (the rest are cast onto the device per layer);
    otherwise every weight is loaded."""
    import comfy.model_management as mm

    mm.load_models_gpu([model_patcher], memory_required=int(memory_required), force_full_load=not stream)
    inference_wrappers(model_patcher.model)  # quantized weights: as ComfyUI's loader made them (see there)
    n = replace_inference_tensors(model_patcher.model)
    if n:
        log.debug("converted %d inference tensors of %s", n, type(model_patcher.model).__name__)


def load_clip_for_training(clip) -> None:
    import comfy.model_management as mm

    mm.load_models_gpu([clip.patcher], memory_required=0, force_full_load=True)
    replace_inference_tensors(clip.cond_stage_model)


# ----------------------------------------------------------------------------- the training model

def autocast_dtype(device, mode: str) -> torch.dtype | None:
    """The autocast dtype ``mixed_precision`` resolves to on ``device`` (None = fp32).

    ``auto``: bf16 on CUDA devices that support it, fp16 on other accelerators, fp32 on CPU;
    ``bf16`` / ``fp16`` force it on accelerators (CPU always runs fp32)."""
    dev = torch.device(device)
    if mode in ("no", "fp32") or dev.type == "cpu":
        if mode in ("bf16", "fp16") and dev.type == "cpu":
            log.info("mixed_precision=%s ignored on CPU (fp32)", mode)
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    if dev.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


# ComfyUI's attention functions (comfy/ldm/modules/attention.py) that training replaces by its SDPA one
# (attention_pytorch): sage has no backward; sub-quadratic, split and basic attention (ComfyUI's CPU and fallback
# picks) keep more for backward and run it slower than PyTorch's fused SDPA kernels.
SLOW_BACKWARD_ATTENTION = ("attention_sub_quad", "attention_split", "attention_basic", "attention_sage",
                           "attention3_sage")


def training_attention(func, *args, **kwargs):
    """An ``optimized_attention_override`` (``comfy/ldm/modules/attention.py`` ``wrap_attn``): the attention
    ComfyUI picked for sampling, unless its backward is missing or slow; then PyTorch SDPA through ComfyUI's
    own ``attention_pytorch``, which keeps only q, k, v, the output and its log-sum-exp for backward."""
    if getattr(func, "__name__", "") in SLOW_BACKWARD_ATTENTION:
        import comfy.ldm.modules.attention as attention

        return attention.attention_pytorch(*args, **kwargs)
    return func(*args, **kwargs)


class ComfyTrainModel:
    """What the loop sees of a ComfyUI MODEL: per-sample conds and a denoiser."""

    def __init__(self, model_patcher, mixed_precision: str = "auto", guidance: float | None = None):
        self.patcher = model_patcher
        self.base = model_patcher.model
        self.device = model_patcher.load_device
        self.guidance = guidance
        self.autocast_dtype = autocast_dtype(self.device, mixed_precision)
        self._transformer_options = self._base_transformer_options()

    @property
    def precision(self) -> str:
        """What ran, in sd-scripts' ``mixed_precision`` words: no, fp16 or bf16."""
        return {None: "no", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.autocast_dtype]

    def _base_transformer_options(self) -> dict:
        """The patcher's transformer_options plus its wrappers/callbacks, as ComfyUI's sampler merges them
        (comfy.sampler_helpers.prepare_model_patcher) - built on private copies so nothing accumulates."""
        import comfy.patcher_extension as pe

        def copy(v):
            if isinstance(v, dict):
                return {k: copy(x) for k, x in v.items()}
            return list(v) if isinstance(v, list) else v

        opts = copy(self.patcher.model_options.get("transformer_options", {}))
        pe.merge_nested_dicts(opts.setdefault("wrappers", {}), copy(self.patcher.wrappers), copy_dict1=False)
        pe.merge_nested_dicts(opts.setdefault("callbacks", {}), copy(self.patcher.callbacks), copy_dict1=False)
        opts.setdefault("optimized_attention_override", training_attention)  # a user's own override wins
        return opts

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=self.autocast_dtype)

    def process_latent_in(self, raw: torch.Tensor) -> torch.Tensor:
        return self.base.process_latent_in(raw)

    def batch_conds(self, conds: list, latent_shape: tuple, sizes: list[dict | None]) -> dict:
        """Per-sample ComfyUI conds -> one batched kwargs dict for apply_model.

        ``conds[i]`` is a CONDITIONING list ([[tensor, dict]]) for sample i; ``sizes[i]`` may hold SDXL
        size conditioning (width/height = original, crop_w/crop_h, target_width/target_height)."""
        import comfy.sampler_helpers
        import comfy.samplers

        per_sample = []
        noise = torch.zeros((1,) + tuple(latent_shape[1:]), device=self.device)
        for cond, size in zip(conds, sizes):
            c = comfy.sampler_helpers.convert_cond(cond)[:1]
            if size:
                c[0].update(size)
            if self.guidance is not None:
                c[0]["guidance"] = self.guidance
            enc = comfy.samplers.encode_model_conds(self.base.extra_conds, c, noise, self.device, "positive")[0]
            per_sample.append({k: v.process_cond(batch_size=1, area=None) for k, v in enc["model_conds"].items()})
        batched = comfy.samplers.cond_cat(per_sample)
        return {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in batched.items()}

    def denoise(self, x_t: torch.Tensor, sigma: torch.Tensor, conds: dict) -> torch.Tensor:
        """ComfyUI's apply_model: returns the model's denoised (x0) estimate."""
        opts = dict(self._transformer_options)
        b = x_t.shape[0]
        opts.update(cond_or_uncond=[0] * b, sigmas=sigma)
        return self.base.apply_model(x_t, sigma, transformer_options=opts, **conds)
