"""What makes ComfyUI's inference code trainable, each piece naming the ComfyUI code it works around.

All of these are temporary (context managers) or value-preserving, so a model that is sampled while or
after it trains behaves exactly as ComfyUI built it."""
from __future__ import annotations

import contextlib

import torch


# ----------------------------------------------------------------------------- inference tensors

def replace_inference_tensors(module: torch.nn.Module) -> int:
    """Swap every inference-tensor parameter/buffer for a normal tensor, one at a time.

    ComfyUI's executor runs every node under ``torch.inference_mode()`` (``execution.py``), so weights a
    loader node created are inference tensors, which autograd refuses to save for backward. Each tensor is
    cloned and swapped in place, so the old one is freed right away: no second copy of the model is kept.
    Values are identical, so other users of the shared module see no change. Must run with inference mode
    off."""
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


# ----------------------------------------------------------------------------- forward overrides

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


# ----------------------------------------------------------------------------- gradient checkpointing

def _checkpoint_blocks(root: torch.nn.Module) -> list[torch.nn.Module]:
    """The block-level modules whose forward is recomputed in backward: the children of the block lists
    of ``comfy/ldm/modules/diffusionmodules/openaimodel.py`` UNetModel (inside each TimestepEmbedSequential),
    ``comfy/ldm/flux/model.py`` Flux and ``comfy/ldm/modules/diffusionmodules/mmdit.py`` MMDiT."""
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

    ``comfy/ldm/flux/math.py`` routes FLUX rotary embeddings through comfy_kitchen's fused ``apply_rope``,
    which has no backward. Same maths, plain torch ops; restored on exit."""
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
# backward: DoubleStreamBlock / SingleStreamBlock (comfy/ldm/flux/layers.py), CLIPLayer
# (comfy/clip_model.py), T5LayerFF / T5LayerSelfAttention (comfy/text_encoders/t5.py).
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
