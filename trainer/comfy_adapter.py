"""The one trainer module that touches ``comfy.*`` (imported lazily, inside functions).

It turns ComfyUI's ModelPatcher / CLIP / VAE into the small things the loop needs:
- ``ComfyTrainModel``: denoise(x_t, sigma, conds), latent scaling, per-sample conds, autocast;
- ``install_network`` / ``install_text_encoder_network``: bypass LoRA as a PatcherInjection on a clone;
- ``encode_latents`` / ``encode_captions``: VAE and CLIP encoding;
- ``objective_spec``: what the model's own ``model_sampling`` says about sigmas and prediction type.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)

INJECTION_KEY = "lora_loop"
TE_ROOT = "te"
UNET_ROOT = "unet"


# ----------------------------------------------------------------------------- model family

def model_config_names(model_patcher) -> list[str]:
    """MRO class names of the model's supported_models config (e.g. ['TinySD15', 'SD15', ...])."""
    cfg = model_patcher.model.model_config
    return [c.__name__ for c in type(cfg).__mro__]


def unet_config(model_patcher) -> dict:
    return dict(model_patcher.model.model_config.unet_config)


def detect_family(model_patcher):
    from .families import detect_family as _detect

    return _detect(model_config_names(model_patcher), unet_config(model_patcher))


def diffusion_root(model_patcher) -> torch.nn.Module:
    return model_patcher.model.diffusion_model


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
    import comfy.model_sampling as ms_mod

    ms = model_patcher.get_model_object("model_sampling")
    model_type = getattr(model_patcher.model, "model_type", None)
    mt_name = getattr(model_type, "name", str(model_type))
    if isinstance(ms, ms_mod.CONST):
        return ObjectiveSpec("flow", "flow", None, float(getattr(ms, "shift", 1.0)),
                             float(getattr(ms, "multiplier", 1.0)), mt_name)
    if isinstance(ms, ms_mod.V_PREDICTION):
        pred = "v"
    elif isinstance(ms, ms_mod.EPS):
        pred = "eps"
    else:
        raise ValueError(f"unsupported model_sampling {type(ms).__name__} (model type {mt_name}); "
                         "LoRA Loop trains eps, v-prediction and flow models")
    sigmas = getattr(ms, "sigmas", None)
    if sigmas is None or sigmas.numel() < 2:
        raise ValueError(f"model_sampling {type(ms).__name__} has no discrete sigma table; EDM/continuous "
                         "schedules are not supported")
    with torch.inference_mode(False):
        sig = sigmas.detach().float().cpu().clone()
    return ObjectiveSpec("discrete", pred, sig, 1.0, 1.0, mt_name)


# ----------------------------------------------------------------------------- inference tensors

def _replace_inference_tensors(module: torch.nn.Module) -> int:
    """Swap every inference-tensor parameter/buffer for a normal tensor, one at a time.

    Loader nodes create weights under torch.inference_mode(); autograd refuses to save such tensors
    for backward. Each tensor is cloned and swapped in place, so the old one is freed right away: no
    second copy of the model is kept. Values are identical, so other users of the shared module see
    no change. Must run with inference mode off."""
    n = 0
    with torch.no_grad():
        for mod in module.modules():
            for name, p in list(mod._parameters.items()):
                if p is not None and p.is_inference():
                    mod._parameters[name] = torch.nn.Parameter(p.clone(), requires_grad=False)
                    n += 1
            for name, b in list(mod._buffers.items()):
                if b is not None and b.is_inference():
                    mod._buffers[name] = b.clone()
                    n += 1
    return n


def load_for_training(model_patcher) -> None:
    """Fully load the patcher (injections applied) and make its weights usable by autograd."""
    import comfy.model_management as mm

    mm.load_models_gpu([model_patcher], memory_required=0, force_full_load=True)
    n = _replace_inference_tensors(model_patcher.model)
    if n:
        log.debug("converted %d inference tensors of %s", n, type(model_patcher.model).__name__)


def load_clip_for_training(clip) -> None:
    import comfy.model_management as mm

    mm.load_models_gpu([clip.patcher], memory_required=0, force_full_load=True)
    _replace_inference_tensors(clip.cond_stage_model)


# ----------------------------------------------------------------------------- LoRA injection

def network_subset(network, root: str):
    """A view of ``network`` holding only the targets under ``root`` (same LoRA modules and weights)."""
    from .network import LoRANetwork

    targets = [t for t in network.targets if t.root == root]
    return LoRANetwork(targets, {t.name: network.lora(t.name) for t in targets}, rank=network.rank,
                       alpha=network.alpha, conv_rank=network.conv_rank, conv_alpha=network.conv_alpha,
                       family=network.family, network_args=network.network_args)


def _injection(network, root_key: str, get_root: Callable[[Any], torch.nn.Module]):
    from comfy.patcher_extension import PatcherInjection

    def inject(patcher):
        network.to(patcher.load_device)
        network.install({root_key: get_root(patcher)})

    def eject(patcher):
        network.remove()

    return PatcherInjection(inject=inject, eject=eject)


def install_network(model_patcher, network):
    """Return a clone of ``model_patcher`` whose diffusion model runs the network's U-Net LoRA as a
    bypass (y = base(x) + up(down(x)) * scale). The input patcher and its other clones never see it."""
    mp = model_patcher.clone()
    unet_part = network_subset(network, UNET_ROOT)
    if len(unet_part):
        mp.set_injections(INJECTION_KEY, [_injection(unet_part, UNET_ROOT, lambda p: p.model.diffusion_model)])
    else:
        mp.remove_injections(INJECTION_KEY)
    return mp


def install_text_encoder_network(clip, network):
    """Return a CLIP clone running the network's text-encoder LoRA (bypass) - or the clip unchanged."""
    if clip is None:
        return None
    te_part = network_subset(network, TE_ROOT)
    c = clip.clone()
    if len(te_part):
        c.patcher.set_injections(INJECTION_KEY, [_injection(te_part, TE_ROOT, lambda p: p.model)])
    else:
        c.patcher.remove_injections(INJECTION_KEY)
    return c


# ----------------------------------------------------------------------------- gradient checkpointing

def _checkpoint_blocks(root: torch.nn.Module) -> list[torch.nn.Module]:
    """The block-level modules whose forward is recomputed in backward (one level below the
    container lists: U-Net TimestepEmbedSequential children, FLUX/SD3 blocks)."""
    blocks: list[torch.nn.Module] = []
    for name in ("input_blocks", "middle_block", "output_blocks", "double_blocks", "single_blocks",
                 "joint_blocks", "transformer_blocks"):
        container = getattr(root, name, None)
        if container is None:
            continue
        for child in container.children():
            inner = list(child.children()) if type(child).__name__ == "TimestepEmbedSequential" else [child]
            blocks.extend(inner)
    return blocks


@contextlib.contextmanager
def override_forwards(modules, make_forward):
    """Temporarily replace each module's ``forward`` with ``make_forward(original_forward)``; restored in
    reverse order on exit (instance overrides that existed before are put back)."""
    patched = []
    for module in modules:
        had_own = "forward" in module.__dict__
        org = module.forward
        module.forward = make_forward(org)
        patched.append((module, org, had_own))
    try:
        yield
    finally:
        for module, org, had_own in reversed(patched):
            if had_own:
                module.forward = org
            else:
                del module.forward


def gradient_checkpointing(root: torch.nn.Module, enabled: bool):
    """Temporarily wrap block forwards in torch.utils.checkpoint (installed after, removed before LoRA)."""
    import torch.utils.checkpoint as cp

    def make(org):
        def fwd(*args, **kwargs):
            if torch.is_grad_enabled():
                return cp.checkpoint(org, *args, use_reentrant=False, **kwargs)
            return org(*args, **kwargs)
        return fwd

    return override_forwards(_checkpoint_blocks(root) if enabled else [], make)


# ----------------------------------------------------------------------------- differentiable kernels

def _rope1(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    x_ = x.to(dtype=freqs_cis.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    out = freqs_cis[..., 0] * x_[..., 0] + freqs_cis[..., 1] * x_[..., 1]
    return out.reshape(*x.shape).type_as(x)


def _rope(xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor):
    return _rope1(xq, freqs_cis), _rope1(xk, freqs_cis)


@contextlib.contextmanager
def differentiable_kernels():
    """Swap inference-only fused kernels for autograd-friendly equivalents while training.

    ComfyUI 0.8 routes FLUX rotary embeddings through comfy_kitchen's fused ``apply_rope``, which has no
    backward. Same maths, plain torch ops; restored on exit."""
    swaps = []
    try:
        import comfy.ldm.flux.math as fm

        swaps += [(fm, "apply_rope", _rope), (fm, "apply_rope1", _rope1)]
    except Exception:  # older/newer ComfyUI without that module
        pass
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in swaps if hasattr(mod, name)]
    for mod, name, fn in swaps:
        setattr(mod, name, fn)
    try:
        yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)


# ----------------------------------------------------------------------------- in-place residual streams

# Blocks that update their residual-stream inputs in place (``x += ...``) after a norm saved them for
# backward: FLUX DoubleStreamBlock / SingleStreamBlock (comfy/ldm/flux/layers.py), CLIP encoder layers
# (comfy/clip_model.py CLIPLayer), T5 sub-layers (comfy/text_encoders/t5.py).
INPLACE_RESIDUAL_BLOCKS = ("DoubleStreamBlock", "SingleStreamBlock", "CLIPLayer", "T5LayerFF", "T5LayerSelfAttention")
_RESIDUAL_KWARGS = ("img", "txt", "x")


def _storage_key(t: torch.Tensor):
    try:
        return t.untyped_storage().data_ptr()
    except Exception:
        return None


def protect_inplace_residuals(root: torch.nn.Module):
    """Make blocks that modify their residual inputs in place trainable.

    Inside such a block, any tensor autograd saves that shares storage with a residual input is saved as a
    copy, so the later in-place ``+=`` cannot invalidate it. Only those few activations are copied."""

    def make(org):
        def fwd(*args, **kwargs):
            if not torch.is_grad_enabled():
                return org(*args, **kwargs)
            tensors = [a for a in args if torch.is_tensor(a)]
            tensors += [kwargs[k] for k in _RESIDUAL_KWARGS if torch.is_tensor(kwargs.get(k))]
            keys = {_storage_key(t) for t in tensors} - {None}

            def pack(t):
                return t.clone() if _storage_key(t) in keys else t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                return org(*args, **kwargs)
        return fwd

    blocks = [m for m in root.modules() if type(m).__name__ in INPLACE_RESIDUAL_BLOCKS]
    return override_forwards(blocks, make)


# ----------------------------------------------------------------------------- the training model

class ComfyTrainModel:
    """What the loop sees of a ComfyUI MODEL: per-sample conds and a denoiser."""

    def __init__(self, model_patcher, mixed_precision: str = "auto", guidance: float | None = None):
        self.patcher = model_patcher
        self.base = model_patcher.model
        self.device = model_patcher.load_device
        self.guidance = guidance
        self.autocast_dtype = self._autocast_dtype(mixed_precision)
        self._transformer_options = self._base_transformer_options()

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
        return opts

    def _autocast_dtype(self, mode: str):
        dev = torch.device(self.device)
        if mode in ("no", "fp32") or dev.type == "cpu":
            if mode in ("bf16", "fp16") and dev.type == "cpu":
                log.info("mixed_precision=%s ignored on CPU (fp32)", mode)
            return None
        if mode == "bf16":
            return torch.bfloat16
        if mode == "fp16":
            return torch.float16
        # auto
        if dev.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

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


def raise_if_interrupted() -> None:
    """Raise ComfyUI's InterruptProcessingException if Cancel was pressed (clears the flag)."""
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()


# ----------------------------------------------------------------------------- encoders

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


def encode_caption(clip, text: str):
    """One caption -> a CONDITIONING list ([[cond, {"pooled_output": ...}]])."""
    tokens = clip.tokenize(text)
    return clip.encode_from_tokens_scheduled(tokens, show_pbar=False)


def latent_downscale(vae) -> int:
    try:
        return int(vae.spacial_compression_encode())
    except Exception:  # older VAEs
        return 8


# ----------------------------------------------------------------------------- previews (sampling)

def sampler_names() -> tuple[list[str], list[str]]:
    """(samplers, schedulers) as KSampler lists them."""
    import comfy.samplers

    return list(comfy.samplers.KSampler.SAMPLERS), list(comfy.samplers.KSampler.SCHEDULERS)


def sample_preview(model_patcher, positive, negative, vae, *, sampler: str, scheduler: str, steps: int,
                   cfg: float, width: int, height: int, seed: int) -> torch.Tensor:
    """Sample one image with ComfyUI's own sampler on ``model_patcher`` itself (no reload, no copy) and
    decode it with ``vae``. ``positive``/``negative`` are CONDITIONING lists. Returns IMAGE (B, H, W, 3).
    The caller handles grad mode and RNG isolation (``trainer.previews``)."""
    import comfy.sample

    ds = latent_downscale(vae)
    latent = torch.zeros([1, 4, max(1, height // ds), max(1, width // ds)])
    latent = comfy.sample.fix_empty_latent_channels(model_patcher, latent)
    noise = comfy.sample.prepare_noise(latent, seed)
    samples = comfy.sample.sample(model_patcher, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                                  seed=seed, disable_pbar=True)
    images = vae.decode(samples)
    if images.ndim == 5:  # video VAEs: (B, T, H, W, C)
        images = images.reshape((-1,) + tuple(images.shape[-3:]))
    return images[..., :3].float().cpu()
