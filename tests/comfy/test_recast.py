"""Weights ComfyUI casts per layer keep no cast copy for backward while training: ``recast_in_backward`` casts them
again in backward.

* On the tiny SD1.5 U-Net stored in fp8 (manual-cast ops, as UNETLoader weight_dtype=fp8_e4m3fn loads it): the
  LoRA's gradients equal those of ComfyUI's own cast forward differentiated by autograd, and the memory held for
  backward drops by about the cast weights' size.
* On a model ComfyUI loaded partially (its low-VRAM load: the layers left off the device are cast per use, a
  user's LoRA applied as their weight function), with checkpointing, training gets the same gradients as on the
  fully loaded model."""
from __future__ import annotations

import torch

from comfy_fixtures import comfy  # noqa: F401


def _step(mp, net, recast: bool):
    from trainer import adapter as ca
    from trainer.memory import LiveBytes

    root = mp.model.diffusion_model
    for p in net.parameters():
        p.grad = None
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=g)
    ctx = torch.randn(1, 77, 32, generator=g)
    sigma = torch.tensor([1.0])
    with ca.recast_in_backward(root if recast else torch.nn.Module()), LiveBytes() as live:
        out = mp.model.apply_model(x, sigma, c_crossattn=ctx)
        held = live.mark()
        out.float().pow(2).mean().backward()
    return held, {k: p.grad.clone() for k, p in net.named_parameters()}


def test_cast_weights_are_cast_again_in_backward(comfy):
    import tiny_models

    from trainer import adapter as ca
    from trainer.assemble import build_network
    from trainer.config import NetworkConfig
    from trainer.network import UNET_ROOT

    mp, _, _ = tiny_models.build("sd15", 0, dtype=torch.float8_e4m3fn)
    assert mp.model.manual_cast_dtype == torch.float32     # ComfyUI computes in fp32 on CPU: weights are cast
    with torch.inference_mode(False):
        from trainer.adapter.autograd import replace_inference_tensors

        replace_inference_tensors(mp.model)
        fam = ca.detect_family(mp)
        root = mp.model.diffusion_model
        net = build_network(fam, root, mp.model.model_config.unet_config, None,
                            NetworkConfig(network_dim=4, network_alpha=4, seed=1))
        for lora in net.loras():                            # non-zero ups: every LoRA gets a gradient
            torch.nn.init.normal_(lora.lora_up.weight, std=0.1)
        net.install({UNET_ROOT: root})
        for p in net.parameters():
            p.requires_grad_(True)
        try:
            with torch.enable_grad():
                held_plain, grads_plain = _step(mp, net, recast=False)
                held_recast, grads_recast = _step(mp, net, recast=True)
        finally:
            net.remove()
    for k in grads_plain:
        assert torch.allclose(grads_recast[k], grads_plain[k], rtol=1e-5, atol=1e-7), k
    cast_bytes = sum(m.weight.numel() * 4 for m in root.modules()
                     if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and m.weight is not None)
    assert held_plain - held_recast > 0.8 * cast_bytes, (held_plain, held_recast, cast_bytes)


def _partial_grads(lowvram_fraction: float | None):
    """LoRA gradients of one step on the tiny SD1.5 with a user's LoRA applied first (LoraLoader's path), loaded
    by ComfyUI fully or partially (``lowvram_fraction`` of the weights on the device, the rest cast per layer
    with the user's LoRA as a weight function), the training LoRA injected on top."""
    import comfy.sd
    import tiny_models

    from trainer import adapter as ca
    from trainer.adapter.autograd import replace_inference_tensors
    from trainer.assemble import build_network
    from trainer.config import NetworkConfig

    base, _, _ = tiny_models.build("sd15", 0)
    fam = ca.detect_family(base)
    root = base.model.diffusion_model
    cfg = base.model.model_config.unet_config
    user = build_network(fam, root, cfg, None, NetworkConfig(network_dim=4, network_alpha=4, seed=5))
    g = torch.Generator().manual_seed(3)
    for lora in user.loras():
        torch.nn.init.normal_(lora.lora_up.weight, std=0.05, generator=g)
    styled, _ = comfy.sd.load_lora_for_models(base, None, user.kohya_state_dict(), 1.0, 0.0)
    net = build_network(fam, root, cfg, None, NetworkConfig(network_dim=4, network_alpha=4, seed=1))
    for lora in net.loras():
        torch.nn.init.normal_(lora.lora_up.weight, std=0.1, generator=g)
    mp = ca.install_network(styled, net)
    size = mp.model_size()
    # what ComfyUI's loader runs (LoadedModel.model_load -> ModelPatcher.patch_model), with a low-VRAM budget
    mp.patch_model(torch.device("cpu"), lowvram_model_memory=0 if lowvram_fraction is None
                   else int(size * lowvram_fraction))
    cast = [m for m in mp.model.diffusion_model.modules() if getattr(m, "comfy_cast_weights", False)]
    with torch.inference_mode(False):
        replace_inference_tensors(mp.model)
        for p in net.parameters():
            p.requires_grad_(True)
        root = mp.model.diffusion_model
        with torch.enable_grad(), ca.recast_in_backward(root), ca.functional_residuals(root), \
                ca.gradient_checkpointing(root, True):
            _, grads = _step(mp, net, recast=True)
    mp.unpatch_model(mp.offload_device)
    return len(cast), grads


def test_training_on_a_model_comfyui_loaded_partially(comfy):
    n_full, full = _partial_grads(None)
    n_part, part = _partial_grads(0.4)
    assert n_full == 0 and n_part > 10, (n_full, n_part)   # ComfyUI left those layers to be cast per use
    for k in full:
        assert torch.allclose(part[k], full[k], rtol=1e-4, atol=1e-6), (k, float((part[k] - full[k]).abs().max()))
    assert any(float(g.abs().max()) > 0 for g in full.values())
