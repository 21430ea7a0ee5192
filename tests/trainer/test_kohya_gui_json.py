"""headless/kohya_gui_json.py: the kohya_ss GUI's saved LoRA JSON -> sd-scripts arguments for headless/kohya_cli.

The converter is a plain module (stdlib only); the parser it feeds imports the pack relatively, so the pack root
is loaded as a package here as in test_kohya_cli.py."""
import importlib
import importlib.util
import json
import os
import random
import sys

import pytest
from pack_import import pack_module

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _plain_module():
    """headless/kohya_gui_json.py loaded by file path, outside any package (it must not need the pack)."""
    spec = importlib.util.spec_from_file_location("kohya_gui_json_plain",
                                                  os.path.join(ROOT, "headless", "kohya_gui_json.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


kc = pack_module("headless.kohya_cli")
gj = _plain_module()

# A standard SD1.5 LoRA as the LoRA tab of kohya_ss saves it (every key of its save_configuration, sorted; UI
# state and the panels of other model families included; a few numbers as strings, as older versions saved them).
GUI_JSON = r"""
{
  "LoRA_type": "Standard", "LyCORIS_preset": "full", "adaptive_noise_scale": 0, "additional_parameters": "",
  "ae": "", "anima_attn_mode": "torch", "anima_cache_text_encoder_outputs": false,
  "anima_cache_text_encoder_outputs_to_disk": false, "anima_checkbox": false, "anima_compile": false,
  "anima_compile_backend": "inductor", "anima_compile_cache_size_limit": 0, "anima_compile_dynamic": "auto",
  "anima_compile_fullgraph": false, "anima_compile_mode": "default", "anima_discrete_flow_shift": 1,
  "anima_llm_adapter_path": "", "anima_qwen3": "", "anima_qwen3_max_token_length": 512,
  "anima_qwen_image_vae_2d": false, "anima_sigmoid_scale": 1, "anima_split_attn": false,
  "anima_t5_max_token_length": 512, "anima_t5_tokenizer_path": "", "anima_timestep_sampling": "sigmoid",
  "anima_torch_compile": false, "anima_unsloth_offload_checkpointing": false, "anima_vae": "",
  "anima_vae_chunk_size": 0, "anima_vae_disable_cache": false, "apply_t5_attn_mask": false,
  "async_upload": false, "block_alphas": "", "block_dims": "", "block_lr_zero_threshold": "",
  "blocks_to_swap": 0, "bucket_no_upscale": true, "bucket_reso_steps": 64, "bypass_mode": false,
  "cache_latents": true, "cache_latents_to_disk": true, "caption_dropout_every_n_epochs": 0,
  "caption_dropout_rate": 0.05, "caption_extension": ".txt", "clip_g": "", "clip_g_dropout_rate": 0,
  "clip_l": "", "clip_skip": 2, "color_aug": false, "constrain": 0, "conv_alpha": 1, "conv_block_alphas": "",
  "conv_block_dims": "", "conv_dim": 1, "cpu_offload_checkpointing": false, "dataset_config": "",
  "debiased_estimation_loss": false, "decompose_both": false, "dim_from_weights": false,
  "discrete_flow_shift": 3, "dora_wd": false, "double_blocks_to_swap": 0, "down_lr_weight": "",
  "dynamo_backend": "no", "dynamo_mode": "default", "dynamo_use_dynamic": false, "dynamo_use_fullgraph": false,
  "enable_all_linear": false, "enable_bucket": true, "epoch": 10, "extra_accelerate_launch_args": "",
  "factor": -1, "flip_aug": false, "flux1_cache_text_encoder_outputs": false,
  "flux1_cache_text_encoder_outputs_to_disk": false, "flux1_checkbox": false, "fp8_base": false,
  "fp8_base_unet": false, "full_bf16": false, "full_fp16": false, "ggpo_beta": 0.01, "ggpo_sigma": 0.03,
  "gpu_ids": "", "gradient_accumulation_steps": 1, "gradient_checkpointing": true, "guidance_scale": 3.5,
  "highvram": false, "huber_c": 0.1, "huber_scale": 1, "huber_schedule": "snr", "huggingface_path_in_repo": "",
  "huggingface_repo_id": "", "huggingface_repo_type": "", "huggingface_repo_visibility": "",
  "huggingface_token": "", "hunyuan_attn_mode": "torch", "hunyuan_byt5": "", "hunyuan_discrete_flow_shift": 5,
  "hunyuan_fp8_scaled": false, "hunyuan_fp8_vl": false, "hunyuan_image_cache_text_encoder_outputs": false,
  "hunyuan_image_cache_text_encoder_outputs_to_disk": false, "hunyuan_image_checkbox": false,
  "hunyuan_model_prediction_type": "raw", "hunyuan_sigmoid_scale": 1, "hunyuan_split_attn": false,
  "hunyuan_text_encoder": "", "hunyuan_text_encoder_cpu": false, "hunyuan_timestep_sampling": "sigma",
  "hunyuan_vae": "", "hunyuan_vae_chunk_size": 0, "img_attn_dim": "", "img_mlp_dim": "", "img_mod_dim": "",
  "in_dims": "", "ip_noise_gamma": 0, "ip_noise_gamma_random_strength": false, "keep_tokens": "1",
  "learning_rate": 0.0001, "log_config": false, "log_tracker_config": "", "log_tracker_name": "",
  "log_with": "", "logging_dir": "./logs", "logit_mean": 0, "logit_std": 1, "loraplus_lr_ratio": 0,
  "loraplus_text_encoder_lr_ratio": 0, "loraplus_unet_lr_ratio": 0, "loss_type": "l2", "lowvram": false,
  "lr_scheduler": "cosine", "lr_scheduler_args": "", "lr_scheduler_num_cycles": 1, "lr_scheduler_power": 1,
  "lr_scheduler_type": "", "lr_warmup": 10, "lr_warmup_steps": 0, "lumina_ae": "",
  "lumina_cache_text_encoder_outputs": false, "lumina_cache_text_encoder_outputs_to_disk": false,
  "lumina_checkbox": false, "lumina_discrete_flow_shift": 6, "lumina_gemma2": "",
  "lumina_gemma2_max_token_length": 256, "lumina_model_prediction_type": "raw", "lumina_sigmoid_scale": 1,
  "lumina_system_prompt": "", "lumina_timestep_sampling": "nextdit_shift", "lumina_use_flash_attn": false,
  "lumina_use_sage_attn": false, "main_process_port": 0, "masked_loss": false, "max_bucket_reso": 2048,
  "max_data_loader_n_workers": "0", "max_grad_norm": 1, "max_resolution": "512,512", "max_timestep": 1000,
  "max_token_length": 75, "max_train_epochs": 0, "max_train_steps": 0, "mem_eff_attn": false,
  "mem_eff_save": false, "metadata_author": "", "metadata_description": "", "metadata_license": "",
  "metadata_tags": "", "metadata_title": "", "mid_lr_weight": "", "min_bucket_reso": 256, "min_snr_gamma": 5,
  "min_timestep": 0, "mixed_precision": "bf16", "mode_scale": 1.29, "model_list": "custom",
  "model_prediction_type": "sigma_scaled", "model_type": "flux", "module_dropout": 0, "multi_gpu": false,
  "multires_noise_discount": 0.3, "multires_noise_iterations": 0, "network_alpha": 8, "network_dim": 16,
  "network_dropout": 0, "network_weights": "", "noise_offset": 0.05, "noise_offset_random_strength": false,
  "noise_offset_type": "Original", "num_cpu_threads_per_process": 2, "num_machines": 1, "num_processes": 1,
  "optimizer": "AdamW8bit", "optimizer_args": "weight_decay=0.01 betas=0.9,0.99", "output_dir": "./output",
  "output_name": "sks_dog", "persistent_data_loader_workers": false, "pos_emb_random_crop_rate": 0,
  "pretrained_model_name_or_path": "./models/v1-5-pruned-emaonly.safetensors", "prior_loss_weight": 1,
  "random_crop": false, "rank_dropout": 0, "rank_dropout_scale": false, "reg_data_dir": "", "rescaled": false,
  "resume": "", "resume_from_huggingface": "", "sample_every_n_epochs": 0, "sample_every_n_steps": 100,
  "sample_prompts": "a photo of sks dog --n blurry --w 512 --h 512 --d 1\nsks dog in a bucket --s 20\n",
  "sample_sampler": "euler_a", "save_as_bool": false, "save_clip": false, "save_every_n_epochs": 2,
  "save_every_n_steps": 0, "save_last_n_epochs": 0, "save_last_n_epochs_state": 0, "save_last_n_steps": 0,
  "save_last_n_steps_state": 0, "save_model_as": "safetensors", "save_precision": "fp16", "save_state": false,
  "save_state_on_train_end": false, "save_state_to_huggingface": false, "save_t5xxl": false,
  "scale_v_pred_loss_like_noise_pred": false, "scale_weight_norms": 0, "sd3_cache_text_encoder_outputs": false,
  "sd3_cache_text_encoder_outputs_to_disk": false, "sd3_checkbox": false, "sd3_clip_l": "",
  "sd3_clip_l_dropout_rate": 0, "sd3_disable_mmap_load_safetensors": false, "sd3_enable_scaled_pos_embed": false,
  "sd3_fused_backward_pass": false, "sd3_t5_dropout_rate": 0, "sd3_t5xxl": "", "sd3_text_encoder_batch_size": 1,
  "sdxl": false, "sdxl_cache_text_encoder_outputs": false, "sdxl_no_half_vae": false, "seed": "42",
  "show_timesteps": "", "show_timesteps_resolution": "1024", "shuffle_caption": true,
  "single_blocks_to_swap": 0, "single_dim": "", "single_mod_dim": "", "skip_cache_check": false,
  "split_mode": false, "split_qkv": false, "stop_text_encoder_training": 0, "t5xxl": "", "t5xxl_device": "",
  "t5xxl_dtype": "bf16", "t5xxl_lr": 0, "t5xxl_max_token_length": 512, "text_encoder_lr": 5e-05,
  "timestep_sampling": "sigma", "train_blocks": "all", "train_data_dir": "./dataset/img",
  "train_double_block_indices": "all", "train_inpainting": false, "train_lora_ggpo": false, "train_norm": false,
  "train_on_input": true, "train_single_block_indices": "all", "train_t5xxl": false, "training_comment": "",
  "txt_attn_dim": "", "txt_mlp_dim": "", "txt_mod_dim": "", "unet_lr": 0.0001, "unit": 1, "up_lr_weight": "",
  "use_cp": false, "use_scalar": false, "use_tucker": false, "v2": false, "v_parameterization": false,
  "v_pred_like_loss": 0, "vae": "", "vae_batch_size": 0, "wandb_api_key": "", "wandb_run_name": "",
  "weighted_captions": false, "weighting_scheme": "logit_normal", "xformers": "xformers"
}
"""

PROMPT_FILE = os.path.join("./output", "sample", "prompt.txt")  # where the GUI writes sample_prompts
EXPECTED_ARGV = [
    "--bucket_no_upscale", "--bucket_reso_steps=64", "--cache_latents", "--cache_latents_to_disk",
    "--caption_dropout_rate=0.05", "--caption_extension=.txt", "--clip_skip=2", "--enable_bucket",
    "--gradient_accumulation_steps=1", "--gradient_checkpointing", "--huber_c=0.1", "--huber_scale=1",
    "--huber_schedule=snr", "--keep_tokens=1", "--learning_rate=0.0001", "--logging_dir=./logs",
    "--loss_type=l2", "--lr_scheduler=cosine", "--lr_scheduler_num_cycles=1", "--lr_scheduler_power=1",
    "--lr_warmup_steps=0.1", "--max_bucket_reso=2048", "--max_data_loader_n_workers=0", "--max_grad_norm=1",
    "--max_timestep=1000", "--max_train_epochs=10", "--min_bucket_reso=256", "--min_snr_gamma=5",
    "--mixed_precision=bf16", "--network_alpha=8", "--network_dim=16", "--network_module=networks.lora",
    "--noise_offset=0.05", "--optimizer_args", "weight_decay=0.01", "betas=0.9,0.99",
    "--optimizer_type=AdamW8bit", "--output_dir=./output", "--output_name=sks_dog",
    "--pretrained_model_name_or_path=./models/v1-5-pruned-emaonly.safetensors", "--prior_loss_weight=1",
    "--resolution=512,512", "--sample_every_n_steps=100", f"--sample_prompts={PROMPT_FILE}",
    "--sample_sampler=euler_a", "--save_every_n_epochs=2", "--save_model_as=safetensors", "--save_precision=fp16",
    "--seed=42", "--shuffle_caption", "--text_encoder_lr", "5e-05", "5e-05", "--train_batch_size=1",
    "--train_data_dir=./dataset/img", "--unet_lr=0.0001", "--xformers",
]


def gui(**changes) -> dict:
    data = json.loads(GUI_JSON)
    data["train_batch_size"] = 1
    data.update(changes)
    return data


def convert(data, **kw):
    return gj.gui_json_to_args(data, **kw)


def options(argv) -> dict:
    """--name=value / --flag / --name v1 v2 -> {name: value, True or [values]}."""
    out, current = {}, None
    for item in argv:
        if item.startswith("--"):
            name, eq, value = item[2:].partition("=")
            out[name] = value if eq else True
            current = None if eq else name
        elif current is not None:
            out[current] = (out[current] if isinstance(out[current], list) else []) + [item]
    return out


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the GUI's relative paths (and its prompt file) land in the test's folder


# ------------------------------------------------------------------------------------------ the realistic file
def test_realistic_standard_lora_converts_to_the_expected_argv():
    argv, notes = convert(gui())
    assert argv == EXPECTED_ARGV
    with open(PROMPT_FILE, encoding="utf-8") as f:
        assert f.read() == gui()["sample_prompts"]
    assert notes == [f"sample_prompts: written to {PROMPT_FILE} (as the GUI does)"]
    assert gj.looks_like_gui_json(gui())


def test_realistic_argv_parses_with_lora_loops_parser():
    argv, _ = convert(gui())
    parsed = kc.parse(argv, rng=random.Random(0))
    a = parsed.namespace
    assert (a.network_module, a.network_dim, a.network_alpha) == ("networks.lora", 16, 8.0)
    assert (a.max_train_epochs, a.lr_warmup_steps, a.resolution) == (10, 0.1, "512,512")
    assert a.text_encoder_lr == [5e-05, 5e-05] and a.unet_lr == 1e-4 and a.optimizer_type == "AdamW8bit"
    assert a.optimizer_args == ["weight_decay=0.01", "betas=0.9,0.99"]
    assert a.seed == 42 and parsed.seed == 42 and not a.network_train_unet_only
    assert a.sample_prompts == PROMPT_FILE and a.sample_every_n_steps == 100


def test_every_argument_in_the_table_is_an_sd_scripts_argument_lora_loop_knows():
    # the GUI's pinned sd-scripts has these; LoRA Loop's parser lists them as unknown (refused when given)
    newer = {"train_inpainting", "show_timesteps", "show_timesteps_resolution"}
    targets = {k.arg for k in gj.TABLE if k.arg is not None}
    targets |= {"network_args", "network_train_unet_only", "network_train_text_encoder_only", "unet_lr", "sdpa",
                "cache_text_encoder_outputs_to_disk"}
    assert sorted(t for t in targets - newer if t not in kc.BY_NAME) == []
    assert len({k.gui for k in gj.TABLE}) == len(gj.TABLE)


def test_the_module_needs_nothing_of_the_pack():
    with open(os.path.join(ROOT, "headless", "kohya_gui_json.py"), encoding="utf-8") as f:
        imports = [line for line in f if line.startswith(("import ", "from "))]
    assert imports == ["from __future__ import annotations\n", "import os\n", "import shlex\n", "import string\n",
                       "from dataclasses import dataclass\n", "from typing import Any, Callable\n"]
    assert gj.KOHYA_SS_COMMIT in gj.__doc__


# ------------------------------------------------------------------------------------------ renames and values
def test_renamed_keys():
    opts = options(convert(gui(optimizer="Prodigy", max_resolution="768,768", sdxl=True, sdxl_no_half_vae=True,
                               sdxl_cache_text_encoder_outputs=True, clip_skip=0))[0])
    assert opts["optimizer_type"] == "Prodigy" and "optimizer" not in opts
    assert opts["resolution"] == "768,768" and "max_resolution" not in opts
    assert opts["no_half_vae"] is True and opts["cache_text_encoder_outputs"] is True
    # the SDXL panel's keys do nothing without the SDXL checkbox
    opts = options(convert(gui(sdxl_no_half_vae=True, sdxl_cache_text_encoder_outputs=True))[0])
    assert "no_half_vae" not in opts and "cache_text_encoder_outputs" not in opts


@pytest.mark.parametrize("value, expected", [("xformers", {"xformers"}), ("sdpa", {"sdpa"}), ("none", set()),
                                             (True, {"xformers"}), (False, set())])
def test_xformers_choice(value, expected):
    opts = options(convert(gui(xformers=value))[0])
    assert {k for k in ("xformers", "sdpa") if k in opts} == expected


def test_unset_values_give_no_argument():
    data = gui(seed=0, vae="", keep_tokens=0, min_snr_gamma=0, noise_offset=0, resume="", shuffle_caption=False,
               network_weights=None, caption_dropout_rate=0.0, save_every_n_epochs="", max_token_length=75)
    opts = options(convert(data)[0])
    for name in ("seed", "vae", "keep_tokens", "min_snr_gamma", "noise_offset", "resume", "shuffle_caption",
                 "network_weights", "caption_dropout_rate", "save_every_n_epochs", "max_token_length",
                 "reg_data_dir", "dataset_config", "metadata_title", "network_dropout", "ip_noise_gamma"):
        assert name not in opts, name
    assert opts["max_data_loader_n_workers"] == "0"  # the GUI always passes this one
    assert options(convert(gui(max_token_length=150))[0])["max_token_length"] == "150"


def test_old_files_strings_and_renamed_keys_are_read_as_the_gui_reads_them():
    data = gui(seed="1234", learning_rate="0.0002", text_encoder_lr="5e-05", unet_lr="0.0001", keep_tokens="0",
               lr_scheduler_num_cycles="", lr_scheduler_power="", bucket_reso_steps=64.0, xformers=True,
               gradient_accumulation_steps=1.0, caption_dropout_every_n_epochs=0.0)
    del data["optimizer"]
    data.update(use_8bit_adam=True, lora_network_weights="old.safetensors", LoRA_type="LoCon")
    opts = options(convert(data)[0])
    assert (opts["seed"], opts["learning_rate"], opts["text_encoder_lr"]) == ("1234", "0.0002", ["5e-05", "5e-05"])
    assert opts["lr_scheduler_num_cycles"] == "1" and opts["lr_scheduler_power"] == "1"
    assert opts["bucket_reso_steps"] == "64" and opts["gradient_accumulation_steps"] == "1"
    assert opts["optimizer_type"] == "AdamW8bit" and opts["network_weights"] == "old.safetensors"
    assert opts["xformers"] is True and "keep_tokens" not in opts and "caption_dropout_every_n_epochs" not in opts
    assert opts["network_module"] == "lycoris.kohya" and "algo=locon" in opts["network_args"]


# ------------------------------------------------------------------------------------------ steps and warm-up
def test_epoch_becomes_max_train_epochs_without_a_dataset_config():
    assert options(convert(gui(epoch=7))[0])["max_train_epochs"] == "7"
    opts = options(convert(gui(epoch=7, max_train_epochs=3))[0])
    assert opts["max_train_epochs"] == "3"
    opts = options(convert(gui(epoch=7, max_train_steps=500))[0])
    assert opts["max_train_steps"] == "500" and "max_train_epochs" not in opts


def test_epoch_is_dropped_with_a_dataset_config():
    argv, notes = convert(gui(epoch=7, dataset_config="ds.toml"))
    opts = options(argv)
    assert opts["dataset_config"] == "ds.toml" and "max_train_epochs" not in opts and "max_train_steps" not in opts
    assert any(n.startswith("epoch 7: not passed with a dataset_config") for n in notes)


@pytest.mark.parametrize("changes, expected", [
    ({"lr_warmup": 10}, "0.1"),                          # percent -> sd-scripts' ratio of the steps
    ({"lr_warmup": 5}, "0.05"),
    ({"lr_warmup": 100}, "100%"),                        # a ratio of 1 written so it is not read as 1 step
    ({"lr_warmup": 10, "lr_warmup_steps": 40}, "40"),    # the absolute override wins
    ({"lr_warmup": 0, "lr_warmup_steps": 0}, None),
    ({"lr_warmup": 10, "dataset_config": "ds.toml", "max_train_steps": 1000}, "100"),  # computed from the steps
    ({"lr_warmup": 10, "dataset_config": "ds.toml"}, "0.1"),
    ({"lr_warmup": 0, "lr_warmup_steps": 40, "dataset_config": "ds.toml"}, None),  # the GUI discards it here
])
def test_warmup(changes, expected):
    argv, notes = convert(gui(**changes))
    assert options(argv).get("lr_warmup_steps") == expected
    if changes.get("lr_warmup_steps") and expected is None:
        assert any("lr_warmup_steps 40: discarded" in n for n in notes)


def test_warmup_ratio_parses_as_a_ratio():
    parsed = kc.parse(convert(gui(lr_warmup=25))[0], rng=random.Random(0))
    assert parsed.namespace.lr_warmup_steps == 0.25


def test_stop_text_encoder_training_is_ignored_as_in_the_gui():
    argv, notes = convert(gui(stop_text_encoder_training=50))
    assert "stop_text_encoder_training" not in options(argv)
    assert any(n.startswith("stop_text_encoder_training = 50: ignored") for n in notes)


# ------------------------------------------------------------------------------------------ learning rates
def test_text_encoder_lr_zero_trains_the_unet_only():
    opts = options(convert(gui(text_encoder_lr=0))[0])
    assert opts["network_train_unet_only"] is True and "text_encoder_lr" not in opts
    opts = options(convert(gui(unet_lr=0))[0])
    assert opts["network_train_text_encoder_only"] is True and "unet_lr" not in opts
    opts = options(convert(gui(text_encoder_lr=0, unet_lr=0))[0])  # both at learning_rate
    assert not {"network_train_unet_only", "network_train_text_encoder_only", "unet_lr"} & set(opts)
    assert opts["learning_rate"] == "0.0001"


def test_t5xxl_lr_is_the_second_text_encoder_rate():
    opts = options(convert(gui(text_encoder_lr=5e-5, t5xxl_lr=1e-5))[0])
    assert opts["text_encoder_lr"] == ["5e-05", "1e-05"]
    with pytest.raises(gj.GuiJsonError, match="t5xxl_lr"):
        convert(gui(text_encoder_lr=0, t5xxl_lr=1e-5))
    with pytest.raises(gj.GuiJsonError, match="all 0"):
        convert(gui(learning_rate=0, text_encoder_lr=0, unet_lr=0))


# ------------------------------------------------------------------------------------------ LoRA types
def test_standard_passes_no_conv_dims():
    argv, notes = convert(gui(conv_dim=8, conv_alpha=4))
    opts = options(argv)
    assert opts["network_module"] == "networks.lora" and "network_args" not in opts
    assert "conv_dim = 8: not used by LoRA_type 'Standard' (the GUI leaves it out)" in notes


def test_kohya_locon_puts_conv_dims_into_network_args_and_parses():
    argv, _ = convert(gui(LoRA_type="Kohya LoCon", conv_dim=8, conv_alpha=4, rank_dropout=0))
    opts = options(argv)
    assert opts["network_module"] == "networks.lora" and opts["network_args"] == ["conv_dim=8", "conv_alpha=4"]
    parsed = kc.parse(argv, rng=random.Random(0))
    assert parsed.namespace.network_args == ["conv_dim=8", "conv_alpha=4"]


def test_standard_with_block_weights_and_loraplus():
    opts = options(convert(gui(down_lr_weight="0,0,0,0,0,0,1,1,1,1,1,1", rank_dropout=0.1,
                               loraplus_lr_ratio=16))[0])
    assert opts["network_args"] == ["down_lr_weight=0,0,0,0,0,0,1,1,1,1,1,1", "rank_dropout=0.1",
                                    "loraplus_lr_ratio=16"]


@pytest.mark.parametrize("lora_type, module, args", [
    ("LyCORIS/LoCon", "lycoris.kohya", ["preset=full", "conv_dim=8", "conv_alpha=4", "algo=locon"]),
    ("LyCORIS/LoHa", "lycoris.kohya", ["algo=loha", "conv_dim=8"]),
    ("LyCORIS/LoKr", "lycoris.kohya", ["algo=lokr", "factor=-1", "decompose_both=False"]),
    ("LyCORIS/iA3", "lycoris.kohya", ["algo=ia3", "train_on_input=True"]),
    ("LyCORIS/Diag-OFT", "lycoris.kohya", ["algo=diag-oft", "constraint=0"]),
    ("LyCORIS/DyLoRA", "lycoris.kohya", ["algo=dylora", "block_size=1"]),
    ("Kohya DyLoRA", "networks.dylora", ["conv_dim=8", "conv_alpha=4", "unit=1"]),
    ("LoRA-FA", "networks.lora_fa", None),
])
def test_lora_types(lora_type, module, args):
    opts = options(convert(gui(LoRA_type=lora_type, conv_dim=8, conv_alpha=4))[0])
    assert opts["network_module"] == module
    if args is None:
        assert "network_args" not in opts
    else:
        assert set(args) <= set(opts["network_args"]), opts["network_args"]


def test_lycoris_types_reach_network_options():
    """The GUI's LyCORIS/LoCon, LoHa and LoKr types (with every default network arg the GUI writes) become LoRA
    Loop's adapters; its other LyCORIS types are refused by LoRA Loop's parser with their algo named."""
    for lora_type, extra, want in (("LyCORIS/LoCon", {}, ("lora", False)), ("LyCORIS/LoHa", {}, ("loha", False)),
                                   ("LyCORIS/LoCon", {"dora_wd": True}, ("lora", True)),
                                   ("LyCORIS/LoKr", {"factor": 8, "decompose_both": True}, ("lokr", False))):
        argv, _ = convert(gui(LoRA_type=lora_type, conv_dim=8, conv_alpha=4, **extra))
        parsed = kc.parse(argv, rng=random.Random(0))
        options = parsed.inputs["LoraLoop_NetworkOptions"]
        assert (options["algo"], options["dora_wd"]) == want, (lora_type, options)
        assert (parsed.inputs["LoraLoop_InjectLoRA"]["conv_dim"], parsed.inputs["LoraLoop_InjectLoRA"]["conv_alpha"]) \
            == (8, 4.0)
        if lora_type == "LyCORIS/LoKr":
            assert (options["factor"], options["decompose_both"]) == (8, True)
    argv, _ = convert(gui(LoRA_type="LyCORIS/iA3"))
    with pytest.raises(kc.CliError, match="algo=ia3"):
        kc.parse(argv, rng=random.Random(0))


def test_native_loha_lokr_need_sdxl():
    opts = options(convert(gui(LoRA_type="Kohya LoKr", sdxl=True, clip_skip=0, conv_dim=4, conv_alpha=2,
                               factor=8))[0])
    assert opts["network_module"] == "networks.lokr"
    assert opts["network_args"] == ["conv_dim=4", "conv_alpha=2", "factor=8"]
    with pytest.raises(gj.GuiJsonError, match="SDXL"):
        convert(gui(LoRA_type="Kohya LoHa"))


def test_flux1_and_sd3():
    data = gui(flux1_checkbox=True, LoRA_type="Flux1", ae="ae.safetensors", clip_l="clip_l.safetensors",
               t5xxl="t5xxl.safetensors", model_prediction_type="raw", timestep_sampling="shift",
               train_t5xxl=True, img_attn_dim="8", clip_skip=0, max_token_length=75)
    opts = options(convert(data)[0])
    assert opts["network_module"] == "networks.lora_flux"
    assert opts["network_args"] == ["img_attn_dim=8", "train_t5xxl=True"]
    assert (opts["ae"], opts["clip_l"], opts["t5xxl"]) == ("ae.safetensors", "clip_l.safetensors",
                                                           "t5xxl.safetensors")
    assert opts["guidance_scale"] == "3.5" and opts["t5xxl_max_token_length"] == "512"
    assert "mem_eff_save" not in opts and "max_token_length" not in opts
    opts = options(convert(gui(sd3_checkbox=True, clip_g="g.safetensors", sd3_clip_l="l.safetensors",
                               sd3_t5xxl="t5.safetensors", weighting_scheme="uniform"))[0])
    assert opts["network_module"] == "networks.lora_sd3"
    assert (opts["clip_g"], opts["clip_l"], opts["t5xxl"]) == ("g.safetensors", "l.safetensors", "t5.safetensors")
    with pytest.raises(gj.GuiJsonError, match="flux1_checkbox"):
        convert(gui(flux1_checkbox=True))  # LoRA_type Standard with the FLUX.1 checkbox: the GUI refuses it


def test_families_lora_loop_does_not_train_are_refused():
    with pytest.raises(gj.GuiJsonError, match="anima_train_network.py"):
        convert(gui(anima_checkbox=True, LoRA_type="Anima"))
    with pytest.raises(gj.GuiJsonError, match="LoRA_type 'Nope'"):
        convert(gui(LoRA_type="Nope"))


def test_clip_skip_is_left_out_for_sdxl():
    argv, notes = convert(gui(sdxl=True, clip_skip=2))
    assert "clip_skip" not in options(argv) and any(n.startswith("clip_skip 2: left out for SDXL") for n in notes)


# ------------------------------------------------------------------------------------------ noise, prompts, extras
def test_noise_offset_type_chooses_the_noise_keys():
    opts = options(convert(gui(noise_offset_type="Multires", multires_noise_iterations=6,
                               multires_noise_discount=0.3, adaptive_noise_scale=0.01))[0])
    assert (opts["multires_noise_iterations"], opts["multires_noise_discount"]) == ("6", "0.3")
    assert "noise_offset" not in opts and "adaptive_noise_scale" not in opts
    opts = options(convert(gui(adaptive_noise_scale=0.01, multires_noise_iterations=6))[0])
    assert opts["noise_offset"] == "0.05" and opts["adaptive_noise_scale"] == "0.01"
    assert "multires_noise_iterations" not in opts and "multires_noise_discount" not in opts


def test_sample_prompts_file(tmp_path):
    argv, _ = convert(gui(), prompt_file=str(tmp_path / "p" / "prompts.txt"))
    assert options(argv)["sample_prompts"] == str(tmp_path / "p" / "prompts.txt")
    assert (tmp_path / "p" / "prompts.txt").read_text(encoding="utf-8").startswith("a photo of sks dog")
    argv, _ = convert(gui(sample_prompts="  \n"))
    assert "sample_prompts" not in options(argv) and not os.path.exists(PROMPT_FILE)


def test_additional_parameters_are_split_with_shlex_and_come_last():
    extra = '--caption_prefix="a photo of" --network_args "conv_dim=4" --seed 7'
    argv, _ = convert(gui(additional_parameters=extra))
    assert argv[:-5] == EXPECTED_ARGV
    assert argv[-5:] == ["--caption_prefix=a photo of", "--network_args", "conv_dim=4", "--seed", "7"]
    parsed = kc.parse(argv, rng=random.Random(0))
    assert parsed.namespace.seed == 7 and parsed.namespace.caption_prefix == "a photo of"  # the GUI's order: last wins
    argv, notes = convert(gui(additional_parameters='--caption_prefix="unbalanced'))
    assert argv[-1] == "--caption_prefix=unbalanced" and any("additional_parameters" in n for n in notes)


def test_gui_only_and_unknown_keys_give_notes():
    data = gui(num_processes=2, multi_gpu=True, model_list="runwayml/stable-diffusion-v1-5", lowvram=True,
               learning_rate_te=1e-5, save_as_bool=True)
    argv, notes = convert(data)
    assert argv == EXPECTED_ARGV
    text = "\n".join(notes)
    for key in ("num_processes = 2", "multi_gpu = True", "model_list = 'runwayml/stable-diffusion-v1-5'",
                "lowvram = True", "learning_rate_te = 1e-05: not a key of this kohya_ss version's LoRA tab"):
        assert key in text, key
    assert "save_as_bool" not in text and "dynamo_backend" not in text  # UI state / the GUI's default


def test_looks_like_gui_json():
    assert gj.looks_like_gui_json(gui())
    assert gj.looks_like_gui_json({"LoRA_type": "Standard"})
    assert gj.looks_like_gui_json({"max_resolution": "512,512", "epoch": 1, "optimizer": "AdamW"})
    assert not gj.looks_like_gui_json({"pretrained_model_name_or_path": "m.safetensors", "network_dim": 16,
                                       "resolution": "512,512", "max_train_epochs": 1})  # sd-scripts' own keys
    assert not gj.looks_like_gui_json([1, 2]) and not gj.looks_like_gui_json("LoRA_type")
    assert not gj.looks_like_gui_json({"max_resolution": "512", "epoch": 1, "optimizer": "AdamW",
                                       "token_string": "sks", "num_vectors_per_token": 8})  # textual inversion
