"""Weights ComfyUI casts per layer (fp8 storage with a compute dtype, as UNETLoader weight_dtype=fp8_e4m3fn loads
them) keep no cast copy for backward while training: ``recast_in_backward`` casts them again in backward.

On the tiny SD1.5 U-Net stored in fp8 (manual-cast ops): the LoRA's gradients equal those of ComfyUI's own cast
forward differentiated by autograd, and the memory held for backward drops by about the cast weights' size."""
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
