"""random_crop and color_aug through the real graph (Captions & Augmentation into Load Dataset, Encode Dataset's
augment_variants): the versions are encoded once by ComfyUI's VAE, the run trains on them, and a re-run encodes
nothing."""
from __future__ import annotations

import os

import torch

import comfy_env
import graphs
from comfy_fixtures import comfy  # noqa: F401

WORKFLOW = "train_then_generate_sd15.api.json"


def test_augmented_versions_train_and_are_cached(comfy):
    ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", "augment"), n=2, size=(96, 64))
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=4, save_name="augment")
    p[graphs.one(p, "LoraLoop_BucketImages")]["inputs"]["enable_bucket"] = False  # 96x64 -> centre or random cut
    graphs.caption_options(p, random_crop=True, color_aug=True)
    encode = graphs.one(p, "LoraLoop_EncodeDataset")
    p[encode]["inputs"].update(augment_variants=3, cache_latents_to_disk=False)
    ex, _ = comfy_env.run_prompt(p, "augment")
    data = ex.caches.outputs.get(encode).outputs[0][0]
    assert len(data.latents) == 2 and all(len(v) == 3 for v in data.variants.values()) and len(data.variants) == 2
    assert data.stats["encoded"] + data.stats["memory_hits"] == 8
    crops = [v[0] for v in data.variants.values()]
    assert all(not torch.equal(c, data.latents[k]) for c, k in zip(crops, data.variants))
    chart = ex.history_result["outputs"][graphs.one(p, "LoraLoop_TrainLoRA")]["lora_loop_chart"][0]
    assert len(chart["loss"]) == 4 and all(torch.isfinite(torch.tensor(chart["loss"])))
    p[graphs.one(p, "LoraLoop_TrainLoRA")]["inputs"]["seed"] = 1  # re-run Encode Dataset's consumers only
    p[encode]["inputs"]["vae_batch_size"] = 2  # and Encode Dataset itself: every version from the memory cache
    ex, _ = comfy_env.run_prompt(p, "augment-again", executor=ex)
    again = ex.caches.outputs.get(encode).outputs[0][0]
    assert again.stats["encoded"] == 0 and again.stats["memory_hits"] == 8
