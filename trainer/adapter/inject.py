"""The bypass LoRA installed through ComfyUI's ``PatcherInjection`` (``comfy/patcher_extension.py``),
on a clone made with ``ModelPatcher.clone()`` (``comfy/model_patcher.py``): ComfyUI runs ``inject`` when it
loads that clone and ``eject`` when it unloads it, so the input MODEL and its other clones never see the
LoRA, and the base weights and state_dict keys never change."""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..network import TE_ROOT, UNET_ROOT

INJECTION_KEY = "lora_loop"


def _injection(network, root_key: str, get_root: Callable[[Any], torch.nn.Module]):
    from comfy.patcher_extension import PatcherInjection

    def inject(patcher):
        network.to(patcher.load_device)
        from .autograd import dense_weight

        network.install({root_key: get_root(patcher)}, weight_reader=dense_weight)

    def eject(patcher):
        network.remove()

    return PatcherInjection(inject=inject, eject=eject)


def install_network(model_patcher, network):
    """Return a clone of ``model_patcher`` whose diffusion model runs the network's U-Net LoRA as a
    bypass (y = base(x) + up(down(x)) * scale). The input patcher and its other clones never see it."""
    mp = model_patcher.clone()
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
    te_part = network.subset(TE_ROOT)
    c = clip.clone()
    if len(te_part):
        c.patcher.set_injections(INJECTION_KEY, [_injection(te_part, TE_ROOT, lambda p: p.model)])
    else:
        c.patcher.remove_injections(INJECTION_KEY)
    return c
