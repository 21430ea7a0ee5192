"""Gradient checkpointing and streaming on the newer families and the generic family, through the real graph.

For each tiny model the same run in the ``resident``, ``checkpointed`` and ``streamed`` memory modes (text encoders
training along where the family has them) must save identical files (CPU, fp32: the recomputed forward runs the
same ops), and checkpointing must really wrap the model's blocks."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open

import comfy_env
import graphs
import tiny_models
from comfy_fixtures import comfy  # noqa: F401

pytestmark = pytest.mark.comfy

WORKFLOW = "train_then_generate_flux.api.json"
# family -> (blocks checkpointing wraps in the tiny model, whether its text encoders train along)
FAMILIES = {
    "qwen_image": (2, True), "z_image": (6, True), "lumina2": (6, True), "chroma": (4, True), "hidream": (3, True),
    "flux2": (4, True), "hunyuan_image": (6, True), "wan21": (2, True), "auraflow": (3, False),
    "kandinsky5_image": (3, False), "hunyuan_dit": (4, False),
}


def _load(path):
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_memory_mode_trains_the_same_lora(comfy, family):  # noqa: F811
    from trainer.adapter import checkpoint_blocks

    blocks, te = FAMILIES[family]
    mp, _, _ = tiny_models.build(family, 0)
    # the blocks checkpointing recomputes (the token refiner's block counts for HunyuanImage)
    assert len(checkpoint_blocks(mp.model.diffusion_model)) == blocks
    ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", f"dgc_{family}"), n=2)
    results = []
    for mode in ("resident", "checkpointed", "streamed"):
        p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family=family, dataset=ds, steps=3, lr=1e-2,
                                    save_name=f"dgc_{family}_{mode}")
        train = graphs.one(p, "LoraLoop_TrainLoRA")
        if te:
            inject = p[graphs.one(p, "LoraLoop_InjectLoRA")]["inputs"]
            inject["train_text_encoder"] = True
            inject["train_t5"] = family in ("chroma", "hidream")
            p[graphs.one(p, "LoraLoop_EncodeDataset")]["inputs"].pop("clip")
            graphs.train_options(p, train, text_encoder_lr=1e-3)
        graphs.train_options(p, train, memory=mode, blocks_to_swap=1 if mode == "streamed" else 0)
        ex, _ = comfy_env.run_prompt(p, f"dgc-{family}-{mode}")
        notes = ex.history_result["outputs"][train]["lora_loop_chart"][0]["notes"]
        plan = [n for n in notes if n.startswith("memory: ")]
        assert plan and plan[0].startswith(f"memory: {mode}"), notes
        results.append(_load(os.path.join(comfy["tmp"], "models", "loras", graphs.saved_lora(ex, p))))
    a, b, c = results
    assert a.keys() == b.keys() == c.keys()
    assert any(k.startswith(("text_encoders.", "lora_te")) for k in a) == te
    for k in a:
        assert torch.equal(a[k], b[k]), (k, float((a[k] - b[k]).abs().max()))
        assert torch.equal(a[k], c[k]), (k, float((a[k] - c[k]).abs().max()))
