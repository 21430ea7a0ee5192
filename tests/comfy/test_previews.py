"""Previews during training through ComfyUI's real executor: images are sampled with ComfyUI's sampler
on the training model at every N steps and at the end, shown on the node (progress-bar previews),
returned as an IMAGE batch, and do not change the trained LoRA (bitwise on CPU)."""
from __future__ import annotations

import importlib
import os

import torch
from safetensors import safe_open

import comfy_env
import graphs
from comfy_fixtures import comfy  # noqa: F401

WORKFLOW = "train_then_generate_sd15.api.json"


def _graph(comfy, previews: bool, family: str = "sd15", train_te: bool = False):
    ds = os.path.join(comfy["tmp"], "in", "preview_ds")
    if not os.path.isdir(ds):
        graphs.make_dataset(ds, n=3)
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family=family, dataset=ds, steps=4, save_name="prev")
    train, loader = graphs.one(p, "LoraLoop_TrainLoRA"), graphs.one(p, "LoraLoopTest_TinyModel")
    if previews:
        graphs.train_options(p, train, preview_vae=[loader, 2], preview_prompts="sks pattern 1\n# skipped\nsks pattern 2",
                             preview_negative="blurry", preview_steps=2, preview_cfg=2.0, preview_width=64,
                             preview_height=64, preview_seed=3, preview_every_n_steps=2)
    if train_te:  # captions (and preview prompts) are encoded with the text-encoder LoRA being trained
        p[graphs.one(p, "LoraLoop_InjectLoRA")]["inputs"]["train_text_encoder"] = True
        p[graphs.one(p, "LoraLoop_EncodeDataset")]["inputs"].pop("clip")
    p["pv"] = {"class_type": "PreviewImage", "inputs": {"images": [train, 4]}}
    return p


def _run(p, pid):
    cu = importlib.import_module("comfy.utils")
    previews = []

    def hook(value, total, preview, prompt_id=None, node_id=None):
        if total == 4 and preview is not None:
            previews.append((value, preview))

    cu.set_progress_bar_global_hook(hook)
    try:
        ex, _ = comfy_env.run_prompt(p, pid, executor=comfy_env.new_executor())
    finally:
        cu.set_progress_bar_global_hook(None)

    from folder_paths import get_folder_paths

    with safe_open(os.path.join(get_folder_paths("loras")[0], graphs.saved_lora(ex, p)), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    return ex, previews, sd


def test_previews_show_return_and_do_not_change_training(comfy):
    ex_on, shown, with_previews = _run(_graph(comfy, True), "previews-on")
    ex_off, none_shown, without = _run(_graph(comfy, False), "previews-off")
    assert with_previews.keys() == without.keys()
    assert all(torch.equal(with_previews[k], without[k]) for k in without), "previews changed the trained LoRA"
    # every 2 steps and at the end (step 4 is both): 2 rounds x 2 prompts
    assert [v for v, _ in shown] == [2, 2, 4, 4], [v for v, _ in shown]
    fmt, img, _ = shown[0][1]
    assert fmt == "JPEG" and img.size == (64, 64)
    assert none_shown == []
    images = ex_on.history_result["outputs"]["pv"]["images"]
    assert len(images) == 4
    assert len(ex_off.history_result["outputs"]["pv"]["images"]) == 1  # the black placeholder


def test_previews_with_text_encoder_training_do_not_change_it(comfy):
    _, shown, with_previews = _run(_graph(comfy, True, train_te=True), "te-previews-on")
    _, _, without = _run(_graph(comfy, False, train_te=True), "te-previews-off")
    assert any(k.startswith("lora_te") for k in without)
    assert with_previews.keys() == without.keys()
    assert all(torch.equal(with_previews[k], without[k]) for k in without), "previews changed the trained LoRA"
    assert len(shown) == 4


def test_previews_need_a_vae(comfy):
    import execution

    p = _graph(comfy, True)
    settings = graphs.one(p, "LoraLoop_PreviewSettings")
    p[settings]["inputs"].pop("vae")
    ok, err, _, node_errors = comfy_env.run_async(execution.validate_prompt, "no-vae", p, None)
    assert not ok and settings in node_errors
    assert any(e["extra_info"].get("input_name") == "vae" for e in node_errors[settings]["errors"]), node_errors


def test_schedule_free_previews_and_an_optimizer_class(comfy):
    """Through the nodes: a schedule-free optimizer's previews sample its averaged weights and leave the LoRA as
    it is without previews; a module.Class from Optimizer Settings trains and is what the file records."""
    import pytest

    pytest.importorskip("schedulefree", reason="AdamWScheduleFree needs `pip install schedulefree`")

    def graph(previews, **options):
        p = _graph(comfy, previews)
        graphs.train_options(p, **options)
        return p

    _, shown, with_previews = _run(graph(True, optimizer="AdamWScheduleFree"), "sf-previews-on")
    _, _, without = _run(graph(False, optimizer="AdamWScheduleFree"), "sf-previews-off")
    assert len(shown) == 4 and with_previews.keys() == without.keys()
    assert all(torch.equal(with_previews[k], without[k]) for k in without), "previews changed the trained LoRA"
    p = graph(False, optimizer_class="torch.optim.RAdam", optimizer_args="weight_decay=0.01")
    ex, _ = comfy_env.run_prompt(p, "radam", executor=comfy_env.new_executor())
    from folder_paths import get_folder_paths

    with safe_open(os.path.join(get_folder_paths("loras")[0], graphs.saved_lora(ex, p)), "pt") as f:
        assert f.metadata()["ss_optimizer"] == "torch.optim.radam.RAdam(weight_decay=0.01)"
