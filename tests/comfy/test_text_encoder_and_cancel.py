"""Text-encoder LoRA round trip, deterministic graph runs, and Cancel, on tiny real models in ComfyUI."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open

import comfy_env
import graphs
from comfy_fixtures import comfy  # noqa: F401

WORKFLOW = "train_then_generate_sd15.api.json"


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _saved(ex, p):
    return graphs.saved_lora(ex, p)


def _te_graph(comfy, family, name):
    ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", f"te_{family}"), n=3)
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family=family, dataset=ds, steps=4, save_name=name)
    inject = graphs.one(p, "LoraLoop_InjectLoRA")
    p[inject]["inputs"]["train_text_encoder"] = True
    # the text encoder is trained: captions are encoded during training, not by Encode Dataset
    p[graphs.one(p, "LoraLoop_EncodeDataset")]["inputs"].pop("clip")
    return p


@pytest.mark.parametrize("family,prefixes", [("sd15", {"lora_te"}), ("sdxl", {"lora_te1", "lora_te2"})])
def test_text_encoder_lora_reproduces_clip_outputs(comfy, family, prefixes):
    from lora_loop_testing_pack import RESULTS

    p = _te_graph(comfy, family, f"te_{family}")
    loader, train = graphs.one(p, "LoraLoopTest_TinyModel"), graphs.one(p, "LoraLoop_TrainLoRA")
    ex, _ = comfy_env.run_prompt(p, f"te-{family}")
    name = _saved(ex, p)
    with safe_open(os.path.join(comfy["tmp"], "models", "loras", name), "pt") as f:
        keys = list(f.keys())
    te_prefixes = {k.split("_text_model_")[0] for k in keys if k.startswith("lora_te")}
    assert te_prefixes == prefixes, te_prefixes
    q = dict(p)
    q["ll"] = {"class_type": "LoraLoader", "inputs": {"model": [loader, 0], "clip": [loader, 1], "lora_name": name,
                                                      "strength_model": 1.0, "strength_clip": 1.0}}
    for tag, clip in (("trained", [train, 1]), ("loaded", ["ll", 1]), ("base", [loader, 1])):
        q[f"e_{tag}"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": "sks pattern 2"}}
        q[f"s_{tag}"] = {"class_type": "LoraLoopTest_SaveConditioning",
                         "inputs": {"conditioning": [f"e_{tag}", 0], "name": f"{family}_te_{tag}"}}
    log = comfy["log"]
    n = len(log.records)
    comfy_env.run_prompt(q, f"te-{family}-cmp", executor=ex)
    assert [r for r in log.records[n:] if "lora key not loaded" in r] == []
    trained = RESULTS[f"{family}_te_trained"][0][0].float()
    loaded = RESULTS[f"{family}_te_loaded"][0][0].float()
    base = RESULTS[f"{family}_te_base"][0][0].float()
    assert _rel(loaded, trained) <= 1e-5
    assert _rel(trained, base) > 1e-7, "text-encoder LoRA had no effect"


def test_same_inputs_and_seed_give_identical_lora_file(comfy):
    ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", "det"), n=3)
    files = []
    for i in range(2):
        p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=3, save_name="det")
        ex, _ = comfy_env.run_prompt(p, f"det-{i}", executor=comfy_env.new_executor())
        files.append(os.path.join(comfy["tmp"], "models", "loras", _saved(ex, p)))
    assert files[0] != files[1], "the second save must not overwrite the first"
    with safe_open(files[0], "pt") as a, safe_open(files[1], "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for k in a.keys():
            assert torch.equal(a.get_tensor(k), b.get_tensor(k)), k


def test_cancel_stops_within_a_step_and_comfyui_stays_usable(comfy):
    import importlib

    from lora_loop_testing_pack import RESULTS

    mm = importlib.import_module("comfy.model_management")  # (a plain `import comfy...` would shadow the fixture)

    ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", "cancel"), n=3)
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=50, save_name="cancel")
    loader = graphs.one(p, "LoraLoopTest_TinyModel")
    ex, seen = comfy_env.execute_watching(p, "cancel", total=50, cancel_at=3)  # the Train LoRA bar
    events = [e for e, _ in ex.status_messages]
    assert "execution_interrupted" in events, events
    assert max(seen) <= 4, f"training ran {max(seen)} steps after Cancel at step 3"
    assert not mm.processing_interrupted()
    # ComfyUI is usable afterwards and the base model carries no leftover LoRA
    q = {loader: p[loader]}
    graphs.add_predict_branch(q, [loader, 0], [loader, 1], "after_cancel", "k", sigma=1.0, text="x", seed=1)
    comfy_env.run_prompt(q, "after-cancel", executor=ex)
    from tiny_models import build

    mp, clip, _ = build("sd15", seed=0)
    import lora_loop_testing_pack as tp

    cond = clip.encode_from_tokens_scheduled(clip.tokenize("x"))
    with torch.inference_mode():
        fresh = tp.predict(mp, cond, 1, 64, 64, 1.0)
    assert torch.allclose(RESULTS["after_cancel"], fresh, atol=1e-6)
