"""ComfyUI 0.8's quantized checkpoints: the layers of ``comfy/ops.py`` ``mixed_precision_ops`` and their
``comfy/quant_ops.py`` ``QuantizedTensor`` weights.

ComfyUI loads a checkpoint through these ops when its layers carry quantization metadata: per-layer
``<layer>.comfy_quant`` entries, a ``_quantization_metadata`` header, or the older "scaled fp8" form (fp8 weights,
``<layer>.scale_weight`` and a ``scaled_fp8`` marker key), which ``comfy/utils.py`` ``convert_old_quants`` turns
into the per-layer form. A quantized layer's weight is a ``QuantizedTensor`` (fp8 or NVFP4 storage plus its
scales, logically the compute dtype). Four things differ from ComfyUI's other cast ops:

* ``MixedPrecisionOps.Linear`` is a ``torch.nn.Module``, not a subclass of ``torch.nn.Linear``, so nothing that
  looks for Linear layers (LoRA targets, re-casting, the memory plan) would find it: ``as_linear`` gives each such
  layer a class that is both (its own methods first, so it computes exactly as before);
* where the device has fp8 (or NVFP4) matmuls, its forward quantizes the input and multiplies the quantized
  tensors, which has no gradient with respect to the input: ``full_precision_matmuls`` sends it, while training,
  through its own cast path (``forward_comfy_cast_weights``: dequantize, then a matmul in the compute dtype), the
  path ComfyUI itself takes on other devices, for layers marked ``full_precision_matrix_mult`` and for patched
  weights;
* a ``QuantizedTensor`` reports its logical dtype and shape: ``stored_bytes`` counts what it stores;
* a ``QuantizedTensor`` parameter stays an inference tensor (training never saves it for backward:
  ``autograd.recast_in_backward`` dequantizes it per use), and ``inference_wrappers`` makes it one again after
  ComfyUI moved the model outside inference mode."""
from __future__ import annotations

import contextlib

import torch

_LINEAR_CLASSES: dict[type, type] = {}
_QT: list = []


def quantized_tensor_class():
    """``comfy.quant_ops.QuantizedTensor`` (None on a ComfyUI without it, or without comfy_kitchen, where it is a
    placeholder class)."""
    if _QT:
        return _QT[0]
    try:
        from comfy.quant_ops import QuantizedTensor
    except Exception:  # no ComfyUI importable (yet), or an older one
        return None
    _QT.append(QuantizedTensor if isinstance(QuantizedTensor, type) and issubclass(QuantizedTensor, torch.Tensor)
               else None)
    return _QT[0]


def is_quantized(t) -> bool:
    qt = quantized_tensor_class()
    return qt is not None and isinstance(t, qt)


def _tensors_of(t) -> list[torch.Tensor]:
    """The plain tensors a ``QuantizedTensor`` holds: its storage and the tensors of its layout parameters."""
    import dataclasses

    out = [t._qdata]
    params = t._params
    if dataclasses.is_dataclass(params):
        out += [v for f in dataclasses.fields(params) if isinstance(v := getattr(params, f.name), torch.Tensor)]
    return out


def stored_bytes(t: torch.Tensor) -> int:
    """Bytes ``t`` occupies as stored: a ``QuantizedTensor``'s storage and scales, not its logical size."""
    if is_quantized(t):
        return sum(x.numel() * x.element_size() for x in _tensors_of(t))
    return t.numel() * t.element_size()


def inference_wrappers(root: torch.nn.Module) -> int:
    """Make every ``QuantizedTensor`` parameter under ``root`` an inference tensor again, as ComfyUI's loader made it
    (its storage and scales are shared, not copied). Moving the model outside inference mode, as loading it for
    training and sampling previews do, re-wraps them as normal tensors (``MixedPrecisionOps.Linear._apply``), and a
    normal one cannot be detached under inference mode, where ComfyUI's nodes run: its ``detach`` makes a new
    wrapper there, an inference tensor, which cannot share a normal tensor's version counter (LoraLoader's
    ``state_dict`` fails with "Cannot set version_counter for inference tensor"). Returns how many were re-wrapped."""
    n = 0
    with torch.inference_mode():
        for m in root.modules():
            for name, p in list(m._parameters.items()):
                if p is None or not is_quantized(p) or p.is_inference():
                    continue
                copy_with = getattr(p, "_copy_with", None)  # a new wrapper of the same storage; else a copy
                q = copy_with(clone_params=False) if callable(copy_with) else p.clone()
                m._parameters[name] = torch.nn.Parameter(q, requires_grad=False)
                n += 1
    return n


def _is_mixed_precision_linear(m: torch.nn.Module) -> bool:
    if isinstance(m, torch.nn.Linear) or type(m).__name__ != "Linear":
        return False
    try:
        from comfy.ops import CastWeightBiasOp
    except Exception:
        return False
    return isinstance(m, CastWeightBiasOp) and hasattr(m, "in_features") and hasattr(m, "out_features")


def _linear_class(cls: type) -> type:
    sub = _LINEAR_CLASSES.get(cls)
    if sub is None:
        sub = type(cls.__name__, (cls, torch.nn.Linear),
                   {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__,
                    "lora_loop_linear_of": cls})
        _LINEAR_CLASSES[cls] = sub
    return sub


def as_linear(root: torch.nn.Module) -> int:
    """Give every ``MixedPrecisionOps.Linear`` under ``root`` a class that subclasses both its own class and
    ``torch.nn.Linear`` (once per class; idempotent). Its own methods come first in that class, so forward, state
    dict and loading are ComfyUI's; nn.Linear adds only ``isinstance`` and its ``extra_repr``. Returns how many
    layers were changed."""
    n = 0
    for m in root.modules():
        if _is_mixed_precision_linear(m):
            m.__class__ = _linear_class(type(m))
            n += 1
    return n


@contextlib.contextmanager
def full_precision_matmuls(modules):
    """While training, the quantized layers among ``modules`` compute through their cast path: the weight is
    dequantized (by ``cast_bias_weight``) and multiplied in the compute dtype, so the gradient reaches the
    input. ComfyUI's ``MixedPrecisionOps.Linear`` reads its ``_full_precision_mm`` flag per call; it is set for
    the duration and restored."""
    changed = []
    for m in modules:
        if "_full_precision_mm" in m.__dict__ and not m.__dict__["_full_precision_mm"]:
            m._full_precision_mm = True
            changed.append(m)
    try:
        yield
    finally:
        for m in changed:
            m._full_precision_mm = False
