"""LoRAModule: kohya semantics (init, scale, merge formulas, dtype handling, dropouts)."""
import math

import pytest
import torch
from torch import nn

from trainer.lora import LoRAModule, OrgSpec


def _randomize_up(m: LoRAModule, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=g))


CASES = [
    ("linear", lambda: nn.Linear(12, 10), (3, 7, 12)),
    ("conv1x1", lambda: nn.Conv2d(6, 5, 1), (2, 6, 9, 9)),
    ("conv3x3", lambda: nn.Conv2d(6, 5, 3, padding=1), (2, 6, 9, 9)),
    ("conv3x3_s2", lambda: nn.Conv2d(6, 5, 3, stride=2, padding=1), (2, 6, 9, 9)),
    ("conv3x3_s2_nopad", lambda: nn.Conv2d(6, 5, 3, stride=2), (2, 6, 9, 9)),
]


@pytest.mark.parametrize("label,make,shape", CASES, ids=[c[0] for c in CASES])
def test_identity_at_init_and_merge_equals_bypass(label, make, shape):
    torch.manual_seed(0)
    org = make()
    m = LoRAModule.for_module("lora_unet_x", org, rank=4, alpha=2.0, generator=torch.Generator().manual_seed(0))
    x = torch.randn(shape)
    assert torch.count_nonzero(m.delta(x)) == 0  # up is zero at init
    assert torch.count_nonzero(m.lora_down.weight) > 0
    _randomize_up(m)
    bypass = org(x) + m.delta(x)
    merged = m.merged_delta_weight()
    assert merged.shape == org.weight.shape
    merged_org = make()
    merged_org.load_state_dict(org.state_dict())
    with torch.no_grad():
        merged_org.weight += merged
    assert torch.allclose(bypass, merged_org(x), atol=1e-5), (bypass - merged_org(x)).abs().max()


def test_shapes_follow_kohya():
    lin = LoRAModule.for_module("a", nn.Linear(12, 10), 4)
    assert lin.lora_down.weight.shape == (4, 12) and lin.lora_up.weight.shape == (10, 4)
    conv = LoRAModule.for_module("b", nn.Conv2d(6, 5, 3, stride=2, padding=1), 3)
    assert conv.lora_down.weight.shape == (3, 6, 3, 3) and conv.lora_up.weight.shape == (5, 3, 1, 1)
    assert conv.lora_down.stride == (2, 2) and conv.lora_down.padding == (1, 1)
    assert set(lin.state_dict()) == {"lora_down.weight", "lora_up.weight", "alpha"}
    assert lin.lora_down.weight.dtype == torch.float32


def test_meta_device_and_subclass_org():
    class CastLinear(nn.Linear):  # like comfy.ops.*.Linear
        pass

    with torch.device("meta"):
        org = CastLinear(320, 640)
    m = LoRAModule.for_module("a", org, 8)
    assert m.lora_down.weight.device.type == "cpu" and m.lora_up.weight.shape == (640, 8)
    assert OrgSpec.of(org).weight_shape == (640, 320)


def test_alpha_buffer_and_scale():
    m = LoRAModule.for_module("a", nn.Linear(4, 4), rank=8, alpha=4)
    assert m.scale == 0.5
    assert "alpha" in dict(m.named_buffers()) and all(n != "alpha" for n, _ in m.named_parameters())
    assert m.alpha.dim() == 0 and m.alpha.dtype == torch.float32
    for none_like in (None, 0):
        assert LoRAModule.for_module("b", nn.Linear(4, 4), rank=8, alpha=none_like).alpha_value == 8.0
    m.set_alpha(2.0)
    assert m.scale == 0.25 and m.alpha_value == 2.0


def test_init_is_deterministic_and_kaiming():
    a = LoRAModule.for_module("a", nn.Linear(64, 64), 16, generator=torch.Generator().manual_seed(3))
    b = LoRAModule.for_module("a", nn.Linear(64, 64), 16, generator=torch.Generator().manual_seed(3))
    c = LoRAModule.for_module("a", nn.Linear(64, 64), 16, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.lora_down.weight, b.lora_down.weight)
    assert not torch.equal(a.lora_down.weight, c.lora_down.weight)
    bound = 1 / math.sqrt(64)  # kaiming_uniform a=sqrt(5) -> U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert a.lora_down.weight.abs().max() <= bound + 1e-6


def test_multiplier_and_dtype_roundtrip():
    m = LoRAModule.for_module("a", nn.Linear(8, 8), 4, alpha=4)
    _randomize_up(m)
    x = torch.randn(2, 8)
    d1 = m.delta(x)
    m.multiplier = 0.5
    assert torch.allclose(m.delta(x), d1 * 0.5)
    xh = x.to(torch.bfloat16)
    out = m.delta(xh)
    assert out.dtype == torch.bfloat16
    assert m.lora_down.weight.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m.delta(x).dtype == torch.float32


def test_dropouts_only_while_training():
    m = LoRAModule.for_module("a", nn.Linear(16, 16), 8, dropout=0.5, rank_dropout=0.5, module_dropout=0.0)
    _randomize_up(m)
    x = torch.randn(4, 5, 16)
    m.eval()
    assert torch.equal(m.delta(x), m.delta(x))
    m.train()
    torch.manual_seed(0)
    a = m.delta(x)
    torch.manual_seed(1)
    b = m.delta(x)
    assert not torch.equal(a, b)
    m2 = LoRAModule.for_module("b", nn.Linear(16, 16), 8, module_dropout=1.0)
    _randomize_up(m2)
    m2.train()
    assert torch.count_nonzero(m2.delta(x)) == 0
    conv = LoRAModule.for_module("c", nn.Conv2d(4, 4, 3, padding=1), 4, rank_dropout=0.3)
    conv.train()
    assert conv.delta(torch.randn(2, 4, 6, 6)).shape == (2, 4, 6, 6)


def test_rejects_unsupported():
    with pytest.raises(TypeError):
        LoRAModule.for_module("a", nn.Embedding(4, 4), 4)
    with pytest.raises(ValueError):
        LoRAModule.for_module("a", nn.Conv2d(4, 4, 3, groups=2), 4)
