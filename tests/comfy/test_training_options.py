"""Training options through the real graph: Save LoRA refuses names that would escape the loras folder
(the memory modes are tested in test_checkpointing.py)."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open

import comfy_env
import graphs
from comfy_fixtures import comfy  # noqa: F401

WORKFLOW = "train_then_generate_sd15.api.json"


def _saved_path(comfy, ex, p):
    return os.path.join(comfy["tmp"], "models", "loras", graphs.saved_lora(ex, p))


def _load(path):
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_save_lora_refuses_escaping_names_and_allows_subfolders(comfy):
    import folder_paths

    ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", "esc"), n=1)
    loras = folder_paths.get_folder_paths("loras")[0]
    outside = os.path.join(comfy["tmp"], "outside")
    os.makedirs(outside, exist_ok=True)
    os.symlink(outside, os.path.join(loras, "link_out"))
    ex = comfy_env.new_executor()
    for bad in ("../evil", "..\\evil", "/tmp/evil", "link_out/evil", "proj/../../evil"):
        p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=1, save_name=bad)
        comfy_env.execute(p, "esc", executor=ex)
        assert not ex.success
        errors = [d for e, d in ex.status_messages if e == "execution_error"]
        assert errors and errors[0]["node_type"] == "LoraLoop_SaveLoRA", errors
        assert "outside" in errors[0]["exception_message"] or ".." in errors[0]["exception_message"] or \
            "absolute" in errors[0]["exception_message"], errors[0]["exception_message"]
        assert os.listdir(outside) == [] and not os.path.exists(os.path.join(comfy["tmp"], "models", "evil.safetensors"))
    # a subfolder is created and listed by ComfyUI's LoRA loaders, like ComfyUI's own save nodes do
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=1,
                                save_name="project/sub/mine")
    ex, _ = comfy_env.run_prompt(p, "sub", executor=ex)
    assert graphs.saved_lora(ex, p) == "project/sub/mine.safetensors"
    assert "project/sub/mine.safetensors" in folder_paths.get_filename_list("loras")


def test_save_lora_into_an_unwritable_folder_keeps_the_network(comfy):
    """A loras subfolder that cannot be written (read-only; as root, where permission bits do not apply, a file in
    the way): a clear error naming it, and the trained network stays cached, so after fixing it running again
    only saves."""
    import folder_paths

    ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", "ro"), n=1)
    target = os.path.join(folder_paths.get_folder_paths("loras")[0], "readonly")
    if os.geteuid() == 0:
        open(target, "wb").close()
    else:
        os.makedirs(target)
        os.chmod(target, 0o555)
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=2,
                                save_name="readonly/mine")
    ex = comfy_env.execute(p, "ro")
    assert not ex.success
    errors = [d for e, d in ex.status_messages if e == "execution_error"]
    msg = errors[0]["exception_message"]
    assert errors[0]["node_type"] == "LoraLoop_SaveLoRA" and target in msg and "still in memory" in msg, msg
    if os.path.isfile(target):
        os.remove(target)
    else:
        os.chmod(target, 0o755)
    ex, _ = comfy_env.run_prompt(p, "ro-fixed", executor=ex)
    cached = [d for e, d in ex.status_messages if e == "execution_cached"]
    assert graphs.one(p, "LoraLoop_TrainLoRA") in cached[-1]["nodes"]  # only saving re-ran
    assert graphs.saved_lora(ex, p) == "readonly/mine.safetensors"


@pytest.mark.parametrize("fp8", ["fp8_e4m3fn", "fp8_e5m2"])
def test_trains_over_fp8_base_weights(comfy, fp8):
    """Bypass LoRA over a model stored in fp8 (as UNETLoader weight_dtype=fp8_e4m3fn / fp8_e5m2 loads it): training
    runs, the loss is finite, the LoRA learns, and the file loads with zero 'lora key not loaded'."""
    ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", fp8), n=2)
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=3, save_name=fp8)
    loader = graphs.one(p, "LoraLoopTest_TinyModel")
    p[loader]["inputs"]["weight_dtype"] = fp8
    ex, _ = comfy_env.run_prompt(p, fp8)
    chart = ex.history_result["outputs"][graphs.one(p, "LoraLoop_TrainLoRA")]["lora_loop_chart"][0]
    assert len(chart["loss"]) == 3 and all(torch.isfinite(torch.tensor(chart["loss"])))
    path = _saved_path(comfy, ex, p)
    sd = _load(path)
    assert any(not torch.all(v == 0) for k, v in sd.items() if k.endswith("lora_up.weight"))
    q = graphs.lora_reload_graph(loader, p[loader], os.path.basename(path), f"{fp8}_loaded")
    log = comfy["log"]
    n = len(log.records)
    comfy_env.run_prompt(q, f"{fp8}-load", executor=ex)
    assert [r for r in log.records[n:] if "lora key not loaded" in r] == []


def test_changing_captions_are_encoded_per_step(comfy):
    """shuffle_caption / caption dropout make captions change per epoch: Encode Dataset caches nothing and
    Train LoRA encodes each step's captions with the connected CLIP."""
    ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", "shuffle"), n=2,
                             captions=["sks, red, square, pattern", "sks, blue, round, pattern"])
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=3, save_name="shuffle")
    graphs.caption_options(p, shuffle_caption=True, keep_tokens=1, caption_dropout_rate=0.3)
    log = comfy["log"]
    n = len(log.records)
    ex, _ = comfy_env.run_prompt(p, "shuffle")
    chart = ex.history_result["outputs"][graphs.one(p, "LoraLoop_TrainLoRA")]["lora_loop_chart"][0]
    assert len(chart["loss"]) == 3 and all(torch.isfinite(torch.tensor(chart["loss"])))
    assert [r for r in log.records[n:] if r.startswith("Encode Dataset:")]


def test_noise_and_loss_options_reach_the_training_step(comfy):
    """sd-scripts' loss and noise options on the Noise & Loss node: the run trains with them (another loss curve
    than the defaults), the file records them under sd-scripts' ss_* keys, zero_terminal_snr trains on the table
    ComfyUI's own zsnr sampling uses, and sd-scripts' rules are errors on Train LoRA."""
    import comfy.model_sampling as ms

    from trainer.objectives import ddpm_sigmas, zero_terminal_snr_sigmas

    ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", "noiseloss"), n=2)
    ex = comfy_env.new_executor()
    losses = {}
    for name, options in (("plain", {}),
                          ("noiseloss", dict(loss_type="huber", huber_schedule="exponential", huber_c=0.2,
                                             noise_offset=0.05, noise_offset_random_strength=True,
                                             adaptive_noise_scale=0.01, multires_noise_iterations=3,
                                             ip_noise_gamma=0.1, debiased_estimation_loss=True,
                                             v_pred_like_loss=0.2, zero_terminal_snr=True))):
        p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=2, save_name=name)
        graphs.train_options(p, **options)
        ex, _ = comfy_env.run_prompt(p, name, executor=ex)
        losses[name] = ex.history_result["outputs"][graphs.one(p, "LoraLoop_TrainLoRA")]["lora_loop_chart"][0]["loss"]
        with safe_open(_saved_path(comfy, ex, p), "pt") as f:
            meta = f.metadata()
    assert all(torch.isfinite(torch.tensor(losses["noiseloss"]))) and losses["noiseloss"] != losses["plain"]
    assert (meta["ss_loss_type"], meta["ss_huber_schedule"], meta["ss_huber_c"], meta["ss_noise_offset"],
            meta["ss_adaptive_noise_scale"], meta["ss_multires_noise_iterations"], meta["ss_ip_noise_gamma"],
            meta["ss_debiased_estimation"], meta["ss_zero_terminal_snr"]) == \
        ("huber", "exponential", "0.2", "0.05", "0.01", "3", "0.1", "True", "True")
    theirs = ms.rescale_zero_terminal_snr_sigmas(ddpm_sigmas(dtype=torch.float64))
    assert torch.allclose(zero_terminal_snr_sigmas(ddpm_sigmas()).double(), theirs, rtol=1e-5)
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=1, save_name="bad")
    graphs.train_options(p, scale_v_pred_loss_like_noise_pred=True)
    comfy_env.execute(p, "bad", executor=ex)
    errors = [d for e, d in ex.status_messages if e == "execution_error"]
    assert errors and "scale_v_pred_loss_like_noise_pred needs a v-prediction model" in \
        errors[0]["exception_message"], errors


def test_network_options_reach_the_network_and_the_trainer(comfy):
    """Network Options on Inject LoRA (dropouts, block dims with a block left out, conv block dims) and Network
    Training on Train LoRA (LoRA+, block lr weights, max-norm): the file has the per-block ranks, records the
    options as sd-scripts does (ss_network_dropout, ss_scale_weight_norms, ss_network_args) and reloads through
    ComfyUI's LoraLoader with zero 'lora key not loaded'."""
    import json

    from trainer.network_options import block_index

    ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", "netopts"), n=2)
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=3, save_name="netopts")
    dims = [2 + i % 3 for i in range(25)]
    dims[4] = 0  # down_blocks_1_attentions_0 (and resnets_0): left out
    conv_dims = ["1"] * 25
    conv_dims[4] = "0"  # its 3x3 convs too
    graphs.network_options(p, network_dropout=0.1, rank_dropout=0.2, module_dropout=0.1,
                           block_dims=",".join(map(str, dims)), conv_block_dims=",".join(conv_dims))
    graphs.train_options(p, loraplus_lr_ratio=4.0, down_lr_weight="sine+0.5", mid_lr_weight="2",
                         scale_weight_norms=1.0)
    log = comfy["log"]
    n = len(log.records)
    ex, _ = comfy_env.run_prompt(p, "netopts")
    assert [r for r in log.records[n:] if r.startswith("scale_weight_norms 1:")]
    path = _saved_path(comfy, ex, p)
    sd = _load(path)
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    unet = {k[:-len(".lora_down.weight")]: v for k, v in sd.items()
            if k.startswith("lora_unet_") and k.endswith(".lora_down.weight")}
    assert unet and all(block_index(name) >= 0 for name in unet)
    assert not [name for name in unet if block_index(name) == 4]
    for name, down in unet.items():
        rank = 1 if down.ndim == 4 and down.shape[-1] == 3 else dims[block_index(name)]
        assert down.shape[0] == rank, (name, down.shape)
    assert any(v.ndim == 4 and v.shape[-1] == 3 for v in unet.values())  # conv_block_dims turned the convs on
    assert meta["ss_network_dropout"] == "0.1" and meta["ss_scale_weight_norms"] == "1.0"
    assert json.loads(meta["ss_network_args"]) == {
        "rank_dropout": "0.2", "module_dropout": "0.1", "block_dims": ",".join(map(str, dims)),
        "conv_block_dims": ",".join(conv_dims), "loraplus_lr_ratio": "4", "down_lr_weight": "sine+0.5",
        "mid_lr_weight": "2"}
    loader = graphs.one(p, "LoraLoopTest_TinyModel")
    q = graphs.lora_reload_graph(loader, p[loader], os.path.basename(path), "netopts_loaded")
    n = len(log.records)
    comfy_env.run_prompt(q, "netopts-load", executor=ex)
    assert [r for r in log.records[n:] if "lora key not loaded" in r] == []


def test_one_learning_rate_per_text_encoder(comfy):
    """Optimizer Settings' text_encoder_lrs on SDXL (CLIP-L, CLIP-G in sd-scripts' order): a rate of 0 leaves that
    encoder's LoRA out of the optimizer (sd-scripts' "NO LR skipping"), the other one trains."""
    ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", "te_lrs"), n=2)
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sdxl", dataset=ds, steps=3, save_name="te_lrs")
    p[graphs.one(p, "LoraLoop_InjectLoRA")]["inputs"]["train_text_encoder"] = True
    p[graphs.one(p, "LoraLoop_EncodeDataset")]["inputs"].pop("clip")
    graphs.train_options(p, text_encoder_lrs="1e-3,0")
    ex, _ = comfy_env.run_prompt(p, "te-lrs")
    sd = _load(_saved_path(comfy, ex, p))
    ups = {k: v for k, v in sd.items() if k.endswith("lora_up.weight")}
    te1 = [v for k, v in ups.items() if k.startswith("lora_te1_")]
    te2 = [v for k, v in ups.items() if k.startswith("lora_te2_")]
    assert te1 and te2
    assert any(float(v.abs().max()) > 0 for v in te1)
    assert all(float(v.abs().max()) == 0 for v in te2)  # lr 0: never stepped, still the zero init
