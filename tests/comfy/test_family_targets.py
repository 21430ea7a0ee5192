"""Family targets on REAL ComfyUI modules at full size (built on the meta device: no weights).

For every family: the kohya module counts, and every generated name is a key that ComfyUI's own
``comfy.lora.model_lora_keys_unet`` / ``model_lora_keys_clip`` maps to exactly the module the Target
points at - i.e. a file with these names loads with zero "lora key not loaded".

Expected counts (what sd-scripts' networks/lora.py, lora_flux.py and lora_sd3.py create_modules build):
* SD1.5 / SD2.x U-Net: 16 transformers x 12 = 192 (LierLa); + 22 resnets x 3 + 14 shortcuts + 3 down + 3 up = 278.
* SDXL U-Net: 70 transformer blocks x 10 + 11 x 2 proj = 722; + 17 x 3 + 11 skip + 2 op + 2 conv = 788.
* TEs: CLIP-L 12 x 6 = 72, SD2 OpenCLIP-H 23 x 6 = 138, CLIP-G 32 x 6 = 192, T5-XXL 24 x 7 = 168.
* FLUX: 19 double x 10 + 38 single x 3 = 304.
* SD3 (sd-scripts lora_sd3 logic): each joint block has context_block + x_block with attn.qkv, attn.proj,
  mlp.fc1, mlp.fc2, adaLN_modulation.1 = 10; the last block's context_block is pre_only (qkv + adaLN),
  so depth d gives 10 (d - 1) + 7, plus 2 (attn2.qkv, attn2.proj) per SD3.5M self-attention x-block:
  SD3-M (d=24) 237, SD3.5-M (d=24, 13 attn2 layers) 263, SD3.5-L (d=38) 377.
"""
import pytest
import torch

from comfy_fixtures import comfy  # noqa: F401
from full_size import FLUX_DEV, SD15, SD21, SDXL, sd3 as _sd3

from trainer.config import NetworkConfig
from trainer.families import detect_family

pytestmark = pytest.mark.comfy

META = torch.device("meta")

def _build(config_cls, unet_config):
    mc = config_cls(dict(unet_config))
    mc.set_inference_dtype(torch.float16, None)
    model = mc.get_model({}, device=META)
    names = [c.__name__ for c in type(mc).__mro__]
    return mc, model, detect_family(names, mc.unet_config), names


def _unet_ok(model, targets):
    import comfy.lora

    key_map = comfy.lora.model_lora_keys_unet(model, {})
    bad = [t.name for t in targets if key_map.get(t.name) != f"diffusion_model.{t.path}.weight"]
    assert not bad, f"{len(bad)} names ComfyUI would not load (or maps elsewhere): {bad[:5]}"
    assert len({t.name for t in targets}) == len(targets)


def _clip_ok(clip_model, targets):
    import comfy.lora

    key_map = comfy.lora.model_lora_keys_clip(clip_model, {})
    bad = [t.name for t in targets if key_map.get(t.name) != f"{t.path}.weight"]
    assert not bad, f"{len(bad)} TE names ComfyUI would not load: {bad[:5]}"
    assert len({t.name for t in targets}) == len(targets)
    for t in targets:  # the Target path really is a Linear under the install root
        assert isinstance(clip_model.get_submodule(t.path), torch.nn.Linear)


def _clip(mc):
    return mc.clip_target().clip(device=META, dtype=torch.float16)


def test_sd15(comfy):
    import comfy.supported_models as sm

    mc, model, fam, _ = _build(sm.SD15, SD15)
    assert fam.name == "sd1"
    root = model.diffusion_model
    lierla = fam.unet_targets(root, mc.unet_config, conv=False)
    c3lier = fam.unet_targets(root, mc.unet_config, conv=True)
    assert (len(lierla), len(c3lier)) == (192, 278)
    names = {t.name: t for t in c3lier}
    assert names["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"].path == \
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q"
    assert names["lora_unet_down_blocks_0_attentions_0_proj_in"].kind == "conv"
    assert names["lora_unet_down_blocks_0_resnets_0_conv1"].kind == "conv3x3"
    assert names["lora_unet_down_blocks_0_resnets_0_time_emb_proj"].kind == "linear"
    assert names["lora_unet_down_blocks_1_resnets_0_conv_shortcut"].path == "input_blocks.4.0.skip_connection"
    assert names["lora_unet_down_blocks_0_downsamplers_0_conv"].path == "input_blocks.3.0.op"
    assert names["lora_unet_up_blocks_0_upsamplers_0_conv"].path == "output_blocks.2.1.conv"
    assert "lora_unet_mid_block_attentions_0_proj_out" in names
    assert not any(t.path.startswith(("input_blocks.0.", "out.", "time_embed.")) for t in c3lier)
    _unet_ok(model, c3lier)
    te = _clip(mc)
    te_targets = fam.text_encoder_targets(te, NetworkConfig(train_text_encoder=True))
    assert len(te_targets) == 72
    assert te_targets[0].name == "lora_te_text_model_encoder_layers_0_self_attn_q_proj" and te_targets[0].root == "te"
    _clip_ok(te, te_targets)


def test_sd2(comfy):
    import comfy.supported_models as sm

    mc, model, fam, _ = _build(sm.SD20, SD21)
    assert fam.name == "sd2"
    root = model.diffusion_model
    lierla = fam.unet_targets(root, mc.unet_config, conv=False)
    c3lier = fam.unet_targets(root, mc.unet_config, conv=True)
    assert (len(lierla), len(c3lier)) == (192, 278)
    assert {t.name: t.kind for t in lierla}["lora_unet_down_blocks_0_attentions_0_proj_in"] == "linear"
    _unet_ok(model, c3lier)
    te = _clip(mc)
    te_targets = fam.text_encoder_targets(te, NetworkConfig(train_text_encoder=True))
    assert len(te_targets) == 138
    assert max(int(t.name.split("_layers_")[1].split("_")[0]) for t in te_targets) == 22
    _clip_ok(te, te_targets)


def test_sdxl(comfy):
    import comfy.supported_models as sm

    mc, model, fam, _ = _build(sm.SDXL, SDXL)
    assert fam.name == "sdxl"
    root = model.diffusion_model
    lierla = fam.unet_targets(root, mc.unet_config, conv=False)
    c3lier = fam.unet_targets(root, mc.unet_config, conv=True)
    assert (len(lierla), len(c3lier)) == (722, 788)
    names = {t.name for t in c3lier}
    for n in ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", "lora_unet_input_blocks_4_1_proj_in",
              "lora_unet_middle_block_1_transformer_blocks_9_ff_net_0_proj", "lora_unet_input_blocks_1_0_in_layers_2",
              "lora_unet_input_blocks_3_0_op", "lora_unet_input_blocks_4_0_skip_connection",
              "lora_unet_output_blocks_2_2_conv"):
        assert n in names, n
    _unet_ok(model, c3lier)
    te = _clip(mc)
    te_targets = fam.text_encoder_targets(te, NetworkConfig(train_text_encoder=True))
    assert sum(t.name.startswith("lora_te1_") for t in te_targets) == 72
    assert sum(t.name.startswith("lora_te2_") for t in te_targets) == 192
    assert "lora_te2_text_model_encoder_layers_31_mlp_fc2" in {t.name for t in te_targets}
    _clip_ok(te, te_targets)


def _t5_clip(module_fn, **kw):
    cls = module_fn(dtype_t5=torch.float16, **kw)
    return cls(device=META, dtype=torch.float16)


def test_flux(comfy):
    import comfy.supported_models as sm
    import comfy.text_encoders.flux as flux_te

    mc, model, fam, names = _build(sm.Flux, FLUX_DEV)
    assert fam.name == "flux" and fam.modelspec_architecture(mc.unet_config, None, names) == "flux-1-dev"
    root = model.diffusion_model
    every = fam.unet_targets(root, mc.unet_config, options=NetworkConfig(train_text_encoder=True, train_blocks="all"))
    double = fam.unet_targets(root, mc.unet_config, options=NetworkConfig(train_text_encoder=True, train_blocks="double"))
    single = fam.unet_targets(root, mc.unet_config, options=NetworkConfig(train_text_encoder=True, train_blocks="single"))
    assert (len(every), len(double), len(single)) == (304, 190, 114)
    assert {t.name for t in every} == {t.name for t in double} | {t.name for t in single}
    got = {t.name for t in every}
    for n in ("lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_double_blocks_0_img_mod_lin",
              "lora_unet_double_blocks_18_txt_mlp_2", "lora_unet_single_blocks_0_linear1",
              "lora_unet_single_blocks_37_modulation_lin"):
        assert n in got, n
    _unet_ok(model, every)
    te = _t5_clip(flux_te.flux_clip)
    clip_only = fam.text_encoder_targets(te, NetworkConfig(train_text_encoder=True))
    assert len(clip_only) == 72 and all(t.name.startswith("lora_te1_") for t in clip_only)
    with_t5 = fam.text_encoder_targets(te, NetworkConfig(train_text_encoder=True, train_t5=True))
    t5 = [t for t in with_t5 if t.name.startswith("lora_te3_")]
    assert len(t5) == 168
    assert "lora_te3_encoder_block_0_layer_0_SelfAttention_q" in {t.name for t in t5}
    assert "lora_te3_encoder_block_23_layer_1_DenseReluDense_wi_1" in {t.name for t in t5}
    _clip_ok(te, with_t5)
    schnell = detect_family(["FluxSchnell", "Flux", "BASE", "object"], {})
    assert schnell is fam and fam.modelspec_architecture({}, None, ["FluxSchnell", "Flux"]) == "flux-1-schnell"


@pytest.mark.parametrize("label,cfg,expected,variant", [
    ("sd3-medium", _sd3(24), 237, "medium"),
    ("sd3.5-medium", _sd3(24, range(13), "rms", 384), 263, "5-medium"),
    ("sd3.5-large", _sd3(38, (), "rms"), 377, "5-large"),
])
def test_sd3(comfy, label, cfg, expected, variant):
    import comfy.supported_models as sm
    import comfy.text_encoders.sd3_clip as sd3_te

    mc, model, fam, _ = _build(sm.SD3, cfg)
    assert fam.name == "sd3" and fam.base_model_version(mc.unet_config) == variant
    targets = fam.unet_targets(model.diffusion_model, mc.unet_config)
    assert len(targets) == expected
    got = {t.name for t in targets}
    last = cfg["depth"] - 1
    assert f"lora_unet_joint_blocks_{last}_context_block_attn_qkv" in got
    assert f"lora_unet_joint_blocks_{last}_context_block_adaLN_modulation_1" in got
    assert f"lora_unet_joint_blocks_{last}_context_block_attn_proj" not in got  # pre_only
    assert "lora_unet_joint_blocks_0_x_block_mlp_fc1" in got
    assert ("lora_unet_joint_blocks_0_x_block_attn2_qkv" in got) == bool(cfg["x_block_self_attn_layers"])
    _unet_ok(model, targets)
    if label == "sd3-medium":
        te = _t5_clip(sd3_te.sd3_clip, clip_l=True, clip_g=True, t5=True)
        base = fam.text_encoder_targets(te, NetworkConfig(train_text_encoder=True))
        assert [sum(t.name.startswith(p + "_") for t in base) for p in ("lora_te1", "lora_te2", "lora_te3")] == \
            [72, 192, 0]
        full = fam.text_encoder_targets(te, NetworkConfig(train_text_encoder=True, train_t5=True))
        assert sum(t.name.startswith("lora_te3_") for t in full) == 168
        _clip_ok(te, full)


def test_unsupported_models_are_named(comfy):
    import comfy.supported_models as sm

    for cls in (sm.SDXLRefiner, sm.StableAudio, sm.WAN21_I2V, sm.Hunyuan3Dv2, sm.FluxInpaint):
        with pytest.raises(ValueError, match=f"{cls.__name__}.*Supported: .*FLUX.1.*Qwen-Image.*generic family"):
            detect_family([c.__name__ for c in cls.__mro__], {})


def test_every_comfy_model_gets_a_family_or_a_named_refusal(comfy):
    """Every model ComfyUI 0.8 can load is trained by a family (named, or the generic one for text-to-image/video
    models no family names) or refused with a message naming it."""
    import comfy.supported_models as sm

    generic, refused = [], []
    for cls in sm.models:
        names = [c.__name__ for c in cls.__mro__]
        try:
            fam = detect_family(names, {})
        except ValueError as e:
            assert cls.__name__ in str(e) and "Supported:" in str(e), str(e)
            refused.append(cls.__name__)
            continue
        if fam.name == "generic":
            generic.append(cls.__name__)
    # the text-to-image / text-to-video models no family names (the Cosmos ones are then refused by their
    # EDM / rectified-flow sampling, tests/comfy/test_dit_families.py)
    assert set(generic) == {
        "AuraFlow", "PixArtAlpha", "PixArtSigma", "HunyuanDiT", "HunyuanDiT1", "GenmoMochi", "LTXV",
        "HunyuanVideo", "HunyuanVideo15", "CosmosT2V", "CosmosT2IPredict2", "Omnigen2", "Kandinsky5Image",
        "Kandinsky5"}, sorted(generic)
    assert {"StableAudio", "ACEStep", "WAN21_I2V", "SVD_img2vid", "SDXLRefiner", "Hunyuan3Dv2"} <= set(refused)
