"""kohya ss_* / modelspec.* metadata (sd-scripts tests/library/test_sai_model_spec.py expectations ported)."""
import base64
import json

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.buckets import plan_buckets
from trainer.config import TrainConfig
from trainer.dataset import load_folder, load_toml
from trainer.metadata import (SS_METADATA_MINIMUM_KEYS, build_metadata, determine_resolution, metadata_for,
                              modelspec_metadata, thumbnail_data_url)
from trainer.network import UNET_ROOT, LoRANetwork, NetworkSpec, Target
from trainer.record import DatasetSummary, TrainingRecord

NET = {"rank": 16, "alpha": 8.0, "conv_rank": None, "conv_alpha": None, "family": "sdxl",
       "network_args": {"conv_dim": "4", "conv_alpha": "1.0"}}


def _meta(family="sd1", objective=None, **kw):
    return build_metadata(family=family, network={**NET, "family": family}, output_name="my_lora", objective=objective,
                          started_at=1700000000.0, finished_at=1700000100.0, session_id=42, **kw)


# ---- sai_model_spec ports ------------------------------------------------------------------------
def test_modelspec_drops_none_and_prefixes():
    m = modelspec_metadata(architecture="stable-diffusion-v1/lora", implementation="diffusers", title="t",
                           resolution="512x512", author=None, additional={"foo": "bar", "modelspec.baz": 1})
    assert m["modelspec.sai_model_spec"] == "1.0.1"
    assert m["modelspec.foo"] == "bar" and m["modelspec.baz"] == "1"
    assert "modelspec.author" not in m and all(k.startswith("modelspec.") for k in m)


@pytest.mark.parametrize("family,objective,cfg,names,arch", [
    ("sdxl", "eps", None, None, "stable-diffusion-xl-v1-base/lora"),
    ("flux", "flow", {"guidance_embed": True}, ["Flux"], "flux-1-dev/lora"),
    ("flux", "flow", {"guidance_embed": False}, ["FluxSchnell", "Flux"], "flux-1-schnell/lora"),
    ("sd3", "flow", {"depth": 38}, None, "stable-diffusion-3-5-large/lora"),
    ("sd3", "flow", {"depth": 24}, None, "stable-diffusion-3-medium/lora"),
    ("sd2", "v", None, None, "stable-diffusion-v2-768-v/lora"),
    ("sd2", "eps", None, None, "stable-diffusion-v2-512/lora"),
    ("sd1", "eps", None, None, "stable-diffusion-v1/lora"),
])
def test_architecture(family, objective, cfg, names, arch):
    m = _meta(family, objective, unet_config=cfg, config_class_names=names)
    assert m["modelspec.architecture"] == arch


def test_implementation_and_prediction_type():
    assert _meta("sdxl")["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert _meta("flux")["modelspec.implementation"] == "https://github.com/black-forest-labs/flux"
    assert _meta("sd1")["modelspec.implementation"] == "diffusers"
    assert _meta("sd3")["modelspec.implementation"] == "diffusers"
    assert _meta("sdxl")["modelspec.prediction_type"] == "epsilon"
    assert _meta("sd2", "v")["modelspec.prediction_type"] == "v"
    assert "modelspec.prediction_type" not in _meta("flux")


@pytest.mark.parametrize("reso,expected", [((768, 1024), "768x1024"), (768, "768x768"), ("768,1024", "768x1024"),
                                           ([640], "640x640")])
def test_resolution_parsing(reso, expected):
    assert determine_resolution(reso) == expected


def test_default_resolutions():
    assert _meta("sdxl")["modelspec.resolution"] == "1024x1024"
    assert _meta("flux")["modelspec.resolution"] == "1024x1024"
    assert _meta("sd3")["modelspec.resolution"] == "1024x1024"
    assert _meta("sd2", "v")["modelspec.resolution"] == "768x768"
    assert _meta("sd1")["modelspec.resolution"] == "512x512"
    assert _meta("sd1", dataset={"resolution": (640, 768)})["modelspec.resolution"] == "640x768"


def test_thumbnail(tmp_path):
    png = tmp_path / "t.png"
    png.write_bytes(b"\x89PNG fake")
    url = thumbnail_data_url(str(png))
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == b"\x89PNG fake"
    assert thumbnail_data_url(str(tmp_path / "missing.png")) is None
    m = _meta("sd1", modelspec={"thumbnail": str(tmp_path / "missing.png"), "author": "me"})
    assert "modelspec.thumbnail" not in m and m["modelspec.author"] == "me"


def test_title_and_date():
    m = _meta("sd1")
    assert m["modelspec.title"] == "my_lora"
    assert build_metadata(family="sd1", network=NET, started_at=5.0)["modelspec.title"] == "LoRA@5.0"
    assert len(m["modelspec.date"]) == 19 and m["modelspec.date"][10] == "T"


# ---- ss_* keys --------------------------------------------------------------------------------------
def test_ss_keys_values_are_strings_kohya_style():
    m = _meta("sdxl", training={"learning_rate": 1e-4, "unet_lr": 1e-4, "text_encoder_lr": None,
                                "optimizer": "torch.optim.adamw.AdamW(weight_decay=0.01)",
                                "lr_scheduler": "constant", "seed": 7, "mixed_precision": "bf16",
                                "gradient_checkpointing": True, "max_train_steps": 100, "noise_offset": 0.05,
                                "min_snr_gamma": 5.0, "max_grad_norm": 1.0, "gradient_accumulation_steps": 2},
              dataset={"num_train_images": 20, "num_reg_images": 0, "resolution": (1024, 1024),
                       "tag_frequency": {"10_sks dog": {"sks dog": 20}},
                       "dataset_dirs": {"10_sks dog": {"n_repeats": 10, "img_count": 2}},
                       "bucket_info": {"buckets": {0: {"resolution": [1024, 1024], "count": 20}},
                                       "mean_img_ar_error": 0.0}},
              steps=100, epoch=5, num_epochs=5)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in m.items())
    assert m["ss_network_module"] == "networks.lora"
    assert m["ss_network_dim"] == "16" and m["ss_network_alpha"] == "8.0"
    assert json.loads(m["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "1.0"}
    assert m["ss_base_model_version"] == "sdxl_base_v1-0" and m["ss_v2"] == "False"
    assert m["ss_optimizer"] == "torch.optim.adamw.AdamW(weight_decay=0.01)"
    assert m["ss_text_encoder_lr"] == "None" and m["ss_gradient_checkpointing"] == "True"
    assert m["ss_seed"] == "7" and m["ss_mixed_precision"] == "bf16" and m["ss_steps"] == "100"
    assert m["ss_epoch"] == "5" and m["ss_session_id"] == "42" and m["ss_output_name"] == "my_lora"
    assert m["ss_training_started_at"] == "1700000000.0" and m["ss_training_finished_at"] == "1700000100.0"
    assert json.loads(m["ss_tag_frequency"]) == {"10_sks dog": {"sks dog": 20}}
    assert json.loads(m["ss_bucket_info"])["buckets"]["0"]["count"] == 20
    assert m["ss_resolution"] == "(1024, 1024)" and m["ss_num_train_images"] == "20"
    assert m["ss_gradient_accumulation_steps"] == "2" and m["ss_min_snr_gamma"] == "5.0"


def test_family_specific_keys():
    flux = _meta("flux", "flow", training={"guidance_scale": 1.0, "timestep_sampling": "shift",
                                           "discrete_flow_shift": 3.1582})
    assert flux["ss_network_module"] == "networks.lora_flux" and flux["ss_base_model_version"] == "flux1"
    assert flux["ss_guidance_scale"] == "1.0" and flux["ss_timestep_sampling"] == "shift"
    sd3 = _meta("sd3", "flow", unet_config={"depth": 24, "x_block_self_attn_layers": [0]})
    assert sd3["ss_network_module"] == "networks.lora_sd3" and sd3["ss_base_model_version"] == "5-medium"
    assert "ss_guidance_scale" not in sd3
    sd2 = _meta("sd2", "v")
    assert sd2["ss_v2"] == "True" and sd2["ss_base_model_version"] == "sd_v2_v"


def test_no_network_args_key_when_empty_and_minimal():
    m = build_metadata(family="sd1", network={"rank": 4, "alpha": 1.0, "network_args": {}})
    assert "ss_network_args" not in m
    mini = _meta("sd1", minimal=True, training={"seed": 1})
    ss = {k for k in mini if k.startswith("ss_")}
    assert ss <= set(SS_METADATA_MINIMUM_KEYS) and "ss_network_module" in ss and "ss_seed" not in ss
    assert mini["modelspec.architecture"] == "stable-diffusion-v1/lora"


def test_timestep_range_and_clip_skip():
    m = _meta("sd1", training={"min_timestep": 100, "max_timestep": 900, "clip_skip": 2})
    assert m["modelspec.timestep_range"] == "100,900" and m["modelspec.encoder_layer"] == "2"
    assert "modelspec.timestep_range" not in _meta("sd1", training={"min_timestep": 0, "max_timestep": 1000})


# ---- from a real network and a real TrainingRecord (load_folder / load_toml datasets) ---------------------
def _images(folder, names, caption=True):
    folder.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        Image.fromarray(np.full((64, 48 if i % 2 else 64, 3), 30 * i, dtype=np.uint8)).save(folder / f"{n}.png")
        if caption:
            (folder / f"{n}.txt").write_text(f"sks dog, photo {i}", encoding="utf-8")


def _network(family="sd1", **spec):
    root = torch.nn.Sequential(torch.nn.Linear(8, 8))
    targets = [Target("lora_unet_0", UNET_ROOT, "0", "linear")]
    return LoRANetwork.create(targets, {UNET_ROOT: root}, NetworkSpec(family=family, rank=8, alpha=4.0, **spec), seed=0)


def _record(ds, **kw):
    ds = ds.with_node_group_settings(dict(resolution=(64, 64), batch_size=2, min_bucket_reso=32, max_bucket_reso=128,
                                          bucket_reso_steps=16))
    plan = plan_buckets(ds)
    cfg = TrainConfig(max_train_steps=10, lr_scheduler="cosine", seed=3, gradient_accumulation_steps=1)
    values = dict(config=cfg, optimizer="torch.optim.adamw.AdamW", mixed_precision="no",
                  gradient_checkpointing=False, prediction="eps", dataset=DatasetSummary.of(ds, plan), steps=10,
                  epoch=1, started_at=10.0, finished_at=20.0, trains_text_encoder=False,
                  model_name="sd15/v1-5-pruned-emaonly.safetensors")
    values.update(kw)
    return TrainingRecord(**values)


def test_metadata_from_a_real_folder_dataset(tmp_path):
    _images(tmp_path / "data" / "10_sks dog", ["a", "b", "c"])
    ds = load_folder(str(tmp_path / "data"))
    m = metadata_for(_network(), _record(ds), output_name="out")
    assert m["ss_num_train_images"] == "30" and m["ss_num_reg_images"] == "0"
    # 30 samples in two buckets (64x64: 20, 48-wide: 10), batch 2 -> 15 batches; 10 steps -> 1 epoch
    assert m["ss_num_batches_per_epoch"] == "15" and m["ss_num_epochs"] == "1" and m["ss_epoch"] == "1"
    assert m["ss_cache_latents"] == "True" and m["ss_mixed_precision"] == "no"
    assert m["ss_sd_model_name"] == "v1-5-pruned-emaonly.safetensors"
    assert m["ss_network_dim"] == "8" and m["ss_learning_rate"] == "0.0001" and m["ss_unet_lr"] == "0.0001"
    assert m["ss_text_encoder_lr"] == "None"  # TE not trained
    assert m["ss_optimizer"] == "torch.optim.adamw.AdamW" and m["ss_lr_scheduler"] == "cosine"
    assert m["ss_batch_size_per_device"] == "2" and m["ss_resolution"] == "(64, 64)"
    assert json.loads(m["ss_dataset_dirs"]) == {"10_sks dog": {"n_repeats": 10, "img_count": 3}}
    assert json.loads(m["ss_tag_frequency"])["10_sks dog"]["sks dog"] == 3
    assert json.loads(m["ss_bucket_info"])["buckets"]["0"]["count"] + \
        json.loads(m["ss_bucket_info"])["buckets"]["1"]["count"] == 30
    assert m["ss_steps"] == "10" and m["ss_base_model_version"] == "sd_v1"
    assert m["modelspec.title"] == "out" and m["modelspec.resolution"] == "64x64"
    assert "ss_datasets" not in m
    none_keys = [k for k in ("ss_num_train_images", "ss_num_reg_images", "ss_num_epochs", "ss_cache_latents",
                             "ss_num_batches_per_epoch", "ss_mixed_precision") if m[k] == "None"]
    assert none_keys == []


def test_metadata_epochs_follow_kohya_accounting(tmp_path):
    # 4 images in two buckets (64x64 and 48x64), 2 each, batch 2 -> 2 batches per epoch
    _images(tmp_path / "data", ["a", "b", "c", "d"])
    ds = load_folder(str(tmp_path / "data"))
    rec = _record(ds, config=TrainConfig(max_train_steps=7, gradient_accumulation_steps=1))
    assert rec.dataset.num_batches_per_epoch == 2
    assert metadata_for(_network(), rec)["ss_num_epochs"] == "4"  # ceil(7 / 2)
    rec2 = _record(ds, config=TrainConfig(max_train_steps=7, gradient_accumulation_steps=2))
    assert metadata_for(_network(), rec2)["ss_num_epochs"] == "7"  # ceil(7 / ceil(2 / 2))


def test_metadata_from_a_toml_dataset_with_reg_images(tmp_path):
    _images(tmp_path / "train", ["a", "b"])
    _images(tmp_path / "reg", ["r1", "r2", "r3"], caption=False)
    (tmp_path / "ds.toml").write_text(
        "[[datasets]]\nbatch_size = 1\n"
        "  [[datasets.subsets]]\n  image_dir = 'train'\n  num_repeats = 3\n"
        "  [[datasets.subsets]]\n  image_dir = 'reg'\n  is_reg = true\n  class_tokens = 'dog'\n", encoding="utf-8")
    ds = load_toml(str(tmp_path / "ds.toml"))
    m = metadata_for(_network(), _record(ds))
    assert m["ss_num_train_images"] == "6" and m["ss_num_reg_images"] == "3"
    datasets = json.loads(m["ss_datasets"])
    assert len(datasets) == 1 and datasets[0]["num_train_images"] == 6 and datasets[0]["num_reg_images"] == 3
    assert [s["image_dir"] for s in datasets[0]["subsets"]] == ["train", "reg"]
    assert datasets[0]["subsets"][1]["is_reg"] is True and datasets[0]["subsets"][1]["class_tokens"] == "dog"
    assert json.loads(m["ss_reg_dataset_dirs"]) == {"reg": {"n_repeats": 1, "img_count": 3}}


def test_metadata_records_what_ran(tmp_path):
    _images(tmp_path / "data", ["a", "b"])
    ds = load_folder(str(tmp_path / "data"))
    rec = _record(ds, config=TrainConfig(mixed_precision="auto", memory_mode="checkpointed"),
                  mixed_precision="bf16", gradient_checkpointing=False, trains_text_encoder=True)
    m = metadata_for(_network(), rec)
    assert m["ss_mixed_precision"] == "bf16" and m["ss_gradient_checkpointing"] == "False"
    assert m["ss_text_encoder_lr"] == "5e-05"


def test_metadata_for_untrained_network_and_errors():
    net = _network("flux", args=(("train_blocks", "single"),))
    m = metadata_for(net, None, output_name="x")
    assert m["ss_network_module"] == "networks.lora_flux" and m["ss_steps"] == "None"
    assert json.loads(m["ss_network_args"]) == {"train_blocks": "single"}
    with pytest.raises(ValueError, match="family"):
        metadata_for(_network(""), None)


def test_metadata_records_the_loss_and_noise_options_as_sd_scripts_writes_them(tmp_path):
    _images(tmp_path / "data", ["a", "b"])
    ds = load_folder(str(tmp_path / "data"))
    m = metadata_for(_network(), _record(ds))  # defaults: what sd-scripts writes without the options
    assert (m["ss_noise_offset"], m["ss_multires_noise_iterations"], m["ss_multires_noise_discount"],
            m["ss_adaptive_noise_scale"], m["ss_ip_noise_gamma"], m["ss_min_snr_gamma"]) == \
        ("None", "None", "0.3", "None", "None", "None")
    assert (m["ss_loss_type"], m["ss_huber_schedule"], m["ss_huber_c"], m["ss_huber_scale"]) == \
        ("l2", "snr", "0.1", "1.0")
    assert (m["ss_zero_terminal_snr"], m["ss_debiased_estimation"], m["ss_noise_offset_random_strength"],
            m["ss_ip_noise_gamma_random_strength"]) == ("False", "False", "False", "False")
    cfg = TrainConfig(max_train_steps=10, noise_offset=0.05, noise_offset_random_strength=True,
                      adaptive_noise_scale=0.01, multires_noise_iterations=6, multires_noise_discount=0.1,
                      ip_noise_gamma=0.1, ip_noise_gamma_random_strength=True, loss_type="smooth_l1",
                      huber_schedule="exponential", huber_c=0.2, huber_scale=2.0, debiased_estimation_loss=True,
                      zero_terminal_snr=True, min_snr_gamma=5.0)
    m = metadata_for(_network(), _record(ds, config=cfg))
    assert (m["ss_noise_offset"], m["ss_noise_offset_random_strength"], m["ss_adaptive_noise_scale"],
            m["ss_multires_noise_iterations"], m["ss_multires_noise_discount"], m["ss_ip_noise_gamma"],
            m["ss_ip_noise_gamma_random_strength"]) == ("0.05", "True", "0.01", "6", "0.1", "0.1", "True")
    assert (m["ss_loss_type"], m["ss_huber_schedule"], m["ss_huber_c"], m["ss_huber_scale"]) == \
        ("smooth_l1", "exponential", "0.2", "2.0")
    assert (m["ss_debiased_estimation"], m["ss_zero_terminal_snr"], m["ss_min_snr_gamma"]) == ("True", "True", "5.0")
    # a flow model: what sd-scripts' flow trainers do not apply is recorded as off; ip noise and huber apply
    f = metadata_for(_network("flux"), _record(ds, config=cfg, prediction="flow"))
    assert (f["ss_noise_offset"], f["ss_adaptive_noise_scale"], f["ss_multires_noise_iterations"],
            f["ss_min_snr_gamma"], f["ss_debiased_estimation"], f["ss_zero_terminal_snr"]) == \
        ("None", "None", "None", "None", "False", "False")
    assert (f["ss_ip_noise_gamma"], f["ss_loss_type"], f["ss_huber_schedule"]) == ("0.1", "smooth_l1", "exponential")
