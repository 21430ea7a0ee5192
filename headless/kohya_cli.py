"""sd-scripts' LoRA-training arguments -> an API-format ComfyUI prompt of LoRA Loop's nodes.

The headless ``train_network.py`` accepts the command lines (and ``--config_file`` TOMLs) of kohya-ss/sd-scripts'
``train_network.py``, ``sdxl_train_network.py``, ``flux_train_network.py`` and ``sd3_train_network.py``: the union
of their arguments, with their names, types and defaults (:data:`OPTIONS`, one row per argument; the parser is
built from it). This module turns them into the graph the runtime runs through ComfyUI's executor; it imports
neither ComfyUI nor torch at import time (validating values imports the pack's trainer modules, which use torch).

Every argument has a kind (:data:`OPTION_TABLE` lists them with where each one goes):

* ``mapped``: implemented with sd-scripts' meaning; becomes a node input (``LoraLoop_InjectLoRA.network_dim``...).
* ``graph``: shapes the graph: model files and their loaders, the dataset path, the sample prompts, ...
* ``automatic``: safe to ignore (ComfyUI or LoRA Loop does it anyway, or it is a performance detail of
  sd-scripts); the ones a run sets are listed by :func:`ignored` so the runtime can say so in one line.
* ``unsupported``: changes the result in a way LoRA Loop does not implement; any of them set to something other
  than sd-scripts' default stops parsing with one message listing all of them. Some mapped arguments accept only
  part of sd-scripts' values (a non-square ``--resolution``, an optimizer we do not have,
  ``--network_args`` keys other than those of :data:`_NETWORK_ARGS`, ...); the others are listed in the same
  message.

Arguments that are no sd-scripts argument at all (on the command line or as keys of ``--config_file``) are listed
in one message too. Every such message is a :class:`CliError`; the runtime prints it and exits with status 2, as
argparse does.

``--config_file`` works as sd-scripts' ``read_config_from_file``: ``.toml`` is appended when the name lacks it,
the tables of the file are flattened into top-level keys (one level), the file's values replace the defaults and
what the command line gives explicitly wins over the file.

Model loading follows the files given (ComfyUI detects the family itself):

* ``--pretrained_model_name_or_path`` alone (SD1.x/2.x, SDXL, SD3 with its text encoders inside):
  ``CheckpointLoaderSimple``; ``--vae`` replaces its VAE.
* FLUX.1 / Chroma style (``--ae``, or ``--clip_l`` + ``--t5xxl``, or ``--model_type chroma``): ``UNETLoader``
  (``--fp8_base`` / ``--fp8_base_unet``: weight_dtype fp8_e4m3fn), ``DualCLIPLoader`` type flux (Chroma:
  ``CLIPLoader`` type chroma with ``--t5xxl``), ``VAELoader`` (``--ae``, else ``--vae``).
* SD3 with ``--clip_l --clip_g --t5xxl``: ``TripleCLIPLoader``; the MMDiT and VAE from the checkpoint (or
  ``UNETLoader`` + ``--vae`` with ``--fp8_base``).
* a ``.gguf`` model: ``UnetLoaderGGUF`` (city96/ComfyUI-GGUF); ``.gguf`` text encoders use that pack's CLIP loaders.
* ``--fp8_base`` on a single-file checkpoint: ``UNETLoader`` in fp8 for the diffusion model, and
  ``CheckpointLoaderSimple`` on the same file for the text encoders and VAE (its model copy is unused but takes RAM).
* ``--v_parameterization`` (SD1/SD2/SDXL checkpoints): ``ModelSamplingDiscrete`` v_prediction, so a model ComfyUI
  would take for eps trains (and samples) as v-prediction. ``--clip_skip N``: ``CLIPSetLastLayer`` -N (sd-scripts
  ignores it for SDXL, ComfyUI does not: leave it out there).

Where the headless run deliberately differs from sd-scripts:

* ``--seed`` not given: sd-scripts draws a random seed; so do we, and the runtime prints it
  (:attr:`Parsed.notes`) so the run can be repeated with ``--seed``. The same seed initialises the LoRA.
* memory: ``--gradient_checkpointing`` -> memory ``checkpointed``, ``--blocks_to_swap N`` -> ``streamed`` with N;
  neither -> ``auto`` (the fastest plan that fits the free memory, which may checkpoint) where sd-scripts would
  train without checkpointing and run out of memory. The LoRA is the same in every mode.
* checkpoints go to ``<output_dir>/<output_name>_checkpoints/<output_name>-step00000100.safetensors`` (epoch
  checkpoints are named by step too), each with its resumable state (``-state.json`` / ``-state.tensors``), so
  ``--save_state`` is implied. ``--resume`` takes such a ``-state.json`` (or its checkpoint), not an accelerate
  state folder. ``--save_last_n_steps`` / ``--save_last_n_epochs`` become the number of checkpoints kept
  (``save_last_n``), which counts every checkpoint of that name in the folder.
* the final LoRA is ``<output_dir>/<output_name>.safetensors`` (``last`` without ``--output_name``, as sd-scripts),
  overwritten when it exists, always safetensors with LoRA Loop's metadata; ``--save_precision`` unset means fp32
  (what sd-scripts writes for a LoRA trained in fp32).
* ``--timestep_sampling`` not given (flow models): the family's own sampling (LoRA Loop's ``model``) instead of
  sd-scripts' ``sigma``; the prediction is always compared in the model's own target space (sd-scripts'
  ``--model_prediction_type raw``; its default ``sigma_scaled`` is not available).
* ``--max_token_length`` unset: ComfyUI encodes long captions in 75-token chunks where sd-scripts truncates them
  at 75 tokens.
* ``--dataset_config`` without ``--resolution``: datasets whose TOML sets no resolution train at 512 (sd-scripts
  refuses); ``--network_module`` not given means ``networks.lora`` (sd-scripts fails).
* ``--train_data_dir``: LoRA Loop's folder loader (images directly in the folder are used as well as the
  ``<repeats>_<tokens>`` subfolders).
* previews: only with ``--sample_prompts`` and ``--sample_every_n_steps`` (as sd-scripts), and also after the last
  step; per-line options of the prompt file (``--n --w --h --d --l --s --ss``) apply per image.
* ``--network_weights`` without ``--dim_from_weights``: the weights load into the network of ``--network_dim``
  (and block dims) as in sd-scripts, but the alphas stay ``--network_alpha`` / ``conv_alpha`` (sd-scripts trains
  with those and writes the file's alphas). The network options (dropouts, block dims, LoRA+, block lr weights)
  also apply with ``--dim_from_weights``, where sd-scripts ignores the dropouts and block dims (LoRA Loop refuses
  block dims there: the file gives the ranks).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from ..trainer.captions import CAPTION_OPTION_NAMES, CaptionOptions
from ..trainer.config import NetworkConfig, TrainConfig
from ..trainer.dataset import GroupConfig, SubsetConfig
from ..trainer.options import base_type, check_values, field_of

MAPPED, GRAPH, AUTOMATIC, UNSUPPORTED = "mapped", "graph", "automatic", "unsupported"
KINDS = (MAPPED, GRAPH, AUTOMATIC, UNSUPPORTED)
FLAG = "flag"                  # store_true
INT_OR_FLOAT = "int_or_float"  # sd-scripts' warm-up/decay steps: "10", "0.1" or "10%"

# our node class types (and the input names not declared by a config dataclass)
LOAD_DATASET, CAPTIONS, BUCKETS, ENCODE = ("LoraLoop_LoadDataset", "LoraLoop_CaptionSettings",
                                           "LoraLoop_BucketImages", "LoraLoop_EncodeDataset")
INJECT, TRAIN, SAVE = "LoraLoop_InjectLoRA", "LoraLoop_TrainLoRA", "LoraLoop_SaveLoRA"
OPTIMIZER, NOISE_LOSS, CHECKPOINTS, PREVIEWS = ("LoraLoop_OptimizerSettings", "LoraLoop_NoiseLossSettings",
                                                "LoraLoop_CheckpointSettings", "LoraLoop_PreviewSettings")
NETWORK_OPTIONS, NETWORK_TRAINING = "LoraLoop_NetworkOptions", "LoraLoop_NetworkTraining"
VALIDATION = "LoraLoop_ValidationSettings"
TRAIN_ID, SAVE_ID = "train", "save"  # the runtime looks these up


class CliError(Exception):
    """A command line (or config file) this command refuses; the message says why. Exit status 2."""


@dataclass(frozen=True)
class Option:
    """One sd-scripts argument: name (without ``--``), type (str/int/float, :data:`FLAG`, :data:`INT_OR_FLOAT`),
    sd-scripts' default, kind, and where it goes (node.input) or why it is not used."""

    name: str
    type: Any
    default: Any
    kind: str
    target: str = ""
    choices: tuple | None = None
    nargs: str | None = None


def _o(name, type_, default, kind, target="", choices=None, nargs=None) -> Option:
    return Option(name, type_, default, kind, target, tuple(choices) if choices is not None else None, nargs)


M, G, A, U = MAPPED, GRAPH, AUTOMATIC, UNSUPPORTED
_LOG = "logging goes to the console"
_DETECT = "ComfyUI detects the model"
_SPEED = "a performance detail; ComfyUI and the memory plan choose"
_META = "the file's metadata comes from the run"
_HF = "no Hugging Face upload/download"
_DS = "deepspeed is not used"
_NOTHING = "does nothing in sd-scripts either"

# The union of the four scripts' arguments (library/train_util.py add_sd_models_arguments, add_dataset_arguments
# (True, True, True), add_training_arguments(True), add_masked_loss_arguments, add_optimizer_arguments,
# add_dit_training_arguments; library/custom_train_functions.py; library/config_util.py; library/utils.py
# add_logging_arguments; library/sai_model_spec.py; library/deepspeed_utils.py; train_network.setup_parser;
# sdxl_train_util, flux_train_utils, sd3_train_utils), in that order.
OPTIONS: tuple[Option, ...] = (
    # logging
    _o("console_log_level", str, None, A, _LOG, choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")),
    _o("console_log_file", str, None, A, _LOG),
    _o("console_log_simple", FLAG, False, A, _LOG),
    # models
    _o("v2", FLAG, False, A, _DETECT),
    _o("v_parameterization", FLAG, False, G, "ModelSamplingDiscrete.sampling = v_prediction (SD1/SD2/SDXL "
                                             "checkpoints; ComfyUI detects most v-prediction models itself)"),
    _o("pretrained_model_name_or_path", str, None, G,
       "CheckpointLoaderSimple.ckpt_name / UNETLoader.unet_name / UnetLoaderGGUF.unet_name"),
    _o("tokenizer_cache_dir", str, None, A, "ComfyUI has its tokenizers"),
    # model spec metadata
    *(_o(f"metadata_{n}", str, None, U, _META) for n in (
        "title", "author", "description", "license", "tags", "usage_hint", "thumbnail", "merged_from",
        "trigger_phrase", "preprocessor", "is_negative_embedding")),
    # dataset
    _o("train_data_dir", str, None, G, f"{LOAD_DATASET}.path"),
    _o("cache_info", FLAG, False, A, "LoRA Loop caches image sizes itself"),
    _o("shuffle_caption", FLAG, False, M, f"{CAPTIONS}.shuffle_caption"),
    _o("caption_separator", str, ",", M, f"{CAPTIONS}.caption_separator"),
    _o("caption_extension", str, ".caption", M, f"{LOAD_DATASET}.caption_extension"),
    _o("caption_extention", str, None, M, f"{LOAD_DATASET}.caption_extension (old spelling, wins when set)"),
    _o("keep_tokens", int, 0, M, f"{CAPTIONS}.keep_tokens"),
    _o("keep_tokens_separator", str, "", M, f"{CAPTIONS}.keep_tokens_separator"),
    _o("secondary_separator", str, None, M, f"{CAPTIONS}.secondary_separator"),
    _o("enable_wildcard", FLAG, False, M, f"{CAPTIONS}.enable_wildcard"),
    _o("caption_prefix", str, None, M, f"{CAPTIONS}.caption_prefix"),
    _o("caption_suffix", str, None, M, f"{CAPTIONS}.caption_suffix"),
    _o("color_aug", FLAG, False, M, f"{CAPTIONS}.color_aug (augmented versions encoded once: "
                                    f"{ENCODE}.augment_variants)"),
    _o("flip_aug", FLAG, False, M, f"{CAPTIONS}.flip_aug"),
    _o("face_crop_aug_range", str, None, U),
    _o("random_crop", FLAG, False, M, f"{CAPTIONS}.random_crop (augmented versions encoded once: "
                                      f"{ENCODE}.augment_variants)"),
    _o("debug_dataset", FLAG, False, U),
    _o("resolution", str, None, M, f"{BUCKETS}.resolution (a square size; set W,H in the dataset TOML)"),
    _o("cache_latents", FLAG, False, A, "latents are always cached"),
    _o("vae_batch_size", int, 1, M, f"{ENCODE}.vae_batch_size"),
    _o("cache_latents_to_disk", FLAG, False, M, f"{ENCODE}.cache_latents_to_disk"),
    _o("skip_cache_check", FLAG, False, A, "the latent cache is keyed by content"),
    _o("enable_bucket", FLAG, False, M, f"{BUCKETS}.enable_bucket"),
    _o("min_bucket_reso", int, 256, M, f"{BUCKETS}.min_bucket_reso"),
    _o("max_bucket_reso", int, 1024, M, f"{BUCKETS}.max_bucket_reso"),
    _o("bucket_reso_steps", int, 64, M, f"{BUCKETS}.bucket_reso_steps"),
    _o("bucket_no_upscale", FLAG, False, M, f"{BUCKETS}.bucket_no_upscale"),
    _o("resize_interpolation", str, None, U, choices=("lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic",
                                                      "area")),
    _o("token_warmup_min", int, 1, M, f"{CAPTIONS}.token_warmup_min"),
    _o("token_warmup_step", float, 0, M, f"{CAPTIONS}.token_warmup_step"),
    _o("alpha_mask", FLAG, False, M, f"{LOAD_DATASET}.alpha_mask (the fallback of a dataset TOML's subsets)"),
    _o("dataset_class", str, None, U),
    _o("caption_dropout_rate", float, 0.0, M, f"{CAPTIONS}.caption_dropout_rate"),
    _o("caption_dropout_every_n_epochs", int, 0, M, f"{CAPTIONS}.caption_dropout_every_n_epochs"),
    _o("caption_tag_dropout_rate", float, 0.0, M, f"{CAPTIONS}.caption_tag_dropout_rate"),
    _o("reg_data_dir", str, None, U, "regularisation images: use is_reg subsets in a --dataset_config TOML "
                                     "(ignored with --dataset_config, as sd-scripts)"),
    _o("in_json", str, None, U, "fine-tuning metadata datasets are not implemented (ignored with "
                                "--dataset_config, as sd-scripts)"),
    _o("dataset_repeats", int, 1, U),
    # training
    _o("output_dir", str, None, G, "the first loras folder (Save LoRA and the checkpoints write there)"),
    _o("output_name", str, None, M, f"{TRAIN}.output_name, {SAVE}.filename ('last' when not given)"),
    _o("huggingface_repo_id", str, None, U, _HF),
    _o("huggingface_repo_type", str, None, U, _HF),
    _o("huggingface_path_in_repo", str, None, U, _HF),
    _o("huggingface_token", str, None, U, _HF),
    _o("huggingface_repo_visibility", str, None, U, _HF),
    _o("save_state_to_huggingface", FLAG, False, U, _HF),
    _o("resume_from_huggingface", FLAG, False, U, _HF),
    _o("async_upload", FLAG, False, U, _HF),
    _o("save_precision", str, None, M, f"{SAVE}.save_dtype, {CHECKPOINTS}.save_dtype (unset: fp32)",
       choices=(None, "float", "fp16", "bf16")),
    _o("save_every_n_epochs", int, None, M, f"{CHECKPOINTS}.save_every_n_epochs"),
    _o("save_every_n_steps", int, None, M, f"{CHECKPOINTS}.save_every_n_steps"),
    _o("save_n_epoch_ratio", int, None, U),
    _o("save_last_n_epochs", int, None, M, f"{CHECKPOINTS}.save_last_n (checkpoints kept; with epoch saving only)"),
    _o("save_last_n_epochs_state", int, None, U, "states are kept with their checkpoints"),
    _o("save_last_n_steps", int, None, M, f"{CHECKPOINTS}.save_last_n (ceil((N+1)/save_every_n_steps) kept; with "
                                          f"step saving only)"),
    _o("save_last_n_steps_state", int, None, U, "states are kept with their checkpoints"),
    _o("save_state", FLAG, False, A, "every checkpoint has its resumable state"),
    _o("save_state_on_train_end", FLAG, False, U),
    _o("resume", str, None, M, f"{CHECKPOINTS}.resume_from (a LoRA Loop -state.json, not an accelerate folder)"),
    _o("train_batch_size", int, 1, M, f"{BUCKETS}.batch_size"),
    _o("max_token_length", int, None, M, f"{ENCODE}.max_token_length (not given: 75, sd-scripts' cut)",
       choices=(None, 150, 225)),
    _o("mem_eff_attn", FLAG, False, A, _SPEED),
    _o("torch_compile", FLAG, False, A, _SPEED),
    _o("dynamo_backend", str, "inductor", A, _SPEED, choices=(
        "eager", "aot_eager", "inductor", "aot_ts_nvfuser", "nvprims_nvfuser", "cudagraphs", "ofi", "fx2trt",
        "onnxrt", "tensort", "ipex", "tvm")),
    _o("xformers", FLAG, False, A, _SPEED),
    _o("sdpa", FLAG, False, A, _SPEED),
    _o("vae", str, None, G, "VAELoader.vae_name"),
    _o("max_train_steps", int, 1600, M, f"{TRAIN}.steps"),
    _o("max_train_epochs", int, None, M, f"{OPTIMIZER}.max_train_epochs"),
    _o("max_data_loader_n_workers", int, 8, A, _SPEED),
    _o("persistent_data_loader_workers", FLAG, False, A, _SPEED),
    _o("seed", int, None, M, f"{TRAIN}.seed, {INJECT}.init_seed (random when not given)"),
    _o("gradient_checkpointing", FLAG, False, M, f"{TRAIN}.memory = checkpointed"),
    _o("gradient_accumulation_steps", int, 1, M, f"{OPTIMIZER}.gradient_accumulation_steps"),
    _o("mixed_precision", str, "no", M, f"{OPTIMIZER}.mixed_precision", choices=("no", "fp16", "bf16")),
    _o("full_fp16", FLAG, False, U, "LoRA weights and optimizer state stay fp32"),
    _o("full_bf16", FLAG, False, U, "LoRA weights and optimizer state stay fp32"),
    _o("fp8_base", FLAG, False, G, "UNETLoader.weight_dtype = fp8_e4m3fn"),
    _o("ddp_timeout", int, None, A, "the runtime sets up the process group"),
    _o("ddp_gradient_as_bucket_view", FLAG, False, A, "the runtime sets up the process group"),
    _o("ddp_static_graph", FLAG, False, A, "the runtime sets up the process group"),
    _o("clip_skip", int, None, G, "CLIPSetLastLayer.stop_at_clip_layer = -clip_skip"),
    _o("logging_dir", str, None, A, _LOG),
    _o("log_with", str, None, A, _LOG, choices=("tensorboard", "wandb", "all")),
    _o("log_prefix", str, None, A, _LOG),
    _o("log_tracker_name", str, None, A, _LOG),
    _o("wandb_run_name", str, None, A, _LOG),
    _o("log_tracker_config", str, None, A, _LOG),
    _o("wandb_api_key", str, None, A, _LOG),
    _o("log_config", FLAG, False, A, _LOG),
    _o("noise_offset", float, None, M, f"{NOISE_LOSS}.noise_offset"),
    _o("noise_offset_random_strength", FLAG, False, M, f"{NOISE_LOSS}.noise_offset_random_strength"),
    _o("multires_noise_iterations", int, None, M, f"{NOISE_LOSS}.multires_noise_iterations"),
    _o("ip_noise_gamma", float, None, M, f"{NOISE_LOSS}.ip_noise_gamma"),
    _o("ip_noise_gamma_random_strength", FLAG, False, M, f"{NOISE_LOSS}.ip_noise_gamma_random_strength"),
    _o("multires_noise_discount", float, 0.3, M, f"{NOISE_LOSS}.multires_noise_discount"),
    _o("adaptive_noise_scale", float, None, M, f"{NOISE_LOSS}.adaptive_noise_scale"),
    _o("zero_terminal_snr", FLAG, False, M, f"{NOISE_LOSS}.zero_terminal_snr"),
    _o("min_timestep", int, None, M, f"{NOISE_LOSS}.min_timestep (SD1/SD2/SDXL)"),
    _o("max_timestep", int, None, M, f"{NOISE_LOSS}.max_timestep (SD1/SD2/SDXL)"),
    _o("loss_type", str, "l2", M, f"{NOISE_LOSS}.loss_type", choices=("l1", "l2", "huber", "smooth_l1")),
    _o("huber_schedule", str, "snr", M, f"{NOISE_LOSS}.huber_schedule", choices=("constant", "exponential", "snr")),
    _o("huber_c", float, 0.1, M, f"{NOISE_LOSS}.huber_c"),
    _o("huber_scale", float, 1.0, M, f"{NOISE_LOSS}.huber_scale"),
    _o("lowram", FLAG, False, A, _SPEED),
    _o("highvram", FLAG, False, A, _SPEED),
    _o("sample_every_n_steps", int, None, M, f"{PREVIEWS}.every_n_steps"),
    _o("sample_at_first", FLAG, False, U),
    _o("sample_every_n_epochs", int, None, U),
    _o("sample_prompts", str, None, G, f"{PREVIEWS}.prompts (the file's prompts, one per line)"),
    _o("sample_sampler", str, "ddim", M, f"{PREVIEWS}.sampler, scheduler", choices=(
        "ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++",
        "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a")),
    _o("config_file", str, None, G, "read as sd-scripts does (see the module doc)"),
    _o("output_config", FLAG, False, U),
    _o("prior_loss_weight", float, 1.0, M, f"{NOISE_LOSS}.prior_loss_weight"),
    _o("conditioning_data_dir", str, None, M, f"{LOAD_DATASET}.conditioning_data_dir (the mask images of "
                                              "--train_data_dir for --masked_loss; a TOML sets it per subset)"),
    _o("masked_loss", FLAG, False, M, f"{NOISE_LOSS}.masked_loss (masks: conditioning_data_dir in the dataset TOML)"),
    # deepspeed
    _o("deepspeed", FLAG, False, U, _DS),
    _o("zero_stage", int, 2, U, _DS, choices=(0, 1, 2, 3)),
    _o("offload_optimizer_device", str, None, U, _DS, choices=(None, "cpu", "nvme")),
    _o("offload_optimizer_nvme_path", str, None, U, _DS),
    _o("offload_param_device", str, None, U, _DS, choices=(None, "cpu", "nvme")),
    _o("offload_param_nvme_path", str, None, U, _DS),
    _o("zero3_init_flag", FLAG, False, U, _DS),
    _o("zero3_save_16bit_model", FLAG, False, U, _DS),
    _o("fp16_master_weights_and_gradients", FLAG, False, U, _DS),
    # optimizer
    _o("optimizer_type", str, "", M, f"{TRAIN}.optimizer (AdamW when empty); a class (torch.optim name or "
                                     f"module.Class): {OPTIMIZER}.optimizer_class"),
    _o("use_8bit_adam", FLAG, False, M, f"{TRAIN}.optimizer = AdamW8bit"),
    _o("use_lion_optimizer", FLAG, False, M, f"{TRAIN}.optimizer = Lion"),
    _o("learning_rate", float, 2e-6, M, f"{TRAIN}.learning_rate (unless --unet_lr), {OPTIMIZER}.text_encoder_lr "
                                        f"(unless --text_encoder_lr)"),
    _o("max_grad_norm", float, 1.0, M, f"{OPTIMIZER}.max_grad_norm"),
    _o("optimizer_args", str, None, M, f"{OPTIMIZER}.optimizer_args", nargs="*"),
    _o("lr_scheduler_type", str, "", M, f"{OPTIMIZER}.lr_scheduler_type"),
    _o("lr_scheduler_args", str, None, M, f"{OPTIMIZER}.lr_scheduler_args", nargs="*"),
    _o("lr_scheduler", str, "constant", M, f"{TRAIN}.lr_scheduler"),
    _o("lr_warmup_steps", INT_OR_FLOAT, 0, M, f"{OPTIMIZER}.lr_warmup_steps (a ratio below 1 stays a ratio)"),
    _o("lr_decay_steps", INT_OR_FLOAT, 0, U),
    _o("lr_scheduler_num_cycles", int, 1, M, f"{OPTIMIZER}.lr_scheduler_num_cycles"),
    _o("lr_scheduler_power", float, 1, M, f"{OPTIMIZER}.lr_scheduler_power"),
    _o("fused_backward_pass", FLAG, False, U),
    _o("lr_scheduler_timescale", int, None, U),
    _o("lr_scheduler_min_lr_ratio", float, None, U),
    # config
    _o("dataset_config", str, None, G, f"{LOAD_DATASET}.path (the dataset TOML)"),
    # custom train functions
    _o("min_snr_gamma", float, None, M, f"{NOISE_LOSS}.min_snr_gamma"),
    _o("scale_v_pred_loss_like_noise_pred", FLAG, False, M, f"{NOISE_LOSS}.scale_v_pred_loss_like_noise_pred"),
    _o("v_pred_like_loss", float, None, M, f"{NOISE_LOSS}.v_pred_like_loss"),
    _o("debiased_estimation_loss", FLAG, False, M, f"{NOISE_LOSS}.debiased_estimation_loss"),
    _o("weighted_captions", FLAG, False, U),
    # train_network.setup_parser
    _o("cpu_offload_checkpointing", FLAG, False, A, _SPEED),
    _o("no_metadata", FLAG, False, U, "LoRA Loop always writes the kohya metadata"),
    _o("save_model_as", str, "safetensors", A, "always safetensors (other formats are unsupported)",
       choices=(None, "ckpt", "pt", "safetensors")),
    _o("unet_lr", float, None, M, f"{TRAIN}.learning_rate"),
    _o("text_encoder_lr", float, None, M, f"{OPTIMIZER}.text_encoder_lr; several values: {OPTIMIZER}."
                                          "text_encoder_lrs (networks.lora: the first for all, as sd-scripts)",
       nargs="*"),
    _o("fp8_base_unet", FLAG, False, G, "UNETLoader.weight_dtype = fp8_e4m3fn"),
    _o("network_weights", str, None, G, f"{INJECT}.init_lora"),
    _o("network_module", str, None, M, "networks.lora, networks.lora_flux, networks.lora_sd3 and the other "
                                       "family modules networks.lora_*; lycoris.kohya (LoHa, LoKr, LoCon, DoRA: "
                                       f"{NETWORK_OPTIONS}.algo)"),
    _o("network_dim", int, None, M, f"{INJECT}.network_dim (4 when not given)"),
    _o("network_alpha", float, 1, M, f"{INJECT}.network_alpha"),
    _o("network_dropout", float, None, M, f"{NETWORK_OPTIONS}.network_dropout"),
    _o("network_args", str, None, M, f"{INJECT}.conv_dim, conv_alpha, train_blocks, train_t5; {NETWORK_OPTIONS}."
                                     f"rank_dropout, module_dropout, block_dims, block_alphas, conv_block_dims, "
                                     f"conv_block_alphas; {NETWORK_TRAINING}.loraplus_lr_ratio, "
                                     f"loraplus_unet_lr_ratio, loraplus_text_encoder_lr_ratio, down_lr_weight, "
                                     f"mid_lr_weight, up_lr_weight, block_lr_zero_threshold; lycoris.kohya: "
                                     f"{NETWORK_OPTIONS}.algo (lora, locon, loha, lokr), dora_wd, factor, "
                                     f"decompose_both (other keys are unsupported unless at LyCORIS' default)",
       nargs="*"),
    _o("network_train_unet_only", FLAG, False, M, f"{INJECT}.train_text_encoder = false"),
    _o("network_train_text_encoder_only", FLAG, False, M, f"{INJECT}.train_unet = false"),
    _o("training_comment", str, None, U, _META),
    _o("dim_from_weights", FLAG, False, M, f"{NETWORK_OPTIONS}.dim_from_weights (off: --network_weights loads "
                                           f"into the --network_dim network)"),
    _o("scale_weight_norms", float, None, M, f"{NETWORK_TRAINING}.scale_weight_norms"),
    _o("base_weights", str, None, U, nargs="*"),
    _o("base_weights_multiplier", float, None, U, nargs="*"),
    _o("no_half_vae", FLAG, False, A, "ComfyUI chooses the VAE's dtype"),
    _o("skip_until_initial_step", FLAG, False, U),
    _o("initial_epoch", int, None, U),
    _o("initial_step", int, None, U),
    _o("validation_seed", int, None, M, f"{VALIDATION}.validation_seed (unset: -1, the training seed)"),
    _o("validation_split", float, 0.0, M, f"{VALIDATION}.validation_split"),
    _o("validate_every_n_steps", int, None, M, f"{VALIDATION}.validate_every_n_steps (unset: 0, off)"),
    _o("validate_every_n_epochs", int, None, M, f"{VALIDATION}.validate_every_n_epochs (unset: 0, every epoch)"),
    _o("max_validation_steps", int, None, M, f"{VALIDATION}.max_validation_steps (unset: 0, all batches)"),
    # sdxl / flux / sd3
    _o("cache_text_encoder_outputs", FLAG, False, A, "Encode Dataset caches captions that do not change"),
    _o("cache_text_encoder_outputs_to_disk", FLAG, False, A, "Encode Dataset caches captions that do not change"),
    _o("disable_mmap_load_safetensors", FLAG, False, A, "ComfyUI loads the files"),
    # flux / sd3 (add_dit_training_arguments)
    _o("text_encoder_batch_size", int, None, A, _SPEED),
    _o("weighting_scheme", str, "uniform", U, "only uniform (none)",
       choices=("sigma_sqrt", "logit_normal", "mode", "cosmap", "none", "uniform")),
    _o("logit_mean", float, 0.0, U),
    _o("logit_std", float, 1.0, U),
    _o("mode_scale", float, 1.29, U),
    _o("blocks_to_swap", int, None, M, f"{TRAIN}.memory = streamed, {TRAIN}.blocks_to_swap"),
    # flux (add_flux_train_arguments)
    _o("clip_l", str, None, G, "DualCLIPLoader / TripleCLIPLoader clip_name1"),
    _o("t5xxl", str, None, G, "DualCLIPLoader clip_name2 / TripleCLIPLoader clip_name3 / CLIPLoader clip_name"),
    _o("ae", str, None, G, "VAELoader.vae_name"),
    _o("controlnet_model_name_or_path", str, None, U),
    _o("t5xxl_max_token_length", int, None, U, "ComfyUI's T5 tokenizer length is used"),
    _o("apply_t5_attn_mask", FLAG, False, U),
    _o("guidance_scale", float, 3.5, M, f"{NOISE_LOSS}.guidance_scale"),
    _o("timestep_sampling", str, "sigma", M, f"{NOISE_LOSS}.timestep_sampling (uniform, sigmoid, shift, flux_shift; "
                                             f"not given: the family's own)",
       choices=("sigma", "uniform", "sigmoid", "shift", "flux_shift")),
    _o("sigmoid_scale", float, 1.0, M, f"{NOISE_LOSS}.sigmoid_scale"),
    _o("model_prediction_type", str, "sigma_scaled", M, "raw only (LoRA Loop's loss is in the model's own target "
                                                        "space)", choices=("raw", "additive", "sigma_scaled")),
    _o("discrete_flow_shift", float, 3.0, M, f"{NOISE_LOSS}.discrete_flow_shift"),
    _o("model_type", str, "flux", G, "chroma: CLIPLoader type chroma for --t5xxl", choices=("flux", "chroma")),
    _o("split_mode", FLAG, False, U, "deprecated in sd-scripts: use --blocks_to_swap"),
    # sd3 (add_sd3_training_arguments)
    _o("clip_g", str, None, G, "TripleCLIPLoader.clip_name2"),
    _o("save_clip", FLAG, False, A, _NOTHING),
    _o("save_t5xxl", FLAG, False, A, _NOTHING),
    _o("t5xxl_device", str, None, A, _NOTHING),
    _o("t5xxl_dtype", str, None, A, _NOTHING),
    _o("apply_lg_attn_mask", FLAG, False, U),
    _o("clip_l_dropout_rate", float, 0.0, U),
    _o("clip_g_dropout_rate", float, 0.0, U),
    _o("t5_dropout_rate", float, 0.0, U),
    _o("pos_emb_random_crop_rate", float, 0.0, U),
    _o("enable_scaled_pos_embed", FLAG, False, U),
    _o("training_shift", float, 1.0, U),
)
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
# (sd-scripts name, kind, our node + input, or why it is not used): for generated docs
OPTION_TABLE: tuple[tuple[str, str, str], ...] = tuple((f"--{o.name}", o.kind, o.target) for o in OPTIONS)

# sd-scripts optimizer names (its named branches match case-insensitively; other names are torch.optim classes or
# dotted class paths, case-sensitive) -> ours
_OPTIMIZERS_LOWER = {n.lower(): n for n in (
    "AdamW", "AdamW8bit", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit", "Lion", "Lion8bit", "PagedLion8bit",
    "SGDNesterov", "SGDNesterov8bit", "DAdaptation", "DAdaptAdam", "DAdaptAdaGrad", "DAdaptAdan", "DAdaptAdanIP",
    "DAdaptLion", "DAdaptSGD", "Prodigy", "Adafactor", "RAdamScheduleFree", "AdamWScheduleFree", "SGDScheduleFree")}
_OPTIMIZERS_LOWER["dadaptadampreprint"] = "DAdaptation"
_OPTIMIZER_CLASSES = {"Adam": "Adam", "SGD": "SGD", "AdamW": "AdamW", "torch.optim.Adam": "Adam",
                      "torch.optim.AdamW": "AdamW", "torch.optim.SGD": "SGD",
                      "bitsandbytes.optim.AdamW8bit": "AdamW8bit"}
_NETWORK_MODULE = re.compile(r"networks\.lora(_[a-z0-9_]+)?")
_NOT_LORA_MODULES = {"networks.lora_fa", "networks.lora_diffusers", "networks.lora_interrogator"}
# --network_args keys -> (our node, config field, type); conv_dim, conv_alpha, train_blocks, train_t5xxl: Inject LoRA
_OPTION_ARGS = {k: (NETWORK_OPTIONS, k, t) for k, t in (
    ("rank_dropout", float), ("module_dropout", float), ("block_dims", str), ("block_alphas", str),
    ("conv_block_dims", str), ("conv_block_alphas", str))}
_OPTION_ARGS.update({k: (NETWORK_TRAINING, k, t) for k, t in (
    ("loraplus_lr_ratio", float), ("loraplus_unet_lr_ratio", float), ("loraplus_text_encoder_lr_ratio", float),
    ("down_lr_weight", str), ("mid_lr_weight", str), ("up_lr_weight", str), ("block_lr_zero_threshold", float))})
_BLOCK_ARGS = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "down_lr_weight",
               "mid_lr_weight", "up_lr_weight")  # sd-scripts' networks.lora (SD1/SD2/SDXL) only
LYCORIS_MODULE = "lycoris.kohya"
# lycoris.kohya --network_args: mapped to Network Options; accepted at these values (LyCORIS' defaults, and
# bypass_mode, which is how LoRA Loop always runs); preset: a note (the targets are networks.lora's)
_LYCORIS_ALGOS = {"lora": "lora", "locon": "lora", "loha": "loha", "lokr": "lokr"}
_LYCORIS_ARGS = ("algo", "dora_wd", "factor", "decompose_both", "wd_on_output", "preset")
_LYCORIS_DEFAULTS = {"use_tucker": ("False",), "use_cp": ("False",), "use_conv_cp": ("False",),
                     "disable_conv_cp": ("True",), "use_scalar": ("False",), "rank_dropout_scale": ("False",),
                     "bypass_mode": ("False", "True"), "train_norm": ("False",), "rs_lora": ("False",),
                     "unbalanced_factorization": ("False",), "full_matrix": ("False",)}
_NETWORK_ARGS = ("conv_dim", "conv_alpha", "train_blocks", "train_t5xxl") + tuple(_OPTION_ARGS) + _LYCORIS_ARGS
_FLOW_SAMPLINGS = ("uniform", "sigmoid", "shift", "flux_shift")
_IGNORED_WITH_DATASET_CONFIG = ("train_data_dir", "reg_data_dir", "in_json")  # sd-scripts ignores them then
_SAVE_DTYPES = {None: "fp32", "float": "fp32", "fp16": "fp16", "bf16": "bf16"}
_PROMPT_KEYS = {"negative_prompt": "n", "width": "w", "height": "h", "seed": "d", "scale": "l",
                "sample_steps": "s", "sample_sampler": "ss", "guidance_scale": "g"}


# ---------------------------------------------------------------------------------------------------- parser
def _int_or_float(text: str):
    """sd-scripts' warm-up/decay steps: ``"10%"`` -> 0.1, ``"0.25"`` -> 0.25 (a ratio), ``"100"`` -> 100."""
    text = text.strip()
    try:
        if text.endswith("%"):
            return float(text[:-1]) / 100.0
        value = float(text)
        return int(text) if value >= 1 else value
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of steps, a ratio below 1 or a "
                                         f"percentage") from None


_int_or_float.__name__ = "int_or_float"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print the usage and exit 2; the runtime does that with our message
        raise CliError(f"{self.prog}: error: {message}")


def _help(o: Option) -> str:
    default = "" if o.default in (None, "", False) else f" (default {o.default})"
    return f"[{o.kind}] {o.target}{default}".replace("%", "%%")


def build_parser(*, suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """sd-scripts' LoRA-training arguments (:data:`OPTIONS`). Errors raise :class:`CliError`.
    ``suppress_defaults``: a parser whose namespace holds only the arguments given."""
    p = _Parser(prog="train_network.py", usage="%(prog)s [sd-scripts train_network.py arguments] [--config_file FILE]",
                description="Train a kohya-format LoRA with LoRA Loop through ComfyUI, from sd-scripts' arguments "
                            "(train_network.py, sdxl_, flux_ and sd3_train_network.py). Each argument is "
                            "[mapped] to a LoRA Loop node input, shapes the [graph], is [automatic] (ignored, "
                            "done anyway) or [unsupported] (refused when set).")
    for o in OPTIONS:
        kw: dict[str, Any] = {"help": _help(o), "default": argparse.SUPPRESS if suppress_defaults else o.default}
        if o.type == FLAG:
            kw["action"] = "store_true"
        else:
            kw["type"] = _int_or_float if o.type == INT_OR_FLOAT else o.type
            if o.nargs:
                kw["nargs"] = o.nargs
            if o.choices is not None:
                kw["choices"] = o.choices
        p.add_argument(f"--{o.name}", **kw)
    return p


# ---------------------------------------------------------------------------------------------------- parsing
@dataclass(frozen=True)
class LoaderPlan:
    """How the model files are loaded. ``model``: "checkpoint" (CheckpointLoaderSimple), "unet" (UNETLoader) or
    "gguf" (UnetLoaderGGUF); ``text_encoders``: (loader class, its input values as paths, clip type or None) or
    None for the checkpoint's own; ``vae``: a VAE file or None for the checkpoint's own."""

    model: str
    model_path: str
    weight_dtype: str = "default"
    text_encoders: tuple[str, tuple[tuple[str, str], ...], str | None] | None = None
    vae: str | None = None
    clip_skip: int | None = None
    flow: bool = False  # FLUX/Chroma/SD3 style (sd-scripts samples these with its Euler flow sampler)
    v_prediction: bool = False  # --v_parameterization on an SD1/SD2/SDXL checkpoint


@dataclass
class Parsed:
    """The parsed run: ``namespace`` holds every sd-scripts option after ``--config_file`` (sd-scripts'
    precedence), ``given`` the ones set on the command line or in the file; the rest is derived. ``notes``: what
    the runtime should print (the random seed, ...; :func:`info_lines` adds the ignored arguments)."""

    namespace: argparse.Namespace
    given: frozenset[str]
    config_file: str | None
    seed: int
    seed_random: bool
    output_dir: str
    output_name: str
    loader: LoaderPlan
    inputs: dict[str, dict[str, Any]]  # our node class type -> its widget values (node input name -> value)
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # parse(strict=False): unknown and unsupported, left out

    @property
    def args(self) -> argparse.Namespace:
        return self.namespace


def _differs(value, default) -> bool:
    empty = (None, [], ())
    if value in empty and default in empty:
        return False
    return value != default


def _number(text) -> float:
    """A ``--network_args`` number, 0 when missing or not a number (reported as invalid where it is read)."""
    try:
        return float(text or 0)
    except ValueError:
        return 0.0


def _show(name: str, value: Any, why: str = "") -> str:
    o = BY_NAME.get(name)
    if o is not None and o.type == FLAG:
        text = f"--{name}"
    elif isinstance(value, (list, tuple)):
        text = f"--{name} " + " ".join(map(str, value))
    else:
        text = f"--{name}={value}"
    return f"{text} ({why})" if why else text


def _unknown_options(rest: list[str]) -> list[str]:
    """The unknown items of parse_known_args: options (their values follow them) and stray words."""
    out, after_option = [], False
    for item in rest:
        if item.startswith("-") and item != "-":
            out.append(item.split("=", 1)[0])
            after_option = "=" not in item
        elif not after_option:
            out.append(repr(item))
    return out


def _load_toml(path: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise CliError(f"reading {path} needs the tomli package on Python 3.10: pip install tomli") from None
    with open(path, "rb") as f:
        return tomllib.load(f)


_WANT = {FLAG: "true or false", int: "a whole number", float: "a number", str: "a text",
         INT_OR_FLOAT: "a number of steps or a ratio"}


def _coerce(o: Option, value: Any, where: str) -> Any:
    """A config file value as the argument's type (the command line gets this from argparse)."""
    if o.nargs:
        items = value if isinstance(value, list) else [value]
        return [_coerce(dataclasses.replace(o, nargs=None), v, where) for v in items]
    bad = CliError(f"{where}: {o.name} = {value!r} is not {_WANT[o.type]}")
    if o.type == FLAG or isinstance(value, bool):
        if o.type != FLAG or not isinstance(value, bool):
            raise bad
        return value
    try:
        if o.type == INT_OR_FLOAT:
            if isinstance(value, str):
                value = _int_or_float(value)
            elif isinstance(value, float) and value >= 1:
                if value != int(value):
                    raise ValueError
                value = int(value)
        elif o.type is int:
            if isinstance(value, float) or isinstance(value, (list, dict)):
                raise ValueError
            value = int(value)
        elif o.type is float:
            if isinstance(value, (list, dict)):
                raise ValueError
            value = float(value)
        elif isinstance(value, list) and o.name == "resolution":
            value = ",".join(str(v) for v in value)
        elif isinstance(value, (int, float)):
            value = str(value)
        elif not isinstance(value, str):
            raise ValueError
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        raise bad from None
    if o.choices is not None and value not in o.choices:
        raise CliError(f"{where}: {o.name} = {value!r}: choose one of {', '.join(str(c) for c in o.choices)}")
    return value


def read_config_file(name: str) -> tuple[dict[str, Any], list[str], str]:
    """(known values, unknown keys, path) of a ``--config_file``, as sd-scripts reads it: ``.toml`` appended when
    missing, tables flattened one level."""
    path = name if name.endswith(".toml") else name + ".toml"
    if not os.path.isfile(path):
        raise CliError(f"--config_file: {path} not found")
    try:
        doc = _load_toml(path)
    except (OSError, ValueError) as e:
        raise CliError(f"--config_file: cannot read {path}: {e}") from None
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    known, unknown = {}, []
    for key, value in flat.items():
        o = BY_NAME.get(key)
        if o is None:
            unknown.append(key)
        else:
            known[key] = _coerce(o, value, path)
    return known, unknown, path


def parse(argv: list[str], *, rng: random.Random | None = None, strict: bool = True) -> Parsed:
    """Parse sd-scripts arguments (and ``--config_file``) into a :class:`Parsed` run; :class:`CliError` lists
    what is refused. ``strict=False`` (the Load kohya Config node): unknown arguments are dropped and unsupported
    ones go back to sd-scripts' default, both listed in :attr:`Parsed.skipped` instead of raising."""
    ns, rest = build_parser().parse_known_args(argv)
    explicit, _ = build_parser(suppress_defaults=True).parse_known_args(argv)
    cli = vars(explicit)
    unknown = _unknown_options(rest)
    values = {o.name: o.default for o in OPTIONS}
    file_keys: set[str] = set()
    config_path = None
    if ns.config_file:
        known, file_unknown, config_path = read_config_file(ns.config_file)
        values.update(known)
        file_keys = set(known)
        unknown += [f"{k} (in {config_path})" for k in file_unknown]
    values.update(cli)
    given = frozenset(file_keys | set(cli))
    a = argparse.Namespace(**values)

    unsupported = [_show(o.name, values[o.name]) for o in OPTIONS
                   if o.kind == UNSUPPORTED and _differs(values[o.name], o.default)
                   and not (o.name in _IGNORED_WITH_DATASET_CONFIG and a.dataset_config)]
    unsupported += _unsupported_values(a, given)
    if strict:
        _refuse(unknown, unsupported, [])
        return _derive(a, given, config_path, rng or random.Random())
    for item in unsupported:  # back to sd-scripts' default (a --network_args item: only that key goes)
        name = item.lstrip("-").split("=")[0].split(" ")[0]
        if name == "network_args" and " " in item:
            key = item.split(" ", 1)[1].split("=")[0]
            a.network_args = [x for x in (a.network_args or []) if x.split("=")[0].strip() != key] or None
        elif name in BY_NAME:
            setattr(a, name, BY_NAME[name].default)
    left = _unsupported_values(a, given)
    if left:
        _refuse([], left, [])
    parsed = _derive(a, given, config_path, rng or random.Random())
    parsed.skipped = list(dict.fromkeys(unknown + unsupported))
    return parsed


def _refuse(unknown: list[str], unsupported: list[str], invalid: list[str]) -> None:
    lines = []
    if unknown:
        lines.append("unknown arguments (not sd-scripts LoRA-training arguments): " + ", ".join(unknown))
    if unsupported:
        lines.append("not supported yet: " + ", ".join(dict.fromkeys(unsupported)) +
                     "; remove them (or use a supported value, named in brackets)")
    if invalid:
        lines.append("invalid arguments: " + "; ".join(dict.fromkeys(invalid)))
    if lines:
        raise CliError("\n".join(lines))


def _optimizer(a) -> tuple[str, str] | None:
    """(our optimizer name, optimizer class) for sd-scripts' choice: a named one, or any class (a torch.optim name or
    ``module.Class``, imported when training starts) with the optimizer name left at AdamW. ``None``: torch.optim
    has no class of that name."""
    name = (a.optimizer_type or "").strip()
    if a.use_8bit_adam:
        return "AdamW8bit", ""
    if a.use_lion_optimizer:
        return "Lion", ""
    if not name:
        return "AdamW", ""
    ours = _OPTIMIZERS_LOWER.get(name.lower()) or _OPTIMIZER_CLASSES.get(name)
    if ours is not None:
        return ours, ""
    if "." not in name:
        import torch.optim

        if not isinstance(getattr(torch.optim, name, None), type):
            return None
    return "AdamW", name


def _network_args(a) -> tuple[dict[str, str], list[str], list[str]]:
    """(known key -> value, unsupported items, invalid items) of ``--network_args``."""
    known, unsupported, invalid = {}, [], []
    for item in a.network_args or []:
        if "=" not in item:
            invalid.append(f"--network_args {item!r} must look like key=value")
            continue
        key, value = (s.strip() for s in item.split("=", 1))
        lycoris = a.network_module == LYCORIS_MODULE
        if key in _NETWORK_ARGS and (lycoris or key not in _LYCORIS_ARGS):
            known[key] = value
        elif key == "verbose" or (key == "split_qkv" and value != "True"):
            continue  # a log line / the default
        elif lycoris and key in _LYCORIS_DEFAULTS and value.lower() in {v.lower() for v in _LYCORIS_DEFAULTS[key]}:
            continue
        else:
            unsupported.append(f"--network_args {key}={value}")
    return known, unsupported, invalid


def _resolution(value) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = [p.strip() for p in str(value).split(",")]
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise CliError(f"--resolution {value!r}: give 'size' or 'width,height'") from None
    if len(nums) == 1:
        nums *= 2
    if len(nums) != 2:
        raise CliError(f"--resolution {value!r}: give 'size' or 'width,height'")
    return nums[0], nums[1]


def _lr_list(a) -> list[float]:
    te = a.text_encoder_lr
    if te is None:
        return []
    return [float(v) for v in (te if isinstance(te, (list, tuple)) else [te])]


def _unsupported_values(a, given: frozenset[str]) -> list[str]:
    """Mapped arguments set to a value (or combination) LoRA Loop does not implement."""
    out = []
    from_schedules = ("constant", "constant_with_warmup", "cosine", "linear", "cosine_with_restarts", "polynomial",
                      "adafactor")
    if "timestep_sampling" in given and a.timestep_sampling not in _FLOW_SAMPLINGS:
        out.append(_show("timestep_sampling", a.timestep_sampling, ", ".join(_FLOW_SAMPLINGS)))
    if "model_prediction_type" in given and a.model_prediction_type != "raw":
        out.append(_show("model_prediction_type", a.model_prediction_type, "raw"))
    if a.weighting_scheme not in ("uniform", "none"):
        out.append(_show("weighting_scheme", a.weighting_scheme, "uniform"))
    if _optimizer(a) is None:
        out.append(_show("optimizer_type", a.optimizer_type,
                         "sd-scripts' optimizer names, a torch.optim class or module.Class"))
    if a.lr_scheduler not in from_schedules:
        out.append(_show("lr_scheduler", a.lr_scheduler, ", ".join(from_schedules)))
    module = a.network_module
    if module is not None and module != LYCORIS_MODULE and (not _NETWORK_MODULE.fullmatch(module)
                                                            or module in _NOT_LORA_MODULES):
        out.append(_show("network_module", module, "networks.lora, networks.lora_flux, networks.lora_sd3, ..., "
                                                   "lycoris.kohya"))
    out += _network_args(a)[1]
    if module == LYCORIS_MODULE:
        known = _network_args(a)[0]
        algo = known.get("algo", "lora").lower()
        if algo not in _LYCORIS_ALGOS:
            out.append(_show("network_args algo", algo, ", ".join(_LYCORIS_ALGOS)))
        if known.get("dora_wd", "False").lower() == "true" and known.get("wd_on_output", "True").lower() == "true" \
                and "wd_on_output" in known:
            out.append(_show("network_args wd_on_output", "True", "False (DoRA's per-input-column norm, which "
                                                                  "ComfyUI and A1111 rebuild exactly)"))
    blocks = [k for k in _network_args(a)[0] if k in _BLOCK_ARGS]
    if blocks and module not in (None, "networks.lora"):
        out += [_show(f"network_args {k}", _network_args(a)[0][k], "networks.lora only: the SD1/SD2/SDXL U-Net")
                for k in blocks]
    try:
        res = _resolution(a.resolution)
    except CliError:
        res = None  # reported with the invalid values
    if res is not None and res[0] != res[1]:
        out.append(_show("resolution", a.resolution, "a square size here; put W,H into the dataset TOML"))
    if isinstance(a.lr_warmup_steps, float) and a.lr_warmup_steps >= 1 and a.max_train_epochs:
        out.append(_show("lr_warmup_steps", a.lr_warmup_steps, "a ratio of 1 or more only with --max_train_steps, "
                                                                "not with --max_train_epochs: give steps"))
    steps, epochs = a.save_every_n_steps or 0, a.save_every_n_epochs or 0
    if steps and epochs and (a.save_last_n_steps or a.save_last_n_epochs):
        out.append(_show("save_last_n_steps" if a.save_last_n_steps else "save_last_n_epochs",
                         a.save_last_n_steps or a.save_last_n_epochs,
                         "with step and epoch checkpoints both on, only one count of kept checkpoints"))
    if a.save_model_as not in ("safetensors", None):
        out.append(_show("save_model_as", a.save_model_as, "safetensors"))
    model = a.pretrained_model_name_or_path
    if model and os.path.isdir(model):
        out.append(_show("pretrained_model_name_or_path", model, "a Diffusers folder; give a single-file model"))
    return out


def _loader(a, invalid: list[str], notes: list[str]) -> LoaderPlan | None:
    model = a.pretrained_model_name_or_path
    if not model:
        invalid.append("--pretrained_model_name_or_path is required")
        return None
    fp8 = bool(a.fp8_base or a.fp8_base_unet)
    tes = {k: getattr(a, k) for k in ("clip_l", "clip_g", "t5xxl") if getattr(a, k)}
    chroma = a.model_type == "chroma"
    flux_like = bool(a.ae) or chroma or set(tes) == {"clip_l", "t5xxl"}
    sd3_like = set(tes) == {"clip_l", "clip_g", "t5xxl"}
    gguf = model.lower().endswith(".gguf")
    separate = gguf or flux_like  # the model file holds only the diffusion model
    kind = "gguf" if gguf else "unet" if (flux_like or fp8) else "checkpoint"
    if gguf and fp8:
        notes.append("--fp8_base: a GGUF model keeps its own quantisation")
    vae = a.ae or a.vae
    if a.ae and a.vae and a.ae != a.vae:
        notes.append(f"--vae {a.vae} is not used: --ae {a.ae} is the VAE")
    text_encoders = None
    if chroma:
        if "t5xxl" not in tes:
            invalid.append("--model_type chroma needs --t5xxl")
        else:
            if "clip_l" in tes or "clip_g" in tes:
                notes.append("Chroma uses only T5-XXL: --clip_l/--clip_g are not loaded")
            text_encoders = ("CLIPLoader", (("clip_name", tes["t5xxl"]),), "chroma")
    elif set(tes) == {"clip_l", "t5xxl"}:
        text_encoders = ("DualCLIPLoader", (("clip_name1", tes["clip_l"]), ("clip_name2", tes["t5xxl"])), "flux")
    elif sd3_like:
        text_encoders = ("TripleCLIPLoader", (("clip_name1", tes["clip_l"]), ("clip_name2", tes["clip_g"]),
                                              ("clip_name3", tes["t5xxl"])), None)
    elif tes:
        invalid.append("text encoders: give --clip_l and --t5xxl (FLUX.1), --t5xxl with --model_type chroma, or "
                       "all of --clip_l --clip_g --t5xxl (SD3); got " + ", ".join(f"--{k}" for k in tes))
    elif separate:
        invalid.append("the text encoders are required with a diffusion-model file: --clip_l and --t5xxl "
                       "(FLUX.1), --t5xxl with --model_type chroma, --clip_l --clip_g --t5xxl (SD3)")
    if separate and not vae:
        invalid.append("--ae (or --vae) is required: a diffusion-model file has no VAE")
    if text_encoders is not None and any(p.lower().endswith(".gguf") for _, p in text_encoders[1]):
        cls, slots, ctype = text_encoders
        text_encoders = (cls + "GGUF", slots, ctype)
    if kind == "unet" and not separate and (text_encoders is None or vae is None):
        notes.append("--fp8_base: UNETLoader loads the diffusion model in fp8; CheckpointLoaderSimple loads the "
                     "same file for its " + " and ".join(w for w, missing in (("text encoders", text_encoders is None),
                                                                             ("VAE", vae is None)) if missing)
                     + " (its own copy of the model is never used, but takes RAM)")
    if a.clip_skip is not None and not 1 <= a.clip_skip <= 24:
        invalid.append(f"--clip_skip {a.clip_skip}: between 1 and 24")
    return LoaderPlan(kind, model, "fp8_e4m3fn" if fp8 and kind == "unet" else "default", text_encoders,
                      vae, a.clip_skip if a.clip_skip and a.clip_skip > 1 else None, flux_like or sd3_like,
                      bool(a.v_parameterization) and not (flux_like or sd3_like or gguf))


def _input_name(cls, name: str) -> str:
    try:
        return field_of(cls, name).metadata.get("widget") or name
    except KeyError:  # a field the trainer does not declare (yet)
        return name


def _cast(cls, name: str, value: Any) -> Any:
    """``value`` as the field's type (a FLOAT input gets a float, an INT input an int)."""
    try:
        kind, _ = base_type(typing.get_type_hints(cls)[name])
    except KeyError:
        return value
    if value is None:
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value == int(value):
        return int(value)
    return value


class _Inputs:
    """Collects node inputs from config fields, checking each value with the field's own bounds and naming the
    sd-scripts argument that set it when it is out of range."""

    def __init__(self, invalid: list[str]):
        self.invalid = invalid
        self.nodes: dict[str, dict[str, Any]] = {}
        self.fields: dict[tuple[type, str], Any] = {}

    def put(self, node: str, cls, name: str, value: Any, source: str) -> None:
        value = _cast(cls, name, value)
        try:
            field_of(cls, name)
        except KeyError:
            pass
        else:
            try:
                check_values(cls, {name: value})
            except ValueError as e:
                self.invalid.append(f"{source}: {e}")
            self.fields[(cls, name)] = value
        self.nodes.setdefault(node, {})[_input_name(cls, name)] = value

    def raw(self, node: str, name: str, value: Any) -> None:
        self.nodes.setdefault(node, {})[name] = value

    def values(self, cls) -> dict[str, Any]:
        return {name: v for (c, name), v in self.fields.items() if c is cls}


def _prompts_text(path: str, invalid: list[str]) -> str:
    """The sample prompts as lines (a ``.toml`` / ``.json`` prompt list becomes lines with sd-scripts' options)."""
    try:
        if path.endswith(".toml"):
            data = _load_toml(path)
            table = dict(data.get("prompt", {}))
            subsets = table.pop("subset", [])
            items = [{**table, **s} for s in subsets]
        elif path.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                items = json.load(f)
        else:
            with open(path, encoding="utf-8") as f:
                return f.read()
    except (OSError, ValueError) as e:
        invalid.append(f"--sample_prompts {path}: {e}")
        return ""
    lines = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, str):
            lines.append(item)
            continue
        if not isinstance(item, dict):
            continue
        line = str(item.get("prompt", "")).strip()
        for key, letter in _PROMPT_KEYS.items():
            if item.get(key) is not None:
                line += f" --{letter} {item[key]}"
        lines.append(line)
    return "\n".join(lines)


def _derive(a, given: frozenset[str], config_path: str | None, rng: random.Random) -> Parsed:
    from ..trainer.checkpoints import CheckpointConfig
    from ..trainer.export import SaveConfig
    from ..trainer.previews import PreviewConfig, kohya_sampler

    invalid: list[str] = []
    notes: list[str] = []
    loader = _loader(a, invalid, notes)
    if not a.output_dir:
        invalid.append("--output_dir is required")
    if a.use_8bit_adam and a.optimizer_type:
        invalid.append("--use_8bit_adam together with --optimizer_type (sd-scripts refuses it too)")
    if a.use_lion_optimizer and (a.optimizer_type or a.use_8bit_adam):
        invalid.append("--use_lion_optimizer together with --optimizer_type or --use_8bit_adam (sd-scripts refuses "
                       "it too)")
    if a.lr_scheduler == "adafactor" and (_optimizer(a) or ("",))[0] != "Adafactor":
        invalid.append("--lr_scheduler=adafactor needs --optimizer_type Adafactor (sd-scripts asserts it too)")
    if not a.dataset_config and not a.train_data_dir:
        invalid.append("give --dataset_config (a dataset TOML) or --train_data_dir (a folder)")
    try:
        resolution = _resolution(a.resolution)
    except CliError as e:
        invalid.append(str(e))
        resolution = None
    if resolution is None and a.train_data_dir and not a.dataset_config:
        invalid.append("--resolution is required with --train_data_dir (sd-scripts has no default either)")
    if a.network_module is None:
        notes.append("--network_module not given: networks.lora (LoRA Loop picks the family's LoRA targets)")
    lycoris = a.network_module == LYCORIS_MODULE

    seed_random = a.seed is None
    seed = rng.randint(0, 2**32) if seed_random else int(a.seed)
    if seed_random:
        notes.append(f"seed {seed} (random: --seed was not given; pass --seed {seed} to repeat this run)")
    output_name = a.output_name if a.output_name else "last"
    net_args, _, bad_items = _network_args(a)
    invalid += bad_items
    inp = _Inputs(invalid)

    # dataset
    inp.raw(LOAD_DATASET, "path", os.path.abspath(a.dataset_config or a.train_data_dir or ""))
    inp.put(LOAD_DATASET, SubsetConfig, "caption_extension", a.caption_extention or a.caption_extension,
            "--caption_extension")
    inp.put(LOAD_DATASET, SubsetConfig, "num_repeats", 1, "(folder names give the repeats)")
    inp.put(LOAD_DATASET, SubsetConfig, "alpha_mask", bool(a.alpha_mask), "--alpha_mask")
    if a.conditioning_data_dir:
        if a.dataset_config:
            invalid.append("--conditioning_data_dir is for --train_data_dir; with --dataset_config set "
                           "conditioning_data_dir in each [[datasets.subsets]] that has masks")
        inp.raw(LOAD_DATASET, "conditioning_data_dir", os.path.abspath(a.conditioning_data_dir))
    inp.put(LOAD_DATASET, SubsetConfig, "class_tokens", "", "(folder names give the class tokens)")
    caption_values = {n: getattr(a, n) for n in CAPTION_OPTION_NAMES}
    captions_set = any(_differs(v, getattr(CaptionOptions(), n)) for n, v in caption_values.items()) or a.flip_aug \
        or a.color_aug or a.random_crop
    if captions_set:
        for n, v in caption_values.items():
            inp.put(CAPTIONS, CaptionOptions, n, "" if v is None else v, f"--{n}")
        inp.put(CAPTIONS, SubsetConfig, "flip_aug", bool(a.flip_aug), "--flip_aug")
        inp.put(CAPTIONS, SubsetConfig, "color_aug", bool(a.color_aug), "--color_aug")
        inp.put(CAPTIONS, SubsetConfig, "random_crop", bool(a.random_crop), "--random_crop")
        try:
            CaptionOptions(**caption_values)
        except ValueError as e:
            invalid.append(str(e))
    # buckets
    if resolution is None:
        resolution = (GroupConfig().resolution[0],) * 2
    inp.put(BUCKETS, GroupConfig, "resolution", resolution[0], "--resolution")
    inp.put(BUCKETS, GroupConfig, "batch_size", a.train_batch_size, "--train_batch_size")
    for n in ("enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale"):
        inp.put(BUCKETS, GroupConfig, n, getattr(a, n), f"--{n}")
    # encode
    inp.raw(ENCODE, "cache_latents_to_disk", bool(a.cache_latents_to_disk))
    if not 1 <= a.vae_batch_size <= 64:
        invalid.append(f"--vae_batch_size {a.vae_batch_size}: between 1 and 64")
    inp.raw(ENCODE, "vae_batch_size", a.vae_batch_size)
    inp.raw(ENCODE, "max_token_length", a.max_token_length or 75)  # sd-scripts: None = 75 tokens
    # network
    train_te = not a.network_train_unet_only and a.model_type != "chroma"
    # sd-scripts applies the text-encoder LoRA (T5-XXL's too) only when the text encoders train
    train_t5 = net_args.get("train_t5xxl") == "True" and not a.network_train_unet_only
    if a.model_type == "chroma" and not a.network_train_unet_only and not train_t5:
        notes.append("Chroma: no text encoder trains (sd-scripts trains T5-XXL only with network_args "
                     "train_t5xxl=True)")
    inp.put(INJECT, NetworkConfig, "network_dim", 4 if a.network_dim is None else a.network_dim, "--network_dim")
    inp.put(INJECT, NetworkConfig, "network_alpha", 1.0 if a.network_alpha is None else a.network_alpha,
            "--network_alpha")
    conv_dim, conv_alpha = net_args.get("conv_dim"), net_args.get("conv_alpha")
    if lycoris:  # lycoris.kohya: the convs train by default, at network_dim / network_alpha
        conv_dim = conv_dim if conv_dim is not None else (4 if a.network_dim is None else a.network_dim)
        conv_alpha = conv_alpha if conv_alpha is not None else (1.0 if a.network_alpha is None else a.network_alpha)
    try:
        conv_dim = int(conv_dim) if conv_dim is not None else 0
        conv_alpha = float(conv_alpha) if conv_alpha is not None else 1.0
    except ValueError:
        invalid.append("--network_args conv_dim must be a whole number and conv_alpha a number")
        conv_dim, conv_alpha = 0, 1.0
    inp.put(INJECT, NetworkConfig, "conv_dim", conv_dim, "--network_args conv_dim")
    inp.put(INJECT, NetworkConfig, "conv_alpha", conv_alpha, "--network_args conv_alpha")
    inp.put(INJECT, NetworkConfig, "train_text_encoder", train_te, "--network_train_unet_only")
    inp.put(INJECT, NetworkConfig, "seed", seed, "--seed")
    inp.put(INJECT, NetworkConfig, "train_unet", not a.network_train_text_encoder_only,
            "--network_train_text_encoder_only")
    inp.put(INJECT, NetworkConfig, "train_t5", train_t5, "--network_args train_t5xxl")
    inp.put(INJECT, NetworkConfig, "train_blocks", net_args.get("train_blocks", "all"), "--network_args train_blocks")
    # network options (Inject LoRA's Network Options node) and LoRA+ / block lr / max-norm (Network Training)
    if a.dim_from_weights and not a.network_weights:
        invalid.append("--dim_from_weights needs --network_weights")
    inp.put(NETWORK_OPTIONS, NetworkConfig, "network_dropout", a.network_dropout or 0.0, "--network_dropout")
    inp.put(NETWORK_OPTIONS, NetworkConfig, "dim_from_weights", bool(a.dim_from_weights), "--dim_from_weights")
    inp.put(NETWORK_TRAINING, TrainConfig, "scale_weight_norms", a.scale_weight_norms or 0.0, "--scale_weight_norms")
    algo = _LYCORIS_ALGOS.get(net_args.get("algo", "lora").lower(), "lora") if lycoris else "lora"
    inp.put(NETWORK_OPTIONS, NetworkConfig, "algo", algo, "--network_args algo")
    flags = {}
    for key in ("dora_wd", "decompose_both"):
        value = net_args.get(key, "False") if lycoris else "False"
        if value.lower() not in ("true", "false"):
            invalid.append(f"--network_args {key}={value}: True or False")
        flags[key] = value.lower() == "true"
        inp.put(NETWORK_OPTIONS, NetworkConfig, key, flags[key], f"--network_args {key}")
    try:
        factor = int(net_args.get("factor", -1)) if lycoris else -1
    except ValueError:
        invalid.append(f"--network_args factor={net_args.get('factor')}: a whole number (-1 = as square as possible)")
        factor = -1
    inp.put(NETWORK_OPTIONS, NetworkConfig, "factor", factor, "--network_args factor")
    if lycoris and "preset" in net_args:
        notes.append(f"--network_args preset={net_args['preset']}: LoRA Loop trains networks.lora's modules (the "
                     "3x3 convs too with conv_dim), not the LyCORIS preset's module list")
    if lycoris and (algo != "lora" or flags["dora_wd"]) and (a.network_dropout or _number(net_args.get("rank_dropout"))):
        invalid.append(f"--network_dropout / --network_args rank_dropout with algo={algo}"
                       f"{' and dora_wd' if flags['dora_wd'] else ''}: LyCORIS defines them for LoRA only; use "
                       "module_dropout")
    for key, (node_type, name, kind) in _OPTION_ARGS.items():
        cls = NetworkConfig if node_type == NETWORK_OPTIONS else TrainConfig
        value = net_args.get(key)
        if value is None:
            value = field_of(cls, name).default
        elif kind is float:
            try:
                value = float(value)
            except ValueError:
                invalid.append(f"--network_args {key}={value}: a number")
                continue
        inp.put(node_type, cls, name, value, f"--network_args {key}")
    # learning rates
    unet_lr = a.unet_lr if a.unet_lr is not None else a.learning_rate
    lrs = _lr_list(a)
    te_lr = lrs[0] if lrs else a.learning_rate
    per_encoder = len(set(lrs)) > 1 and a.network_module not in (None, "networks.lora", LYCORIS_MODULE)
    if len(set(lrs)) > 1 and not per_encoder:
        notes.append(f"--text_encoder_lr: {a.network_module or 'networks.lora'} uses the first value ({te_lr}) for "
                     f"every text encoder, as sd-scripts' {a.network_module or 'networks.lora'} does")
    inp.put(OPTIMIZER, TrainConfig, "text_encoder_lrs", ",".join(f"{v:g}" for v in lrs) if per_encoder else "",
            "--text_encoder_lr")
    # train
    memory = "streamed" if (a.blocks_to_swap or 0) > 0 else "checkpointed" if a.gradient_checkpointing else "auto"
    inp.put(TRAIN, TrainConfig, "max_train_steps", a.max_train_steps, "--max_train_steps")
    inp.put(TRAIN, TrainConfig, "learning_rate", unet_lr, "--unet_lr" if a.unet_lr is not None else "--learning_rate")
    optimizer_type, optimizer_class = _optimizer(a) or ("AdamW", "")
    inp.put(TRAIN, TrainConfig, "optimizer_type", optimizer_type, "--optimizer_type")
    inp.put(TRAIN, TrainConfig, "lr_scheduler", a.lr_scheduler, "--lr_scheduler")
    inp.put(TRAIN, TrainConfig, "seed", seed, "--seed")
    inp.put(TRAIN, CheckpointConfig, "output_name", output_name, "--output_name")
    inp.put(TRAIN, TrainConfig, "memory_mode", memory, "--gradient_checkpointing")
    inp.put(TRAIN, TrainConfig, "blocks_to_swap", a.blocks_to_swap or 0, "--blocks_to_swap")
    # validation (the Validation node, added when any of its arguments is given)
    validation = {"validation_split": a.validation_split or 0.0, "validation_seed": a.validation_seed,
                  "validate_every_n_steps": a.validate_every_n_steps, "validate_every_n_epochs":
                  a.validate_every_n_epochs, "max_validation_steps": a.max_validation_steps}
    if validation["validation_split"] or any(v is not None for k, v in validation.items() if k != "validation_split"):
        for name, value in validation.items():
            off = -1 if name == "validation_seed" else 0
            inp.put(VALIDATION, TrainConfig, name, off if value is None else value, f"--{name}")
    # optimizer settings
    warmup = a.lr_warmup_steps
    if isinstance(warmup, float) and warmup >= 1:
        warmup = int(warmup * a.max_train_steps)  # sd-scripts: a ratio of the training steps (below 1 the node's too)
    inp.put(OPTIMIZER, TrainConfig, "lr_warmup_steps", warmup, "--lr_warmup_steps")
    inp.put(OPTIMIZER, TrainConfig, "lr_scheduler_num_cycles", a.lr_scheduler_num_cycles, "--lr_scheduler_num_cycles")
    inp.put(OPTIMIZER, TrainConfig, "lr_scheduler_power", a.lr_scheduler_power, "--lr_scheduler_power")
    inp.put(OPTIMIZER, TrainConfig, "text_encoder_lr", te_lr,
            "--text_encoder_lr" if lrs else "--learning_rate (the text encoders' rate)")
    inp.put(OPTIMIZER, TrainConfig, "max_grad_norm", a.max_grad_norm, "--max_grad_norm")
    inp.put(OPTIMIZER, TrainConfig, "gradient_accumulation_steps", a.gradient_accumulation_steps,
            "--gradient_accumulation_steps")
    inp.put(OPTIMIZER, TrainConfig, "optimizer_args", _optimizer_args(a.optimizer_args, invalid), "--optimizer_args")
    inp.put(OPTIMIZER, TrainConfig, "optimizer_class", optimizer_class, "--optimizer_type")
    inp.put(OPTIMIZER, TrainConfig, "lr_scheduler_type", a.lr_scheduler_type or "", "--lr_scheduler_type")
    inp.put(OPTIMIZER, TrainConfig, "lr_scheduler_args",
            _optimizer_args(a.lr_scheduler_args, invalid, "--lr_scheduler_args"), "--lr_scheduler_args")
    inp.put(OPTIMIZER, TrainConfig, "mixed_precision", a.mixed_precision, "--mixed_precision")
    epochs = a.max_train_epochs or 0
    if epochs < 0:
        invalid.append(f"--max_train_epochs {epochs}: 0 or more")
    inp.put(OPTIMIZER, TrainConfig, "max_train_epochs", epochs, "--max_train_epochs")
    # noise & loss
    inp.put(NOISE_LOSS, TrainConfig, "noise_offset", a.noise_offset or 0.0, "--noise_offset")
    inp.put(NOISE_LOSS, TrainConfig, "min_snr_gamma", a.min_snr_gamma or 0.0, "--min_snr_gamma")
    inp.put(NOISE_LOSS, TrainConfig, "min_timestep", 0 if a.min_timestep is None else a.min_timestep,
            "--min_timestep")
    inp.put(NOISE_LOSS, TrainConfig, "max_timestep", 1000 if a.max_timestep is None else a.max_timestep,
            "--max_timestep")
    inp.put(NOISE_LOSS, TrainConfig, "loss_type", a.loss_type, "--loss_type")
    inp.put(NOISE_LOSS, TrainConfig, "timestep_sampling",
            a.timestep_sampling if "timestep_sampling" in given else "model", "--timestep_sampling")
    inp.put(NOISE_LOSS, TrainConfig, "sigmoid_scale", a.sigmoid_scale, "--sigmoid_scale")
    inp.put(NOISE_LOSS, TrainConfig, "discrete_flow_shift", a.discrete_flow_shift, "--discrete_flow_shift")
    inp.put(NOISE_LOSS, TrainConfig, "guidance_scale", a.guidance_scale, "--guidance_scale")
    inp.put(NOISE_LOSS, TrainConfig, "noise_offset_random_strength", a.noise_offset_random_strength,
            "--noise_offset_random_strength")
    inp.put(NOISE_LOSS, TrainConfig, "adaptive_noise_scale", a.adaptive_noise_scale or 0.0, "--adaptive_noise_scale")
    inp.put(NOISE_LOSS, TrainConfig, "multires_noise_iterations", a.multires_noise_iterations or 0,
            "--multires_noise_iterations")
    inp.put(NOISE_LOSS, TrainConfig, "multires_noise_discount", a.multires_noise_discount, "--multires_noise_discount")
    inp.put(NOISE_LOSS, TrainConfig, "ip_noise_gamma", a.ip_noise_gamma or 0.0, "--ip_noise_gamma")
    inp.put(NOISE_LOSS, TrainConfig, "ip_noise_gamma_random_strength", a.ip_noise_gamma_random_strength,
            "--ip_noise_gamma_random_strength")
    inp.put(NOISE_LOSS, TrainConfig, "huber_schedule", a.huber_schedule, "--huber_schedule")
    inp.put(NOISE_LOSS, TrainConfig, "huber_c", a.huber_c, "--huber_c")
    inp.put(NOISE_LOSS, TrainConfig, "huber_scale", a.huber_scale, "--huber_scale")
    inp.put(NOISE_LOSS, TrainConfig, "prior_loss_weight", a.prior_loss_weight, "--prior_loss_weight")
    inp.put(NOISE_LOSS, TrainConfig, "masked_loss", bool(a.masked_loss), "--masked_loss")
    inp.put(NOISE_LOSS, TrainConfig, "debiased_estimation_loss", a.debiased_estimation_loss,
            "--debiased_estimation_loss")
    inp.put(NOISE_LOSS, TrainConfig, "scale_v_pred_loss_like_noise_pred", a.scale_v_pred_loss_like_noise_pred,
            "--scale_v_pred_loss_like_noise_pred")
    inp.put(NOISE_LOSS, TrainConfig, "v_pred_like_loss", a.v_pred_like_loss or 0.0, "--v_pred_like_loss")
    inp.put(NOISE_LOSS, TrainConfig, "zero_terminal_snr", a.zero_terminal_snr, "--zero_terminal_snr")
    if not invalid:
        try:
            TrainConfig(**inp.values(TrainConfig))
        except (ValueError, TypeError) as e:
            invalid.append(str(e))
    # checkpoints
    save_dtype = _SAVE_DTYPES[a.save_precision]
    keep = 0
    if a.save_last_n_steps and a.save_every_n_steps and not a.save_every_n_epochs:
        keep = math.ceil((a.save_last_n_steps + 1) / a.save_every_n_steps)
    elif a.save_last_n_epochs and a.save_every_n_epochs and not a.save_every_n_steps:
        keep = a.save_last_n_epochs
    inp.put(CHECKPOINTS, CheckpointConfig, "save_every_n_steps", a.save_every_n_steps or 0, "--save_every_n_steps")
    inp.put(CHECKPOINTS, CheckpointConfig, "save_every_n_epochs", a.save_every_n_epochs or 0, "--save_every_n_epochs")
    inp.put(CHECKPOINTS, CheckpointConfig, "save_last_n", keep, "--save_last_n_steps/--save_last_n_epochs")
    inp.put(CHECKPOINTS, CheckpointConfig, "save_dtype", save_dtype, "--save_precision")
    inp.put(CHECKPOINTS, CheckpointConfig, "resume_from", os.path.abspath(a.resume) if a.resume else "", "--resume")
    if not invalid:
        try:
            CheckpointConfig(**inp.values(CheckpointConfig))
        except ValueError as e:
            invalid.append(f"--output_name {output_name!r}: {e}")
    # previews: only with a cadence (sd-scripts samples nothing without one)
    if a.sample_prompts and a.sample_every_n_steps:
        if "sample_sampler" in given or loader is None or not loader.flow:
            sampler, scheduler = kohya_sampler(a.sample_sampler)
            scheduler = scheduler or "normal"
        else:  # sd-scripts samples FLUX/SD3 with its own Euler flow sampler whatever --sample_sampler says
            sampler, scheduler = "euler", "simple"
        flux_style = loader is not None and loader.flow and loader.text_encoders is not None and \
            loader.text_encoders[2] in ("flux", "chroma")
        for name, value in (("prompts", _prompts_text(a.sample_prompts, invalid)), ("negative", ""),
                            ("sampler", sampler), ("scheduler", scheduler), ("steps", 20 if flux_style else 30),
                            ("cfg", 1.0 if flux_style else 7.5), ("width", 512), ("height", 512),
                            ("seed", seed % (2**63)), ("every_n_steps", a.sample_every_n_steps)):
            inp.put(PREVIEWS, PreviewConfig, name, value, "--sample_prompts" if name == "prompts" else
                    "--sample_every_n_steps" if name == "every_n_steps" else "--sample_sampler")
    elif a.sample_prompts:
        notes.append("--sample_prompts without --sample_every_n_steps: no previews (sd-scripts samples none either)")
    # save
    inp.put(SAVE, SaveConfig, "filename", output_name, "--output_name")
    inp.put(SAVE, SaveConfig, "save_dtype", save_dtype, "--save_precision")
    inp.put(SAVE, SaveConfig, "if_exists", "overwrite", "(sd-scripts overwrites)")
    inp.put(SAVE, SaveConfig, "verify", False, "")
    _refuse([], [], invalid)
    return Parsed(a, given, config_path, seed, seed_random, os.path.abspath(a.output_dir), output_name, loader,
                  inp.nodes, notes)


def _optimizer_args(items, invalid: list[str], flag: str = "--optimizer_args") -> str:
    """sd-scripts' ``--optimizer_args k=v ...`` (or ``--lr_scheduler_args``) as our one-line text (spaces inside a
    value are dropped when that does not change the value: ``betas=(0.9, 0.99)``)."""
    import ast

    out = []
    for item in items or []:
        item = item.strip()
        if any(c.isspace() for c in item):
            key, _, value = item.partition("=")
            compact = "".join(value.split())
            try:
                same = ast.literal_eval(compact) == ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                same = False
            if not same:
                invalid.append(f"{flag} {item!r}: a value with spaces")
                continue
            item = f"{key.strip()}={compact}"
        out.append(item)
    return " ".join(out)


def ignored(parsed: Parsed) -> list[str]:
    """The automatic arguments this run sets (safe to ignore: done anyway, or a detail of sd-scripts)."""
    a = parsed.args
    out = [f"--{o.name}" for o in OPTIONS if o.kind == AUTOMATIC and _differs(getattr(a, o.name), o.default)]
    if parsed.args.dataset_config:
        out += [f"--{n}" for n in _IGNORED_WITH_DATASET_CONFIG if getattr(a, n)]
    if "model_prediction_type" in parsed.given and a.model_prediction_type == "raw":
        out.append("--model_prediction_type")
    if a.v_parameterization and not parsed.loader.v_prediction:
        out.append("--v_parameterization")
    return out


def info_lines(parsed: Parsed) -> list[str]:
    """What the runtime prints before it starts: the ignored arguments, then the notes."""
    lines = []
    skipped = ignored(parsed)
    if skipped:
        lines.append("ignored (LoRA Loop does this itself, or it does not change the result): " + ", ".join(skipped))
    return lines + list(parsed.notes)


# ---------------------------------------------------------------------------------------------------- graph
def graph(parsed: Parsed, register: Callable[[str, str], str]) -> dict[str, dict[str, Any]]:
    """The API-format prompt of the run. ``register(kind, path)`` makes ComfyUI list a file and returns the name
    for the loader's combo (kinds: checkpoints, diffusion_models, text_encoders, vae, loras, unet_gguf,
    clip_gguf). Train LoRA is node ``train``, Save LoRA node ``save``."""
    plan, nodes = parsed.loader, parsed.inputs
    g: dict[str, dict[str, Any]] = {}

    def node(nid: str, class_type: str, **inputs) -> list:
        g[nid] = {"class_type": class_type, "inputs": inputs}
        return [nid, 0]

    model = clip = vae = None
    if plan.model == "checkpoint" or plan.text_encoders is None or plan.vae is None:
        node("checkpoint", "CheckpointLoaderSimple", ckpt_name=register("checkpoints", plan.model_path))
        model, clip, vae = ["checkpoint", 0], ["checkpoint", 1], ["checkpoint", 2]
    if plan.model == "gguf":
        model = node("model", "UnetLoaderGGUF", unet_name=register("unet_gguf", plan.model_path))
    elif plan.model == "unet":
        model = node("model", "UNETLoader", unet_name=register("diffusion_models", plan.model_path),
                     weight_dtype=plan.weight_dtype)
    if plan.text_encoders is not None:
        cls, slots, ctype = plan.text_encoders
        gguf = cls.endswith("GGUF")
        inputs = {slot: register("clip_gguf" if gguf and p.lower().endswith(".gguf") else "text_encoders", p)
                  for slot, p in slots}
        if ctype is not None:
            inputs["type"] = ctype
        clip = node("clip", cls, **inputs)
    if plan.vae:
        vae = node("vae", "VAELoader", vae_name=register("vae", plan.vae))
    if plan.v_prediction:  # sd-scripts' --v_parameterization: train (and sample) as v-prediction
        model = node("v_prediction", "ModelSamplingDiscrete", model=model, sampling="v_prediction", zsnr=False)
    if plan.clip_skip:
        clip = node("clip_skip", "CLIPSetLastLayer", clip=clip, stop_at_clip_layer=-plan.clip_skip)

    captions = None
    if CAPTIONS in nodes:
        captions = node("captions", CAPTIONS, **nodes[CAPTIONS])
    ds = node("dataset", LOAD_DATASET, **nodes[LOAD_DATASET], **({"caption_settings": captions} if captions else {}))
    ds = node("buckets", BUCKETS, dataset=ds, **nodes[BUCKETS])
    trains_te = nodes[INJECT]["train_text_encoder"] or nodes[INJECT]["train_t5"]
    ds = node("encode", ENCODE, dataset=ds, vae=vae, **({} if trains_te else {"clip": clip}), **nodes[ENCODE])
    init = register("loras", parsed.args.network_weights) if parsed.args.network_weights else "none"
    options = node("network_options", NETWORK_OPTIONS, **nodes[NETWORK_OPTIONS])
    node("inject", INJECT, model=model, clip=clip, init_lora=init, network_options=options, **nodes[INJECT])
    settings = {"optimizer_settings": node("optimizer", OPTIMIZER, **nodes[OPTIMIZER]),
                "noise_loss_settings": node("noise_loss", NOISE_LOSS, **nodes[NOISE_LOSS]),
                "checkpoint_settings": node("checkpoints", CHECKPOINTS, **nodes[CHECKPOINTS]),
                "network_training": node("network_training", NETWORK_TRAINING, **nodes[NETWORK_TRAINING])}
    if PREVIEWS in nodes:
        settings["preview_settings"] = node("previews", PREVIEWS, vae=vae, **nodes[PREVIEWS])
    if VALIDATION in nodes:
        settings["validation_settings"] = node("validation", VALIDATION, **nodes[VALIDATION])
    node(TRAIN_ID, TRAIN, model=["inject", 0], network=["inject", 2], dataset=ds, clip=["inject", 1], **settings,
         **nodes[TRAIN])
    node(SAVE_ID, SAVE, network=[TRAIN_ID, 2], **nodes[SAVE])
    return g
