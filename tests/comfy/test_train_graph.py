"""The example graph runs through ComfyUI's real executor on tiny real-architecture models, and the
saved LoRA reproduces the trained MODEL through core's LoraLoader with zero 'lora key not loaded'."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open

import comfy_env
import graphs
from comfy_fixtures import comfy  # noqa: F401

WORKFLOW = "train_then_generate_sd15.api.json"


def _results():
    from lora_loop_testing_pack import RESULTS

    return RESULTS


def _dataset(comfy, name: str, n: int = 4, **kw) -> str:
    return graphs.make_dataset(os.path.join(comfy["tmp"], "in", name), n=n, **kw)


def _train_node(p):
    return graphs.one(p, "LoraLoop_TrainLoRA")


def _saved_name(ex, p) -> str:
    save_id = graphs.one(p, "LoraLoop_SaveLoRA")
    return graphs.saved_lora(ex, None, save_id)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize("family", ["sd15", "sd2v"])
def test_example_graph_trains_saves_and_reloads_exactly(comfy, family):
    ds = _dataset(comfy, f"ds_{family}")
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family=family, dataset=ds, steps=6,
                                save_name=f"graph_{family}")
    loader = graphs.one(p, "LoraLoopTest_TinyModel")
    train = _train_node(p)
    # the input MODEL before training
    graphs.add_predict_branch(p, [loader, 0], [loader, 1], f"{family}_base_before", "b0")
    ex, server = comfy_env.run_prompt(p, f"{family}-train")
    res = _results()
    name = _saved_name(ex, p)
    path = os.path.join(comfy["tmp"], "models", "loras", name)
    assert os.path.isfile(path)

    # kohya file format: only lora_down/lora_up/alpha keys with kohya names, ss_* metadata
    with safe_open(path, "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in keys)
    assert any("_down_blocks_" in k and "_attentions_" in k for k in keys), keys[:5]
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_base_model_version"] == ("sd_v1" if family == "sd15" else "sd_v2_v")
    assert int(meta["ss_steps"]) == 6

    chart = ex.history_result["outputs"][train]["lora_loop_chart"][0]
    assert len(chart["loss"]) == 6 and all(torch.isfinite(torch.tensor(chart["loss"])))

    # second prompt: trained MODEL vs core LoraLoader(saved file) vs untouched input MODEL
    q = {loader: p[loader]}
    q.update({k: v for k, v in p.items() if k not in q})
    q["ll"] = {"class_type": "LoraLoader", "inputs": {"model": [loader, 0], "clip": [loader, 1], "lora_name": name,
                                                      "strength_model": 1.0, "strength_clip": 1.0}}
    graphs.add_predict_branch(q, [train, 0], [train, 1], f"{family}_trained", "t")
    graphs.add_predict_branch(q, ["ll", 0], ["ll", 1], f"{family}_loaded", "l")
    graphs.add_predict_branch(q, [loader, 0], [loader, 1], f"{family}_base_after", "b1")
    log = comfy["log"]
    n_before = len(log.records)
    comfy_env.run_prompt(q, f"{family}-compare", executor=ex)
    not_loaded = [r for r in log.records[n_before:] if "lora key not loaded" in r]
    assert not_loaded == []
    trained, loaded = res[f"{family}_trained"], res[f"{family}_loaded"]
    base0, base1 = res[f"{family}_base_before"], res[f"{family}_base_after"]
    assert _rel(loaded, trained) <= 1e-5
    assert torch.equal(base0, base1), "training changed the input MODEL"
    assert _rel(trained, base0) > 1e-6, "the trained LoRA has no effect"

    # re-queue of the unchanged training prompt: everything is served from ComfyUI's cache
    comfy_env.call(ex.execute, p, f"{family}-again", extra_data={},
                   execute_outputs=[graphs.one(p, "LoraLoop_SaveLoRA")])
    cached = [d for e, d in ex.status_messages if e == "execution_cached"]
    assert cached and train in cached[-1]["nodes"]


def test_rerun_with_unchanged_data_does_no_vae_encode(comfy):
    ds = _dataset(comfy, "ds_cache", n=3)
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=1, save_name="cache")
    log = comfy["log"]
    comfy_env.run_prompt(p, "cache-1")
    # a fresh executor has an empty node cache: Encode Dataset runs again, but no image is VAE-encoded
    n = len(log.records)
    ex = comfy_env.new_executor()
    comfy_env.run_prompt(p, "cache-2", executor=ex)
    lines = [r for r in log.records[n:] if r.startswith("Encode Dataset:")]
    assert lines and "(0 encoded" in lines[-1], lines
    # a different resolution never reuses a stale latent
    p2 = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=1, save_name="cache",
                                 resolution=128)
    n = len(log.records)
    comfy_env.run_prompt(p2, "cache-3", executor=ex)
    lines = [r for r in log.records[n:] if r.startswith("Encode Dataset:")]
    assert lines and "(3 encoded" in lines[-1], lines
