"""LyCORIS adapters (trainer/lycoris.py) against hand-written formulas on fixed tensors: LoHa's and LoKr's weight
deltas as ComfyUI's loader rebuilds them, LoKr's shapes by LyCORIS' rules, DoRA's bypass against the dense
decomposed weight (forward and gradients), the base weight read again in backward, files round-tripping into
the same modules, and the network options that act on them."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer.lora import OrgSpec
from trainer.lycoris import DoRAModule, LoHaModule, LoKrModule
from trainer.network import LoRANetwork, NetworkSpec, Target

pytest.importorskip("lycoris", reason="LoHa/LoKr need the lycoris-lora package (pip install lycoris-lora)")


def _randomize(m: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


LAYERS = {"linear": lambda: nn.Linear(12, 10), "conv": lambda: nn.Conv2d(6, 8, 3, padding=1, stride=2)}


def _run(org: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if isinstance(org, nn.Linear):
        return F.linear(x, w, org.bias)
    return F.conv2d(x, w, org.bias, org.stride, org.padding)


def _input(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.randn((3, 12) if kind == "linear" else (2, 6, 7, 7), generator=g)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_loha_delta_is_the_hadamard_product_comfyui_rebuilds(kind):
    torch.manual_seed(0)
    org = LAYERS[kind]()
    m = LoHaModule("x", OrgSpec.of(org), 3, 1.5)
    assert m.hada_w1_b.shape == (3, org.weight[0].numel())  # conv: flattened to (r, in*k*k), as LyCORIS saves it
    assert torch.count_nonzero(m.hada_w2_a) == 0 and float(m.delta_weight().detach().abs().max()) == 0.0  # starts at base
    _randomize(m)
    want = ((m.hada_w1_a @ m.hada_w1_b) * (m.hada_w2_a @ m.hada_w2_b) * (1.5 / 3)).reshape(org.weight.shape)
    torch.testing.assert_close(m.delta_weight(), want, rtol=1e-6, atol=1e-6)
    x = _input(kind)
    torch.testing.assert_close(org(x) + m.delta(x), _run(org, x, org.weight + want), rtol=1e-5, atol=1e-5)
    m.multiplier = 0.5
    torch.testing.assert_close(m.delta(x), _run(org, x, want * 0.5) - _run(org, x, torch.zeros_like(want)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_lokr_delta_is_the_kronecker_product_with_comfyuis_scale(kind):
    org = LAYERS[kind]()
    m = LoKrModule("x", OrgSpec.of(org), 1, 3.0)
    _randomize(m)
    w1 = m.lokr_w1
    w2 = m.lokr_w2_a @ m.lokr_w2_b if hasattr(m, "lokr_w2_a") else m.lokr_w2
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    scale = 3.0 / 1 if hasattr(m, "lokr_w2_a") else 1.0  # comfy/weight_adapter/lokr.py: alpha/dim if decomposed
    torch.testing.assert_close(m.delta_weight(), (torch.kron(w1, w2) * scale).reshape(org.weight.shape),
                               rtol=1e-6, atol=1e-6)


def test_lokr_shapes_follow_lycoris_rules():
    spec = OrgSpec("linear", 768, 320)
    m = LoKrModule("x", spec, 8, 4.0)  # factorization(320) = (16, 20), (768) = (24, 32): w2 (20, 32) low-rank
    assert tuple(m.lokr_w1.shape) == (16, 24) and tuple(m.lokr_w2_a.shape) == (20, 8)
    assert tuple(m.lokr_w2_b.shape) == (8, 32) and m.scale == 0.5
    assert float(m.delta_weight().detach().abs().max()) == 0.0  # w2_b zeros: starts at the base model
    full = LoKrModule("x", spec, 16, 4.0)  # rank >= max(20, 32) / 2: w2 full, both full: scale 1, alpha = rank
    assert tuple(full.lokr_w2.shape) == (20, 32) and full.scale == 1.0 and full.alpha_value == 16.0
    f8 = LoKrModule("x", spec, 2, 1.0, factor=8, decompose_both=True)  # (8, 40) x (8, 96)
    assert tuple(f8.lokr_w1_a.shape) == (8, 2) and tuple(f8.lokr_w1_b.shape) == (2, 8)
    assert tuple(f8.lokr_w2_a.shape) == (40, 2) and tuple(f8.lokr_w2_b.shape) == (2, 96)
    conv = LoKrModule("x", OrgSpec("conv", 64, 32, (3, 3), (1, 1), (1, 1)), 2, 1.0)  # w2_b flattened with the kernel
    assert tuple(conv.lokr_w2_b.shape) == (2, 8 * 9)


def _dense_dora(m: DoRAModule, w: torch.Tensor) -> torch.Tensor:
    """LyCORIS/ComfyUI input-axis decomposition with autograd: (W + s B A) * m / ||W + s B A|| per input column."""
    up = m.lora_up.weight.reshape(m.spec.out_dim, m.lora_dim)
    down = m.lora_down.weight.reshape(m.lora_dim, -1)
    wd = w + (up @ down).reshape(w.shape) * m.scale
    norm = wd.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1) + torch.finfo(torch.float32).eps
    return wd * (m.dora_scale.reshape(-1) / norm).reshape((1, -1) + (1,) * (w.dim() - 2))


@pytest.mark.parametrize("kind", list(LAYERS))
def test_dora_bypass_equals_the_decomposed_weight_and_its_gradients(kind):
    torch.manual_seed(1)
    org = LAYERS[kind]()
    m = DoRAModule("x", OrgSpec.of(org), 3, 2.0, base_weight=org.weight)
    col = org.weight.detach().transpose(0, 1).reshape(org.weight.shape[1], -1).norm(dim=1)
    torch.testing.assert_close(m.dora_scale.reshape(-1), col)  # magnitudes start at the base weight's
    x = _input(kind)
    reads = []

    def read():
        reads.append(1)
        return org.weight.detach()

    torch.testing.assert_close(m.adapted(org.forward, x, (), {}, read), org(x), rtol=1e-5, atol=1e-5)  # up = 0
    _randomize(m, 3)
    with torch.no_grad():
        m.dora_scale.abs_()
    reads.clear()
    y = m.adapted(org.forward, x, (), {}, read)
    assert len(reads) == 1
    (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
    assert len(reads) == 2  # backward read the weight again: no copy of it was kept from the forward
    got = [p.grad.clone() for p in (m.lora_up.weight, m.lora_down.weight, m.dora_scale)]
    for p in m.parameters():
        p.grad = None
    ref = _run(org, x, _dense_dora(m, org.weight.detach()))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.merged_weight(org.weight), _dense_dora(m, org.weight.detach()).detach())
    (ref * torch.linspace(-1, 1, ref.numel()).reshape(ref.shape)).sum().backward()
    for g, p in zip(got, (m.lora_up.weight, m.lora_down.weight, m.dora_scale)):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5)
    m.multiplier = 0.25  # ComfyUI's strength: W + 0.25 (W' - W)
    blended = org.weight + 0.25 * (_dense_dora(m, org.weight.detach()) - org.weight)
    torch.testing.assert_close(m.adapted(org.forward, x, (), {}, read), _run(org, x, blended), rtol=1e-5, atol=1e-5)


class _Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 24)
        self.c = nn.Conv2d(8, 8, 3, padding=1)


def _targets():
    return [Target("lora_unet_a", "unet", "a", "linear"), Target("lora_unet_c", "unet", "c", "conv3x3")]


@pytest.mark.parametrize("algo,dora", [("loha", False), ("lokr", False), ("lora", True)])
def test_network_files_round_trip_into_the_same_modules(algo, dora):
    torch.manual_seed(2)
    root = _Two()
    spec = NetworkSpec(family="sd1", rank=4, alpha=2.0, conv_rank=2, conv_alpha=1.0)
    net = LoRANetwork.create(_targets(), {"unet": root}, spec, seed=0, algo=algo, dora=dora)
    for m in net.loras():
        _randomize(m, 7)
    sd = net.kohya_state_dict()
    back = LoRANetwork.from_kohya_state_dict(sd, _targets(), {"unet": root}, family="sd1")
    assert [type(m) for m in back.loras()] == [type(m) for m in net.loras()]
    assert set(back.kohya_state_dict()) == set(sd)
    x = torch.randn(2, 16)
    net.install({"unet": root})
    try:
        want = root.a(x)
    finally:
        net.remove()
    back.install({"unet": root})
    try:
        torch.testing.assert_close(root.a(x), want)
    finally:
        back.remove()
    fresh = LoRANetwork.create(_targets(), {"unet": root}, spec, seed=1, algo=algo, dora=dora)
    assert fresh.load_kohya_state_dict(sd) == {"missing": [], "unexpected": []}
    for k, v in fresh.kohya_state_dict().items():
        torch.testing.assert_close(v, sd[k])


def test_max_norm_and_loraplus_act_on_every_adapter():
    root = _Two()
    spec = NetworkSpec(family="sd1", rank=4, alpha=4.0, conv_rank=2, conv_alpha=2.0)
    for algo, dora in (("loha", False), ("lokr", False), ("lora", True)):
        net = LoRANetwork.create(_targets(), {"unet": root}, spec, seed=0, algo=algo, dora=dora)
        for m in net.loras():
            _randomize(m, 4)
        norms = [float(m.norm_delta().detach().norm()) for m in net.loras()]
        n, mean, top = net.apply_max_norm_regularization(0.5)
        assert n == sum(v > 0.5 for v in norms) and top <= 0.5 + 1e-5
        assert all(float(m.norm_delta().detach().norm()) <= 0.5 + 1e-5 for m in net.loras())
        groups = net.param_groups(1e-4, loraplus_lr_ratio=8.0)
        plus = [g for g in groups if g["name"].endswith("plus")]
        if dora:  # LoRA+ scales the lora_up weights only (LyCORIS' rule); dora_scale trains at the base rate
            assert len(plus) == 1 and len(plus[0]["params"]) == 2 and plus[0]["lr"] == 8e-4
        else:
            assert plus == []
        assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))


def test_dropouts_that_lycoris_does_not_define_are_refused():
    spec = NetworkSpec(family="sd1", rank=4, alpha=4.0, conv_rank=2, conv_alpha=2.0)
    for algo, dora in (("loha", False), ("lokr", False), ("lora", True)):
        with pytest.raises(ValueError, match="rank_dropout"):
            LoRANetwork.create(_targets(), {"unet": _Two()}, spec, algo=algo, dora=dora, rank_dropout=0.1)
    with pytest.raises(ValueError, match="dora_wd with algo=loha"):
        LoRANetwork.create(_targets(), {"unet": _Two()}, spec, algo="loha", dora=True)
