"""Device memory: what ComfyUI says is free, and what a training step of ComfyUI's own model needs.

A step is measured, not guessed: the MODEL's diffusion model is rebuilt on the meta device from its own model
config (``comfy/supported_models_base.py`` ``get_model``, so every layer is ComfyUI's code with ComfyUI's ops,
fp8 / manual-cast ops included), the LoRA network is installed on it, and one forward + backward runs there
under ``trainer.memory.LiveBytes`` with the same autograd helpers, checkpointing and transformer options a real
step uses. No weights are allocated and no GPU is needed. Attention runs through ComfyUI's
``optimized_attention_override`` hook (``comfy/ldm/modules/attention.py`` ``wrap_attn``) as a kernel that keeps
only q, k, v, the output and its log-sum-exp for backward, as flash / SDPA kernels do.

Free memory comes from ``comfy.model_management.get_free_memory`` (plus what the model being trained already
holds there), so ``auto`` plans against the same number ComfyUI's loader uses."""
from __future__ import annotations

import contextlib

import logging
from dataclasses import dataclass

import torch

from ..memory import LiveBytes, StepMemory
from ..network import TE_ROOT, UNET_ROOT
from .autograd import (checkpoint_blocks, differentiable_kernels, functional_residuals, gradient_checkpointing,
                       recast_in_backward)
from .quant import stored_bytes

log = logging.getLogger(__name__)

META = torch.device("meta")


# ----------------------------------------------------------------------------- the device

def free_memory(device) -> int:
    """Bytes ComfyUI reports free on ``device`` (its ``get_free_memory``: device free + its allocator's cache)."""
    import comfy.model_management as mm

    return int(mm.get_free_memory(torch.device(device)))


def free_device_memory() -> None:
    """Hand freed tensors' memory back (after a failed step): collect cycles, then ComfyUI's soft_empty_cache."""
    import gc

    import comfy.model_management as mm

    gc.collect()
    mm.soft_empty_cache()


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (as stored: fp8 weights count 1 byte per element, ComfyUI's
    quantized weights their storage and scales)."""
    n = 0
    for t in list(module.parameters()) + list(module.buffers()):
        n += stored_bytes(t)
    return n


# ----------------------------------------------------------------------------- the meta model

def meta_model(model_config, weight_dtype: torch.dtype | None = None, compute_dtype: torch.dtype | None = None):
    """ComfyUI's model for ``model_config`` built on the meta device: its weights in ``weight_dtype`` (default:
    the config's), computed in ``compute_dtype`` (manual-cast ops when it differs, as ComfyUI's loader sets
    them up for fp8 or for fp16 on devices without it)."""
    mc = object.__new__(type(model_config))  # copy.copy trips over the config's catch-all __getattr__
    mc.__dict__.update(model_config.__dict__)
    mc.unet_config = dict(model_config.unet_config)
    # a pack's own ops (ComfyUI-GGUF's create their weights at load time) give way to ComfyUI's: the layers and
    # activations are the same, and the weights' real sizes are counted on the loaded model (model_memory). So do
    # ComfyUI's mixed-precision ops (quantized checkpoints), whose Linear layers create their weights only when
    # loading them
    mc.custom_operations = None
    mc.quant_config = None
    wd = weight_dtype or mc.unet_config.get("dtype") or torch.float32
    cd = compute_dtype or wd
    mc.set_inference_dtype(wd, None if cd == wd else cd)
    model = mc.get_model({}, device=META)
    model.model_sampling.to(META)
    model.requires_grad_(False)  # frozen, as the loaded model is for training
    return model


def example_conds(model_config, batch: int, tokens: int | None = None, device=META,
                  dtype: torch.dtype = torch.float32) -> dict:
    """apply_model keyword inputs of the shapes a family's text encoders give: ``c_crossattn`` (tokens x context
    width), pooled ``y`` where the model takes one, FLUX's ``guidance``. ``tokens`` defaults to what the
    family's encoders emit (77 CLIP; SD3 77 CLIP + 77 T5; FLUX 512 T5)."""
    u = model_config.unet_config
    if u.get("image_model") not in (None, "flux"):    # the shapes of other models: from a real cond
        raise KeyError(f"text cond shapes of image_model {u.get('image_model')!r}")
    if "context_in_dim" in u:                         # FLUX: T5 tokens, pooled CLIP-L vector
        width, pooled, tokens = u["context_in_dim"], u.get("vec_in_dim"), tokens or 512
    elif "context_embedder_config" in u:              # SD3 / MMDiT
        width = u["context_embedder_config"]["params"]["in_features"]
        pooled, tokens = u.get("adm_in_channels"), tokens or 154
    else:                                             # SD1 / SD2 / SDXL U-Net
        width, pooled, tokens = u["context_dim"], u.get("adm_in_channels"), tokens or 77
    conds = {"c_crossattn": torch.empty(batch, tokens, width, device=device, dtype=dtype)}
    if pooled:
        conds["y"] = torch.empty(batch, pooled, device=device, dtype=dtype)
    if u.get("guidance_embed"):
        conds["guidance"] = torch.empty(batch, device=device, dtype=dtype)
    return conds


def latent_shape(model_config, batch: int, width: int, height: int, downscale: int | None = None) -> tuple[int, ...]:
    """The latent a ``width`` x ``height`` image encodes to for this model: its latent format's channels, one frame
    for video formats, and ``downscale`` (the VAE's; default: what the model's family uses, 8 for most)."""
    fmt = model_config.latent_format
    if downscale is None:
        from ..families import detect_family

        names = [c.__name__ for c in type(model_config).__mro__]
        downscale = detect_family(names, model_config.unet_config).latent_downscale(model_config.unet_config)
    down = int(downscale)
    frames = (1,) * (getattr(fmt, "latent_dimensions", 2) - 2)  # video models train on one frame
    return (batch, fmt.latent_channels) + frames + (height // down, width // down)


# ----------------------------------------------------------------------------- attention for planning

class _FlashLikeAttention(torch.autograd.Function):
    """Shape-only attention that saves what flash / SDPA kernels save: q, k, v, out and a float32 log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v):  # (b, h, n, d)
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:-1], device=q.device, dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def planning_attention(func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                       skip_output_reshape=False, **kwargs):
    """An ``optimized_attention_override`` with ComfyUI's attention signature (``attention_pytorch``)."""
    if skip_reshape:
        b, _, _, dim_head = q.shape
    else:
        b, _, inner = q.shape
        dim_head = inner // heads
        q, k, v = (t.view(b, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    out = _FlashLikeAttention.apply(q, k, v)
    if not skip_output_reshape:
        out = out.transpose(1, 2).reshape(b, -1, heads * dim_head)
    return out


# ----------------------------------------------------------------------------- one measured step

@dataclass(frozen=True)
class ModelMemory:
    """What the planner needs to know about a model: its weights and its blocks' weights (bytes)."""
    weights: int
    block_weights: list[int]


def model_memory(root: torch.nn.Module) -> ModelMemory:
    """Weight bytes of a diffusion model and of each of its checkpointable blocks, as stored."""
    return ModelMemory(weight_bytes(root), [weight_bytes(b) for b in checkpoint_blocks(root)])


@contextlib.contextmanager
def _meta_free_memory():
    """What the meta device cannot answer while a step is counted there. ComfyUI's attention picks
    (``comfy/ldm/modules/attention.py`` split and sub-quadratic attention, called directly by models that pass no
    transformer_options, e.g. HunyuanDiT) ask ``get_free_memory`` for the tensors' device: it reports plenty (one
    chunk: the count is of what is kept for backward, not of the chunking). ``torch.nonzero``: see
    ``_meta_nonzero``."""
    import comfy.model_management as mm

    org = mm.get_free_memory

    def free(dev=None, torch_free_too=False):
        if getattr(dev, "type", None) == "meta":
            return (1 << 50, 1 << 50) if torch_free_too else 1 << 50
        return org(dev, torch_free_too)

    mm.get_free_memory = free
    try:
        with _meta_nonzero():
            yield
    finally:
        mm.get_free_memory = org


@contextlib.contextmanager
def _meta_nonzero():
    """``torch.nonzero`` on the meta device (HiDream's mixture-of-experts routing, ``comfy/ldm/hidream/model.py``)
    has no data to count; PyTorch's switch makes it assume every element is non-zero: every expert sees every
    token, an upper bound of what routing keeps for backward."""
    try:
        import torch.fx.experimental._config as fx_config
    except ImportError:  # a PyTorch without the switch: such models stay without a plan
        yield
        return
    org = getattr(fx_config, "meta_nonzero_assume_all_nonzero", None)
    if org is None:
        yield
        return
    fx_config.meta_nonzero_assume_all_nonzero = True
    try:
        yield
    finally:
        fx_config.meta_nonzero_assume_all_nonzero = org


@contextlib.contextmanager
def _trainable_copy(network, root_key: str, root: torch.nn.Module, device):
    """A trainable copy of ``network``'s LoRA under ``root_key`` installed on ``root`` (on ``device``) for one
    measured step, removed afterwards."""
    from .autograd import dense_weight

    net = network.subset(root_key).copy().to(device)
    for p in net.parameters():
        p.requires_grad_(True)
    net.install({root_key: root}, weight_reader=dense_weight)
    try:
        yield net
    finally:
        net.remove()


def measure_step(model, network, *, x_shape: tuple[int, ...], conds: dict, checkpointing: bool,
                 compute_dtype: torch.dtype = torch.float32) -> StepMemory:
    """Run one forward + backward of ``model`` (a ComfyUI BaseModel, normally from ``meta_model``) with a copy
    of ``network``'s diffusion-model LoRA installed, on the model's device, and count what it allocates."""
    device = next(model.diffusion_model.parameters()).device
    root = model.diffusion_model
    b = x_shape[0]
    opts = {"optimized_attention_override": planning_attention, "cond_or_uncond": [0] * b}
    with _trainable_copy(network, UNET_ROOT, root, device):
        with _meta_free_memory(), torch.inference_mode(False), torch.enable_grad(), differentiable_kernels(), \
                recast_in_backward(root), functional_residuals(root), gradient_checkpointing(root, checkpointing):
            x = torch.empty(x_shape, device=device, dtype=compute_dtype)
            sigma = torch.empty(b, device=device, dtype=torch.float32)
            c = {k: (v.to(device=device, dtype=compute_dtype if v.is_floating_point() else v.dtype)
                     if torch.is_tensor(v) else v) for k, v in conds.items()}
            opts["sigmas"] = sigma
            with LiveBytes() as live:
                out = model.apply_model(x, sigma, transformer_options=opts, **c)
                loss = (out.float() - x.float()).pow(2).mean()
                activations = live.mark()
                loss.backward()
                del out, loss
            return StepMemory(activations=activations, peak=live.peak)


def meta_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose parameters and buffers are empty meta tensors of the same shapes and dtypes: the
    same classes and code, no weight copied. For modules ComfyUI built that cannot be rebuilt from a config (text
    encoders). Weights stored as tensor subclasses (quantized, GGUF) are refused; a LoRA of this pack installed on
    ``module`` is not part of the copy. Call it outside inference mode."""
    import copy

    tensors = list(module.parameters()) + list(module.buffers())
    odd = {type(t).__name__ for t in tensors if type(t) not in (torch.Tensor, torch.nn.Parameter)}
    if odd:
        raise ValueError(f"{type(module).__name__} stores weights as {', '.join(sorted(odd))}")
    memo: dict = {}
    for t in tensors:
        e = torch.empty_like(t, device=META)
        memo[id(t)] = torch.nn.Parameter(e, requires_grad=False) if isinstance(t, torch.nn.Parameter) else e
    out = copy.deepcopy(module, memo)
    for m in out.modules():  # a LoRA of this pack installed on the original: its forwards run the original's layers
        if hasattr(m.__dict__.get("forward"), "lora_loop_name"):
            del m.forward
    return out


@contextlib.contextmanager
def _meta_outputs():
    """ComfyUI's text encoders move their outputs to ``intermediate_device()`` (``comfy/sd1_clip.py``
    ``encode_token_weights``): keep them on the meta device while a step is measured there."""
    import comfy.model_management as mm

    org = mm.intermediate_device
    mm.intermediate_device = lambda: META
    try:
        yield
    finally:
        mm.intermediate_device = org


def measure_text_encoder_step(clip, network, tokens, *, checkpointing: bool, on_meta: bool = True) -> StepMemory:
    """One forward + backward of ``clip``'s text encoder (on a ``meta_copy``; ``on_meta=False``: the real one, on
    its device) with a copy of ``network``'s text-encoder LoRA installed, for the tokens of one caption, counted
    like ``measure_step``: what training the text encoder adds to a step. The encoder runs as ComfyUI's
    ``CLIP.encode_from_tokens`` runs it (``comfy/sd.py``), with the helpers and checkpointing a real step uses."""
    te = meta_copy(clip.cond_stage_model) if on_meta else clip.cond_stage_model
    device = META if on_meta else next(te.parameters()).device
    try:
        with _trainable_copy(network, TE_ROOT, te, device), _meta_free_memory(), \
                (_meta_outputs() if on_meta else contextlib.nullcontext()), torch.enable_grad(), \
                differentiable_kernels(), recast_in_backward(te), functional_residuals(te), \
                gradient_checkpointing(te, checkpointing):
            te.reset_clip_options()
            if getattr(clip, "layer_idx", None) is not None:
                te.set_clip_options({"layer": clip.layer_idx})
            te.set_clip_options({"execution_device": device})
            with LiveBytes() as live:
                out = te.encode_token_weights(tokens)
                loss = sum(t.float().pow(2).mean() for t in out[:2] if torch.is_tensor(t) and t.requires_grad)
                activations = live.mark()
                if torch.is_tensor(loss):
                    loss.backward()
                del out, loss
            return StepMemory(activations=activations, peak=live.peak)
    finally:
        te.reset_clip_options()


def with_text_encoder(step: StepMemory, te: StepMemory) -> StepMemory:
    """A step that also trains the text encoder: its activations are alive through the diffusion model's forward
    and backward; its own backward runs after that one has freed its activations."""
    return StepMemory(activations=step.activations + te.activations, peak=max(step.peak + te.activations, te.peak))


# ----------------------------------------------------------------------------- plans for a MODEL

def device_budget(model_patcher, keep=()) -> int:
    """Memory a training run of ``model_patcher`` can plan with on its load device: what ComfyUI reports free,
    plus what ComfyUI's loaded models hold there (its loader unloads them, text encoders and VAE included, when
    the training model needs the room), minus what the patchers in ``keep`` (a text encoder that trains along)
    need while it trains."""
    import comfy.model_management as mm

    dev = torch.device(model_patcher.load_device)
    kept = {id(k) for k in keep}
    held = 0
    for lm in list(mm.current_loaded_models):
        try:
            if torch.device(lm.device) == dev and id(lm.model) not in kept:
                held += int(lm.model_loaded_memory())
        except Exception:
            continue
    needed = 0
    for k in keep:
        needed += int(k.model_size()) - (int(k.loaded_size()) if torch.device(k.load_device) == dev else 0)
    return max(0, free_memory(dev) + held - needed)


def plan_training(model_patcher, network, *, batch: int, width: int, height: int, compute_dtype: torch.dtype | None,
                  optimizer_state_bytes: float, cond=None, downscale: int | None = None, clip=None,
                  caption: str | None = None):
    """Every memory plan for training ``network`` on ``model_patcher`` at ``batch`` x ``width`` x ``height``
    (fastest first); the weights are counted as the loaded model stores them. ``cond``: one caption's
    CONDITIONING, for models whose text cond shapes ``example_conds`` does not know; ``downscale``: the VAE's
    (pixels per latent pixel), when known from encoded latents. ``clip`` and ``caption``: when the network
    trains the text encoder, its step for ``batch`` copies of that caption is measured too and added."""
    base = model_patcher.model
    wd = base.get_dtype()
    te_steps = None
    if network.text_encoder_names and clip is not None and caption is not None:
        tokens = clip.tokenize(caption)
        try:
            with torch.inference_mode(False):  # nodes run under inference mode: the meta copies must be trainable
                steps = [measure_text_encoder_step(clip, network, tokens, checkpointing=ck) for ck in (False, True)]
            te_steps = [StepMemory(s.activations * batch, s.peak * batch) for s in steps]  # one caption per sample
        except Exception as e:  # weights meta_copy cannot copy, or an encoder that reads values (LLM encoders'
            # token counts): plan the diffusion model's step alone
            log.warning("LoRA Loop: the memory plan leaves the text encoder's activations out (%s: %s)",
                        type(e).__name__, e)
    return plans_for(base.model_config, network, batch=batch, width=width, height=height, weight_dtype=wd,
                     compute_dtype=compute_dtype or getattr(base, "manual_cast_dtype", None) or wd,
                     optimizer_state_bytes=optimizer_state_bytes, weights_root=base.diffusion_model, cond=cond,
                     downscale=downscale, text_encoder_steps=te_steps)


def meta_conds(model, cond, x_shape: tuple[int, ...]) -> dict:
    """apply_model keyword inputs for ``batch`` copies of one real CONDITIONING, built by the model's own
    ``extra_conds`` (as ``comfy/samplers.py`` does) and moved to the meta device."""
    import comfy.sampler_helpers
    import comfy.samplers

    c = comfy.sampler_helpers.convert_cond(cond)[:1]
    noise = torch.zeros((1,) + tuple(x_shape[1:]), device=META)
    enc = comfy.samplers.encode_model_conds(model.extra_conds, c, noise, META, "positive")[0]
    one = {k: v.process_cond(batch_size=x_shape[0], area=None) for k, v in enc["model_conds"].items()}
    batched = comfy.samplers.cond_cat([one])
    return {k: (v.to(META) if torch.is_tensor(v) else v) for k, v in batched.items()}


def plans_for(model_config, network, *, batch: int, width: int, height: int, weight_dtype: torch.dtype,
              compute_dtype: torch.dtype, optimizer_state_bytes: float, weights_root: torch.nn.Module | None = None,
              cond=None, downscale: int | None = None, text_encoder_steps: list[StepMemory] | None = None):
    """Every memory plan (fastest first) for ``model_config``'s architecture, from two meta-device steps (without
    and with checkpointing) with text conds of the family's shapes (or ``cond``'s, one real caption's, when the
    family's shapes are not known here). ``weights_root``: the module whose stored weights are counted (a loaded
    model; default: the meta model, in ``weight_dtype``). ``text_encoder_steps``: the text encoder's own steps
    (without, with checkpointing) when it trains along."""
    from ..memory import network_bytes, plan_candidates

    with torch.inference_mode(False):  # nodes run under inference mode: the meta model must be trainable
        meta = meta_model(model_config, weight_dtype, compute_dtype)
        x_shape = latent_shape(model_config, batch, width, height, downscale)
        try:
            conds = example_conds(model_config, batch)
        except KeyError:
            if cond is None:
                raise
            conds = meta_conds(meta, cond, x_shape)
        steps = [measure_step(meta, network, x_shape=x_shape, conds=conds, checkpointing=ck,
                              compute_dtype=compute_dtype) for ck in (False, True)]
    if text_encoder_steps is not None:
        steps = [with_text_encoder(s, t) for s, t in zip(steps, text_encoder_steps)]
    root = weights_root if weights_root is not None else meta.diffusion_model
    mem = model_memory(root)
    params = list(network.parameters())  # a text encoder's LoRA trains on the same device, with its own state
    n = sum(p.numel() for p in params)
    item = params[0].element_size() if params else 4
    return plan_candidates(weights=mem.weights, block_weights=mem.block_weights,
                           network=network_bytes(n, item, optimizer_state_bytes), plain=steps[0],
                           checkpointed=steps[1], in_flight=streamed_in_flight(root, compute_dtype),
                           grad_bytes=n * item)


def streamed_in_flight(root: torch.nn.Module, compute_dtype: torch.dtype, streams: int | None = None) -> int:
    """Device bytes the streamed weights take at once: ComfyUI casts a streamed layer's weight in per use (and
    ``recast_in_backward`` again in backward, keeping none), with up to ``streams`` next layers already on their
    way (``comfy/model_management.py`` ``NUM_STREAMS``; 2 on NVIDIA and AMD): the largest layer's cast weight
    times (1 + streams)."""
    if streams is None:
        import comfy.model_management as mm

        streams = max(2, int(getattr(mm, "NUM_STREAMS", 2)))
    item = torch.empty((), dtype=compute_dtype).element_size()
    largest = 0
    for m in root.modules():
        w = getattr(m, "weight", None)
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and w is not None:
            shape = getattr(w, "tensor_shape", None)  # ComfyUI-GGUF's tensors: the logical shape of packed bytes
            largest = max(largest, torch.Size(shape).numel() if shape is not None else w.numel())
    return largest * item * (1 + streams)
