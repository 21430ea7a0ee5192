"""Checkpoints, Cancel-saves and full-state resume through ComfyUI's real executor on tiny models:
N steps in one go == N/2 steps, then resumed to N (from the TRAIN_STATE output and from the -state
file on disk), bit for bit on CPU; Cancel writes the last completed step as LoRA + state."""
from __future__ import annotations

import copy
import importlib
import os

import torch
from safetensors import safe_open

import comfy_env
import graphs
from comfy_fixtures import comfy  # noqa: F401

WORKFLOW = "train_then_generate_sd15.api.json"


def _graph(comfy, name, steps, ds_name="ckpt_ds"):
    ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", ds_name), n=3)
    return graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=steps,
                                   save_name=name)


def _loras(comfy):
    return os.path.join(comfy["tmp"], "models", "loras")


def _saved(comfy, ex, save_id):
    return os.path.join(_loras(comfy), graphs.saved_lora(ex, None, save_id))


def _read(path):
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_half_then_resume_equals_straight_run(comfy):
    n = 6
    # A: straight n steps
    p = _graph(comfy, "straight", n)
    ex, _ = comfy_env.run_prompt(p, "straight", executor=comfy_env.new_executor())
    straight, _ = _read(_saved(comfy, ex, graphs.one(p, "LoraLoop_SaveLoRA")))

    # B: n/2 steps with a checkpoint at n/2, then a second Train LoRA continues from its TRAIN_STATE
    q = _graph(comfy, "chained", n // 2)
    t1 = graphs.one(q, "LoraLoop_TrainLoRA")
    graphs.train_options(q, t1, output_name="half", save_every_n_steps=n // 2)
    q["t2"] = copy.deepcopy(q[t1])
    q["t2"]["inputs"].pop("checkpoint_settings")
    graphs.train_options(q, "t2", steps=n, train_state=[t1, 5], output_name="second")
    save = graphs.one(q, "LoraLoop_SaveLoRA")
    q[save]["inputs"]["network"] = ["t2", 2]
    ex, _ = comfy_env.run_prompt(q, "chained", executor=comfy_env.new_executor())
    chained, meta = _read(_saved(comfy, ex, save))
    assert _same(chained, straight), "TRAIN_STATE resume differs from the straight run"
    chart = ex.history_result["outputs"]["t2"]["lora_loop_chart"][0]
    assert chart["start"] == n // 2 and len(chart["loss"]) == n

    folder = os.path.join(_loras(comfy), "half_checkpoints")
    assert sorted(os.listdir(folder)) == ["half-step00000003-state.json", "half-step00000003-state.tensors",
                                          "half-step00000003.safetensors"]
    import folder_paths

    listed = [f for f in folder_paths.get_filename_list("loras") if f.startswith("half_checkpoints")]
    assert listed == ["half_checkpoints/half-step00000003.safetensors"], listed  # LoraLoader lists no state file
    half, half_meta = _read(os.path.join(folder, "half-step00000003.safetensors"))
    assert half_meta["ss_steps"] == "3" and all(k.startswith("lora_unet_") for k in half)

    # C: resume from the state file on disk (path relative to the loras folder)
    r = _graph(comfy, "from_file", n)
    graphs.train_options(r, resume_from="half_checkpoints/half-step00000003-state.json")
    ex, _ = comfy_env.run_prompt(r, "from_file", executor=comfy_env.new_executor())
    from_file, _ = _read(_saved(comfy, ex, graphs.one(r, "LoraLoop_SaveLoRA")))
    assert _same(from_file, straight), "resume_from differs from the straight run"


def test_cancel_saves_last_completed_step(comfy):
    mm = importlib.import_module("comfy.model_management")
    from trainer.state import load_state

    p = _graph(comfy, "cancelled", 40)
    p[graphs.one(p, "LoraLoop_TrainLoRA")]["inputs"]["output_name"] = "cancel_run"
    ex, seen = comfy_env.execute_watching(p, "cancel-save", total=40, cancel_at=3)
    assert "execution_interrupted" in [e for e, _ in ex.status_messages]
    assert not mm.processing_interrupted()
    folder = os.path.join(_loras(comfy), "cancel_run_checkpoints")
    files = sorted(os.listdir(folder))
    assert len(files) == 3, files
    lora_file = [f for f in files if not f.endswith(("-state.json", "-state.tensors"))][0]
    step = int(lora_file.split("-step")[1].split(".")[0])
    assert step == max(seen) and step in (3, 4), (files, seen)
    sd, meta = _read(os.path.join(folder, lora_file))
    assert meta["ss_steps"] == str(step) and sd
    state = load_state(os.path.join(folder, lora_file[:-len(".safetensors")] + "-state"))
    assert state.step == step
    # the LoRA file holds exactly the state's weights (fp16 file vs fp32 state)
    assert all(torch.equal(sd[k], state.lora[k].to(sd[k].dtype)) for k in sd)


def test_divergence_names_the_last_good_checkpoint(comfy, monkeypatch):
    import sys

    from trainer.loop import TrainingDiverged

    # the pack as ComfyUI loaded it (its module name comes from the folder), not the test-side import
    ca = next(m for k, m in list(sys.modules.items())
              if k.endswith(".trainer.adapter.model") and hasattr(m, "ComfyTrainModel"))
    real = ca.ComfyTrainModel.denoise
    calls = {"n": 0}

    def nan_at_third(self, x_t, sigma, conds):
        calls["n"] += 1
        out = real(self, x_t, sigma, conds)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(ca.ComfyTrainModel, "denoise", nan_at_third)
    p = _graph(comfy, "nan", 5)
    p[graphs.one(p, "LoraLoop_TrainLoRA")]["inputs"]["output_name"] = "nan_run"
    import execution

    valid = comfy_env.run_async(execution.validate_prompt, "nan", p, None)
    ex = comfy_env.new_executor()
    comfy_env.call(ex.execute, p, "nan", extra_data={}, execute_outputs=valid[2])
    errors = [d for e, d in ex.status_messages if e == "execution_error"]
    assert errors, ex.status_messages
    msg = errors[0]["exception_message"]
    path = os.path.join(_loras(comfy), "nan_run_checkpoints", "nan_run-step00000002.safetensors")
    assert "at step 3" in msg and path in msg, msg
    assert os.path.isfile(path) and errors[0]["exception_type"].endswith(TrainingDiverged.__name__)
