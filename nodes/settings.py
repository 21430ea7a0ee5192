"""Settings nodes: small optional nodes by topic that plug into Train LoRA (or Load Dataset, Inject LoRA) through
typed sockets, so Train LoRA keeps only what most runs change. A topic is data (:class:`Topic`: its node, its socket
and the config fields it carries); one factory makes its node. Each widget is a config field (``nodes/schema``);
the value a settings node outputs is a :class:`Settings` the receiving node unpacks into its configs. A later
option goes into its topic's ``fields``; a new topic is one more ``Topic``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..trainer.captions import CAPTION_OPTION_NAMES, CaptionOptions
from ..trainer.checkpoints import CheckpointConfig
from ..trainer.config import NetworkConfig, TrainConfig
from ..trainer.dataset import SubsetConfig
from ..trainer.options import check_values
from ..trainer.previews import PreviewConfig
from ._api import (CATEGORY, CaptionSettingsIO, CheckpointSettingsIO, NetworkOptionsIO, NetworkTrainingIO,
                   NoiseLossSettingsIO, OptimizerSettingsIO, PreviewSettingsIO, TrainState, ValidationSettingsIO,
                   io)
from .schema import values_of, widgets

SETTINGS_CATEGORY = f"{CATEGORY}/settings"


@dataclass(frozen=True)
class Settings:
    """What a settings node outputs: option values by config field name, plus the objects it was given."""

    topic: str
    values: dict[str, Any] = field(default_factory=dict)
    vae: Any = None           # Previews: the VAE that decodes them
    train_state: Any = None   # Checkpoints & Resume: a TRAIN_STATE to continue

    def __repr__(self) -> str:  # ComfyUI prints node inputs in error reports: keep it short
        return f"Settings({self.topic}: {len(self.values)} values)"


@dataclass(frozen=True)
class Topic:
    name: str                                   # Settings.topic
    node_id: str
    display_name: str
    socket: Any                                 # the io.Custom type of its output / the receiver's input
    input_name: str                             # the receiving node's input (and this node's output name)
    receiver: str                               # "Train LoRA" / "Load Dataset"
    description: str
    fields: tuple[tuple[type, tuple[str, ...]], ...]     # (config class, its fields on this node)
    objects: tuple[Callable[[], Any], ...] = ()  # extra (object) inputs, each a function making the input
    unconnected: str = "all defaults"           # what the receiver does without it (its input's tooltip)


TOPICS = (
    Topic("optimizer", "LoraLoop_OptimizerSettings", "Optimizer Settings (LoRA Loop)", OptimizerSettingsIO,
          "optimizer_settings", "Train LoRA",
          "Warm-up, schedule parameters, text-encoder learning rate, gradient clipping and accumulation, optimizer "
          "arguments, mixed precision and training length in epochs; then any optimizer or LR scheduler class, "
          "with its arguments.",
          ((TrainConfig, ("lr_warmup_steps", "lr_scheduler_num_cycles", "lr_scheduler_power", "text_encoder_lr",
                          "max_grad_norm", "gradient_accumulation_steps", "optimizer_args", "mixed_precision",
                          "max_train_epochs", "optimizer_class", "lr_scheduler_type", "lr_scheduler_args",
                          "text_encoder_lrs")),)),
    Topic("noise_loss", "LoraLoop_NoiseLossSettings", "Noise & Loss (LoRA Loop)", NoiseLossSettingsIO,
          "noise_loss_settings", "Train LoRA",
          "Offset noise, Min-SNR weighting, timestep range, loss type, and the flow models' (SD3, FLUX and the newer "
          "families) timestep sampling and guidance; then sd-scripts' other noise options (pyramid noise, input "
          "perturbation, adaptive offset), the huber schedule, the other loss weights, zero terminal SNR and the "
          "masked loss.",
          ((TrainConfig, ("noise_offset", "min_snr_gamma", "min_timestep", "max_timestep", "loss_type",
                          "timestep_sampling", "sigmoid_scale", "discrete_flow_shift", "guidance_scale",
                          "noise_offset_random_strength", "adaptive_noise_scale", "multires_noise_iterations",
                          "multires_noise_discount", "ip_noise_gamma", "ip_noise_gamma_random_strength",
                          "huber_schedule", "huber_c", "huber_scale", "debiased_estimation_loss",
                          "scale_v_pred_loss_like_noise_pred", "v_pred_like_loss", "zero_terminal_snr",
                          "prior_loss_weight", "masked_loss")),)),
    Topic("checkpoints", "LoraLoop_CheckpointSettings", "Checkpoints & Resume (LoRA Loop)", CheckpointSettingsIO,
          "checkpoint_settings", "Train LoRA",
          "Periodic checkpoints (LoRA + resumable state) into <loras>/<output_name>_checkpoints, how many to keep, "
          "and explicit resume from a state file or a TRAIN_STATE.",
          ((CheckpointConfig, ("save_every_n_steps", "save_every_n_epochs", "save_last_n", "save_dtype",
                               "resume_from")),),
          objects=(lambda: TrainState.Input(
              "train_state", optional=True,
              tooltip="A TRAIN_STATE from another Train LoRA: continue that run (LoRA weights, optimizer, LR "
                      "schedule position, step, data position) up to 'steps'. The same optimizer and LoRA network "
                      "are required; other changed settings apply from the resumed step on. Wins over "
                      "resume_from."),),
          unconnected="no periodic checkpoints; Cancel still saves the last completed step, and a re-queue "
                      "continues"),
    Topic("previews", "LoraLoop_PreviewSettings", "Previews (LoRA Loop)", PreviewSettingsIO,
          "preview_settings", "Train LoRA",
          "Sample preview images with ComfyUI's own sampler while training (the latest shown on Train LoRA, all of "
          "them in its 'previews' output). Needs the VAE here and the CLIP on Train LoRA. Previews never change "
          "the trained LoRA.",
          ((PreviewConfig, tuple(PreviewConfig.__dataclass_fields__)),),
          objects=(lambda: io.Vae.Input("vae", tooltip="The VAE of the checkpoint: decodes the previews."),),
          unconnected="no previews"),
    Topic("validation", "LoraLoop_ValidationSettings", "Validation (LoRA Loop)", ValidationSettingsIO,
          "validation_settings", "Train LoRA",
          "Hold out a fraction of the dataset's images and chart their loss as a second curve (sd-scripts' "
          "validation split): no gradients, 4 fixed timesteps, its own seed, every epoch or every N steps. The "
          "held-out images are not trained on; validating never changes the LoRA trained on the rest.",
          ((TrainConfig, ("validation_split", "validation_seed", "validate_every_n_steps",
                          "validate_every_n_epochs", "max_validation_steps")),),
          unconnected="no validation"),
    Topic("captions", "LoraLoop_CaptionSettings", "Captions & Augmentation (LoRA Loop)", CaptionSettingsIO,
          "caption_settings", "Load Dataset",
          "How captions are processed each time an image is used (kohya tag shuffling, kept tokens, separators, "
          "prefix/suffix, dropout) and image augmentation. A dataset TOML's own values win (kohya precedence).",
          ((CaptionOptions, CAPTION_OPTION_NAMES), (SubsetConfig, ("flip_aug", "color_aug", "random_crop"))),
          unconnected="captions are used as written"),
    Topic("network_options", "LoraLoop_NetworkOptions", "Network Options (LoRA Loop)", NetworkOptionsIO,
          "network_options", "Inject LoRA",
          "Neuron, rank and module dropout while training, per-block ranks and alphas of the SD1/SD2/SDXL U-Net, "
          "how init_lora is used (dim_from_weights): sd-scripts' network options; then the LyCORIS adapter type "
          "(LoHa, LoKr, DoRA) and its shape.",
          ((NetworkConfig, ("network_dropout", "rank_dropout", "module_dropout", "block_dims", "block_alphas",
                            "conv_block_dims", "conv_block_alphas", "dim_from_weights", "algo", "dora_wd",
                            "factor", "decompose_both")),),
          unconnected="kohya LoRA, no dropout, network_dim/conv_dim everywhere, init_lora gives ranks and alphas"),
    Topic("network_training", "LoraLoop_NetworkTraining", "Network Training (LoRA Loop)", NetworkTrainingIO,
          "network_training", "Train LoRA",
          "LoRA+ learning-rate ratios, per-block learning-rate weights of the SD1/SD2/SDXL U-Net, and max-norm "
          "regularisation (scale_weight_norms), with sd-scripts' names and formulas.",
          ((TrainConfig, ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio",
                          "down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold",
                          "scale_weight_norms")),),
          unconnected="one learning rate per model part, no max-norm"),
)
BY_NAME = {t.name: t for t in TOPICS}


def receiver_input(topic: Topic):
    """The receiving node's optional socket for ``topic``."""
    title = topic.display_name.replace(" (LoRA Loop)", "")
    article = "an" if title[0].lower() in "aeiou" else "a"
    return topic.socket.Input(topic.input_name, optional=True,
                              tooltip=f"From {article} {title} node: {topic.description.split('.')[0].lower()}. "
                                      f"Unconnected: {topic.unconnected}.")


def _node(topic: Topic) -> type:
    def define_schema(cls):
        return io.Schema(
            node_id=topic.node_id, display_name=topic.display_name, category=SETTINGS_CATEGORY,
            is_experimental=True,
            description=f"{topic.description} Connect to {topic.receiver}'s {topic.input_name}; without it: "
                        f"{topic.unconnected}.",
            inputs=[make() for make in topic.objects]
            + [w for cfg, names in topic.fields for w in widgets(cfg, names, optional=True)],
            outputs=[topic.socket.Output(display_name=topic.input_name,
                                         tooltip=f"Connect to {topic.receiver}'s {topic.input_name} input.")])

    def execute(cls, vae=None, train_state=None, **inputs):
        values: dict[str, Any] = {}
        for cfg, names in topic.fields:
            group = values_of(cfg, names, inputs)
            check_values(cfg, group)  # a bad value is reported at this node, naming the option
            values.update(group)
        return io.NodeOutput(Settings(topic.name, values, vae=vae, train_state=train_state))

    name = topic.node_id.split("_", 1)[1]
    return type(name, (io.ComfyNode,), {"define_schema": classmethod(define_schema),
                                        "execute": classmethod(execute), "__module__": __name__,
                                        "__doc__": topic.description})


SETTINGS_NODES = [_node(t) for t in TOPICS]
