"""The tiny real-architecture models and the test-only node pack, run through ComfyUI's real executor."""
import os

import pytest
import torch
from comfy_fixtures import comfy  # noqa: F401

import comfy_env
import tiny_models

pytestmark = pytest.mark.comfy

LATENT_CHANNELS = {"sd15": 4, "sd2v": 4, "sdxl": 4, "sd3": 16, "flux": 16, "flux_schnell": 16}
MODEL_TYPES = {"sd15": "EPS", "sd2v": "V_PREDICTION", "sdxl": "EPS", "sd3": "FLOW", "flux": "FLUX",
               "flux_schnell": "FLOW"}
CONTEXT_DIMS = {"sd15": 32, "sd2v": 48, "sdxl": 80, "sd3": 4096, "flux": 40, "flux_schnell": 40}


def _pack():
    from lora_loop_testing_pack import RESULTS, _MODEL_CACHE

    return RESULTS, _MODEL_CACHE


def _graph(family: str, seed: int = 0) -> dict:
    return {
        "1": {"class_type": "LoraLoopTest_TinyModel", "inputs": {"family": family, "seed": seed}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of a tiny cat"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 3,
            "steps": 2, "cfg": 2.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
        "8": {"class_type": "LoraLoopTest_SaveTensor", "inputs": {"latent": ["5", 0], "name": f"{family}_sample"}},
        "9": {"class_type": "LoraLoopTest_SaveConditioning", "inputs": {"conditioning": ["2", 0],
                                                                        "name": f"{family}_cond"}},
        "10": {"class_type": "LoraLoopTest_ModelPredict", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "seed": 7, "width": 64, "height": 64, "sigma": 1.0}},
        "11": {"class_type": "LoraLoopTest_SaveTensor", "inputs": {"latent": ["10", 0], "name": f"{family}_pred"}},
    }


@pytest.mark.parametrize("family", tiny_models.BASE_FAMILIES)  # the newer ones: test_dit_families.py
def test_family_runs_through_real_executor(comfy, family):  # noqa: F811
    results, cache = _pack()
    results.clear()
    ex, _ = comfy_env.run_prompt(_graph(family), prompt_id=f"tiny-{family}")

    sample = results[f"{family}_sample"]
    assert sample.shape == (1, LATENT_CHANNELS[family], 8, 8)
    assert torch.isfinite(sample).all() and sample.abs().sum() > 0

    cond, extra = results[f"{family}_cond"][0]
    assert cond.shape[0] == 1 and cond.shape[-1] == CONTEXT_DIMS[family]
    assert torch.isfinite(cond).all() and cond.abs().sum() > 0
    assert "pooled_output" in extra and torch.isfinite(extra["pooled_output"]).all()

    pred = results[f"{family}_pred"]
    assert pred.shape == (1, LATENT_CHANNELS[family], 8, 8) and torch.isfinite(pred).all()

    images = ex.history_result["outputs"]["7"]["images"]
    assert len(images) == 1
    import folder_paths
    from PIL import Image

    path = os.path.join(folder_paths.get_directory_by_type(images[0]["type"]), images[0]["subfolder"],
                        images[0]["filename"])
    with Image.open(path) as img:
        assert img.size == (64, 64)

    mp, clip, vae = cache[(family, 0, "default")]
    assert mp.model.model_type.name == MODEL_TYPES[family]
    assert vae.latent_channels == LATENT_CHANNELS[family]


@pytest.mark.parametrize("family", tiny_models.FAMILIES)
def test_weights_are_inference_tensors_small_and_seeded(comfy, family):  # noqa: F811
    mp_a, clip_a, vae_a = tiny_models.build(family, seed=5)
    mp_b, clip_b, _ = tiny_models.build(family, seed=5)
    mp_c, _, _ = tiny_models.build(family, seed=6)
    sd_a = mp_a.model.diffusion_model.state_dict()
    sd_b = mp_b.model.diffusion_model.state_dict()
    sd_c = mp_c.model.diffusion_model.state_dict()
    assert all(v.is_inference() for v in sd_a.values())
    assert all(p.is_inference() for p in clip_a.cond_stage_model.parameters())
    assert all(p.is_inference() for p in vae_a.first_stage_model.parameters())
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    te_a, te_b = clip_a.cond_stage_model.state_dict(), clip_b.cond_stage_model.state_dict()
    assert all(torch.equal(te_a[k], te_b[k]) for k in te_a)
    assert any(not torch.equal(sd_a[k], sd_c[k]) for k in sd_a)
    assert all(torch.isfinite(v.float()).all() for v in sd_a.values())
    total = sum(tiny_models.count_params(m) for m in (mp_a.model.diffusion_model, clip_a.cond_stage_model,
                                                      vae_a.first_stage_model))
    # the LLM text encoders keep their real vocabularies (150k-256k token embeddings)
    limit = 7_000_000 if family in tiny_models.BASE_FAMILIES else 20_000_000
    assert total < limit, f"tiny {family} has {total} params"


def test_tiny_model_node_returns_same_objects_on_requeue(comfy):  # noqa: F811
    results, cache = _pack()
    graph = {
        "1": {"class_type": "LoraLoopTest_TinyModel", "inputs": {"family": "sd15", "seed": 11}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "x"}},
        "3": {"class_type": "LoraLoopTest_SaveConditioning", "inputs": {"conditioning": ["2", 0], "name": "c"}},
    }
    comfy_env.run_prompt(graph, prompt_id="requeue-1")
    first = cache[("sd15", 11, "default")]
    comfy_env.run_prompt(graph, prompt_id="requeue-2")  # fresh executor: node runs again, must hit the cache
    assert cache[("sd15", 11, "default")] is first


def test_model_predict_is_deterministic_and_depends_on_inputs(comfy):  # noqa: F811
    results, _ = _pack()

    def graph(seed, sigma, text, name):
        return {
            "1": {"class_type": "LoraLoopTest_TinyModel", "inputs": {"family": "sdxl", "seed": 0}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": text}},
            "3": {"class_type": "LoraLoopTest_ModelPredict", "inputs": {
                "model": ["1", 0], "positive": ["2", 0], "seed": seed, "width": 64, "height": 96, "sigma": sigma}},
            "4": {"class_type": "LoraLoopTest_SaveTensor", "inputs": {"latent": ["3", 0], "name": name}},
        }

    comfy_env.run_prompt(graph(1, 2.0, "a red cube", "a"), prompt_id="pred-a")
    comfy_env.run_prompt(graph(1, 2.0, "a red cube", "b"), prompt_id="pred-b")
    comfy_env.run_prompt(graph(2, 2.0, "a red cube", "seed"), prompt_id="pred-seed")
    comfy_env.run_prompt(graph(1, 2.0, "a blue sphere", "text"), prompt_id="pred-text")
    assert results["a"].shape == (1, 4, 12, 8)
    assert torch.equal(results["a"], results["b"])
    assert not torch.allclose(results["a"], results["seed"])
    assert not torch.allclose(results["a"], results["text"])


def test_sdxl_adm_and_flux_guidance_reach_the_model(comfy):  # noqa: F811
    """The cond preparation must feed the family-specific extra conds (SDXL adm y, Flux guidance)."""
    import comfy.samplers
    import comfy.sampler_helpers
    from lora_loop_testing_pack import predict

    for family, key in (("sdxl", "y"), ("sd3", "y"), ("flux", "guidance")):
        mp, clip, _ = tiny_models.build(family, 0)
        cond = clip.encode_from_tokens_scheduled(clip.tokenize("hello"))
        noise = torch.zeros(1, LATENT_CHANNELS[family], 8, 8)
        conds = comfy.samplers.encode_model_conds(mp.model.extra_conds, comfy.sampler_helpers.convert_cond(cond),
                                                  noise, "cpu", "positive")
        assert key in conds[0]["model_conds"], f"{family}: no {key} in {list(conds[0]['model_conds'])}"
        if family == "sd3":  # adm = pooled only; nothing size- or guidance-dependent to vary
            continue
        with torch.inference_mode():
            base = predict(mp, cond, 0, 64, 64, 1.0)
            changed = [[cond[0][0], {**cond[0][1], "guidance": 1.0, "width": 512, "height": 256}]]
            other = predict(mp, changed, 0, 64, 64, 1.0)
        assert not torch.allclose(base, other), f"{family}: extra conds did not change the prediction"


def test_noise_images_encode_and_decode(comfy):  # noqa: F811
    results, _ = _pack()
    graph = {
        "1": {"class_type": "LoraLoopTest_TinyModel", "inputs": {"family": "flux", "seed": 0}},
        "2": {"class_type": "LoraLoopTest_NoiseImages", "inputs": {"width": 64, "height": 48, "batch_size": 2,
                                                                   "seed": 4}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "LoraLoopTest_SaveTensor", "inputs": {"latent": ["3", 0], "name": "enc"}},
    }
    comfy_env.run_prompt(graph, prompt_id="noise-images")
    from lora_loop_testing_pack import noise_images

    enc = results["enc"]
    assert enc.shape == (2, 16, 6, 8) and torch.isfinite(enc).all()
    a, b = noise_images(64, 48, 2, 4), noise_images(64, 48, 2, 5)
    assert a.shape == (2, 48, 64, 3) and 0.0 <= a.min() and a.max() <= 1.0
    assert torch.equal(a, noise_images(64, 48, 2, 4)) and not torch.equal(a, b)
    assert not torch.equal(a[0], a[1])
