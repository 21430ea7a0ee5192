"""The trained LoRA on a ComfyUI MODEL / CLIP, in the two forms ComfyUI runs.

- **Bypass**, for training: ``PatcherInjection`` (``comfy/patcher_extension.py``) on a clone made with
  ``ModelPatcher.clone()`` (``comfy/model_patcher.py``). ComfyUI runs ``inject`` when it loads that clone and
  ``eject`` when it unloads it, so the input MODEL and its other clones never see the LoRA, and the base weights
  and state_dict keys never change.
- **Merged**, for sampling after training (``for_sampling``): the LoRA as weight patches, the path LoraLoader
  takes (``comfy/sd.py`` ``load_lora_for_models``). ComfyUI adds them into the weights when it loads the model,
  so sampling runs at the base model's speed. Weights ComfyUI stores quantized (fp8, its quant ops, GGUF) keep
  the bypass: merging would round the LoRA into the quantized storage again.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..network import TE_ROOT, UNET_ROOT, resolve

log = logging.getLogger(__name__)

INJECTION_KEY = "lora_loop"
MERGED_KEY = "lora_loop_merged"  # attachment: the (key, patch) pairs for_sampling added, so they can be taken off
MERGEABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _injection(network, root_key: str, get_root: Callable[[Any], torch.nn.Module]):
    from comfy.patcher_extension import PatcherInjection

    def inject(patcher):
        network.to(patcher.load_device)
        from .autograd import dense_weight

        network.install({root_key: get_root(patcher)}, weight_reader=dense_weight)

    def eject(patcher):
        network.remove()

    return PatcherInjection(inject=inject, eject=eject)


def _strip(patcher):
    """Take this pack's LoRA off ``patcher`` (a fresh clone): the bypass injection and the merged patches."""
    patcher.remove_injections(INJECTION_KEY)
    marks = patcher.get_attachment(MERGED_KEY)
    if marks:
        for key, patch in marks:
            left = [p for p in patcher.patches.get(key, []) if p is not patch]
            if left:
                patcher.patches[key] = left
            else:
                patcher.patches.pop(key, None)
        patcher.patches_uuid = uuid.uuid4()  # ComfyUI re-patches the weights when this changes
        patcher.remove_attachments(MERGED_KEY)
    return patcher


def base_of(model_patcher):
    """A clone of ``model_patcher`` without this pack's LoRA (bypass or merged); everything else kept."""
    return _strip(model_patcher.clone())


def base_clip_of(clip):
    c = clip.clone()
    _strip(c.patcher)
    return c


def load_base_weights(model_patcher, clip=None) -> None:
    """Have ComfyUI load ``model_patcher`` (and ``clip``) without this pack's LoRA, so that their modules hold
    exactly those weights: a clone ComfyUI loaded earlier (a LoRA merged by LoraLoader or Train LoRA's output)
    leaves its patches in the shared modules until another clone is loaded. For code that reads base weights
    outside a ComfyUI load (DoRA's initial magnitudes)."""
    import comfy.model_management as mm

    mm.load_models_gpu([base_of(model_patcher)] + ([base_clip_of(clip).patcher] if clip is not None else []))


def install_network(model_patcher, network):
    """Return a clone of ``model_patcher`` whose diffusion model runs the network's U-Net LoRA as a
    bypass (y = base(x) + up(down(x)) * scale), in place of any LoRA of this pack it had. The input patcher
    and its other clones never see it."""
    return _bypass(base_of(model_patcher), network)


def _bypass(mp, network):
    unet_part = network.subset(UNET_ROOT)
    if len(unet_part):
        mp.set_injections(INJECTION_KEY, [_injection(unet_part, UNET_ROOT, lambda p: p.model.diffusion_model)])
    else:
        mp.remove_injections(INJECTION_KEY)
    return mp


def install_text_encoder_network(clip, network):
    """Return a CLIP clone running the network's text-encoder LoRA (bypass) - or None without a CLIP."""
    if clip is None:
        return None
    return _bypass_clip(base_clip_of(clip), network)


def _bypass_clip(c, network):
    te_part = network.subset(TE_ROOT)
    if len(te_part):
        c.patcher.set_injections(INJECTION_KEY, [_injection(te_part, TE_ROOT, lambda p: p.model)])
    else:
        c.patcher.remove_injections(INJECTION_KEY)
    return c


@dataclass(frozen=True)
class SamplingForm:
    """How Train LoRA's outputs carry the trained LoRA: ``merged`` modules as weight patches, ``bypass`` ones
    (on quantized weights) as the training bypass."""
    merged: int
    bypass: int

    def describe(self) -> str:
        if not self.bypass:
            return f"sampling: the LoRA is merged into the weights as LoraLoader does ({self.merged} modules)"
        return (f"sampling: {self.merged} modules merged into the weights as LoraLoader does, {self.bypass} on "
                "quantized weights kept as a bypass (exactly as trained)")


def mergeable(module: torch.nn.Module) -> bool:
    """True when ``module``'s weight is a plain float tensor, which ComfyUI patches exactly as LoraLoader would."""
    w = getattr(module, "weight", None)
    return type(w) in (torch.Tensor, torch.nn.Parameter) and w.dtype in MERGEABLE_DTYPES


def _mark(before, after) -> None:
    """Mark the weight patches ``after`` (a clone of ``before``) has beyond ``before``'s as this pack's."""
    marks = []
    for key, patches in after.patches.items():
        old = before.patches.get(key, [])
        marks += [(key, p) for p in patches if not any(p is q for q in old)]
    after.set_attachments(MERGED_KEY, tuple(marks))


def for_sampling(model_patcher, clip, network) -> tuple[Any, Any, SamplingForm]:
    """Train LoRA's MODEL and CLIP outputs: the trained ``network`` on clones of the bases under
    ``model_patcher``/``clip`` (this pack's earlier LoRA taken off), merged where the weights are plain float
    (``comfy/sd.py`` ``load_lora_for_models``, LoraLoader's code, on detached CPU copies of the LoRA tensors),
    as a bypass elsewhere. Also ejects the training bypass from ``model_patcher`` and ``clip``'s patcher, which
    may still be loaded."""
    import comfy.sd

    for p in (model_patcher, getattr(clip, "patcher", None)):
        if p is not None:
            p.eject_model()
    base = base_of(model_patcher)
    base_clip = base_clip_of(clip) if clip is not None else None
    roots = {UNET_ROOT: base.model.diffusion_model}
    if base_clip is not None:
        roots[TE_ROOT] = base_clip.cond_stage_model
    merge, keep = [], []
    for t in network.targets:
        if t.root in roots:
            (merge if mergeable(resolve(roots, t)) else keep).append(t.name)
    sd = {k: v.detach().to("cpu", torch.float32, copy=True)
          for k, v in network.select(merge).kohya_state_dict().items()}
    if sd:
        model_out, clip_out = comfy.sd.load_lora_for_models(base, base_clip, sd, 1.0, 1.0)
        _mark(base, model_out)
        if clip_out is not None:
            _mark(base_clip.patcher, clip_out.patcher)
        base, base_clip = model_out, clip_out
    rest = network.select(keep)
    model_out = _bypass(base, rest)
    clip_out = _bypass_clip(base_clip, rest) if base_clip is not None else None
    form = SamplingForm(len(merge), len(keep))
    log.info("LoRA Loop: %s", form.describe())
    return model_out, clip_out, form
