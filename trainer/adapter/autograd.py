"""What makes ComfyUI's inference code trainable, each piece naming the ComfyUI code it works around.

All of these are temporary (context managers) or value-preserving, so a model that is sampled while or
after it trains behaves exactly as ComfyUI built it."""
from __future__ import annotations

import contextlib

import torch

from ..families.blocks import is_block_list
from . import quant


# ----------------------------------------------------------------------------- inference tensors

def replace_inference_tensors(module: torch.nn.Module) -> int:
    """Swap every inference-tensor parameter/buffer for a normal tensor, one at a time.

    ComfyUI's executor runs every node under ``torch.inference_mode()`` (``execution.py``), so weights a
    loader node created are inference tensors, which autograd refuses to save for backward. Each tensor is
    cloned and swapped in place, so the old one is freed right away: no second copy of the model is kept.
    Values are identical, so other users of the shared module see no change. Must run with inference mode off.

    ComfyUI 0.8's quantized weights (``QuantizedTensor``, see ``quant``) stay as they are: training never saves
    them for backward (``recast_in_backward`` dequantizes them per use, forward and backward), and a normal one
    could no longer be detached under inference mode (its ``detach`` makes a new wrapper there, an inference tensor,
    which cannot share a normal tensor's version counter), as ComfyUI's LoraLoader and model moves do."""
    n = 0
    with torch.no_grad():
        for mod in module.modules():
            for name, p in list(mod._parameters.items()):
                if p is not None and p.is_inference() and not quant.is_quantized(p):
                    mod._parameters[name] = _normal_copy(p, parameter=True)
                    n += 1
            for name, b in list(mod._buffers.items()):
                if b is not None and b.is_inference() and not quant.is_quantized(b):
                    mod._buffers[name] = _normal_copy(b)
                    n += 1
    return n


def _normal_copy(t: torch.Tensor, parameter: bool = False) -> torch.Tensor:
    """A normal (non-inference) copy of ``t``. A tensor subclass keeps its class and attributes: ComfyUI-GGUF's
    GGMLTensor (its quantization type and logical shape) returns itself from ``clone()``, so it is copied as a
    plain tensor and rewrapped."""
    if type(t) in (torch.Tensor, torch.nn.Parameter):
        c = t.clone()
        return torch.nn.Parameter(c, requires_grad=False) if parameter else c
    c = t.as_subclass(torch.Tensor).clone().as_subclass(type(t))
    c.__dict__.update({k: v for k, v in t.__dict__.items() if k != "_is_param"})
    if parameter:
        c = torch.nn.Parameter(c, requires_grad=False)
    return c


# ----------------------------------------------------------------------------- forward overrides

@contextlib.contextmanager
def override_forwards(modules, make_forward, method: str = "forward"):
    """Temporarily replace each module's ``forward`` (or another ``method``) with ``make_forward(original)``;
    restored in reverse order on exit (instance overrides that existed before are put back)."""
    patched = []
    for module in modules:
        had_own = method in module.__dict__
        org = getattr(module, method)
        setattr(module, method, make_forward(org))
        patched.append((module, org, had_own))
    try:
        yield
    finally:
        for module, org, had_own in reversed(patched):
            if had_own:
                setattr(module, method, org)
            else:
                delattr(module, method)


# ----------------------------------------------------------------------------- gradient checkpointing

# The block lists whose children are recomputed in backward: ``input_blocks`` / ``middle_block`` /
# ``output_blocks`` of comfy/ldm/modules/diffusionmodules/openaimodel.py UNetModel (inside each
# TimestepEmbedSequential), and every list of transformer blocks (``families.blocks.is_block_list``: blocks with
# Linear and attention layers): ``double_blocks`` / ``single_blocks`` of comfy/ldm/flux/model.py, ``joint_blocks``
# of comfy/ldm/modules/diffusionmodules/mmdit.py, ``layers`` of comfy/clip_model.py CLIPEncoder and of the LLM
# encoders, ``block`` of comfy/text_encoders/t5.py T5Stack, and the lists of the newer models (``blocks``,
# ``transformer_blocks``, ``noise_refiner`` ...). Lists of plain MLPs (Chroma's guidance approximator) are not.
UNET_CONTAINERS = ("input_blocks", "middle_block", "output_blocks")


def checkpoint_blocks(root: torch.nn.Module) -> list[torch.nn.Module]:
    """The block-level modules under ``root`` (found at any depth, never inside one another) whose forward is
    recomputed in backward when gradient checkpointing is on."""
    blocks: list[torch.nn.Module] = []

    def walk(module: torch.nn.Module) -> None:
        for name, child in module.named_children():
            if (name in UNET_CONTAINERS and isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential))) \
                    or is_block_list(child):
                for block in child.children():
                    if type(block).__name__ == "TimestepEmbedSequential":
                        blocks.extend(block.children())
                    else:
                        blocks.append(block)
            else:
                walk(child)

    walk(root)
    return blocks


def gradient_checkpointing(root: torch.nn.Module, enabled: bool):
    """Temporarily wrap block forwards in torch.utils.checkpoint (installed after, removed before LoRA).

    Install it after ``functional_residuals`` so that the recomputed forward is the functional one: a block
    that wrote into its residual input in place would otherwise change the tensors its first forward and
    its recomputation read."""
    import torch.utils.checkpoint as cp

    def make(org):
        def fwd(*args, **kwargs):
            if torch.is_grad_enabled():
                return cp.checkpoint(org, *args, use_reentrant=False, **kwargs)
            return org(*args, **kwargs)
        return fwd

    return override_forwards(checkpoint_blocks(root) if enabled else [], make)


# ----------------------------------------------------------------------------- weights cast per layer

def _cast(module, like: torch.Tensor):
    """The layer's weight and bias on ``like``'s device and dtype, as its own forward would cast them: a layer
    class with its own ``cast_bias_weight`` (ComfyUI-GGUF's GGMLLayer dequantizes there) uses it, every other
    ComfyUI op ``comfy/ops.py`` ``cast_bias_weight`` (which also applies ComfyUI's low-VRAM weight patches)."""
    if callable(getattr(type(module), "cast_bias_weight", None)):
        w, b = module.cast_bias_weight(like)
        return w, b, None
    import comfy.ops as ops

    return ops.cast_bias_weight(module, like, offloadable=True)


def _uncast(module, w, b, stream) -> None:
    if stream is not None:
        import comfy.ops as ops

        ops.uncast_bias_weight(module, w, b, stream)


def dense_weight(module: torch.nn.Module, like: torch.Tensor | None = None) -> torch.Tensor:
    """A layer's frozen weight as a float32 tensor on ``like``'s device (its own device without ``like``), however
    ComfyUI stores it: cast, fp8, quantized (dequantized), GGUF, off the device. The weight reader of a DoRA
    network (``trainer/lycoris.py``): it reads the base weight per use and keeps nothing."""
    w = module.weight
    device = like.device if like is not None else (w.device if w is not None else None)
    if not hasattr(module, "comfy_cast_weights") and not callable(getattr(type(module), "cast_bias_weight", None)):
        return w.detach().to(device=device, dtype=torch.float32)
    probe = torch.empty(0, dtype=torch.float32, device=device)
    cw, cb, stream = _cast(module, probe)
    out = cw.detach().to(dtype=torch.float32)
    if stream is not None:
        out = out.clone()
    _uncast(module, cw, cb, stream)
    return out


class _Recast(torch.autograd.Function):
    """A ComfyUI cast layer (``comfy/ops.py`` ``forward_comfy_cast_weights``) whose backward casts the frozen
    weight again instead of keeping the forward's cast copy alive: an fp8, quantized, manual-cast or streamed
    weight costs device memory only while its own layer runs. Nothing of the input is kept either: the base
    weight is frozen, so only the input's gradient is needed. ``op`` is the layer's own computation, ``input_grad``
    its gradient with respect to the input (see ``_RECAST``)."""

    @staticmethod
    def forward(ctx, x, module, op, input_grad):
        w, b, stream = _cast(module, x)
        y = op(module, x, w, b)
        _uncast(module, w, b, stream)
        ctx.module, ctx.input_grad, ctx.x_shape = module, input_grad, x.shape
        return y

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        w, b, stream = _cast(ctx.module, grad)
        gx = ctx.input_grad(ctx.module, ctx.x_shape, grad, w)
        _uncast(ctx.module, w, b, stream)
        return gx, None, None, None


# (op, input gradient) per layer kind: Linear (grad @ W) and zero-padded Conv2d (a transposed convolution)
_RECAST = {
    "linear": (lambda m, x, w, b: torch.nn.functional.linear(x, w, b),
               lambda m, shape, grad, w: grad.matmul(w)),
    "conv2d": (lambda m, x, w, b: m._conv_forward(x, w, b),
               lambda m, shape, grad, w: torch.nn.grad.conv2d_input(shape, w, grad, m.stride, m.padding, m.dilation,
                                                                    m.groups)),
}


def _recast_kind(m: torch.nn.Module):
    if not hasattr(m, "forward_comfy_cast_weights") or m.weight is None or m.weight.requires_grad:
        return None
    if isinstance(m, torch.nn.Linear):
        return _RECAST["linear"]
    if isinstance(m, torch.nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str):
        return _RECAST["conv2d"]
    return None


@contextlib.contextmanager
def recast_in_backward(root: torch.nn.Module):
    """While training, ComfyUI's cast Linear / Conv2d layers under ``root`` (the ones whose forward casts the
    weight: fp8 and quantized weights, manual-cast dtypes, weights ComfyUI left off the device) keep no cast
    copy for backward: the weight is cast again there (see ``_Recast``). Layers that use their weight as it
    is stored are not touched. ComfyUI 0.8's quantized layers (``quant``: ``MixedPrecisionOps.Linear``, seen as
    Linear once ``quant.as_linear`` ran, as ``model.diffusion_root`` does) are among them, their quantized matmul
    (no gradient for the input) replaced by their cast path meanwhile; on exit their weights are inference tensors
    again (``quant.inference_wrappers``), however ComfyUI moved them."""
    kinds = {m: k for m in root.modules() if (k := _recast_kind(m)) is not None}

    def make_for(module):
        op, input_grad = kinds[module]

        def make(org):
            def fwd(x, *args, **kwargs):
                if args or kwargs or not torch.is_grad_enabled() or not torch.is_tensor(x):
                    return org(x, *args, **kwargs)
                return _Recast.apply(x, module, op, input_grad)
            return fwd
        return make

    with contextlib.ExitStack() as stack:  # every override entered here is undone, also when a later one fails
        stack.callback(quant.inference_wrappers, root)
        stack.enter_context(quant.full_precision_matmuls(kinds))
        for m in kinds:
            stack.enter_context(override_forwards([m], make_for(m), method="forward_comfy_cast_weights"))
        yield


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

    ``comfy/ldm/flux/math.py`` routes rotary embeddings through comfy_kitchen's fused ``apply_rope`` /
    ``apply_rope1``, which have no backward; the models that import them from there (``comfy/ldm/qwen_image``,
    ``lumina``, ``hidream``, ``wan``, ``kandinsky5`` ...) hold their own reference, so every loaded ``comfy``
    module bound to one of them is swapped. Same maths, plain torch ops; restored on exit."""
    import sys

    swaps = []
    try:
        import comfy.ldm.flux.math as fm
    except Exception:  # older/newer ComfyUI without that module
        fm = None
    if fm is not None:
        fused = {id(getattr(fm, n)): (n, fn) for n, fn in (("apply_rope", _rope), ("apply_rope1", _rope1))
                 if hasattr(fm, n) and getattr(fm, n) not in (_rope, _rope1)}
        for mod_name, mod in list(sys.modules.items()):
            if mod is None or not (mod_name == "comfy" or mod_name.startswith("comfy.")):
                continue
            for attr in ("apply_rope", "apply_rope1"):
                hit = fused.get(id(getattr(mod, attr, None)))
                if hit is not None and hit[0] == attr:
                    swaps.append((mod, attr, hit[1]))
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in swaps]
    for mod, name, fn in swaps:
        setattr(mod, name, fn)
    try:
        yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)


# ----------------------------------------------------------------------------- in-place residual streams

# Blocks that update their residual-stream inputs in place (``x += ...``) after a norm saved them for
# backward: DoubleStreamBlock / SingleStreamBlock (comfy/ldm/flux/layers.py), CLIPLayer
# (comfy/clip_model.py), T5LayerFF / T5LayerSelfAttention (comfy/text_encoders/t5.py), DismantledBlock's
# x-only path (comfy/ldm/modules/diffusionmodules/mmdit.py). Every checkpointed block is treated the same
# way, so a block of a family not named here is safe too.
INPLACE_RESIDUAL_BLOCKS = ("DoubleStreamBlock", "SingleStreamBlock", "CLIPLayer", "T5LayerFF", "T5LayerSelfAttention")
_RESIDUAL_KWARGS = ("img", "txt", "x", "hidden_states", "encoder_hidden_states")


class Residual(torch.Tensor):
    """A block's input tensor whose in-place arithmetic (``+=``, ``-=``, ``*=``, ``/=``) makes a new tensor.

    ``x += f(norm(x))`` inside a block then leaves the ``x`` that ``norm`` saved for backward untouched, so
    the block is differentiable as written and its checkpointed recomputation reads the same inputs as its
    first forward. Every other op runs on the plain tensor and returns plain tensors (no per-op wrapping)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))

    def __iadd__(self, other):
        return _residual(_same_dtype(torch.add(self, other), self))

    def __isub__(self, other):
        return _residual(_same_dtype(torch.sub(self, other), self))

    def __imul__(self, other):
        return _residual(_same_dtype(torch.mul(self, other), self))

    def __itruediv__(self, other):
        return _residual(_same_dtype(torch.div(self, other), self))


def _same_dtype(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x += y`` keeps x's dtype; its out-of-place stand-in does the same."""
    return out if out.dtype == like.dtype else out.to(like.dtype)


def _residual(t):
    if type(t) is torch.Tensor and t.is_floating_point():
        return t.as_subclass(Residual)
    return t


def _plain(out):
    if type(out) is Residual:
        return out.as_subclass(torch.Tensor)
    if isinstance(out, tuple):
        return tuple(_plain(o) for o in out)
    if isinstance(out, list):
        return [_plain(o) for o in out]
    return out


def functional_residuals(root: torch.nn.Module):
    """Make blocks that modify their residual inputs in place trainable, and checkpointable.

    While grad is on, the block's positional tensor inputs and its residual-stream keyword inputs
    (``img``, ``txt``, ``x``, ...) reach it as ``Residual`` views, so its ``+=`` updates become out-of-place;
    its outputs are handed on as plain tensors. No copy is made and the maths is unchanged: the first
    forward, the recomputation and an inference forward compute the same values."""

    def make(org):
        def fwd(*args, **kwargs):
            if not torch.is_grad_enabled():
                return org(*args, **kwargs)
            args = tuple(_residual(a) for a in args)
            kwargs = {k: (_residual(v) if k in _RESIDUAL_KWARGS else v) for k, v in kwargs.items()}
            return _plain(org(*args, **kwargs))
        return fwd

    seen: set[int] = set()
    blocks = []
    for m in checkpoint_blocks(root) + [m for m in root.modules() if type(m).__name__ in INPLACE_RESIDUAL_BLOCKS]:
        if id(m) not in seen:
            seen.add(id(m))
            blocks.append(m)
    return override_forwards(blocks, make)
