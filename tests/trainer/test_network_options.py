"""sd-scripts' network options (networks/lora.py) against hand-computed values: the dropouts and their scaling,
LoRA+ and block learning-rate groups, max-norm regularisation, the U-Net block numbering of SD1/SD2 and SDXL,
block dims; then the loop training with them bit-reproducibly, and a resume with LoRA+ groups."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tiny_trainer import TinyModel, text_encoder
from torch import nn

from trainer.assemble import build_network
from trainer.checkpoints import apply_state, capture_state
from trainer.config import NetworkConfig, TrainConfig
from trainer.lora import LoRAModule, OrgSpec
from trainer.loop import Trainer
from trainer.network import TE_ROOT, UNET_ROOT, LoRANetwork, NetworkSpec, Target
from trainer.network_options import (block_dims_and_alphas, block_index, block_lr_weight, lr_options, module_ranks,
                                     total_blocks, training_network_args)
from trainer.objectives import DiscreteObjective, ddpm_sigmas
from trainer.state import StateError


def _linear(rank=2, alpha=1.0, **dropouts):
    m = LoRAModule("lora_unet_x", OrgSpec("linear", 4, 3), rank, alpha, **dropouts)
    with torch.no_grad():
        m.lora_down.weight.copy_(torch.arange(rank * 4, dtype=torch.float32).reshape(rank, 4) / 10)
        m.lora_up.weight.copy_(torch.arange(3 * rank, dtype=torch.float32).reshape(3, rank) / 10 - 0.2)
    return m


X = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4) / 7  # (batch, tokens, features)


# ------------------------------------------------------------------------------------------ dropouts
def test_rank_dropout_masks_ranks_per_sample_and_rescales_by_one_over_one_minus_p():
    m = _linear(rank=2, alpha=1.0, rank_dropout=0.5).train()
    torch.manual_seed(0)
    got = m.delta(X)
    torch.manual_seed(0)
    mask = (torch.rand((2, 2)) > 0.5).float()  # kohya: one draw per (sample, rank), the same for every token
    lx = (X @ m.lora_down.weight.T) * mask[:, None, :]
    want = (lx @ m.lora_up.weight.T) * 1.0 * (0.5 * (1.0 / (1.0 - 0.5)))  # multiplier * scale / (1 - p)
    assert mask.sum() not in (0, 4)  # this seed drops some ranks and keeps others
    assert torch.allclose(got, want, atol=1e-6)
    m.eval()
    assert torch.allclose(m.delta(X), (X @ m.lora_down.weight.T @ m.lora_up.weight.T) * 0.5, atol=1e-6)


def test_neuron_dropout_is_f_dropout_on_the_down_output():
    m = _linear(rank=2, alpha=2.0, dropout=0.25).train()  # scale 1
    torch.manual_seed(3)
    got = m.delta(X)
    torch.manual_seed(3)
    lx = F.dropout(X @ m.lora_down.weight.T, p=0.25)
    assert torch.allclose(got, lx @ m.lora_up.weight.T, atol=1e-6)
    kept = lx != 0
    assert torch.allclose(lx[kept], (X @ m.lora_down.weight.T)[kept] / 0.75)  # kept values x 1/(1-p)
    assert 0 < int(kept.sum()) < kept.numel()


def test_module_dropout_skips_the_whole_module_with_one_draw_per_call():
    m = _linear(module_dropout=0.5).train()
    torch.manual_seed(1)
    zero = [bool(torch.all(m.delta(X) == 0)) for _ in range(16)]
    torch.manual_seed(1)
    want = [bool(torch.rand(1) < 0.5) for _ in range(16)]
    assert zero == want and any(want) and not all(want)
    m.eval()
    assert not torch.all(m.delta(X) == 0)


def test_networks_are_built_in_eval_mode_so_sampling_never_drops():
    model = TinyModel()
    net = LoRANetwork.create([Target("lora_unet_proj", UNET_ROOT, "proj", "linear")], {UNET_ROOT: model.net},
                             NetworkSpec(family="sd1", rank=2, alpha=2), dropout=0.5, rank_dropout=0.5,
                             module_dropout=0.5)
    assert not net.training and not any(m.training for m in net.loras())
    assert not net.copy().training


# ------------------------------------------------------------------------------------------ LoRA+ groups
def _two_part_network():
    model = TinyModel()
    te = nn.Module()
    te.layer = nn.Linear(8, 8)
    targets = [Target("lora_unet_proj", UNET_ROOT, "proj", "linear"),
               Target("lora_unet_ctx", UNET_ROOT, "ctx", "linear"),
               Target("lora_te_layer", TE_ROOT, "layer", "linear", is_text_encoder=True)]
    return LoRANetwork.create(targets, {UNET_ROOT: model.net, TE_ROOT: te}, NetworkSpec(family="sd1", rank=2, alpha=2))


def _groups(net, **kw):
    return {g["name"]: (g["lr"], [id(p) for p in g["params"]]) for g in net.param_groups(1e-4, text_encoder_lr=5e-5,
                                                                                          **kw)}


def test_loraplus_puts_the_up_weights_in_plus_groups_at_lr_times_ratio():
    net = _two_part_network()
    unet = [net.lora("lora_unet_proj"), net.lora("lora_unet_ctx")]
    te = net.lora("lora_te_layer")
    g = _groups(net, loraplus_lr_ratio=16)
    assert list(g) == ["unet", "unet plus", "te", "te plus"]
    assert g["unet"] == (1e-4, [id(m.lora_down.weight) for m in unet])
    assert g["unet plus"] == (pytest.approx(1.6e-3), [id(m.lora_up.weight) for m in unet])
    assert g["te"] == (5e-5, [id(te.lora_down.weight)]) and g["te plus"] == (pytest.approx(8e-4), [id(te.lora_up.weight)])
    # the per-part ratios win over loraplus_lr_ratio (kohya: unet_ratio or lr_ratio)
    g = _groups(net, loraplus_lr_ratio=16, loraplus_unet_lr_ratio=4)
    assert g["unet plus"][0] == pytest.approx(4e-4) and g["te plus"][0] == pytest.approx(8e-4)
    g = _groups(net, loraplus_text_encoder_lr_ratio=2)
    assert list(g) == ["unet", "te", "te plus"] and g["te plus"][0] == pytest.approx(1e-4)
    assert len(g["unet"][1]) == 4  # without a U-Net ratio its up weights stay in the plain group
    assert lr_options(TrainConfig(loraplus_lr_ratio=16), "flux")["loraplus_lr_ratio"] == 16.0  # every family


# ------------------------------------------------------------------------------------------ max-norm
def test_max_norm_scales_up_and_down_by_sqrt_ratio_and_reports_like_kohya():
    big = LoRAModule("lora_unet_big", OrgSpec("linear", 2, 2), 1, 1.0)
    small = LoRAModule("lora_unet_small", OrgSpec("linear", 2, 2), 1, 1.0)
    conv = LoRAModule("lora_unet_conv", OrgSpec("conv", 2, 2, (3, 3), padding=(1, 1)), 2, 1.0)
    with torch.no_grad():
        big.lora_down.weight.copy_(torch.tensor([[3.0, 0.0]]))
        big.lora_up.weight.copy_(torch.tensor([[4.0], [0.0]]))     # delta [[12, 0], [0, 0]]: norm 12
        small.lora_down.weight.copy_(torch.tensor([[1.0, 0.0]]))
        small.lora_up.weight.copy_(torch.tensor([[1.0], [0.0]]))   # norm 1 < 6/2: untouched
        conv.lora_up.weight.fill_(0.5)
    targets = [Target(n, UNET_ROOT, n, "linear") for n in ("lora_unet_big", "lora_unet_small")]
    targets.append(Target("lora_unet_conv", UNET_ROOT, "conv", "conv3x3"))
    net = LoRANetwork(targets, {"lora_unet_big": big, "lora_unet_small": small, "lora_unet_conv": conv},
                      NetworkSpec(family="sd1", rank=1, alpha=1.0, conv_rank=2, conv_alpha=1.0))
    conv_norm = float(conv.merged_delta_weight().norm())  # the conv delta (alpha/rank = 0.5 included)
    down_small = small.lora_down.weight.clone()
    keys_scaled, mean, maximum = net.apply_max_norm_regularization(6.0)
    s = math.sqrt(0.5)  # ratio = 6 / 12
    assert torch.allclose(big.lora_down.weight, torch.tensor([[3.0 * s, 0.0]]))
    assert torch.allclose(big.lora_up.weight, torch.tensor([[4.0 * s], [0.0]]))
    assert float(big.merged_delta_weight().norm()) == pytest.approx(6.0)
    assert torch.equal(small.lora_down.weight, down_small)
    conv_after = min(conv_norm, 6.0)
    assert keys_scaled == 1 + (conv_norm > 6.0)
    assert mean == pytest.approx((6.0 + 1.0 + conv_after) / 3, rel=1e-5) and maximum == pytest.approx(6.0)


# ------------------------------------------------------------------------------------------ blocks
SD_NAMES = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": 1,
    "lora_unet_down_blocks_0_attentions_1_proj_in": 2,
    "lora_unet_down_blocks_0_downsamplers_0_conv": 3,
    "lora_unet_down_blocks_1_resnets_1_conv2": 5,
    "lora_unet_down_blocks_3_resnets_1_time_emb_proj": 11,
    "lora_unet_mid_block_attentions_0_proj_out": 12,
    "lora_unet_mid_block_resnets_1_conv1": 12,
    "lora_unet_up_blocks_0_resnets_2_conv_shortcut": 15,
    "lora_unet_up_blocks_0_upsamplers_0_conv": 15,   # kohya: a sampler counts as index 2 of its block
    "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k": 16,
    "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2": 24,
    "lora_te_text_model_encoder_layers_0_mlp_fc1": -1,
}
SDXL_NAMES = {
    "lora_unet_time_embed_0": 0,
    "lora_unet_input_blocks_1_0_in_layers_2": 2,
    "lora_unet_input_blocks_3_0_op": 4,
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": 5,
    "lora_unet_input_blocks_8_1_proj_out": 9,
    "lora_unet_middle_block_0_in_layers_2": 10,
    "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2": 11,
    "lora_unet_middle_block_2_emb_layers_1": 12,
    "lora_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_v": 13,
    "lora_unet_output_blocks_8_0_skip_connection": 21,
    "lora_unet_out_2": 22,
    "lora_te1_text_model_encoder_layers_0_mlp_fc1": -1,
}


def test_block_index_and_block_counts_of_sd_and_sdxl():
    assert total_blocks(False) == 25 and total_blocks(True) == 23
    assert {n: block_index(n, False) for n in SD_NAMES} == SD_NAMES
    assert {n: block_index(n, True) for n in SDXL_NAMES} == SDXL_NAMES


def _targets():
    return [Target("lora_unet_down_blocks_0_attentions_0_proj_in", UNET_ROOT, "proj", "linear"),     # block 1
            Target("lora_unet_mid_block_attentions_0_proj_in", UNET_ROOT, "ctx", "linear"),          # block 12
            Target("lora_unet_up_blocks_3_resnets_2_conv1", UNET_ROOT, "conv_in", "conv3x3")]        # block 24


def test_block_dims_give_per_module_ranks_and_leave_zero_blocks_out():
    dims = ",".join(str(i % 5) for i in range(25))       # block 1: 1, block 12: 2, block 24: 4
    alphas = ",".join(str(i / 2) for i in range(25))
    cfg = NetworkConfig(network_dim=8, network_alpha=4, block_dims=dims, block_alphas=alphas)
    assert module_ranks(_targets(), False, cfg) == {_targets()[0].name: (1, 0.5), _targets()[1].name: (2, 6.0),
                                                    _targets()[2].name: (0, 0.0)}  # no conv modules: conv_dim 0
    cfg = NetworkConfig(network_dim=8, network_alpha=4, conv_dim=3, conv_alpha=1, block_dims=dims)
    assert module_ranks(_targets(), False, cfg)[_targets()[2].name] == (3, 1.0)  # conv_dim everywhere
    conv = ",".join("7" if i == 24 else "0" for i in range(25))
    cfg = NetworkConfig(network_dim=8, network_alpha=4, conv_block_dims=conv, block_dims="0," * 12 + "5" + ",0" * 12)
    ranks = module_ranks(_targets(), False, cfg)
    assert ranks == {_targets()[0].name: (0, 4.0), _targets()[1].name: (5, 4.0), _targets()[2].name: (7, 1.0)}
    model = TinyModel()
    net = LoRANetwork.create(_targets(), {UNET_ROOT: model.net}, NetworkSpec(family="sd1", rank=8, alpha=4),
                             ranks=ranks, seed=0)
    assert net.names == [_targets()[1].name, _targets()[2].name]
    assert [m.lora_dim for m in net.loras()] == [5, 7] and net.loras()[1].alpha_value == 1.0
    with pytest.raises(ValueError, match="25 blocks"):
        block_dims_and_alphas(False, 8, 4, 0, 1, block_dims="1,2,3")
    with pytest.raises(ValueError, match="23 blocks"):
        block_dims_and_alphas(True, 8, 4, 0, 1, block_dims=dims)
    with pytest.raises(ValueError, match="comma-separated"):
        NetworkConfig(block_dims="4,x")


class _Family:
    """The family protocol build_network uses, on the tiny denoiser with SD1 block names."""
    name, display_name, supports_conv, t5_prefix = "sd1", "Stable Diffusion 1.x", True, None

    def unet_targets(self, root, unet_config, conv=False, options=None):
        return [t for t in _targets() if conv or t.kind != "conv3x3"]

    def text_encoder_targets(self, root, options=None):
        return []

    def network_args(self, targets):
        return {}


def test_build_network_with_block_dims_dropouts_and_dim_from_weights_off():
    model = TinyModel()
    dims = "0," * 12 + "3" + ",2" * 12
    cfg = NetworkConfig(network_dim=4, network_alpha=4, conv_block_dims=dims, block_dims=dims, rank_dropout=0.1,
                        network_dropout=0.2)
    net = build_network(_Family(), model.net, {}, None, cfg)
    assert [(m.lora_name, m.lora_dim) for m in net.loras()] == [(_targets()[1].name, 3), (_targets()[2].name, 2)]
    assert net.loras()[0].dropout == 0.2 and net.loras()[0].rank_dropout == 0.1
    assert net.spec.dropout == 0.2 and net.spec.conv_rank is None
    assert net.spec.network_args == {"rank_dropout": "0.1", "block_dims": dims, "conv_block_dims": dims}
    # kohya network_weights without dim_from_weights: the file's weights go into the modules of the same name
    sd = {k: v + 1 for k, v in net.kohya_state_dict().items()}
    sd[f"{_targets()[1].name}.alpha"] = torch.tensor(9.0)
    sd["lora_unet_elsewhere.lora_down.weight"] = torch.zeros(1, 1)
    other = build_network(_Family(), model.net, {}, None, NetworkConfig(**{**cfg.__dict__, "seed": 5,
                                                                          "dim_from_weights": False}), sd, "file")
    for m in other.loras():
        assert torch.equal(m.lora_down.weight, sd[f"{m.lora_name}.lora_down.weight"])
    assert other.loras()[0].alpha_value == 4.0  # the settings' alpha, not the file's 9
    with pytest.raises(ValueError, match="dim_from_weights"):  # the file gives the ranks: block dims conflict
        build_network(_Family(), model.net, {}, None, cfg, sd, "file")
    with pytest.raises(ValueError, match="ranks differ"):
        build_network(_Family(), model.net, {}, None, NetworkConfig(network_dim=4, dim_from_weights=False), sd, "f")
    flux = SimpleNamespace(name="flux", display_name="FLUX.1", supports_conv=False)
    with pytest.raises(ValueError, match="only for the SD1.x/SD2.x/SDXL"):
        build_network(flux, model.net, {}, None, NetworkConfig(block_dims=dims))


def test_block_lr_weights_presets_padding_and_zero_threshold():
    w = block_lr_weight(False, down="1,0.5", mid="0", up="sine")
    sine = [math.sin(math.pi * (i / 11) / 2) for i in range(12)]
    assert w == pytest.approx([1.0, 0.5] + [1.0] * 10 + [0] + sine)
    assert block_lr_weight(False, down="cosine+0.5")[:12] == pytest.approx([math.sin(math.pi * (i / 11) / 2) + 0.5
                                                                            for i in reversed(range(12))])
    assert block_lr_weight(False, up="linear")[13:] == pytest.approx([i / 11 for i in range(12)])
    assert block_lr_weight(False, down="0.1,0.2,", zero_threshold=0.15)[:4] == [0, 0.2, 0, 1.0]  # empty item: 0
    x = block_lr_weight(True, mid="1,0,1", up="zeros+0.25")
    assert len(x) == 23 and x[0] == x[22] == 1.0 and x[10:13] == [1.0, 0, 1.0] and x[13:22] == [0.25] * 9
    assert block_lr_weight(False) is None
    with pytest.raises(ValueError, match="cosine, sine"):
        TrainConfig(down_lr_weight="0.5")  # a single number: kohya logs an error and ignores it; we refuse
    with pytest.raises(ValueError, match="only for the SD1.x/SD2.x/SDXL"):
        lr_options(TrainConfig(up_lr_weight="zeros"), "flux")


def test_block_lr_groups_with_loraplus():
    model = TinyModel()
    net = LoRANetwork.create(_targets()[:2], {UNET_ROOT: model.net}, NetworkSpec(family="sd1", rank=2, alpha=2))
    weights = [0.0] * 25
    weights[1], weights[12] = 0.5, 2.0
    groups = net.param_groups(1e-4, block_lr_weight=weights, loraplus_lr_ratio=4)
    assert [(g["name"], g["lr"], len(g["params"])) for g in groups] == [
        ("unet_block1", pytest.approx(5e-5), 1), ("unet_block1 plus", pytest.approx(2e-4), 1),
        ("unet_block12", pytest.approx(2e-4), 1), ("unet_block12 plus", pytest.approx(8e-4), 1)]
    weights[1] = 0
    assert [g["name"] for g in net.param_groups(1e-4, block_lr_weight=weights)] == ["unet_block12"]
    cfg = TrainConfig(down_lr_weight="0,0.5", mid_lr_weight="2", loraplus_unet_lr_ratio=3)
    opts = lr_options(cfg, "sd1")
    assert opts["block_lr_weight"][:3] == [0, 0.5, 1.0] and opts["block_lr_weight"][12] == 2.0
    assert opts["loraplus_unet_lr_ratio"] == 3.0 and opts["loraplus_lr_ratio"] is None
    assert training_network_args(cfg) == {"loraplus_unet_lr_ratio": "3", "down_lr_weight": "0,0.5",
                                          "mid_lr_weight": "2"}


# ------------------------------------------------------------------------------------------ the loop
def _trainer(data, steps, network_cfg=None, **kw):
    model = TinyModel()
    net = build_network(_Family(), model.net, {}, None, network_cfg or NetworkConfig(network_dim=4, network_alpha=4,
                                                                                      conv_dim=2, conv_alpha=2))
    net.install({UNET_ROOT: model.net})
    for p in net.parameters():
        p.requires_grad_(True)
    cfg = TrainConfig(max_train_steps=steps, learning_rate=3e-3, seed=2, **kw)
    tr = Trainer(model=model, network=net, data=data, cfg=cfg, objective=DiscreteObjective(ddpm_sigmas(), "eps"),
                 text_encoder=text_encoder)
    return tr, net


def _sd(net):
    return {k: v.clone() for k, v in net.kohya_state_dict().items()}


OPTIONS = dict(loraplus_lr_ratio=4, mid_lr_weight="0.5", up_lr_weight="linear+0.5", scale_weight_norms=0.05)
DROPPING = NetworkConfig(network_dim=4, network_alpha=4, conv_dim=2, conv_alpha=2, network_dropout=0.3,
                         rank_dropout=0.3, module_dropout=0.2)


def test_loop_with_network_options_is_bit_reproducible_and_leaves_global_rng_alone(data):
    runs = []
    for _ in range(2):
        tr, net = _trainer(data, 5, DROPPING, **OPTIONS)
        infos = []
        before = torch.get_rng_state()
        res = tr.run(on_step=infos.append)
        assert torch.equal(torch.get_rng_state(), before)  # the dropouts drew inside a fork of the global generator
        runs.append((_sd(net), res.losses))
    (a, la), (b, lb) = runs
    assert la == lb and all(torch.equal(a[k], b[k]) for k in a)
    assert all(i.max_norm is not None for i in infos)
    assert [(g["name"], g["lr"]) for g in tr.optimizer.param_groups] == [
        ("unet_block1", 3e-3), ("unet_block1 plus", 1.2e-2), ("unet_block12", 1.5e-3), ("unet_block12 plus", 6e-3),
        ("unet_block24", pytest.approx(4.5e-3)), ("unet_block24 plus", pytest.approx(1.8e-2))]  # linear+0.5: 1.5
    # max-norm held every module's delta at or below 0.05 after each step
    assert all(float(m.merged_delta_weight().norm()) <= 0.05 * (1 + 1e-5) for m in net.loras())
    # the dropouts change the training (the same run without them differs)
    tr, net = _trainer(data, 5, **OPTIONS)
    tr.run()
    assert any(not torch.equal(a[k], v) for k, v in _sd(net).items())


def test_resume_with_loraplus_groups_is_bitwise_and_refuses_other_groups(data):
    kw = dict(loraplus_lr_ratio=8, lr_scheduler="cosine")
    tr, net = _trainer(data, 6, DROPPING, **kw)
    straight = tr.run()
    want = _sd(net)
    tr, net = _trainer(data, 6, DROPPING, **kw)
    done = []
    tr.run(on_step=lambda i: done.append(i.step), should_stop=lambda: len(done) >= 3)
    state = capture_state(tr, net)
    assert state.config["param_groups"] == [["unet", 3], ["unet plus", 3]]
    tr, net = _trainer(data, 6, DROPPING, **kw)
    apply_state(tr, net, state, "test")
    second = tr.run()
    assert all(torch.equal(want[k], v) for k, v in _sd(net).items())
    assert second.losses == straight.losses and second.lrs == straight.lrs
    tr, net = _trainer(data, 6, DROPPING, lr_scheduler="cosine")  # without LoRA+: other groups
    with pytest.raises(StateError, match="param_groups"):
        apply_state(tr, net, state, "test")
    tr, net = _trainer(data, 6, DROPPING, loraplus_lr_ratio=2, lr_scheduler="cosine")  # same groups, new ratio
    apply_state(tr, net, state, "test")
    assert [g["initial_lr"] for g in tr.optimizer.param_groups] == [3e-3, pytest.approx(6e-3)]


def test_gradient_checkpointing_replays_the_dropout_masks():
    """Non-reentrant checkpointing restores the global generator for the recomputation: the gradients with
    dropouts are those of the run without checkpointing."""
    from torch.utils.checkpoint import checkpoint

    grads = []
    for ckpt in (False, True):
        model = TinyModel()
        net = LoRANetwork.create([Target("lora_unet_proj", UNET_ROOT, "proj", "linear")], {UNET_ROOT: model.net},
                                 NetworkSpec(family="sd1", rank=4, alpha=4), dropout=0.5, rank_dropout=0.5, seed=0)
        net.install({UNET_ROOT: model.net})
        with torch.no_grad():
            net.lora("lora_unet_proj").lora_up.weight.normal_(generator=torch.Generator().manual_seed(1))
        net.train()
        for p in net.parameters():
            p.requires_grad_(True)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
        sigma, ctx = torch.ones(2), torch.randn(2, 8, generator=torch.Generator().manual_seed(3))
        torch.manual_seed(4)
        out = checkpoint(model.net, x, sigma, ctx, use_reentrant=False) if ckpt else model.net(x, sigma, ctx)
        out.square().mean().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
