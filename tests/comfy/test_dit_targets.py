"""The newer families' targets on REAL ComfyUI modules at full size (built on the meta device: no weights): module
counts as the trainers each family follows build them, and every name a key that ComfyUI's own
``comfy.lora.model_lora_keys_unet`` maps to exactly the module the Target points at (zero "lora key not loaded").

Expected counts (per block x blocks):
* Qwen-Image 20B: 60 x 14 = 840 (musubi-tuner lora_qwen_image: every Linear of QwenImageTransformerBlock).
* Z-Image Turbo: 30 layers x 5 (attention.qkv, attention.out, feed_forward.w1/w2/w3; no adaLN, no refiners) = 150
  (musubi-tuner lora_zimage).
* Lumina-Image 2.0: refiners 2 x 6 + 2 x 5, layers 26 x 6, final_layer 2 = 180 (sd-scripts lora_lumina).
* HiDream-I1: 16 double x 15 + 32 single x 8 = 496 (routed MoE experts frozen, as ai-toolkit).
* Chroma1-HD: 19 double x 8 + 38 single x 2 = 228 (sd-scripts lora_flux --model_type chroma).
* Wan 2.1 14B / Wan 2.2 A14B expert: 40 x 10 = 400; Wan 2.1 1.3B and Wan 2.2 TI2V-5B: 30 x 10 = 300.
* FLUX.2-dev: 8 double x 8 + 48 single x 2 = 160 (musubi-tuner lora_flux_2; the shared modulation frozen).
* HunyuanImage 2.1: 20 double x 10 + 40 single x 3 = 320 (sd-scripts lora_hunyuan_image; token refiner frozen).
"""
import pytest
import torch

import full_size as fs
from comfy_fixtures import comfy  # noqa: F401

from trainer.families import detect_family

pytestmark = pytest.mark.comfy

META = torch.device("meta")

CASES = {
    "Qwen-Image": ("QwenImage", fs.QWEN_IMAGE, "qwen_image", 840),
    "Z-Image Turbo": ("ZImage", fs.Z_IMAGE_TURBO, "z_image", 150),
    "Lumina-Image 2.0": ("Lumina2", fs.LUMINA2, "lumina2", 180),
    "HiDream-I1": ("HiDream", fs.HIDREAM_I1, "hidream", 496),
    "Chroma1-HD": ("Chroma", fs.CHROMA1_HD, "chroma", 228),
    "Wan2.1-T2V-14B": ("WAN21_T2V", fs.WAN21_14B, "wan", 400),
    "Wan2.1-T2V-1.3B": ("WAN21_T2V", fs.WAN21_1_3B, "wan", 300),
    "Wan2.2-TI2V-5B": ("WAN22_T2V", fs.WAN22_TI2V_5B, "wan", 300),
    "FLUX.2-dev": ("Flux2", fs.FLUX2_DEV, "flux2", 160),
    "HunyuanImage-2.1": ("HunyuanImage21", fs.HUNYUAN_IMAGE21, "hunyuan_image", 320),
}


def _build(config_class: str, unet_config: dict):
    import comfy.supported_models as sm

    mc = getattr(sm, config_class)(dict(unet_config))
    mc.set_inference_dtype(torch.bfloat16, None)
    return mc, mc.get_model({}, device=META), [c.__name__ for c in type(mc).__mro__]


@pytest.mark.parametrize("case", list(CASES))
def test_full_size_counts_and_names_comfy_loads(comfy, case):  # noqa: F811
    import comfy.lora

    config_class, cfg, family, expected = CASES[case]
    mc, model, names = _build(config_class, cfg)
    fam = detect_family(names, mc.unet_config)
    assert fam.name == family
    targets = fam.unet_targets(model.diffusion_model, mc.unet_config)
    assert len(targets) == expected, (case, len(targets))
    key_map = comfy.lora.model_lora_keys_unet(model, {})
    bad = [t.name for t in targets if key_map.get(t.name) != f"diffusion_model.{t.path}.weight"]
    assert not bad, f"{len(bad)} names ComfyUI would not load (or maps elsewhere): {bad[:5]}"
    assert len({t.name for t in targets}) == len(targets)
    assert all(isinstance(model.diffusion_model.get_submodule(t.path), torch.nn.Linear) for t in targets)


def test_wan_image_to_video_is_refused(comfy):  # noqa: F811
    """Wan 2.2 I2V A14B is detected as WAN21_T2V; its 36 input channels say it needs an image."""
    import comfy.model_patcher

    from trainer.adapter import detect_family as detect_model_family

    _, model, _ = _build("WAN21_T2V", fs.WAN22_I2V_A14B)
    mp = comfy.model_patcher.ModelPatcher(model, load_device=META, offload_device=META)
    with pytest.raises(ValueError, match="36 input channels for 16 latent channels.*image-to-video"):
        detect_model_family(mp)


# text encoder -> (ComfyUI config whose clip_target builds it, expected modules): 7 per layer in use (q, k, v, o,
# gate, up, down; T5: q, k, v, o, wi_0, wi_1, wo); "hidden", -2 encoders leave their last layer out
TE_CASES = {
    "Qwen2.5-VL-7B (Qwen-Image)": ("QwenImage", fs.QWEN_IMAGE, "qwen_image", {"text_encoders.qwen25_7b": 28 * 7}),
    "Qwen3-4B (Z-Image)": ("ZImage", fs.Z_IMAGE_TURBO, "z_image", {"text_encoders.qwen3_4b": 35 * 7}),
    "Gemma-2-2B (Lumina 2)": ("Lumina2", fs.LUMINA2, "lumina2", {"text_encoders.gemma2_2b": 25 * 7}),
    "UMT5-XXL (Wan)": ("WAN21_T2V", fs.WAN21_14B, "wan", {"text_encoders.umt5xxl": 24 * 7}),
    # FLUX.2 reads the inputs of Mistral's layers 10, 20 and 30: 30 of 40 layers
    "Mistral-3-24B (FLUX.2)": ("Flux2", fs.FLUX2_DEV, "flux2", {"text_encoders.mistral3_24b": 30 * 7}),
    # HiDream reads every Llama hidden state; CLIP-L 12 x 6, CLIP-G 32 x 6 (its pooled outputs)
    "Llama-3.1-8B + CLIP-L/G (HiDream)": ("HiDream", fs.HIDREAM_I1, "hidream",
                                          {"text_encoders.llama": 32 * 7, "lora_te1": 72, "lora_te2": 192}),
    # layer_idx -3: 26 of 28 layers
    "Qwen2.5-VL-7B (HunyuanImage 2.1)": ("HunyuanImage21", fs.HUNYUAN_IMAGE21, "hunyuan_image",
                                         {"text_encoders.qwen25_7b": 26 * 7}),
}


def _text_encoder(mc, config_class: str):
    """The text-encoder model ComfyUI's CLIPLoader builds for the family (FLUX.2's and HiDream's
    ``clip_target()`` return None in ComfyUI 0.8.0)."""
    if config_class == "Flux2":
        import comfy.text_encoders.flux as flux

        return flux.flux2_te()(device=META, dtype=torch.bfloat16)
    if config_class == "HiDream":
        import comfy.text_encoders.hidream as hidream

        return hidream.hidream_clip()(device=META, dtype=torch.bfloat16)
    return mc.clip_target().clip(device=META, dtype=torch.bfloat16)


@pytest.mark.parametrize("case", list(TE_CASES))
def test_full_size_text_encoder_targets_comfy_loads(comfy, case):  # noqa: F811
    import comfy.lora

    config_class, cfg, family, expected = TE_CASES[case]
    mc, _, names = _build(config_class, cfg)
    fam = detect_family(names, mc.unet_config)
    assert fam.name == family
    te = _text_encoder(mc, config_class)
    targets = fam.text_encoder_targets(te, {"train_text_encoder": True})
    counts = {}
    for t in targets:
        counts[t.prefix] = counts.get(t.prefix, 0) + 1
    assert counts == expected, counts
    key_map = comfy.lora.model_lora_keys_clip(te, {})
    bad = [t.name for t in targets if key_map.get(t.name) != f"{t.path}.weight"]
    assert not bad, f"{len(bad)} TE names ComfyUI would not load: {bad[:5]}"
    assert all(isinstance(te.get_submodule(t.path), torch.nn.Linear) for t in targets)
