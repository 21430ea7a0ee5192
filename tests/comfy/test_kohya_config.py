"""Load kohya Config: a real sd-scripts training config (TOML with sd-scripts' sections) fills the settings
nodes with sd-scripts' meaning, reports what it cannot carry, and trains through the real graph."""
from __future__ import annotations

import os

import pytest
from safetensors import safe_open

import comfy_env
import graphs
from comfy_fixtures import comfy  # noqa: F401

TOML = """\
[model_arguments]
pretrained_model_name_or_path = "/models/v1-5-pruned-emaonly.safetensors"
v2 = false

[additional_network_arguments]
network_module = "networks.lora"
network_dim = 8
network_alpha = 4
network_train_unet_only = true
network_dropout = 0.1
network_args = ["rank_dropout=0.2", "loraplus_lr_ratio=4"]

[optimizer_arguments]
optimizer_type = "AdamW"
learning_rate = 5e-4
lr_scheduler = "cosine_with_restarts"
lr_scheduler_num_cycles = 3
lr_warmup_steps = 1
max_grad_norm = 0.5
optimizer_args = ["weight_decay=0.05"]

[dataset_arguments]
train_data_dir = "/data/10_sks dog"
resolution = "512,512"
caption_extension = ".txt"
shuffle_caption = true
keep_tokens = 1
color_aug = true
validation_split = 0.25
validation_seed = 7

[training_arguments]
output_dir = "/out"
output_name = "mylora"
max_train_steps = 4
train_batch_size = 2
seed = 42
mixed_precision = "no"
noise_offset = 0.05
min_snr_gamma = 5.0
xformers = true
gradient_checkpointing = true
fused_backward_pass = true
not_an_sd_scripts_key = 1

[saving_arguments]
save_every_n_steps = 2
save_precision = "fp16"
save_model_as = "safetensors"
"""


def _node():
    import nodes

    return nodes.NODE_CLASS_MAPPINGS["LoraLoop_LoadKohyaConfig"]


def test_a_training_toml_fills_the_settings(comfy, tmp_path):
    path = tmp_path / "train.toml"
    path.write_text(TOML, encoding="utf-8")
    out = comfy_env.call(_node().execute, str(path))
    opt, noise, ckpt, caps, text, net_training, net_options, validation = out.result
    assert {k: opt.values[k] for k in ("lr_warmup_steps", "lr_scheduler_num_cycles", "max_grad_norm", "optimizer_args",
                                       "mixed_precision")} == \
        {"lr_warmup_steps": 1, "lr_scheduler_num_cycles": 3, "max_grad_norm": 0.5, "optimizer_args": "weight_decay=0.05",
         "mixed_precision": "no"}
    # Train LoRA's own widgets, given by the file, travel with the optimizer settings
    assert {k: opt.values[k] for k in ("max_train_steps", "learning_rate", "optimizer_type", "lr_scheduler", "seed")} \
        == {"max_train_steps": 4, "learning_rate": 5e-4, "optimizer_type": "AdamW",
            "lr_scheduler": "cosine_with_restarts", "seed": 42}
    assert noise.values["noise_offset"] == 0.05 and noise.values["min_snr_gamma"] == 5.0
    assert ckpt.values["save_every_n_steps"] == 2 and ckpt.values["save_dtype"] == "fp16"
    assert caps.values["shuffle_caption"] is True and caps.values["keep_tokens"] == 1
    assert caps.values["color_aug"] is True
    assert validation.values["validation_split"] == 0.25 and validation.values["validation_seed"] == 7
    # after the report: the Network Training (Train LoRA) and Network Options (Inject LoRA) outputs
    assert net_training.values["loraplus_lr_ratio"] == 4.0 and net_training.values["scale_weight_norms"] == 0.0
    assert net_options.values["network_dropout"] == 0.1 and net_options.values["rank_dropout"] == 0.2
    lines = text.splitlines()
    assert any(ln.startswith("overrides Train LoRA's ") and "learning_rate=0.0005" in ln for ln in lines)
    inject = next(ln for ln in lines if ln.startswith("set on Inject LoRA by hand: "))
    assert "network_dim=8" in inject and "network_alpha=4.0" in inject and "train_text_encoder=False" in inject
    bucket = next(ln for ln in lines if ln.startswith("set on Bucket Images by hand: "))
    assert "resolution=512" in bucket and "batch_size=2" in bucket
    assert any(ln.startswith("set on Train LoRA by hand: ") and "memory=checkpointed" in ln for ln in lines)
    graph = next(ln for ln in lines if ln.startswith("taken from the graph: "))
    assert "pretrained_model_name_or_path" in graph and "output_dir" in graph and "train_data_dir" in graph
    skipped = next(ln for ln in lines if ln.startswith("not supported, left out: "))
    assert "--fused_backward_pass" in skipped and "not_an_sd_scripts_key" in skipped
    assert "--color_aug" not in skipped and not any(ln.startswith("set on Validation") for ln in lines)


def test_a_malformed_file_names_the_line_and_a_bad_value_the_key(comfy, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[training_arguments]\nmax_train_steps = 4\nseed 42\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 3"):
        comfy_env.call(_node().execute, str(bad))
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[training_arguments]\nmax_train_steps = \"many\"\n", encoding="utf-8")
    with pytest.raises(ValueError, match="max_train_steps"):
        comfy_env.call(_node().execute, str(wrong))
    with pytest.raises(ValueError, match="does not exist"):
        comfy_env.call(_node().execute, str(tmp_path / "missing.toml"))


def test_the_config_trains_through_the_graph(comfy, tmp_path):
    """Load kohya Config -> Train LoRA on the tiny SD1.5: the file's schedule, learning rate, steps, noise options
    and checkpoint cadence are what ran (the saved file's ss_* metadata)."""
    path = tmp_path / "train.toml"
    path.write_text(TOML, encoding="utf-8")
    data = graphs.make_dataset(str(tmp_path / "img"), n=2)
    p = graphs.tiny_train_graph(graphs.load_api("train_then_generate_sd15.api.json"), family="sd15", dataset=data,
                                save_name="from_config")
    train = graphs.one(p, "LoraLoop_TrainLoRA")
    p["cfg"] = {"class_type": "LoraLoop_LoadKohyaConfig", "inputs": {"path": str(path)}}
    for i, socket in enumerate(("optimizer_settings", "noise_loss_settings", "checkpoint_settings")):
        p[train]["inputs"][socket] = ["cfg", i]
    p[graphs.one(p, "LoraLoop_LoadDataset")]["inputs"]["caption_settings"] = ["cfg", 3]
    ex, _ = comfy_env.run_prompt(p)
    import folder_paths

    saved = folder_paths.get_full_path("loras", graphs.saved_lora(ex, p))
    with safe_open(saved, "pt") as f:
        meta = f.metadata()
    assert int(meta["ss_max_train_steps"]) == 4 and float(meta["ss_learning_rate"]) == pytest.approx(5e-4)
    assert meta["ss_lr_scheduler"] == "cosine_with_restarts" and float(meta["ss_noise_offset"]) == 0.05
    assert float(meta["ss_min_snr_gamma"]) == 5.0 and "weight_decay=0.05" in meta["ss_optimizer"]
    assert meta["ss_seed"] == "42" and meta["ss_shuffle_caption"] == "True"
    ckpts = os.listdir(os.path.join(os.path.dirname(saved), "my_lora_checkpoints"))
    assert any("step00000002" in c for c in ckpts)


GUI_JSON = {  # shaped like the LoRA tab's "Save config" of the kohya_ss GUI: every key, GUI conventions
    "LoRA_type": "Standard", "adaptive_noise_scale": 0, "additional_parameters": "", "bucket_no_upscale": True,
    "bucket_reso_steps": 64, "cache_latents": True, "cache_latents_to_disk": False, "caption_dropout_every_n_epochs": 0,
    "caption_dropout_rate": 0, "caption_extension": ".txt", "clip_skip": 1, "color_aug": False, "enable_bucket": True,
    "epoch": 4, "flip_aug": False, "gradient_accumulation_steps": 1, "gradient_checkpointing": False,
    "keep_tokens": "0", "learning_rate": 0.0003, "logging_dir": "", "lr_scheduler": "cosine", "lr_scheduler_args": "",
    "lr_scheduler_num_cycles": 1, "lr_scheduler_power": 1, "lr_warmup": 10, "max_bucket_reso": 2048,
    "max_grad_norm": 1, "max_resolution": "512,512", "max_timestep": 1000, "max_token_length": 75,
    "max_train_epochs": 0, "max_train_steps": 0, "min_bucket_reso": 256, "min_snr_gamma": 0, "min_timestep": 0,
    "mixed_precision": "bf16", "model_list": "custom", "network_alpha": 8, "network_dim": 16, "noise_offset": 0.05,
    "noise_offset_type": "Original", "optimizer": "AdamW8bit", "optimizer_args": "", "output_dir": "/out",
    "output_name": "gui_lora", "persistent_data_loader_workers": False,
    "pretrained_model_name_or_path": "runwayml/stable-diffusion-v1-5", "prior_loss_weight": 1, "reg_data_dir": "",
    "sample_every_n_epochs": 0, "sample_every_n_steps": 0, "sample_prompts": "", "sample_sampler": "euler_a",
    "save_every_n_epochs": 1, "save_model_as": "safetensors", "save_precision": "fp16", "seed": 1234,
    "shuffle_caption": True, "text_encoder_lr": 0.00005, "train_batch_size": 2, "train_data_dir": "/data/img",
    "unet_lr": 0.0003, "v2": False, "xformers": "xformers",
}


def test_a_kohya_ss_gui_json_fills_the_settings(comfy, tmp_path):
    import json

    path = tmp_path / "gui.json"
    path.write_text(json.dumps(GUI_JSON), encoding="utf-8")
    opt, noise, ckpt, caps, text, *_ = comfy_env.call(_node().execute, str(path)).result
    assert opt.values["optimizer_type"] == "AdamW8bit" and opt.values["learning_rate"] == pytest.approx(3e-4)
    assert opt.values["max_train_epochs"] == 4 and opt.values["lr_warmup_steps"] == pytest.approx(0.1)  # 10 %
    assert opt.values["mixed_precision"] == "bf16" and opt.values["text_encoder_lr"] == pytest.approx(5e-5)
    assert opt.values["seed"] == 1234 and opt.values["lr_scheduler"] == "cosine"
    assert noise.values["noise_offset"] == 0.05 and ckpt.values["save_every_n_epochs"] == 1
    assert caps.values["shuffle_caption"] is True
    assert "network_dim=16" in text and "taken from the graph: " in text
    bad = tmp_path / "bad.json"
    bad.write_text('{"learning_rate": 1e-4,\n "optimizer": }', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        comfy_env.call(_node().execute, str(bad))
