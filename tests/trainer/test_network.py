"""LoRANetwork: install/remove as forward overrides, kohya state dicts, param groups, copies."""
import pytest
import torch
from torch import nn

from trainer.network import NetworkSpec, LoRANetwork, Target


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj_in = nn.Conv2d(4, 8, 1)
        self.to_q = nn.Linear(8, 8)
        self.conv = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.proj_out = nn.Linear(8, 4)

    def forward(self, x):
        h = self.proj_in(x)
        b, c, hh, ww = h.shape
        t = self.to_q(h.permute(0, 2, 3, 1).reshape(b, hh * ww, c))
        h = t.reshape(b, hh, ww, c).permute(0, 3, 1, 2)
        h = self.conv(h)
        return self.proj_out(h.permute(0, 2, 3, 1))


class TE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 6)
        self.fc2 = nn.Linear(6, 6)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


TARGETS = [
    Target("lora_unet_proj_in", "unet", "proj_in", "conv"),
    Target("lora_unet_to_q", "unet", "to_q", "linear"),
    Target("lora_unet_conv", "unet", "conv", "conv3x3"),
    Target("lora_unet_proj_out", "unet", "proj_out", "linear"),
    Target("lora_te1_fc1", "te", "fc1", "linear", True),
    Target("lora_te2_fc2", "te", "fc2", "linear", True),
]


def _setup(seed=0):
    torch.manual_seed(seed)
    roots = {"unet": Block(), "te": TE()}
    net = LoRANetwork.create(TARGETS, roots, NetworkSpec("test", 4, 2, conv_rank=2, conv_alpha=1), seed=0)
    return roots, net


def _randomize(net, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.loras():
            m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=g) * 0.1)


def test_state_dict_keys_shapes_dtypes():
    roots, net = _setup()
    sd = net.kohya_state_dict()
    assert set(sd) == {f"{t.name}{s}" for t in TARGETS for s in (".lora_down.weight", ".lora_up.weight", ".alpha")}
    assert set(net.state_dict()) == set(sd)
    assert sd["lora_unet_conv.lora_down.weight"].shape == (2, 8, 3, 3)
    assert sd["lora_unet_conv.lora_up.weight"].shape == (8, 2, 1, 1)
    assert sd["lora_unet_proj_in.lora_down.weight"].shape == (4, 4, 1, 1)
    assert sd["lora_unet_to_q.alpha"].dim() == 0 and sd["lora_unet_to_q.alpha"].dtype == torch.float32
    assert sd["lora_unet_to_q.alpha"].item() == 2.0 and sd["lora_unet_conv.alpha"].item() == 1.0
    half = net.kohya_state_dict(torch.float16)
    assert all(v.dtype == torch.float16 for v in half.values())
    assert net.spec == NetworkSpec("test", 4, 2, 2, 1) and net.copy().spec is net.spec
    assert net.spec.network_args == {"conv_dim": "2", "conv_alpha": "1"}
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_alpha_not_a_parameter():
    _, net = _setup()
    names = [n for n, _ in net.named_parameters()]
    assert len(names) == 2 * len(TARGETS) and not any(n.endswith("alpha") for n in names)


def test_install_remove_restores_bitwise_and_keeps_base_keys():
    roots, net = _setup()
    x = torch.randn(2, 4, 8, 8)
    base_keys = list(roots["unet"].state_dict())
    base_params = list(roots["unet"].parameters())
    y0 = roots["unet"](x)
    net.install(roots)
    assert net.is_installed
    assert torch.equal(roots["unet"](x), y0)  # identity at init
    _randomize(net)
    y1 = roots["unet"](x)
    assert not torch.allclose(y1, y0)
    assert list(roots["unet"].state_dict()) == base_keys
    assert list(roots["unet"].parameters()) == base_params
    net.remove()
    net.remove()  # safe twice
    assert not net.is_installed
    assert torch.equal(roots["unet"](x), y0)
    for t in TARGETS:
        assert "forward" not in roots[t.root].get_submodule(t.path).__dict__


def test_installed_output_equals_merged_weights():
    roots, net = _setup()
    _randomize(net)
    x = torch.randn(2, 4, 8, 8)
    net.install(roots)
    y = roots["unet"](x)
    net.remove()
    merged = Block()
    merged.load_state_dict(roots["unet"].state_dict())
    with torch.no_grad():
        for t, m in net.items():
            if t.root == "unet":
                merged.get_submodule(t.path).weight += m.merged_delta_weight()
    assert torch.allclose(merged(x), y, atol=1e-5)


def test_gradients_reach_only_lora_params():
    roots, net = _setup()
    _randomize(net)
    net.install(roots)
    base = [p for r in roots.values() for p in r.parameters()]
    for p in base:
        p.requires_grad_(False)
    out = roots["unet"](torch.randn(2, 4, 8, 8)).square().mean() + roots["te"](torch.randn(3, 6)).square().mean()
    out.backward()
    net.remove()
    assert all(p.grad is None for p in base)
    for m in net.loras():
        assert m.lora_down.weight.grad is not None and m.lora_up.weight.grad is not None
        assert m.alpha.grad is None


def test_composes_with_later_override():
    roots, net = _setup()
    _randomize(net)
    x = torch.randn(3, 8)
    q = roots["unet"].to_q
    y0 = q(x)
    net.install(roots)
    y_lora = q(x)
    inner = q.forward
    q.forward = lambda t: inner(t) * 2  # e.g. a wrapper installed later
    assert torch.allclose(q(x), y_lora * 2)
    with pytest.raises(RuntimeError, match="remove that override first"):
        net.remove()
    q.forward = inner  # the other override is removed first
    net.remove()
    assert torch.equal(q(x), y0)


def test_install_failure_rolls_back():
    roots, net = _setup()
    bad = {"unet": roots["unet"]}  # missing "te"
    with pytest.raises(KeyError, match="te"):
        net.install(bad)
    assert not net.is_installed
    assert all("forward" not in m.__dict__ for m in roots["unet"].modules())


def test_load_round_trip_and_errors():
    roots, net = _setup()
    _randomize(net)
    sd = net.kohya_state_dict()
    fresh = LoRANetwork.create(TARGETS, roots, NetworkSpec("test", 4, 2, 2, 1.0), seed=9)
    report = fresh.load_kohya_state_dict(sd)
    assert report.missing == [] and report.unexpected == []
    for k, v in fresh.kohya_state_dict().items():
        assert torch.equal(v, sd[k]), k
    # errors name the keys
    bad = dict(sd)
    bad.pop("lora_unet_to_q.lora_up.weight")
    bad["lora_unet_nope.lora_up.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as e:
        fresh.load_kohya_state_dict(bad)
    assert "lora_unet_to_q.lora_up.weight" in str(e.value) and "lora_unet_nope.lora_up.weight" in str(e.value)
    rep = fresh.load_kohya_state_dict(bad, strict=False)
    assert rep.missing == ["lora_unet_to_q.lora_up.weight"] and rep.unexpected == ["lora_unet_nope.lora_up.weight"]
    wrong = dict(sd)
    wrong["lora_unet_to_q.lora_down.weight"] = torch.zeros(5, 8)
    with pytest.raises(ValueError, match="shape mismatch"):
        fresh.load_kohya_state_dict(wrong, strict=False)


def test_from_kohya_state_dict():
    roots, net = _setup()
    _randomize(net)
    sd = {k: v for k, v in net.kohya_state_dict().items() if "te2" not in k}
    sd.pop("lora_unet_proj_out.alpha")  # old LoRA without alpha -> alpha = rank
    loaded = LoRANetwork.from_kohya_state_dict(sd, TARGETS, roots, family="test")
    assert loaded.names == [t.name for t in TARGETS if "te2" not in t.name]
    assert loaded.lora("lora_unet_proj_out").alpha_value == 4.0
    assert loaded.lora("lora_unet_to_q").scale == 0.5
    assert loaded.spec == NetworkSpec("test", 4, 2.0, 2, 1.0)
    x = torch.randn(2, 4, 8, 8)
    net.install(roots)
    net.lora("lora_unet_proj_out").set_alpha(4.0)
    y = roots["unet"](x)
    net.remove()
    loaded.install(roots)
    assert torch.allclose(roots["unet"](x), y)
    loaded.remove()
    with pytest.raises(ValueError, match="match no target"):
        LoRANetwork.from_kohya_state_dict({**sd, "lora_unet_foo.alpha": torch.tensor(1.0)}, TARGETS, roots)


def test_param_groups():
    _, net = _setup()
    groups = net.param_groups(1e-4, unet_lr=2e-4, text_encoder_lr=[1e-5, 3e-5])
    by = {g["name"]: g for g in groups}
    assert set(by) == {"unet", "te1", "te2"}
    assert by["unet"]["lr"] == 2e-4 and by["te1"]["lr"] == 1e-5 and by["te2"]["lr"] == 3e-5
    assert len(by["unet"]["params"]) == 8
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in net.parameters())
    # a single value for all TEs, zero lr drops the group
    groups = net.param_groups(1e-4, text_encoder_lr=0.0)
    assert [g["name"] for g in groups] == ["unet"]
    plus = {g["name"]: g for g in net.param_groups(1e-4, loraplus_lr_ratio=16)}
    assert plus["unet plus"]["lr"] == pytest.approx(1.6e-3) and len(plus["unet plus"]["params"]) == 4


def test_copy_is_independent_and_not_installed():
    roots, net = _setup()
    net.install(roots)
    c = net.copy()
    assert not c.is_installed and c.names == net.names
    with torch.no_grad():
        c.lora("lora_unet_to_q").lora_up.weight.fill_(1.0)
    assert torch.count_nonzero(net.lora("lora_unet_to_q").lora_up.weight) == 0
    net.remove()
    with torch.inference_mode():
        c2 = net.copy()
    assert not c2.lora("lora_unet_to_q").lora_down.weight.is_inference()


def test_conv3x3_needs_conv_rank():
    roots = {"unet": Block(), "te": TE()}
    with pytest.raises(ValueError, match="conv_rank"):
        LoRANetwork.create(TARGETS, roots, NetworkSpec("test", 4, 4.0))
    with pytest.raises(TypeError, match="declared"):
        LoRANetwork.create([Target("lora_unet_conv", "unet", "conv", "linear")], roots, NetworkSpec("test", 4, 4.0))
    with pytest.raises(ValueError, match="none of the 1 targets is a 3x3 conv"):  # the header would lie
        LoRANetwork.create([Target("lora_unet_to_q", "unet", "to_q", "linear")], roots, NetworkSpec("t", 4, 4.0, 2, 1.0))


def test_comfy_text_encoder_names_round_trip():
    """ComfyUI's dotted text_encoders.<path> names: the file keys keep them, torch's state dict round-trips, the
    LR group is named after the encoder; any other dotted name is refused."""
    roots = {"te": TE()}
    targets = [Target("text_encoders.llm.fc1", "te", "fc1", "linear", True),
               Target("text_encoders.llm.fc2", "te", "fc2", "linear", True)]
    assert targets[0].prefix == "text_encoders.llm"
    net = LoRANetwork.create(targets, roots, NetworkSpec(rank=2, alpha=1.0), seed=0)
    sd = net.kohya_state_dict()
    assert set(sd) == {f"text_encoders.llm.fc{i}.{s}" for i in (1, 2)
                       for s in ("lora_down.weight", "lora_up.weight", "alpha")}
    other = LoRANetwork.create(targets, roots, NetworkSpec(rank=2, alpha=1.0), seed=1)
    other.load_state_dict(net.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(other.kohya_state_dict().values(), sd.values()))
    loaded = LoRANetwork.from_kohya_state_dict(sd, targets, roots)
    assert loaded.lora("text_encoders.llm.fc2") is not None and len(loaded) == 2
    assert {g["name"] for g in net.param_groups(1e-3, text_encoder_lr=1e-4)} == {"text_encoders.llm"}
    with torch.no_grad():
        for m in net.loras():
            m.lora_up.weight.fill_(0.1)
    x = torch.randn(3, 6)
    base = roots["te"](x)
    net.install(roots)
    try:
        assert not torch.allclose(roots["te"](x), base)
    finally:
        net.remove()
    with pytest.raises(ValueError, match="must not contain dots"):
        Target("lora_te1.fc1", "te", "fc1", "linear", True)
