"""What Train LoRA's MODEL and CLIP outputs carry: the trained LoRA merged into the weights as LoraLoader merges it
(ComfyUI weight patches, so sampling runs at the base model's speed), except on weights ComfyUI stores quantized
(fp8 here), where the training bypass stays and merging would round the LoRA into the fp8 storage. Either way the
output samples like the saved file loaded by core's LoraLoader, and the base MODEL samples as before afterwards."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

import comfy_env
import graphs
from comfy_fixtures import comfy  # noqa: F401

WORKFLOW = "train_then_generate_sd15.api.json"


def _results():
    from lora_loop_testing_pack import RESULTS
    return RESULTS


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("weight_dtype", ["default", "fp8_e4m3fn"])
def test_train_loras_outputs_merge_the_lora_where_loraloader_would(comfy, weight_dtype):
    merged = weight_dtype == "default"
    ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", "form"), n=2)
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=4, lr=1e-2,
                                save_name=f"form_{weight_dtype}")
    loader = graphs.one(p, "LoraLoopTest_TinyModel")
    p[loader]["inputs"]["weight_dtype"] = weight_dtype
    inject, train = graphs.one(p, "LoraLoop_InjectLoRA"), graphs.one(p, "LoraLoop_TrainLoRA")
    p[inject]["inputs"].update(train_text_encoder=True)
    p[graphs.one(p, "LoraLoop_EncodeDataset")]["inputs"].pop("clip")  # captions encoded while training
    graphs.train_options(p, train, text_encoder_lr=1e-2)
    p["form"] = {"class_type": "LoraLoopTest_LoraForm", "inputs": {"model": [train, 0], "clip": [train, 1],
                                                                   "name": f"form_{weight_dtype}"}}
    graphs.add_predict_branch(p, [train, 0], [train, 1], f"trained_{weight_dtype}", "tp", sigma=1.0, text="x", seed=1)
    q = {loader: p[loader]}
    graphs.add_predict_branch(q, [loader, 0], [loader, 1], f"base_{weight_dtype}", "bp", sigma=1.0, text="x", seed=1)
    ex = comfy_env.new_executor()
    comfy_env.run_prompt(q, "form-base", executor=ex)
    base = _results()[f"base_{weight_dtype}"]
    comfy_env.run_prompt(p, f"form-{weight_dtype}", executor=ex)
    lora = graphs.saved_lora(ex, p)
    sd = load_file(os.path.join(comfy["tmp"], "models", "loras", lora))
    unet = {k.split(".")[0] for k in sd if k.startswith("lora_unet_")}
    te = {k.split(".")[0] for k in sd if k.startswith("lora_te")}
    assert unet and te

    form = _results()[f"form_{weight_dtype}"]
    notes = ex.history_result["outputs"][train]["lora_loop_chart"][0]["notes"]
    note = [n for n in notes if n.startswith("sampling: ")]
    if merged:  # one weight patch per trained module, no bypass left
        assert len(form["model_patches"]) == len(unet) and not form["model_injections"], form
        assert len(form["clip_patches"]) == len(te) and not form["clip_injections"], form
        assert note == [f"sampling: the LoRA is merged into the weights as LoraLoader does ({len(unet) + len(te)} "
                        "modules)"], notes
    else:  # fp8 U-Net: bypass; the fp32 text encoder: merged
        assert not form["model_patches"] and form["model_injections"] == ["lora_loop"], form
        assert len(form["clip_patches"]) == len(te) and not form["clip_injections"], form
        assert note == [f"sampling: {len(te)} modules merged into the weights as LoraLoader does, {len(unet)} on "
                        "quantized weights kept as a bypass (exactly as trained)"], notes

    # the outputs sample like the saved file through core's LoraLoader
    comfy_env.run_prompt(graphs.lora_reload_graph(loader, p[loader], lora, f"reload_{weight_dtype}"),
                         f"form-reload-{weight_dtype}", executor=ex)
    trained, reloaded = _results()[f"trained_{weight_dtype}"], _results()[f"reload_{weight_dtype}"]
    assert _rel(trained, base) > 1e-3  # the LoRA has an effect
    # fp8: LoraLoader merges into the fp8 storage and rounds (ComfyUI's stochastic rounding); the bypass does not
    assert _rel(trained, reloaded) <= (1e-6 if merged else 5e-2), _rel(trained, reloaded)

    # the base MODEL samples exactly as before, after the merged clone was loaded
    comfy_env.run_prompt(q, "form-base-again", executor=ex)
    assert torch.equal(_results()[f"base_{weight_dtype}"], base)
