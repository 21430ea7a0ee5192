"""Gradient checkpointing on every family and text encoder, through the real graph.

Each family's example graph trains its U-Net/DiT and text-encoder LoRA (CLIP-L/G and, for FLUX, T5) in every
memory mode (resident, checkpointed, streamed): the saved files must be identical (CPU, fp32: the recomputed forward runs the same
ops). FLUX's and CLIP's blocks write into their residual stream in place (``img += ...``), which is what
``functional_residuals`` makes safe to recompute."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open

import comfy_env
import graphs
from comfy_fixtures import comfy  # noqa: F401

WORKFLOWS = {"sd15": "train_then_generate_sd15.api.json", "sdxl": "train_then_generate_sdxl.api.json",
             "sd3": "train_then_generate_sdxl.api.json", "flux": "train_then_generate_flux.api.json"}


def _load(path):
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("family", list(WORKFLOWS))
def test_checkpointing_trains_the_same_lora_on_every_family_and_text_encoder(comfy, family):
    ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", f"gc_{family}"), n=2)
    results = []
    for mode in ("resident", "checkpointed", "streamed"):
        p = graphs.tiny_train_graph(graphs.load_api(WORKFLOWS[family]), family=family, dataset=ds, steps=3, lr=1e-2,
                                    save_name=f"gc_{family}_{mode}")
        inject = p[graphs.one(p, "LoraLoop_InjectLoRA")]["inputs"]
        inject["train_text_encoder"] = True
        inject["train_t5"] = family == "flux"
        p[graphs.one(p, "LoraLoop_EncodeDataset")]["inputs"].pop("clip")
        train = graphs.one(p, "LoraLoop_TrainLoRA")
        graphs.train_options(p, train, text_encoder_lr=1e-3, memory=mode, blocks_to_swap=1 if mode == "streamed" else 0)
        ex, _ = comfy_env.run_prompt(p, f"gc-{family}-{mode}")
        notes = ex.history_result["outputs"][train]["lora_loop_chart"][0]["notes"]
        plan = [n for n in notes if n.startswith("memory: ")]
        assert plan and plan[0].startswith(f"memory: {mode}") and "available on cpu" in plan[0], notes
        results.append(_load(os.path.join(comfy["tmp"], "models", "loras", graphs.saved_lora(ex, p))))
    a, b, c = results
    assert a.keys() == b.keys() == c.keys()
    te = {k.split("_")[1] for k in a if k.startswith("lora_te")}
    assert te == ({"te1", "te3"} if family == "flux" else {"te"} if family == "sd15" else {"te1", "te2"}), te
    for k in a:
        assert torch.equal(a[k], b[k]), (k, float((a[k] - b[k]).abs().max()))
        assert torch.equal(a[k], c[k]), (k, float((a[k] - c[k]).abs().max()))
    # every part trained (a text encoder's last layer may get no gradient: SDXL and FLUX read CLIP's penultimate)
    for part in ["unet"] + sorted(te):
        ups = [k for k in a if k.startswith(f"lora_{part}_") and k.endswith("lora_up.weight")]
        assert ups and any(not torch.all(a[k] == 0) for k in ups), part
