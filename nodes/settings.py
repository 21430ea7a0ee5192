"""Settings nodes: small optional nodes by topic that plug into Train LoRA (or Load Dataset) through typed
sockets, so Train LoRA keeps only what most runs change. Each widget is a config field (``nodes/schema``);
the value a settings node outputs is a :class:`Settings` the receiving node unpacks into its configs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..trainer.captions import CAPTION_OPTION_NAMES, CaptionOptions
from ..trainer.checkpoints import CheckpointConfig
from ..trainer.config import TrainConfig
from ..trainer.dataset import SubsetConfig
from ..trainer.previews import PreviewConfig
from ._api import (CATEGORY, CaptionSettingsIO, CheckpointSettingsIO, NoiseLossSettingsIO, OptimizerSettingsIO,
                   PreviewSettingsIO, TrainState, io)
from .schema import values_of, widgets

# Which TrainConfig fields live on which node (Train LoRA keeps the rest: see nodes/train.py MAIN_FIELDS).
OPTIMIZER_FIELDS = ("lr_warmup_steps", "lr_scheduler_num_cycles", "lr_scheduler_power", "text_encoder_lr",
                    "max_grad_norm", "gradient_accumulation_steps", "optimizer_args", "mixed_precision")
NOISE_LOSS_FIELDS = ("noise_offset", "min_snr_gamma", "min_timestep", "max_timestep", "loss_type",
                     "timestep_sampling", "sigmoid_scale", "discrete_flow_shift", "guidance_scale")
CHECKPOINT_FIELDS = ("save_every_n_steps", "save_every_n_epochs", "save_last_n", "save_dtype", "resume_from")
PREVIEW_FIELDS = tuple(f for f in PreviewConfig.__dataclass_fields__)
CAPTION_FIELDS = CAPTION_OPTION_NAMES
SUBSET_AUGMENT_FIELDS = ("flip_aug",)


@dataclass(frozen=True)
class Settings:
    """What a settings node outputs: option values by config field name, plus the objects it was given."""

    topic: str
    values: dict[str, Any] = field(default_factory=dict)
    vae: Any = None           # Previews: the VAE that decodes them
    train_state: Any = None   # Checkpoints & Resume: a TRAIN_STATE to continue

    def __repr__(self) -> str:  # ComfyUI prints node inputs in error reports: keep it short
        return f"Settings({self.topic}: {len(self.values)} values)"


SETTINGS_CATEGORY = f"{CATEGORY}/settings"


class OptimizerSettings(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraLoop_OptimizerSettings", display_name="Optimizer Settings (LoRA Loop)",
            category=SETTINGS_CATEGORY, is_experimental=True,
            description="Warm-up, schedule parameters, text-encoder learning rate, gradient clipping and "
                        "accumulation, optimizer arguments and mixed precision. Connect to Train LoRA's "
                        "optimizer_settings; without it every value is its default.",
            inputs=widgets(TrainConfig, OPTIMIZER_FIELDS, optional=True),
            outputs=[OptimizerSettingsIO.Output(display_name="optimizer_settings",
                                                tooltip="Connect to Train LoRA's optimizer_settings input.")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        values = values_of(TrainConfig, OPTIMIZER_FIELDS, inputs)
        TrainConfig(**values)  # bounds and optimizer_args are checked here, at this node
        return io.NodeOutput(Settings("optimizer", values))


class NoiseLossSettings(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraLoop_NoiseLossSettings", display_name="Noise & Loss (LoRA Loop)",
            category=SETTINGS_CATEGORY, is_experimental=True,
            description="Offset noise, Min-SNR weighting, timestep range, loss type, and the flow models' "
                        "(SD3/FLUX) timestep sampling and guidance. Connect to Train LoRA's noise_loss_settings.",
            inputs=widgets(TrainConfig, NOISE_LOSS_FIELDS, optional=True),
            outputs=[NoiseLossSettingsIO.Output(display_name="noise_loss_settings",
                                                tooltip="Connect to Train LoRA's noise_loss_settings input.")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        values = values_of(TrainConfig, NOISE_LOSS_FIELDS, inputs)
        TrainConfig(**values)
        return io.NodeOutput(Settings("noise_loss", values))


class CheckpointSettings(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraLoop_CheckpointSettings", display_name="Checkpoints & Resume (LoRA Loop)",
            category=SETTINGS_CATEGORY, is_experimental=True,
            description="Periodic checkpoints (LoRA + resumable state) into <loras>/<output_name>_checkpoints, how "
                        "many to keep, and explicit resume from a state file or a TRAIN_STATE. Without it Train "
                        "LoRA still saves on Cancel and continues on re-queue.",
            inputs=widgets(CheckpointConfig, CHECKPOINT_FIELDS, optional=True) + [
                TrainState.Input("train_state", optional=True,
                                 tooltip="A TRAIN_STATE from another Train LoRA: continue that run (LoRA weights, "
                                         "optimizer, LR schedule position, step, data position) up to 'steps'. "
                                         "The same optimizer and LoRA network are required; other changed settings "
                                         "apply from the resumed step on. Wins over resume_from."),
            ],
            outputs=[CheckpointSettingsIO.Output(display_name="checkpoint_settings",
                                                 tooltip="Connect to Train LoRA's checkpoint_settings input.")],
        )

    @classmethod
    def execute(cls, train_state=None, **inputs) -> io.NodeOutput:
        values = values_of(CheckpointConfig, CHECKPOINT_FIELDS, inputs)
        CheckpointConfig(**values)
        return io.NodeOutput(Settings("checkpoints", values, train_state=train_state))


class PreviewSettings(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraLoop_PreviewSettings", display_name="Previews (LoRA Loop)",
            category=SETTINGS_CATEGORY, is_experimental=True,
            description="Sample preview images with ComfyUI's own sampler while training (shown live on Train LoRA "
                        "and returned as its 'previews' output). Needs the VAE here and the CLIP on Train LoRA. "
                        "Previews never change the trained LoRA.",
            inputs=[io.Vae.Input("vae", tooltip="The VAE of the checkpoint: decodes the previews.")] +
                   widgets(PreviewConfig, PREVIEW_FIELDS, optional=True),
            outputs=[PreviewSettingsIO.Output(display_name="preview_settings",
                                              tooltip="Connect to Train LoRA's preview_settings input.")],
        )

    @classmethod
    def execute(cls, vae, **inputs) -> io.NodeOutput:
        values = values_of(PreviewConfig, PREVIEW_FIELDS, inputs)
        PreviewConfig(**values)
        return io.NodeOutput(Settings("previews", values, vae=vae))


class CaptionSettings(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraLoop_CaptionSettings", display_name="Captions & Augmentation (LoRA Loop)",
            category=SETTINGS_CATEGORY, is_experimental=True,
            description="How captions are processed each time an image is used (kohya tag shuffling, kept tokens, "
                        "separators, prefix/suffix, dropout) and image augmentation. Connect to Load Dataset's "
                        "caption_settings; a dataset TOML's own values win (kohya precedence).",
            inputs=widgets(CaptionOptions, CAPTION_FIELDS, optional=True) + widgets(SubsetConfig, SUBSET_AUGMENT_FIELDS, optional=True),
            outputs=[CaptionSettingsIO.Output(display_name="caption_settings",
                                              tooltip="Connect to Load Dataset's caption_settings input.")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        values = values_of(CaptionOptions, CAPTION_FIELDS, inputs)
        CaptionOptions(**values)
        values.update(values_of(SubsetConfig, SUBSET_AUGMENT_FIELDS, inputs))
        return io.NodeOutput(Settings("captions", values))


SETTINGS_NODES = [OptimizerSettings, NoiseLossSettings, CheckpointSettings, PreviewSettings, CaptionSettings]
