"""Typed training configuration. Field help texts feed the node tooltips.

Names follow sd-scripts where they overlap (kohya.md §9); deviations from kohya defaults are
marked "(kohya: ...)" in the help text and listed in the README."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def help_of(cls, name: str) -> str:
    """The help text of a dataclass field (used as a node tooltip)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(f"{cls.__name__} has no field {name!r}")


@dataclass(frozen=True)
class NetworkConfig:
    network_dim: int = field(default=16, metadata={
        "help": "LoRA rank for Linear and 1x1 conv modules (kohya network_dim; kohya's fallback is 4)."})
    network_alpha: float = field(default=16.0, metadata={
        "help": "LoRA alpha; the update is scaled by alpha/rank (kohya network_alpha). 0 means alpha = rank."})
    conv_dim: int = field(default=0, metadata={
        "help": "Rank for 3x3 convs. 0 = LoRA-LierLa (transformer blocks only); > 0 = LoRA-C3Lier: also ResBlock "
                "3x3 convs, their time-embedding Linear and 1x1 shortcut, and down/up-sampler convs (kohya conv_dim). "
                "SD1/SD2/SDXL only."})
    conv_alpha: float = field(default=1.0, metadata={
        "help": "Alpha for the 3x3 conv modules (kohya conv_alpha, default 1.0)."})
    train_unet: bool = field(default=True, metadata={
        "help": "Train the diffusion model (U-Net / transformer) LoRA."})
    train_text_encoder: bool = field(default=False, metadata={
        "help": "Also train LoRA on the CLIP text encoder(s) (attention and MLP linears). Needs the CLIP input."})
    train_t5: bool = field(default=False, metadata={
        "help": "SD3/FLUX: also train LoRA on T5-XXL (kohya train_t5xxl). Off by default: large and rarely helpful."})
    train_blocks: str = field(default="all", metadata={
        "help": "FLUX: which transformer blocks get LoRA: all, single or double (kohya train_blocks)."})
    seed: int = field(default=0, metadata={"help": "Seed for the LoRA down-projection initialisation."})

    def network_args(self) -> dict[str, str]:
        args: dict[str, str] = {}
        if self.conv_dim > 0:
            args["conv_dim"] = str(self.conv_dim)
            args["conv_alpha"] = str(self.conv_alpha)
        if self.train_blocks != "all":
            args["train_blocks"] = self.train_blocks
        if self.train_t5:
            args["train_t5xxl"] = "True"
        return args


@dataclass(frozen=True)
class TrainConfig:
    max_train_steps: int = field(default=500, metadata={
        "help": "Total optimizer steps to train (kohya max_train_steps)."})
    learning_rate: float = field(default=1e-4, metadata={
        "help": "Learning rate of the diffusion-model LoRA (kohya unet_lr / learning_rate; kohya's 2e-6 default "
                "is for full fine-tuning, 1e-4 is the usual LoRA value)."})
    text_encoder_lr: float = field(default=5e-5, metadata={
        "help": "Learning rate of the text-encoder LoRA (kohya text_encoder_lr). Used only when the text "
                "encoder is trained."})
    optimizer_type: str = field(default="AdamW", metadata={
        "help": "Optimizer (kohya optimizer_type). AdamW8bit needs bitsandbytes."})
    weight_decay: float = field(default=0.01, metadata={"help": "Weight decay (AdamW default 0.01)."})
    lr_scheduler: str = field(default="constant", metadata={
        "help": "LR schedule (kohya lr_scheduler): constant, constant_with_warmup, cosine, linear."})
    lr_warmup_steps: int = field(default=0, metadata={
        "help": "Linear warm-up steps (kohya lr_warmup_steps). Not allowed with 'constant' (use "
                "constant_with_warmup)."})
    gradient_accumulation_steps: int = field(default=1, metadata={
        "help": "Micro-batches summed per optimizer step (kohya gradient_accumulation_steps)."})
    max_grad_norm: float = field(default=1.0, metadata={
        "help": "Clip the LoRA gradient norm to this value; 0 disables (kohya max_grad_norm, default 1.0)."})
    noise_offset: float = field(default=0.0, metadata={
        "help": "Add offset noise: noise += offset * randn(B, C, 1, 1) (kohya noise_offset; ~0.05-0.1 helps "
                "very dark/bright images)."})
    min_snr_gamma: float = field(default=0.0, metadata={
        "help": "Min-SNR-gamma loss weighting for eps/v models (kohya min_snr_gamma; 5 is common). 0 = off. "
                "Ignored by flow models (SD3/FLUX), as in sd-scripts."})
    min_timestep: int = field(default=0, metadata={
        "help": "Lowest training timestep for SD1/SD2/SDXL (kohya min_timestep)."})
    max_timestep: int = field(default=1000, metadata={
        "help": "Upper bound (exclusive) of training timesteps for SD1/SD2/SDXL (kohya max_timestep)."})
    timestep_sampling: str = field(default="model", metadata={
        "help": "Flow models (SD3/FLUX): how sigmas are drawn (kohya timestep_sampling). model = FLUX dev: "
                "flux_shift (resolution-dependent); SD3 and FLUX schnell: shift with the model's own shift (SD3 3.0, "
                "schnell 1.0 = sigmoid). Others: uniform, sigmoid (logit-normal), shift (discrete_flow_shift), "
                "flux_shift."})
    sigmoid_scale: float = field(default=1.0, metadata={
        "help": "Scale of the logit-normal draw for sigmoid/shift/flux_shift sampling (kohya sigmoid_scale)."})
    discrete_flow_shift: float = field(default=3.0, metadata={
        "help": "Shift for timestep_sampling=shift (kohya discrete_flow_shift; 3.1582 matches flux_shift at 1024 px)."})
    guidance_scale: float = field(default=1.0, metadata={
        "help": "FLUX dev: guidance value fed to the guidance-distilled model while training. 1.0 as sd-scripts "
                "recommends for LoRA (kohya's CLI default 3.5): the LoRA then learns without leaning on the "
                "distilled guidance, and still works at the usual 3.5 when sampling."})
    seed: int = field(default=0, metadata={
        "help": "Seed for noise, timesteps and data order. Same inputs + seed on CPU give a bit-identical LoRA."})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute block activations in backward: much less memory, ~30% slower (kohya "
                "gradient_checkpointing)."})
    mixed_precision: str = field(default="auto", metadata={
        "help": "auto: bf16 autocast on GPUs that support it (fp16 otherwise), fp32 on CPU. no/bf16/fp16 force it. "
                "LoRA weights and optimizer state stay fp32 (kohya mixed_precision)."})
    loss_type: str = field(default="l2", metadata={"help": "Loss: l2 (MSE) or l1 (kohya loss_type)."})
    optimizer_args: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "Extra optimizer keyword arguments."})

    def __post_init__(self):
        if self.max_train_steps < 1:
            raise ValueError("steps must be at least 1")
        if self.gradient_accumulation_steps < 1:
            raise ValueError("gradient_accumulation_steps must be at least 1")
        ok = 0 <= self.min_timestep < self.max_timestep <= 1000 or 0 <= self.min_timestep == self.max_timestep <= 999
        if not ok:
            raise ValueError(f"need 0 <= min_timestep ({self.min_timestep}) < max_timestep ({self.max_timestep}) <= 1000 "
                             "(or min == max <= 999 to train one timestep)")
