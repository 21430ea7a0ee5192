"""Family target selection + kohya names on a pure-torch SKELETON of ComfyUI's UNetModel.

The skeleton reproduces the module paths and class names of ComfyUI's
``comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel`` (SpatialTransformer, BasicTransformerBlock,
CrossAttention, FeedForward/GEGLU, ResBlock, Downsample, Upsample, TimestepEmbedSequential) for a
given unet_config, built on the meta device (shapes only), so full-size configs are cheap.
"""
import pytest
import torch
from torch import nn

from trainer.families import FAMILIES, detect_family, get_family
from trainer.families.unet_naming import DiffusersNamer
from trainer.network import NetworkSpec, LoRANetwork


# ----------------------------------------------------------------------------- skeleton (ComfyUI names)
class TimestepEmbedSequential(nn.Sequential):
    pass


class CrossAttention(nn.Module):
    def __init__(self, dim, context_dim=None, heads_dim=64):
        super().__init__()
        context_dim = context_dim or dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))


class GEGLU(nn.Module):
    def __init__(self, dim, inner):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)


class FeedForward(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * 4), nn.Dropout(0.0), nn.Linear(dim * 4, dim))


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, context_dim):
        super().__init__()
        self.attn1 = CrossAttention(dim)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)


class SpatialTransformer(nn.Module):
    def __init__(self, ch, depth, context_dim, use_linear):
        super().__init__()
        self.norm = nn.GroupNorm(32, ch)
        self.proj_in = nn.Linear(ch, ch) if use_linear else nn.Conv2d(ch, ch, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(ch, context_dim) for _ in range(depth)])
        self.proj_out = nn.Linear(ch, ch) if use_linear else nn.Conv2d(ch, ch, 1)


class ResBlock(nn.Module):
    def __init__(self, ch, out, emb):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(ch, out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, out))
        self.out_layers = nn.Sequential(nn.GroupNorm(32, out), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out, out, 3, padding=1))
        self.skip_connection = nn.Identity() if out == ch else nn.Conv2d(ch, out, 1)


class Downsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)


class UNetModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        mc, mult, nrb = cfg["model_channels"], cfg["channel_mult"], cfg["num_res_blocks"]
        depth, depth_out = list(cfg["transformer_depth"]), list(cfg["transformer_depth_output"])
        ctx, lin, emb = cfg["context_dim"], cfg["use_linear_in_transformer"], mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        if cfg.get("adm_in_channels"):
            self.label_emb = nn.Sequential(nn.Sequential(nn.Linear(cfg["adm_in_channels"], emb), nn.SiLU(),
                                                         nn.Linear(emb, emb)))
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(cfg["in_channels"], mc, 3, padding=1))])
        chans, ch = [mc], mc
        for level, m in enumerate(mult):
            for _ in range(nrb[level]):
                layers = [ResBlock(ch, m * mc, emb)]
                ch = m * mc
                d = depth.pop(0)
                if d > 0:
                    layers.append(SpatialTransformer(ch, d, ctx, lin))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                chans.append(ch)
        self.middle_block = TimestepEmbedSequential(ResBlock(ch, ch, emb),
                                                    SpatialTransformer(ch, cfg["transformer_depth_middle"], ctx, lin),
                                                    ResBlock(ch, ch, emb))
        self.output_blocks = nn.ModuleList()
        for level, m in list(enumerate(mult))[::-1]:
            for i in range(nrb[level] + 1):
                layers = [ResBlock(ch + chans.pop(), m * mc, emb)]
                ch = m * mc
                d = depth_out.pop()
                if d > 0:
                    layers.append(SpatialTransformer(ch, d, ctx, lin))
                if level and i == nrb[level]:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(mc, cfg["out_channels"], 3, padding=1))


SD15 = {"in_channels": 4, "out_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
        "use_linear_in_transformer": False, "context_dim": 768, "adm_in_channels": None,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]}
SD21 = {**SD15, "use_linear_in_transformer": True, "context_dim": 1024}
SDXL = {"in_channels": 4, "out_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2],
        "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4], "transformer_depth_middle": 10,
        "use_linear_in_transformer": True, "context_dim": 2048, "adm_in_channels": 2816,
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10]}


def _meta_unet(cfg):
    with torch.device("meta"):
        return UNetModel(cfg)


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("fam_name,cfg,counts", [("sd1", SD15, (192, 278)), ("sd2", SD21, (192, 278)),
                                                 ("sdxl", SDXL, (722, 788))])
def test_full_size_counts(fam_name, cfg, counts):
    fam = get_family(fam_name)
    root = _meta_unet(cfg)
    lierla = fam.unet_targets(root, cfg, conv=False)
    c3lier = fam.unet_targets(root, cfg, conv=True)
    assert (len(lierla), len(c3lier)) == counts
    assert len({t.name for t in c3lier}) == len(c3lier)
    assert {t.name for t in lierla} <= {t.name for t in c3lier}
    assert all(t.kind != "conv3x3" for t in lierla)
    for t in c3lier:  # every target exists and has the declared kind
        m = root.get_submodule(t.path)
        assert isinstance(m, nn.Linear if t.kind == "linear" else nn.Conv2d)
        assert t.root == "unet" and not t.is_text_encoder and "." not in t.name
    forbidden = ("input_blocks.0.", "out.", "time_embed.", "label_emb.")
    assert not any(t.path.startswith(forbidden) or ".norm" in t.path for t in c3lier)


def test_sd1_kohya_names_and_shapes():
    fam = get_family("sd1")
    root = _meta_unet(SD15)
    targets = {t.name: t for t in fam.unet_targets(root, SD15, conv=True)}
    expect = {  # sd-scripts' diffusers-style names -> ComfyUI paths (comfy/utils.py unet_to_diffusers)
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q":
            ("input_blocks.1.1.transformer_blocks.0.attn1.to_q", "linear"),
        "lora_unet_down_blocks_0_attentions_0_proj_in": ("input_blocks.1.1.proj_in", "conv"),
        "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_ff_net_0_proj":
            ("output_blocks.3.1.transformer_blocks.0.ff.net.0.proj", "linear"),
        "lora_unet_down_blocks_0_resnets_0_conv1": ("input_blocks.1.0.in_layers.2", "conv3x3"),
        "lora_unet_down_blocks_0_resnets_0_conv2": ("input_blocks.1.0.out_layers.3", "conv3x3"),
        "lora_unet_down_blocks_0_resnets_0_time_emb_proj": ("input_blocks.1.0.emb_layers.1", "linear"),
        "lora_unet_down_blocks_1_resnets_0_conv_shortcut": ("input_blocks.4.0.skip_connection", "conv"),
        "lora_unet_down_blocks_0_downsamplers_0_conv": ("input_blocks.3.0.op", "conv3x3"),
        "lora_unet_up_blocks_0_upsamplers_0_conv": ("output_blocks.2.1.conv", "conv3x3"),
        "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_out_0":
            ("output_blocks.11.1.transformer_blocks.0.attn1.to_out.0", "linear"),
        "lora_unet_mid_block_attentions_0_proj_out": ("middle_block.1.proj_out", "conv"),
        "lora_unet_mid_block_resnets_1_conv2": ("middle_block.2.out_layers.3", "conv3x3"),
    }
    for name, (path, kind) in expect.items():
        assert (targets[name].path, targets[name].kind) == (path, kind), name
    # shapes of a rank-16 / conv-4 network as sd-scripts' networks/lora.py LoRAModule builds them
    net = LoRANetwork.create([targets[n] for n in expect], {"unet": root}, NetworkSpec("sd1", 16, 8, 4, 1.0))
    sd = net.kohya_state_dict()
    assert sd["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].shape == (16, 320, 1, 1)
    assert sd["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].shape == (4, 320, 3, 3)
    assert sd["lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight"].shape == (320, 4, 1, 1)
    assert sd["lora_unet_down_blocks_0_resnets_0_time_emb_proj.lora_down.weight"].shape == (16, 1280)
    assert sd["lora_unet_up_blocks_0_upsamplers_0_conv.lora_down.weight"].shape == (4, 1280, 3, 3)


def test_sd2_attn2_context_and_linear_proj():
    fam = get_family("sd2")
    root = _meta_unet(SD21)
    targets = {t.name: t for t in fam.unet_targets(root, SD21)}
    net = LoRANetwork.create([targets["lora_unet_down_blocks_0_attentions_0_proj_in"],
                              targets["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"]],
                             {"unet": root}, NetworkSpec("sd2", 16, 8))
    sd = net.kohya_state_dict()
    assert sd["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].shape == (16, 320)
    assert sd["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"].shape == (16, 1024)


def test_sdxl_uses_sgm_names():
    fam = get_family("sdxl")
    root = _meta_unet(SDXL)
    names = {t.name for t in fam.unet_targets(root, SDXL, conv=True)}
    for n in ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", "lora_unet_input_blocks_4_1_proj_in",
              "lora_unet_middle_block_1_transformer_blocks_9_ff_net_0_proj",
              "lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_out_0",
              "lora_unet_input_blocks_1_0_in_layers_2", "lora_unet_input_blocks_3_0_op",
              "lora_unet_input_blocks_4_0_skip_connection", "lora_unet_output_blocks_2_2_conv"):
        assert n in names, n
    assert not any("down_blocks" in n or "mid_block" in n for n in names)


def test_diffusers_namer_blocks():
    namer = DiffusersNamer(SD15)
    assert namer("input_blocks.1.1.transformer_blocks.0.attn2.to_k") == \
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    assert namer("input_blocks.11.0.out_layers.3") == "down_blocks.3.resnets.1.conv2"
    assert namer("input_blocks.9.0.op") == "down_blocks.2.downsamplers.0.conv"
    assert namer("output_blocks.5.2.conv") == "up_blocks.1.upsamplers.0.conv"
    assert namer("output_blocks.8.2.conv") == "up_blocks.2.upsamplers.0.conv"
    assert namer("output_blocks.0.0.skip_connection") == "up_blocks.0.resnets.0.conv_shortcut"
    assert namer("middle_block.0.emb_layers.1") == "mid_block.resnets.0.time_emb_proj"
    assert namer("input_blocks.0.0") is None and namer("time_embed.0") is None


def test_small_unet_install_roundtrip():
    cfg = {**SD15, "model_channels": 32, "context_dim": 32, "channel_mult": [1, 2], "num_res_blocks": [1, 1],
           "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1]}
    torch.manual_seed(0)
    root = UNetModel(cfg)
    fam = get_family("sd1")
    targets = fam.unet_targets(root, cfg, conv=True)
    net = LoRANetwork.create(targets, {"unet": root}, NetworkSpec("sdxl", 4, 4, 2, 1.0), seed=0)
    before = {k: v.clone() for k, v in root.state_dict().items()}
    x = torch.randn(1, 32, 8, 8)
    conv = root.get_submodule("input_blocks.1.0.in_layers.2")
    y0 = conv(x)
    with torch.no_grad():
        for m in net.loras():
            m.lora_up.weight.normal_()
    net.install({"unet": root})
    assert set(root.state_dict()) == set(before)
    assert not torch.allclose(conv(x), y0)
    net.remove()
    assert torch.equal(conv(x), y0)
    for k, v in root.state_dict().items():
        assert torch.equal(v, before[k])


def test_detect_family_walks_mro():
    assert detect_family(["TinySD15", "SD15", "BASE", "object"], {}).name == "sd1"
    assert detect_family(["KOALA_700M", "SDXL", "BASE"], {}).name == "sdxl"
    assert detect_family(["SD3", "BASE"], {}).name == "sd3"
    assert detect_family(["FluxSchnell", "Flux", "BASE"], {}).name == "flux"
    # a model no family names: the generic family; one that needs an input we cannot give: refused by name
    assert detect_family(["PixArtSigma", "PixArtAlpha", "BASE", "object"], {}).name == "generic"
    assert detect_family(["SD21UnclipH", "SD20", "BASE"], {}).name == "sd2"
    with pytest.raises(ValueError, match="SDXLRefiner.*aesthetic.*Supported: .*SD15.*generic"):
        detect_family(["SDXLRefiner", "BASE"], {})
    with pytest.raises(ValueError, match="WAN22_S2V.*audio"):
        detect_family(["WAN22_S2V", "WAN21_T2V", "BASE", "object"], {})
    with pytest.raises(ValueError, match="not a ComfyUI diffusion model config"):
        detect_family(["Something", "object"], {})


def test_family_metadata_values():
    sd1, sd2, sdxl, sd3, flux = (FAMILIES[n] for n in ("sd1", "sd2", "sdxl", "sd3", "flux"))
    assert (sd1.base_model_version(None, "eps"), sd2.base_model_version(None, "v"), sd2.base_model_version(None, "eps")) \
        == ("sd_v1", "sd_v2_v", "sd_v2")
    assert sdxl.base_model_version() == "sdxl_base_v1-0" and flux.base_model_version() == "flux1"
    assert sd3.base_model_version({"depth": 38}) == "5-large"
    assert sd3.base_model_version({"depth": 24, "x_block_self_attn_layers": [0, 1]}) == "5-medium"
    assert sd2.lora_architecture(None, "v") == "stable-diffusion-v2-768-v/lora"
    assert sdxl.lora_architecture() == "stable-diffusion-xl-v1-base/lora"
    assert sd3.modelspec_architecture({"depth": 24}) == "stable-diffusion-3-medium"
    assert flux.prediction_type() is None and sd2.prediction_type("v") == "v" and sd1.prediction_type() == "epsilon"
    assert [f.network_module for f in (sd1, sdxl, sd3, flux)] == \
        ["networks.lora", "networks.lora", "networks.lora_sd3", "networks.lora_flux"]
    assert sd1.supports_conv and sdxl.supports_conv and not flux.supports_conv and not sd3.supports_conv
    assert flux.te_prefixes == ("lora_te1", "lora_te3") and sdxl.te_prefixes == ("lora_te1", "lora_te2")
    assert flux.default_objective == "flow" and sd1.default_objective == "eps"
    assert sd2.default_resolution("v") == (768, 768) and flux.default_resolution() == (1024, 1024)
