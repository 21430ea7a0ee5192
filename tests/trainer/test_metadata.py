"""kohya ss_* / modelspec.* metadata (sd-scripts tests/library/test_sai_model_spec.py expectations ported)."""
import base64
import json
from dataclasses import dataclass, field

import pytest

from trainer.metadata import (SS_METADATA_MINIMUM_KEYS, build_metadata, dataset_summary, determine_resolution,
                              metadata_for_network, modelspec_metadata, thumbnail_data_url)

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


# ---- from a network + training_info (duck-typed, no trainer internals needed) ------------------------
@dataclass
class _Cfg:
    learning_rate: float = 1e-4
    text_encoder_lr: float = 5e-5
    lr_scheduler: str = "cosine"
    seed: int = 3
    max_train_steps: int = 10
    min_timestep: int = 0
    max_timestep: int = 1000


@dataclass
class _Group:
    resolution: tuple = (512, 512)
    batch_size: int = 2
    enable_bucket: bool = True
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_no_upscale: bool = False


@dataclass
class _Subset:
    flip_aug: bool = True


class _DS:
    groups = [_Group()]
    subsets = [_Subset()]

    def num_train_images(self): return 30
    def num_reg_images(self): return 0
    def tag_frequency(self): return {"img": {"a": 3}}
    def dataset_dirs(self, reg=False): return {} if reg else {"img": {"n_repeats": 10, "img_count": 3}}


class _Plan:
    def bucket_info(self):
        return {"buckets": {0: {"resolution": [512, 512], "count": 20}, 1: {"resolution": [576, 448], "count": 10}},
                "mean_img_ar_error": 0.01}


@dataclass
class _Encoded:
    dataset: object = field(default_factory=_DS)
    plan: object = field(default_factory=_Plan)


class _Net:
    text_encoder_names: list = []

    def __init__(self):
        self.training_info = {"started_at": 10.0, "finished_at": 20.0, "steps": 10, "epoch": 1, "config": _Cfg(),
                              "optimizer_repr": "torch.optim.adamw.AdamW(weight_decay=0.01)", "prediction": "eps",
                              "dataset": _Encoded(), "family": "sd1"}

    def metadata(self):
        return {"rank": 8, "alpha": 4.0, "conv_rank": None, "conv_alpha": None, "family": "sd1", "network_args": {}}


def test_metadata_for_network():
    m = metadata_for_network(_Net(), output_name="out", save_precision="fp16")
    assert m["ss_network_dim"] == "8" and m["ss_learning_rate"] == "0.0001" and m["ss_unet_lr"] == "0.0001"
    assert m["ss_text_encoder_lr"] == "None"  # TE not trained
    assert m["ss_optimizer"].startswith("torch.optim.adamw.AdamW") and m["ss_lr_scheduler"] == "cosine"
    assert m["ss_num_train_images"] == "30" and m["ss_num_batches_per_epoch"] == "15"
    assert m["ss_batch_size_per_device"] == "2" and m["ss_flip_aug"] == "True"
    assert json.loads(m["ss_dataset_dirs"]) == {"img": {"n_repeats": 10, "img_count": 3}}
    assert m["ss_steps"] == "10" and m["ss_base_model_version"] == "sd_v1"
    assert m["modelspec.title"] == "out" and m["modelspec.resolution"] == "512x512"
    assert "modelspec.timestep_range" not in m


def test_metadata_for_untrained_network_and_errors():
    class Bare:
        def metadata(self):
            return {"rank": 4, "alpha": 1.0, "family": "flux", "network_args": {"train_blocks": "single"}}

    m = metadata_for_network(Bare(), output_name="x")
    assert m["ss_network_module"] == "networks.lora_flux" and m["ss_steps"] == "None"
    assert json.loads(m["ss_network_args"]) == {"train_blocks": "single"}
    assert dataset_summary(None) == {}

    class NoFamily:
        def metadata(self):
            return {"rank": 4, "alpha": 1.0, "family": "", "network_args": {}}

    with pytest.raises(ValueError, match="family"):
        metadata_for_network(NoFamily())
