"""Running out of device memory during training (the device's OutOfMemoryError raised by the 4th training forward
through an APPLY_MODEL wrapper, ``LoraLoopTest_OutOfMemoryAt``): the run stops with a message naming the plan
that ran and the setting that fits, the last completed step is saved like Cancel saves it, a re-queue with that
setting continues from it, and ComfyUI keeps working."""
from __future__ import annotations

import os

import torch
from safetensors import safe_open

import comfy_env
import graphs
from comfy_fixtures import comfy  # noqa: F401

WORKFLOW = "train_then_generate_sd15.api.json"


def test_out_of_memory_saves_the_last_step_names_a_plan_that_fits_and_continues(comfy):
    ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", "oom"), n=2)
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=6, save_name="oom")
    loader = graphs.one(p, "LoraLoopTest_TinyModel")
    inject = graphs.one(p, "LoraLoop_InjectLoRA")
    p["oom"] = {"class_type": "LoraLoopTest_OutOfMemoryAt", "inputs": {"model": [loader, 0], "step": 4}}
    p[inject]["inputs"]["model"] = ["oom", 0]
    train = graphs.one(p, "LoraLoop_TrainLoRA")
    graphs.train_options(p, train, memory="resident", output_name="oom_run")
    ex = comfy_env.new_executor()
    comfy_env.execute(p, "oom-1", executor=ex)
    assert not ex.success
    err = [d for e, d in ex.status_messages if e == "execution_error"][0]
    assert err["node_type"] == "LoraLoop_TrainLoRA", err
    msg = err["exception_message"]
    assert "out of memory at step 4 with the plan resident:" in msg, msg
    assert "memory=checkpointed" in msg and "queue again" in msg, msg
    assert "Step 3 is saved:" in msg and "CUDA out of memory. Tried to allocate 2.00 GiB" in msg, msg
    saved = msg.split("Step 3 is saved: ")[1].split(".safetensors")[0] + ".safetensors"
    assert os.path.isfile(saved), saved
    with safe_open(saved, "pt") as f:
        assert f.metadata()["ss_steps"] == "3"
        assert any(not torch.all(f.get_tensor(k) == 0) for k in f.keys() if k.endswith("lora_up.weight"))

    # the suggested setting, queued again: training continues from step 3 (the wrapper's 4th call is past)
    graphs.train_options(p, train, memory="checkpointed")
    comfy_env.run_prompt(p, "oom-2", executor=ex)
    chart = ex.history_result["outputs"][train]["lora_loop_chart"][0]
    assert chart["start"] == 3 and len(chart["loss"]) == 6, chart
    # and ComfyUI's own nodes still sample with the base model
    q = {loader: p[loader]}
    graphs.add_predict_branch(q, [loader, 0], [loader, 1], "after_oom", "k", sigma=1.0, text="x", seed=1)
    comfy_env.run_prompt(q, "after-oom", executor=ex)


def test_out_of_memory_while_previews_sample_says_so_and_keeps_the_steps(comfy):
    """Previews sample on the training device after a step: out of memory there names the preview settings (not a
    memory plan), and the trained steps are saved."""
    ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", "oom_preview"), n=2)
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=6, save_name="oomp")
    loader = graphs.one(p, "LoraLoopTest_TinyModel")
    inject = graphs.one(p, "LoraLoop_InjectLoRA")
    p["oom"] = {"class_type": "LoraLoopTest_OutOfMemoryAt", "inputs": {"model": [loader, 0], "step": 1,
                                                                       "during": "sampling"}}
    p[inject]["inputs"]["model"] = ["oom", 0]
    train = graphs.one(p, "LoraLoop_TrainLoRA")
    graphs.train_options(p, train, memory="resident", output_name="oomp_run", preview_prompts="a test",
                         preview_every_n_steps=2, preview_steps=2, preview_width=64, preview_height=64,
                         preview_vae=[loader, 2])
    ex = comfy_env.new_executor()
    comfy_env.execute(p, "oomp-1", executor=ex)
    assert not ex.success
    msg = [d for e, d in ex.status_messages if e == "execution_error"][0]["exception_message"]
    assert "out of memory while sampling the preview after step 2 (64 x 64, 2 steps): training itself fits" in msg, msg
    assert "Previews node's width and height" in msg and "memory=" not in msg, msg
    saved = msg.split("Step 2 is saved: ")[1].split(".safetensors")[0] + ".safetensors"
    with safe_open(saved, "pt") as f:
        assert f.metadata()["ss_steps"] == "2"
