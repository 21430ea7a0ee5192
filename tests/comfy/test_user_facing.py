"""What a user meets, through ComfyUI's real executor: workflows made for an earlier release stop with a message
that says how to update them (instead of losing settings), the saved file's header carries real values, Save
LoRA's verify reloads the file through ComfyUI's LoRA loader, two Train LoRA nodes share one graph, save_last_n
counts the folder, and images without captions are reported."""
from __future__ import annotations

import json
import os
import re

import torch
from safetensors import safe_open

import comfy_env
import graphs
from comfy_fixtures import comfy  # noqa: F401

WORKFLOW = "train_then_generate_sd15.api.json"
LEGACY = os.path.join(graphs.WORKFLOWS, "legacy")


def _dataset(comfy, name, n=3, **kw):
    path = os.path.join(comfy["tmp"], "in", name)
    if not os.path.isdir(path):
        graphs.make_dataset(path, n=n, **kw)
    return path


def _meta(name):
    import folder_paths

    with safe_open(os.path.join(folder_paths.get_folder_paths("loras")[0], name), "pt") as f:
        return f.metadata()


def _errors(ex):
    return [d for e, d in ex.status_messages if e == "execution_error"]


def _legacy(comfy, name: str, **train) -> dict:
    with open(os.path.join(LEGACY, name), encoding="utf-8") as f:
        old = json.load(f)
    p = graphs.tiny_train_graph(old, family="sd15", dataset=_dataset(comfy, "legacy"), steps=2, save_name="legacy")
    p[graphs.one(p, "LoraLoop_TrainLoRA")]["inputs"].update(train)
    return p


# ---- workflows of the earlier release ------------------------------------------------------------------
def test_old_api_workflow_with_moved_settings_stops_with_how_to_update(comfy):
    p = _legacy(comfy, "train_watch_generate_sd15.0.1.api.json")
    ex = comfy_env.execute(p, "legacy-watch")
    errors = _errors(ex)
    assert errors and errors[0]["node_type"] == "LoraLoop_TrainLoRA", ex.status_messages
    msg = errors[0]["exception_message"]
    for part in ("earlier LoRA Loop", "preview_prompts=", "save_every_n_steps=250", "Previews (LoRA Loop)",
                 "Checkpoints & Resume (LoRA Loop)", "'preview_settings' input", "'checkpoint_settings' input"):
        assert part in msg, (part, msg)
    assert "preview_seed" in msg and "noise_offset" not in msg  # only what differs from the defaults
    assert "vae connected (as 'vae' was)" in msg  # the VAE link cannot move by itself


def test_old_api_workflow_whose_moved_settings_are_defaults_still_runs(comfy):
    ex, _ = comfy_env.run_prompt(_legacy(comfy, "train_then_generate_sd15.0.1.api.json"), "legacy-plain")
    assert ex.success


def test_old_load_dataset_inputs_are_caught_too(comfy):
    with open(os.path.join(LEGACY, "train_then_generate_sd15.0.1.api.json"), encoding="utf-8") as f:
        old = json.load(f)
    p = graphs.tiny_train_graph(old, family="sd15", dataset=_dataset(comfy, "legacy"), steps=2, save_name="l")
    p[graphs.one(p, "LoraLoop_LoadDataset")]["inputs"]["shuffle_caption"] = True
    errors = _errors(comfy_env.execute(p, "legacy-ds"))
    assert errors[0]["node_type"] == "LoraLoop_LoadDataset"
    assert "shuffle_caption=True" in errors[0]["exception_message"]
    assert "Captions & Augmentation (LoRA Loop)" in errors[0]["exception_message"]


def test_ui_workflow_opened_by_the_frontend_is_checked_through_its_node_property(comfy):
    """The frontend records the moved values of an old UI workflow in the node's 'lora_loop_moved' property; the
    run stops while no settings node carries them, and runs once one is connected."""
    import execution

    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=_dataset(comfy, "legacy"),
                                steps=2, save_name="ui_legacy")
    train = graphs.one(p, "LoraLoop_TrainLoRA")
    workflow = {"nodes": [{"id": int(train), "type": "LoraLoop_TrainLoRA",
                           "properties": {"lora_loop_moved": {"noise_offset": 0.05, "lr_warmup_steps": 0}}}]}
    extra = {"extra_pnginfo": {"workflow": workflow}}

    def run(prompt, pid):
        valid = comfy_env.run_async(execution.validate_prompt, pid, prompt, None)
        ex = comfy_env.new_executor()
        comfy_env.call(ex.execute, prompt, pid, extra_data=extra, execute_outputs=valid[2])
        return ex

    errors = _errors(run(p, "ui-legacy"))
    assert errors and "noise_offset=0.05" in errors[0]["exception_message"]
    assert "lr_warmup_steps" not in errors[0]["exception_message"]  # its value is the default: nothing lost
    graphs.train_options(p, train, noise_offset=0.05)
    assert run(p, "ui-legacy-fixed").success


# ---- the file header -----------------------------------------------------------------------------------
def test_header_has_real_dataset_values_and_the_checkpoint_name(comfy):
    ds = _dataset(comfy, "header", n=3)
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=4, save_name="header")
    p[graphs.one(p, "LoraLoopTest_TinyModel")]["inputs"]["ckpt_name"] = "sd15/my-base-model.safetensors"
    p[graphs.one(p, "LoraLoop_LoadDataset")]["inputs"]["num_repeats"] = 2
    ex, _ = comfy_env.run_prompt(p, "header")
    m = _meta(graphs.saved_lora(ex, p))
    assert m["ss_sd_model_name"] == "my-base-model.safetensors"
    assert m["ss_num_train_images"] == "6" and m["ss_num_reg_images"] == "0"
    assert m["ss_num_batches_per_epoch"] == "6" and m["ss_num_epochs"] == "1" and m["ss_epoch"] == "1"
    assert m["ss_cache_latents"] == "True" and m["ss_mixed_precision"] == "no"  # CPU ran fp32
    assert m["ss_optimizer"] == "torch.optim.adamw.AdamW" and m["ss_steps"] == "4"
    assert m["ss_network_dim"] == "16" and "ss_network_args" not in m
    assert [k for k, v in m.items() if k in ("ss_num_train_images", "ss_num_epochs", "ss_cache_latents") and
            v == "None"] == []


def test_the_model_file_is_traced_through_the_shipped_graphs(comfy):
    graph = comfy_env.pack_module(".nodes.graph")
    for name, expected in (("train_then_generate_sd15.api.json", "v1-5-pruned-emaonly.safetensors"),
                           ("train_then_generate_sdxl.api.json", "sd_xl_base_1.0.safetensors"),
                           ("train_then_generate_flux.api.json", "flux1-dev.safetensors")):
        p = graphs.load_api(name)
        assert graph.upstream_model_file(p, graphs.one(p, "LoraLoop_TrainLoRA")) == expected, name
    p = graphs.load_api(WORKFLOW)
    p[graphs.one(p, "LoraLoop_InjectLoRA")]["inputs"]["model"] = ["1", 0]
    p["ll"] = {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": "x",
                                                      "strength_model": 1.0, "strength_clip": 1.0}}
    p[graphs.one(p, "LoraLoop_InjectLoRA")]["inputs"]["model"] = ["ll", 0]  # through another LoRA loader too
    assert graph.upstream_model_file(p, graphs.one(p, "LoraLoop_TrainLoRA")) == "v1-5-pruned-emaonly.safetensors"
    assert graph.upstream_model_file({}, "6") is None and graph.upstream_model_file(None, None) is None


def test_conv_dim_on_a_family_without_conv_targets_is_an_error(comfy):
    p = graphs.tiny_train_graph(graphs.load_api("train_then_generate_flux.api.json"), family="flux",
                                dataset=_dataset(comfy, "header"), steps=1, save_name="conv_flux")
    p[graphs.one(p, "LoraLoop_InjectLoRA")]["inputs"]["conv_dim"] = 4
    errors = _errors(comfy_env.execute(p, "conv-flux"))
    assert errors[0]["node_type"] == "LoraLoop_InjectLoRA" and "conv_dim=4" in errors[0]["exception_message"]


def test_init_lora_header_follows_the_files_tensors(comfy):
    """A file whose header claims other network args than its tensors: the continued file says what it has."""
    import folder_paths

    ds = _dataset(comfy, "header")
    p = graphs.tiny_train_graph(graphs.load_api("train_then_generate_flux.api.json"), family="flux", dataset=ds,
                                steps=1, save_name="flux_single")
    graphs.train_options(p, guidance_scale=1.0)
    p[graphs.one(p, "LoraLoop_InjectLoRA")]["inputs"]["train_blocks"] = "single"
    ex, _ = comfy_env.run_prompt(p, "flux-single")
    first = graphs.saved_lora(ex, p)
    assert json.loads(_meta(first)["ss_network_args"]) == {"train_blocks": "single"}
    # rewrite its header to lie (claims every block and a conv rank), then start a new run from it
    path = os.path.join(folder_paths.get_folder_paths("loras")[0], first)
    from safetensors.torch import load_file, save_file

    meta = dict(_meta(first), ss_network_args=json.dumps({"conv_dim": "8", "conv_alpha": "1"}))
    save_file(load_file(path), path, meta)
    q = graphs.tiny_train_graph(graphs.load_api("train_then_generate_flux.api.json"), family="flux", dataset=ds,
                                steps=1, save_name="flux_continued")
    q[graphs.one(q, "LoraLoop_InjectLoRA")]["inputs"].update(init_lora=first, train_blocks="all")
    n = len(comfy["log"].records)
    ex, _ = comfy_env.run_prompt(q, "flux-continued", executor=ex)
    assert json.loads(_meta(graphs.saved_lora(ex, q))["ss_network_args"]) == {"train_blocks": "single"}
    assert [r for r in comfy["log"].records[n:] if "header disagrees with its tensors" in r]


# ---- Save LoRA ---------------------------------------------------------------------------------------------
def test_verify_reloads_through_comfyuis_loader(comfy):
    ds = _dataset(comfy, "verify")
    for family, te in (("sd15", False), ("sdxl", True)):
        p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family=family, dataset=ds, steps=2,
                                    save_name=f"verify_{family}")
        if te:
            p[graphs.one(p, "LoraLoop_InjectLoRA")]["inputs"]["train_text_encoder"] = True
            p[graphs.one(p, "LoraLoop_EncodeDataset")]["inputs"].pop("clip")
        train = graphs.one(p, "LoraLoop_TrainLoRA")
        p[graphs.one(p, "LoraLoop_SaveLoRA")]["inputs"].update(verify=True, model=[train, 0], clip=[train, 1])
        ex, _ = comfy_env.run_prompt(p, f"verify-{family}")
        out = ex.history_result["outputs"][graphs.one(p, "LoraLoop_SaveLoRA")]
        text = out["text"][0]
        assert re.match(rf"saved verify_{family}\.safetensors \(\d+\.\d (KB|MB), \d+ modules\)\n", text), text
        assert "verify: 0 unloaded keys" in text, text
        diff = float(text.split("largest prediction difference ")[1].split(" ")[0])
        assert diff <= 1e-5, text
        if te:
            assert float(text.split("text encoder ")[1].strip()) <= 1e-5, text


def test_verify_catches_a_file_that_does_not_match(comfy):
    """The check can fail: a network whose weights changed after saving gives a large difference."""
    verify = comfy_env.pack_module(".trainer.adapter.verify")
    loop_net = comfy_env.pack_module(".trainer.network")
    from lora_loop_testing_pack import _MODEL_CACHE

    ds = _dataset(comfy, "verify")
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=2, save_name="mismatch")
    ex, _ = comfy_env.run_prompt(p, "mismatch")
    import folder_paths

    path = os.path.join(folder_paths.get_folder_paths("loras")[0], graphs.saved_lora(ex, p))
    model, clip, _ = _MODEL_CACHE[("sd15", 0, "default")]
    net = ex.caches.outputs.get(graphs.one(p, "LoraLoop_TrainLoRA")).outputs[2][0]
    assert isinstance(net, loop_net.LoRANetwork)
    other = net.copy()
    with torch.no_grad():
        for m in other.loras():
            m.lora_up.weight.add_(0.5)
    same = verify.verify_saved_lora(model, clip, net, path)
    changed = verify.verify_saved_lora(model, clip, other, path)
    assert same.unloaded == () and same.prediction_diff <= 1e-5
    assert changed.prediction_diff > 1e-2


# ---- graphs and folders ------------------------------------------------------------------------------------
def test_two_train_lora_nodes_in_one_graph(comfy):
    ds = _dataset(comfy, "two")
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=2, save_name="first")
    train, save = graphs.one(p, "LoraLoop_TrainLoRA"), graphs.one(p, "LoraLoop_SaveLoRA")
    p["t2"] = json.loads(json.dumps(p[train]))
    p["t2"]["inputs"].update(seed=5, learning_rate=2e-3, output_name="second")
    p["s2"] = {"class_type": "LoraLoop_SaveLoRA", "inputs": {"network": ["t2", 2], "filename": "second",
                                                             "save_dtype": "fp32", "if_exists": "increment"}}
    ex, _ = comfy_env.run_prompt(p, "two")
    a, b = graphs.saved_lora(ex, p, save), graphs.saved_lora(ex, p, "s2")
    assert a.startswith("first") and b.startswith("second")
    import folder_paths

    loras = folder_paths.get_folder_paths("loras")[0]
    with safe_open(os.path.join(loras, a), "pt") as fa, safe_open(os.path.join(loras, b), "pt") as fb:
        key = next(k for k in fa.keys() if k.endswith("lora_up.weight"))
        assert not torch.equal(fa.get_tensor(key), fb.get_tensor(key))
    charts = [ex.history_result["outputs"][k]["lora_loop_chart"][0] for k in (train, "t2")]
    assert [len(c["loss"]) for c in charts] == [2, 2] and charts[0]["loss"] != charts[1]["loss"]


def test_save_last_n_counts_every_run_of_the_name(comfy):
    import folder_paths

    ds = _dataset(comfy, "lastn")
    folder = os.path.join(folder_paths.get_folder_paths("loras")[0], "keep_two_checkpoints")
    for seed, steps in ((0, 4), (1, 6)):  # the second run starts over (other seed): 3 more checkpoints
        p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=steps,
                                    save_name="keep_two", train_seed=seed)
        graphs.train_options(p, output_name="keep_two", save_every_n_steps=2, save_last_n=2)
        comfy_env.run_prompt(p, f"lastn-{seed}")
    names = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    assert names == ["keep_two-step00000004.safetensors", "keep_two-step00000006.safetensors"], names
    assert sorted(os.listdir(folder)) == sorted(n[:-12] + s for n in names
                                                for s in (".safetensors", "-state.json", "-state.tensors"))


def test_images_without_captions_are_reported(comfy):
    from PIL import Image

    folder = os.path.join(comfy["tmp"], "in", "no_captions")
    os.makedirs(folder, exist_ok=True)
    for i in range(3):
        Image.new("RGB", (64, 64), (40 * i, 80, 120)).save(os.path.join(folder, f"{i}.png"))
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=folder, steps=1,
                                save_name="nocap")
    n = len(comfy["log"].records)
    comfy_env.run_prompt(p, "nocap")
    warned = [r for r in comfy["log"].records[n:] if "have no caption file" in r]
    assert len(warned) == 1 and "3 of 3 images" in warned[0] and folder in warned[0], warned
    assert [r for r in comfy["log"].records[n:] if "3 without a caption" in r]


def test_progress_hears_the_end_also_when_the_run_fails_before_its_first_step(comfy):
    """The node's chart must not stay at 'loading the model for training' when, e.g., a resume does not fit."""
    ds = _dataset(comfy, "fails_early")
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=2, save_name="early")
    graphs.train_options(p, save_every_n_steps=1, output_name="early")
    comfy_env.run_prompt(p, "early-ok")
    reporting = comfy_env.pack_module(".trainer.reporting")
    seen = []

    class Recorder(reporting.Progress):
        def finish(self, status, message=""):
            seen.append(status)

    nodes_train = comfy_env.pack_module(".nodes.train")
    real = nodes_train.NodeProgress
    nodes_train.NodeProgress = lambda *a, **k: Recorder()
    try:
        # a different optimizer cannot resume the saved state: the run fails while it is being set up
        graphs.train_options(p, steps=4, optimizer="SGD", resume_from="early_checkpoints/early-step00000002-state.json")
        ex = comfy_env.execute(p, "early-fails")
    finally:
        nodes_train.NodeProgress = real
    errors = _errors(ex)
    assert errors and "cannot resume" in errors[0]["exception_message"], errors
    assert seen == ["error"]
