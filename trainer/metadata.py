"""safetensors header metadata for a trained LoRA: kohya ``ss_*`` keys and ``modelspec.*`` (SAI ModelSpec 1.0.1).

``build_metadata`` takes plain values (dicts / dataclasses / numbers), never ComfyUI objects. Values
are stringified the way sd-scripts does (``str(v)``: ``True``/``False``/``None`` literally; dicts as
JSON). ``metadata_for`` takes a network's ``NetworkSpec`` and the run's typed ``TrainingRecord`` and
calls ``build_metadata``, so every key comes from a value the run really had.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import logging
import mimetypes
import os
import random
import time
from typing import Any, Mapping, Optional, Sequence, Union

from .families import Family, get_family
from .network import NetworkSpec
from .network_options import training_network_args
from .record import DatasetSummary, TrainingRecord

log = logging.getLogger(__name__)

SAI_MODEL_SPEC_VERSION = "1.0.1"
IMPLEMENTATION_VERSION = "lora-loop/0.1.0"

# sd-scripts SS_METADATA_MINIMUM_KEYS (written even with --no_metadata)
SS_METADATA_MINIMUM_KEYS = ("ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim",
                            "ss_network_alpha", "ss_network_args")

# training-option name (kohya argparse name) -> ss_ key; missing options are written as "None" like kohya.
TRAINING_KEYS = {
    "learning_rate": "ss_learning_rate",
    "text_encoder_lr": "ss_text_encoder_lr",
    "unet_lr": "ss_unet_lr",
    "gradient_checkpointing": "ss_gradient_checkpointing",
    "gradient_accumulation_steps": "ss_gradient_accumulation_steps",
    "max_train_steps": "ss_max_train_steps",
    "lr_warmup_steps": "ss_lr_warmup_steps",
    "lr_scheduler": "ss_lr_scheduler",
    "network_dropout": "ss_network_dropout",
    "mixed_precision": "ss_mixed_precision",
    "full_fp16": "ss_full_fp16",
    "clip_skip": "ss_clip_skip",
    "max_token_length": "ss_max_token_length",
    "cache_latents": "ss_cache_latents",
    "seed": "ss_seed",
    "lowram": "ss_lowram",
    "noise_offset": "ss_noise_offset",
    "multires_noise_iterations": "ss_multires_noise_iterations",
    "multires_noise_discount": "ss_multires_noise_discount",
    "adaptive_noise_scale": "ss_adaptive_noise_scale",
    "zero_terminal_snr": "ss_zero_terminal_snr",
    "training_comment": "ss_training_comment",
    "optimizer": "ss_optimizer",
    "max_grad_norm": "ss_max_grad_norm",
    "caption_dropout_rate": "ss_caption_dropout_rate",
    "caption_dropout_every_n_epochs": "ss_caption_dropout_every_n_epochs",
    "caption_tag_dropout_rate": "ss_caption_tag_dropout_rate",
    "face_crop_aug_range": "ss_face_crop_aug_range",
    "prior_loss_weight": "ss_prior_loss_weight",
    "min_snr_gamma": "ss_min_snr_gamma",
    "scale_weight_norms": "ss_scale_weight_norms",
    "ip_noise_gamma": "ss_ip_noise_gamma",
    "debiased_estimation_loss": "ss_debiased_estimation",
    "noise_offset_random_strength": "ss_noise_offset_random_strength",
    "ip_noise_gamma_random_strength": "ss_ip_noise_gamma_random_strength",
    "loss_type": "ss_loss_type",
    "huber_schedule": "ss_huber_schedule",
    "huber_scale": "ss_huber_scale",
    "huber_c": "ss_huber_c",
    "fp8_base": "ss_fp8_base",
    "fp8_base_unet": "ss_fp8_base_unet",
    "validation_seed": "ss_validation_seed",
    "validation_split": "ss_validation_split",
    "max_validation_steps": "ss_max_validation_steps",
    "validate_every_n_epochs": "ss_validate_every_n_epochs",
    "validate_every_n_steps": "ss_validate_every_n_steps",
    "resize_interpolation": "ss_resize_interpolation",
}

# architecture-specific keys (flux_train_network / sd3_train_network update_metadata)
FLUX_KEYS = ("model_type", "apply_t5_attn_mask", "weighting_scheme", "logit_mean", "logit_std", "mode_scale",
             "guidance_scale", "timestep_sampling", "sigmoid_scale", "model_prediction_type", "discrete_flow_shift")
SD3_KEYS = ("apply_lg_attn_mask", "apply_t5_attn_mask", "weighting_scheme", "logit_mean", "logit_std", "mode_scale")

# dataset value name -> ss_ key (folder / CLI style, kohya train_network.py without --dataset_config)
DATASET_KEYS = {
    "batch_size_per_device": "ss_batch_size_per_device",
    "total_batch_size": "ss_total_batch_size",
    "resolution": "ss_resolution",
    "color_aug": "ss_color_aug",
    "flip_aug": "ss_flip_aug",
    "random_crop": "ss_random_crop",
    "shuffle_caption": "ss_shuffle_caption",
    "enable_bucket": "ss_enable_bucket",
    "bucket_no_upscale": "ss_bucket_no_upscale",
    "min_bucket_reso": "ss_min_bucket_reso",
    "max_bucket_reso": "ss_max_bucket_reso",
    "keep_tokens": "ss_keep_tokens",
}
DATASET_JSON_KEYS = {"dataset_dirs": "ss_dataset_dirs", "reg_dataset_dirs": "ss_reg_dataset_dirs",
                     "tag_frequency": "ss_tag_frequency", "bucket_info": "ss_bucket_info", "datasets": "ss_datasets"}


# --------------------------------------------------------------------------- modelspec helpers
def determine_resolution(reso: Union[None, int, str, Sequence[int]], default: Sequence[int] = (512, 512)) -> str:
    """sd-scripts ``determine_resolution``: ``768`` -> ``768x768``, ``(768, 1024)`` / ``"768,1024"`` ->
    ``768x1024``; None -> ``default``."""
    if reso is None:
        w, h = default
        return f"{int(w)}x{int(h)}"
    if isinstance(reso, str):
        reso = tuple(int(v) for v in reso.replace("x", ",").split(","))
    if isinstance(reso, int):
        reso = (reso, reso)
    reso = tuple(reso)
    if len(reso) == 1:
        reso = (reso[0], reso[0])
    return f"{int(reso[0])}x{int(reso[1])}"


def iso_date(timestamp: Optional[float] = None) -> str:
    """ISO-8601 local time without microseconds (``modelspec.date``)."""
    return datetime.datetime.fromtimestamp(int(time.time() if timestamp is None else timestamp)).isoformat()


def thumbnail_data_url(path: Optional[str]) -> Optional[str]:
    """``data:<mime>;base64,...`` of an image file; None (and a warning) when it does not exist."""
    if not path:
        return None
    if not os.path.isfile(path):
        log.warning("modelspec thumbnail %s not found; not embedded", path)
        return None
    mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
    with open(path, "rb") as f:
        return f"data:{mime};base64,{base64.b64encode(f.read()).decode('ascii')}"


def modelspec_metadata(*, architecture: str, implementation: str, title: str, resolution: str,
                       date: Optional[str] = None, prediction_type: Optional[str] = None,
                       timestep_range: Optional[str] = None, encoder_layer: Optional[str] = None,
                       implementation_version: Optional[str] = None, author: Optional[str] = None,
                       description: Optional[str] = None, license: Optional[str] = None,
                       tags: Optional[str] = None, usage_hint: Optional[str] = None,
                       thumbnail: Optional[str] = None, merged_from: Optional[str] = None,
                       trigger_phrase: Optional[str] = None, preprocessor: Optional[str] = None,
                       is_negative_embedding: Optional[str] = None,
                       additional: Optional[Mapping[str, Any]] = None) -> dict[str, str]:
    """``modelspec.*`` keys (ModelSpec 1.0.1); None values are dropped, extra fields get the prefix."""
    values = {"sai_model_spec": SAI_MODEL_SPEC_VERSION, "architecture": architecture,
              "implementation": implementation, "title": title, "resolution": resolution, "date": date,
              "description": description, "author": author, "implementation_version": implementation_version,
              "license": license, "usage_hint": usage_hint, "thumbnail": thumbnail, "tags": tags,
              "merged_from": merged_from, "trigger_phrase": trigger_phrase, "prediction_type": prediction_type,
              "timestep_range": timestep_range, "encoder_layer": encoder_layer, "preprocessor": preprocessor,
              "is_negative_embedding": is_negative_embedding}
    out = {f"modelspec.{k}": str(v) for k, v in values.items() if v is not None}
    for k, v in (additional or {}).items():
        if v is not None:
            out[k if k.startswith("modelspec.") else f"modelspec.{k}"] = str(v)
    return out


# --------------------------------------------------------------------------- ss_* helpers
def _s(value: Any) -> str:
    """kohya stringification: str(v), JSON for dicts/lists of dicts."""
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _as_dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return dict(obj)


def build_metadata(*, family: Union[str, Family], network: Mapping[str, Any], output_name: Optional[str] = None,
                   training: Any = None, dataset: Any = None, steps: Optional[int] = None,
                   epoch: Optional[int] = None, num_epochs: Optional[int] = None,
                   started_at: Optional[float] = None, finished_at: Optional[float] = None,
                   session_id: Optional[int] = None, objective: Optional[str] = None,
                   unet_config: Optional[dict] = None, config_class_names: Optional[Sequence[str]] = None,
                   model_name: Optional[str] = None, title: Optional[str] = None,
                   modelspec: Optional[Mapping[str, Any]] = None, minimal: bool = False,
                   extra: Optional[Mapping[str, Any]] = None) -> dict[str, str]:
    """kohya ``ss_*`` + ``modelspec.*`` metadata, all values ``str``.

    family: family name or object; network: ``LoRANetwork.metadata()`` (rank, alpha, conv_rank,
    conv_alpha, network_args); training: kohya option names -> values (dict or dataclass, e.g.
    ``learning_rate``, ``unet_lr``, ``optimizer``, ``lr_scheduler``, ``seed``, ``mixed_precision`` ...);
    dataset: ``num_train_images``, ``num_reg_images``, ``num_batches_per_epoch``, ``resolution``,
    ``batch_size_per_device``, bucket settings, ``dataset_dirs``, ``reg_dataset_dirs``,
    ``tag_frequency``, ``bucket_info`` ...; objective: ``eps`` / ``v`` / ``flow`` (the model's);
    modelspec: optional ``author``, ``description``, ``license``, ``tags``, ``trigger_phrase``,
    ``usage_hint``, ``thumbnail`` (file path), ``merged_from``, ``resolution``, ``implementation_version``.
    minimal: sd-scripts ``--no_metadata`` (only the minimum ss keys + modelspec).
    """
    fam = get_family(family) if isinstance(family, str) else family
    objective = objective or fam.default_objective
    train = _as_dict(training)
    data = _as_dict(dataset)
    now = time.time()
    started = started_at if started_at is not None else now
    finished = finished_at if finished_at is not None else now

    args = {str(k): str(v) for k, v in (network.get("network_args") or {}).items()}
    meta: dict[str, Any] = {
        "ss_session_id": session_id if session_id is not None else random.randint(0, 2 ** 32),
        "ss_training_started_at": started,
        "ss_output_name": output_name,
        "ss_network_module": "lycoris.kohya" if "algo" in args else fam.network_module,
        "ss_network_dim": network.get("rank"),
        "ss_network_alpha": network.get("alpha"),
        "ss_v2": fam.is_v2(),
        "ss_base_model_version": fam.base_model_version(unet_config, objective, list(config_class_names or [])),
        "ss_num_train_images": data.get("num_train_images"),
        "ss_num_validation_images": data.get("num_validation_images", 0),
        "ss_num_reg_images": data.get("num_reg_images"),
        "ss_num_batches_per_epoch": data.get("num_batches_per_epoch"),
        "ss_num_epochs": num_epochs,
    }
    if args:
        meta["ss_network_args"] = json.dumps(args)
    for opt_name, key in TRAINING_KEYS.items():
        meta[key] = train.get(opt_name)
    if meta["ss_learning_rate"] is None and "unet_lr" in train:
        meta["ss_learning_rate"] = train["unet_lr"]
    arch_keys = FLUX_KEYS if fam.name == "flux" else SD3_KEYS if fam.name == "sd3" else ()
    for k in arch_keys:
        if k in train:
            meta[f"ss_{k}"] = train[k]
    for name, key in DATASET_KEYS.items():
        if name in data:
            meta[key] = data[name]
    for name, key in DATASET_JSON_KEYS.items():
        if data.get(name) is not None:
            meta[key] = json.dumps(data[name])
    if model_name:
        meta["ss_sd_model_name"] = model_name
    meta["ss_training_finished_at"] = finished
    meta["ss_steps"] = steps
    meta["ss_epoch"] = epoch
    for k, v in (extra or {}).items():
        meta[str(k)] = v

    if minimal:
        meta = {k: v for k, v in meta.items() if k in SS_METADATA_MINIMUM_KEYS}
    out = {k: _s(v) for k, v in meta.items()}

    spec = dict(modelspec or {})
    if fam.name in ("sd1", "sd2", "sdxl"):
        tmin, tmax = train.get("min_timestep"), train.get("max_timestep")
        timestep_range = f"{tmin},{tmax}" if (tmin, tmax) not in ((None, None), (0, 1000)) else None
    else:
        timestep_range = None
    clip_skip = train.get("clip_skip")
    out.update(modelspec_metadata(
        architecture=fam.lora_architecture(unet_config, objective, list(config_class_names or [])),
        implementation=fam.modelspec_implementation,
        title=title or spec.pop("title", None) or output_name or f"LoRA@{started}",
        resolution=determine_resolution(spec.pop("resolution", None) or data.get("resolution"),
                                        fam.default_resolution(objective)),
        date=iso_date(finished),
        prediction_type=fam.prediction_type(objective),
        timestep_range=timestep_range,
        encoder_layer=str(clip_skip) if clip_skip else None,
        implementation_version=spec.pop("implementation_version", IMPLEMENTATION_VERSION),
        thumbnail=thumbnail_data_url(spec.pop("thumbnail", None)),
        **{k: spec.pop(k, None) for k in ("author", "description", "license", "tags", "usage_hint",
                                          "merged_from", "trigger_phrase", "preprocessor")},
        additional=spec,
    ))
    return out


# --------------------------------------------------------------------------- from a trained network
_CAPTION_KEYS = ("caption_dropout_rate", "caption_dropout_every_n_epochs", "caption_tag_dropout_rate")


def network_values(spec: NetworkSpec) -> dict[str, Any]:
    """What ``build_metadata`` reads about the network (``ss_network_dim`` etc.), from its spec."""
    return {"rank": spec.rank, "alpha": spec.alpha, "conv_rank": spec.conv_rank, "conv_alpha": spec.conv_alpha,
            "family": spec.family, "network_args": spec.network_args}


def dataset_values(summary: DatasetSummary) -> dict[str, Any]:
    """``build_metadata``'s dataset values: kohya writes the folder-mode keys (``ss_resolution``,
    ``ss_batch_size_per_device`` ...) without a dataset config, ``ss_datasets`` with one."""
    out = dataclasses.asdict(summary)
    out["total_batch_size"] = summary.batch_size_per_device
    for k in _CAPTION_KEYS:
        out.pop(k)
    if summary.datasets is not None:
        for k in DATASET_KEYS:
            if k != "resolution":
                out.pop(k, None)
        out.pop("bucket_info")
    else:
        out.pop("datasets")
    return out


def metadata_for(network: Any, record: Optional[TrainingRecord], *, output_name: Optional[str] = None,
                 minimal: bool = False, modelspec: Optional[Mapping[str, Any]] = None,
                 extra: Optional[Mapping[str, Any]] = None) -> dict[str, str]:
    """Metadata for saving ``network`` (a LoRANetwork) trained as ``record`` describes (None: an untrained
    network, e.g. straight from Inject LoRA: only the network keys and modelspec)."""
    spec = network.spec
    if not spec.family:
        raise ValueError("cannot write LoRA metadata: the network has no model family (build it with Inject LoRA)")
    if record is None:
        return build_metadata(family=spec.family, network=network_values(spec), output_name=output_name,
                              minimal=minimal, modelspec=modelspec, extra=extra)
    training = record.training_options()
    training.update({k: getattr(record.dataset, k) for k in _CAPTION_KEYS})
    # sd-scripts: --network_dropout is ss_network_dropout; LoRA+ and block lr weights are --network_args
    training["network_dropout"] = spec.dropout
    training["scale_weight_norms"] = training.get("scale_weight_norms") or None  # 0 = off = not given
    network = network_values(spec)
    network["network_args"] = {**network["network_args"], **training_network_args(record.config)}
    return build_metadata(
        family=spec.family, network=network, output_name=output_name, training=training,
        dataset=dataset_values(record.dataset), steps=record.steps, epoch=record.epoch,
        num_epochs=record.num_epochs, started_at=record.started_at, finished_at=record.finished_at,
        objective=record.prediction, unet_config=record.unet_config,
        config_class_names=record.config_class_names,
        model_name=os.path.basename(record.model_name) if record.model_name else None,
        minimal=minimal, modelspec=modelspec, extra=extra)
