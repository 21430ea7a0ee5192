"""Typed training configuration: every option declared once (``options.option``: default, help, bounds).

Names follow sd-scripts where they overlap; deviations from kohya defaults are marked "(kohya: ...)" in
the help text and listed in the README. The node widgets, tooltips and the generated reference are built
from these declarations."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .options import check_options, option


def _optimizer_names() -> list[str]:
    from .optim import available_optimizers

    return available_optimizers()


def _schedules() -> tuple[str, ...]:
    from .optim import SCHEDULES

    return SCHEDULES


def _optimizer_args(text: str) -> dict[str, Any]:
    from .optim import parse_optimizer_args

    return parse_optimizer_args(text)


def _class_path(text: str) -> str:
    from .optim import check_class_path

    return check_class_path(text)


def _warmup(value: float) -> float:
    if value >= 1 and float(value) != int(value):
        raise ValueError(f"lr_warmup_steps {value} is neither a whole number of steps nor a ratio below 1")
    return value


def _block_dims(text: str) -> str:
    from .network_options import check_dims

    return check_dims(text)


def _block_alphas(text: str) -> str:
    from .network_options import check_alphas

    return check_alphas(text)


def _lr_weight(text: str) -> str:
    from .network_options import check_lr_weight

    return check_lr_weight(text)


def _mid_lr_weight(text: str) -> str:
    from .network_options import check_mid_lr_weight

    return check_mid_lr_weight(text)


def _flow_samplings() -> tuple[str, ...]:
    from .objectives import FLOW_SAMPLINGS

    return ("model",) + tuple(FLOW_SAMPLINGS)


def _memory_modes() -> tuple[str, ...]:
    from .memory import MEMORY_MODES

    return MEMORY_MODES


MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
LR = dict(min=0.0, max=1.0, step=0.000001, round=0.0000001)
SEED = dict(min=0, max=2**63 - 1)


def lr_values(text: str) -> list[float]:
    """``text_encoder_lrs`` as numbers (empty: [])."""
    if not str(text).strip():
        return []
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        raise ValueError(f"text_encoder_lrs {text!r}: comma-separated learning rates, e.g. 1e-5,5e-6") from None
    if any(v < 0 for v in values):
        raise ValueError(f"text_encoder_lrs {text!r}: learning rates are 0 or more")
    return values


def _lr_list(text: str) -> str:
    lr_values(text)
    return text


NETWORK_ALGOS = ("lora", "loha", "lokr")  # LyCORIS algo names (trainer/lycoris.py)


@dataclass(frozen=True)
class NetworkConfig:
    network_dim: int = option(16, "LoRA rank for Linear and 1x1 conv modules (kohya network_dim; kohya's fallback "
                                  "is 4).", min=1, max=1024)
    network_alpha: float = option(16.0, "LoRA alpha; the update is scaled by alpha/rank (kohya network_alpha). 0 "
                                        "means alpha = rank.", min=0.0, max=1024.0, step=0.5)
    conv_dim: int = option(0, "Rank for 3x3 convs. 0 = LoRA-LierLa (transformer blocks only); > 0 = LoRA-C3Lier: "
                              "also ResBlock 3x3 convs, their time-embedding Linear and 1x1 shortcut, and down/up-"
                              "sampler convs (kohya conv_dim). SD1/SD2/SDXL, and the 3x3 convs inside the blocks of "
                              "models the generic family trains; an error on the other families.",
                           min=0, max=1024)
    conv_alpha: float = option(1.0, "Alpha for the 3x3 conv modules (kohya conv_alpha, default 1.0).",
                               min=0.0, max=1024.0, step=0.5)
    train_unet: bool = option(True, "Train the diffusion model (U-Net / transformer) LoRA.")
    train_text_encoder: bool = option(False, "Also train LoRA on the text encoder(s): CLIP attention and MLP linears "
                                             "(SD/SDXL/SD3/FLUX.1), the LLM or UMT5 encoder of the newer families "
                                             "(Qwen2.5-VL, Qwen3, Gemma, Llama, Mistral, UMT5; docs/families.md). "
                                             "Needs the CLIP input.")
    train_t5: bool = option(False, "SD3/FLUX.1/Chroma/HiDream: also train LoRA on T5-XXL (kohya train_t5xxl). Off "
                                   "by default: large and rarely helpful.")
    train_blocks: str = option("all", "FLUX: which transformer blocks get LoRA: all, single or double (kohya "
                                      "train_blocks).", choices=("all", "single", "double"))
    seed: int = option(0, "Seed for the LoRA down-projection initialisation.", widget="init_seed", **SEED)
    # ---- Network Options settings node (kohya network_dropout and --network_args)
    network_dropout: float = option(0.0, "Neuron dropout on each module's down output while training: zeros with "
                                         "this probability, the rest x 1/(1-p) (kohya network_dropout). Previews "
                                         "and the saved file are unaffected. 0 = off.", min=0.0, max=1.0, step=0.01)
    rank_dropout: float = option(0.0, "Rank dropout while training: each rank of each sample is 0 with this "
                                      "probability and the module's scale is x 1/(1-p) (kohya network_args "
                                      "rank_dropout). 0 = off.", min=0.0, max=0.99, step=0.01)
    module_dropout: float = option(0.0, "Module dropout while training: each call, a module adds nothing with this "
                                        "probability (kohya network_args module_dropout). 0 = off.",
                                   min=0.0, max=1.0, step=0.01)
    block_dims: str = option("", "SD1/SD2/SDXL: rank of the Linear and 1x1-conv modules per U-Net block, comma-"
                                 "separated: 25 values for SD1/SD2 (1-11 down, 12 mid, 13-24 up), 23 for SDXL (1-9 "
                                 "input, 10-12 middle, 13-21 output); the first and SDXL's last have no module. 0 "
                                 "leaves a block out (kohya network_args block_dims). Empty = network_dim.",
                             check=_block_dims)
    block_alphas: str = option("", "Alpha per U-Net block, as many values as block_dims (kohya block_alphas). "
                                   "Empty = network_alpha everywhere.", check=_block_alphas)
    conv_block_dims: str = option("", "Rank of the 3x3 convs per U-Net block (kohya conv_block_dims; turns the "
                                      "C3Lier conv modules on even with conv_dim 0). Empty = conv_dim everywhere.",
                                  check=_block_dims)
    conv_block_alphas: str = option("", "Alpha of the 3x3 convs per U-Net block (kohya conv_block_alphas). Empty = "
                                        "conv_alpha everywhere.", check=_block_alphas)
    dim_from_weights: bool = option(True, "With init_lora: the modules, ranks and alphas come from the file (kohya "
                                          "dim_from_weights). Off: the network is built from the rank settings and "
                                          "the file's weights are loaded into the modules of the same name (kohya "
                                          "network_weights alone; shapes must match, alphas stay the settings').")
    # ---- LyCORIS adapters (sd-scripts --network_module lycoris.kohya with --network_args algo=... )
    algo: str = option("lora", "Adapter type (LyCORIS algo): lora = kohya LoRA; loha = LoHa (Hadamard product of two "
                               "low-rank products: more expressive at the same rank, rank ~half of LoRA's); lokr = "
                               "LoKr (Kronecker product, small files; see factor). LoHa and LoKr need the lycoris-lora "
                               "package and are saved as lycoris.kohya files (ComfyUI, A1111, Forge load them).",
                       choices=NETWORK_ALGOS)
    dora_wd: bool = option(False, "DoRA (LyCORIS dora_wd, algo lora): a magnitude per input column of each weight is "
                                  "trained beside the LoRA (dora_scale in the file). Saved with the per-input-column "
                                  "norm (LyCORIS wd_on_output=False), the one ComfyUI and A1111 rebuild exactly. "
                                  "Slower than LoRA (each step reads every base weight once more).")
    factor: int = option(-1, "LoKr: split each weight's out and in sizes with this factor (LyCORIS factor; -1 = as "
                             "square as possible, larger = bigger Kronecker part and file).", min=-1, max=8192)
    decompose_both: bool = option(False, "LoKr: also make the small Kronecker matrix low-rank (LyCORIS "
                                         "decompose_both).")

    def __post_init__(self):
        check_options(self)
        if self.dora_wd and self.algo != "lora":
            raise ValueError(f"dora_wd with algo {self.algo}: DoRA decomposes a LoRA here (algo lora); set algo to "
                             "lora or turn dora_wd off")
        if self.factor == 0:
            raise ValueError("factor 0: give -1 (as square as possible) or a positive split factor")


@dataclass(frozen=True)
class TrainConfig:
    # ---- on Train LoRA itself: what most runs change
    max_train_steps: int = option(500, "Total optimizer steps to train (kohya max_train_steps).", min=1,
                                  max=1_000_000, widget="steps")
    learning_rate: float = option(1e-4, "Learning rate of the diffusion-model LoRA (kohya unet_lr / learning_rate; "
                                        "kohya's 2e-6 default is for full fine-tuning, 1e-4 is the usual LoRA value).",
                                  **LR)
    optimizer_type: str = option("AdamW", "Optimizer (kohya optimizer_type): torch AdamW/Adam/SGD/SGDNesterov; "
                                          "bitsandbytes AdamW8bit, PagedAdamW(8bit/32bit), Lion8bit, PagedLion8bit, "
                                          "SGDNesterov8bit; Lion (lion-pytorch); DAdapt* (dadaptation) and Prodigy "
                                          "(prodigyopt), learning rate ~1.0; Adafactor (transformers); "
                                          "*ScheduleFree (schedulefree). A missing package is named when training "
                                          "starts. Any other class: Optimizer settings' optimizer_class.",
                                 choices=_optimizer_names, widget="optimizer")
    lr_scheduler: str = option("constant", "LR schedule (kohya lr_scheduler): constant, constant_with_warmup, "
                                           "cosine, linear, cosine_with_restarts (lr_scheduler_num_cycles hard "
                                           "restarts) or polynomial (lr_scheduler_power); adafactor: relative-step "
                                           "Adafactor's own step size (chosen for it automatically). Warm-up and "
                                           "the schedule parameters are on the Optimizer settings node.",
                                 choices=_schedules)
    seed: int = option(0, "Seed for noise, timesteps and data order. Same inputs + seed on CPU give a bit-identical "
                          "LoRA.", **SEED)
    memory_mode: str = option("auto", "How a step fits the device. auto: the fastest plan the free memory ComfyUI "
                                      "reports allows (estimated on the meta device before training). resident: "
                                      "all weights on the device, no checkpointing (fastest, most memory). "
                                      "checkpointed: + gradient checkpointing of every block and text-encoder "
                                      "layer (kohya gradient_checkpointing: much less activation memory, ~30% "
                                      "slower). streamed: checkpointed, and blocks_to_swap blocks' worth of "
                                      "weights stay off the device, cast in per layer by ComfyUI's loader (kohya "
                                      "blocks_to_swap). The LoRA is the same in every mode.",
                              choices=_memory_modes, widget="memory")
    blocks_to_swap: int = option(0, "memory=streamed: how many blocks' worth of weight bytes stay off the "
                                    "device (kohya blocks_to_swap; ComfyUI picks the layers); 0 = as many as needed "
                                    "to fit. Ignored by other modes.",
                                 min=0, max=1000)
    # ---- Optimizer settings node
    lr_warmup_steps: float = option(0, "Linear warm-up steps (kohya lr_warmup_steps); below 1 a ratio of the "
                                       "training steps (0.1 = the first 10%). Not allowed with 'constant' (use "
                                       "constant_with_warmup), adafactor or lr_scheduler_type.",
                                    min=0.0, max=1_000_000, step=0.01, round=0.0001, check=_warmup)
    lr_scheduler_num_cycles: int = option(1, "cosine_with_restarts: number of hard restarts (kohya "
                                             "lr_scheduler_num_cycles).", min=1, max=10_000)
    lr_scheduler_power: float = option(1.0, "polynomial: power of the decay (kohya lr_scheduler_power; 1 = linear). "
                                            "Ends at 0 (diffusers' polynomial ends at 1e-7).", min=0.0, max=100.0,
                                       step=0.1)
    text_encoder_lr: float = option(5e-5, "Learning rate of the text-encoder LoRA (kohya text_encoder_lr). Used only "
                                          "when the text encoder is trained.", **LR)
    text_encoder_lrs: str = option("", "One learning rate per text encoder, comma-separated in sd-scripts' order "
                                       "(SDXL: CLIP-L, CLIP-G; SD3: CLIP-L, CLIP-G, T5; FLUX.1: CLIP-L, T5), as kohya "
                                       "--text_encoder_lr with several values; encoders past the list take its first "
                                       "value. Empty = text_encoder_lr for every encoder.", check=_lr_list)
    max_grad_norm: float = option(1.0, "Clip the LoRA gradient norm to this value; 0 disables (kohya max_grad_norm, "
                                       "default 1.0).", min=0.0, max=1000.0, step=0.01)
    gradient_accumulation_steps: int = option(1, "Micro-batches summed per optimizer step (kohya "
                                                 "gradient_accumulation_steps).", min=1, max=1024)
    max_train_epochs: int = option(0, "Train this many epochs instead of 'steps': steps = epochs x ceil(batches "
                                      "per epoch / gradient_accumulation_steps), an epoch being every image times "
                                      "its repeats (kohya max_train_epochs, which also wins over max_train_steps). "
                                      "0 = off: 'steps' counts.", min=0, max=100_000)
    optimizer_args: str = option("", "Extra optimizer arguments, sd-scripts style: 'weight_decay=0.1 "
                                     "betas=0.9,0.99' (kohya optimizer_args). Weight decay is the optimizer's own "
                                     "default unless set here (AdamW 0.01, Adam and SGD 0).", check=_optimizer_args)
    optimizer_class: str = option("", "Any optimizer class as module.Class, e.g. pytorch_optimizer.CAME or "
                                      "torch.optim.RAdam (a bare name is a torch.optim class), built with "
                                      "optimizer_args; wins over Train LoRA's optimizer when set (kohya "
                                      "optimizer_type with a class name). Empty = off.", check=_class_path)
    lr_scheduler_type: str = option("", "Any LR scheduler class instead of lr_scheduler: a torch.optim.lr_scheduler "
                                        "name (CosineAnnealingLR) or module.Class, built with lr_scheduler_args and "
                                        "stepped once per step; no warm-up (kohya lr_scheduler_type). Empty = off.",
                                    check=_class_path)
    lr_scheduler_args: str = option("", "Arguments of lr_scheduler_type, sd-scripts style: 'T_max=1000 eta_min=1e-6' "
                                        "(kohya lr_scheduler_args).", check=_optimizer_args)
    mixed_precision: str = option("auto", "auto: bf16 autocast on GPUs that support it (fp16 otherwise), fp32 on "
                                          "CPU. no/bf16/fp16 force it. LoRA weights and optimizer state stay fp32 "
                                          "(kohya mixed_precision). The file records what ran.",
                                  choices=MIXED_PRECISION)
    # ---- Noise & Loss settings node
    noise_offset: float = option(0.0, "Add offset noise: noise += offset * randn(B, C, 1, 1) (kohya noise_offset; "
                                      "~0.05-0.1 helps very dark/bright images). SD1/SD2/SDXL: flow models "
                                      "(SD3, FLUX, ...) train on plain noise, as in sd-scripts.",
                                 min=0.0, max=1.0, step=0.001)
    min_snr_gamma: float = option(0.0, "Min-SNR-gamma loss weighting for eps/v models (kohya min_snr_gamma; 5 is "
                                       "common). 0 = off. Ignored by flow models (SD3/FLUX), as in sd-scripts.",
                                  min=0.0, max=100.0, step=0.1)
    min_timestep: int = option(0, "Lowest training timestep for SD1/SD2/SDXL (kohya min_timestep).", min=0, max=1000)
    max_timestep: int = option(1000, "Upper bound (exclusive) of training timesteps for SD1/SD2/SDXL (kohya "
                                     "max_timestep).", min=0, max=1000)
    loss_type: str = option("l2", "Loss (kohya loss_type): l2 (MSE), l1, huber = 2c(sqrt(d^2+c^2)-c) or smooth_l1 = "
                                  "2(sqrt(d^2+c^2)-c), c per sample from huber_schedule.",
                            choices=("l2", "l1", "huber", "smooth_l1"))
    timestep_sampling: str = option("model", "Flow models: how sigmas are drawn (kohya timestep_sampling). model = "
                                             "what the family's own trainers use: FLUX dev flux_shift "
                                             "(resolution-dependent); SD3 and FLUX schnell shift with the model's own "
                                             "shift (SD3 3.0, schnell 1.0 = sigmoid); Qwen-Image shift 2.2, Z-Image "
                                             "2.0, Wan 3.0, HiDream 3.0, HunyuanImage 5.0; Lumina 2 flux_shift; "
                                             "FLUX.2 flux2_shift; Chroma sigmoid; other models shift with the "
                                             "model's own shift. Others: uniform, sigmoid (logit-normal), shift "
                                             "(discrete_flow_shift), flux_shift, flux2_shift.",
                                    choices=_flow_samplings)
    sigmoid_scale: float = option(1.0, "Scale of the logit-normal draw for sigmoid/shift/flux_shift sampling (kohya "
                                       "sigmoid_scale).", min=0.01, max=10.0, step=0.01)
    discrete_flow_shift: float = option(3.0, "Shift for timestep_sampling=shift (kohya discrete_flow_shift; 3.1582 "
                                             "matches flux_shift at 1024 px).", min=0.01, max=100.0, step=0.0001)
    prior_loss_weight: float = option(1.0, "Loss weight of regularisation images (subsets with is_reg; kohya "
                                           "prior_loss_weight, default 1.0): each reg sample's loss is multiplied "
                                           "by it.", min=0.0, max=100.0, step=0.01)
    masked_loss: bool = option(False, "Train only where each image's mask allows (kohya masked_loss): the mask images "
                                      "of the dataset's conditioning_data_dir (white trains, black is ignored). The "
                                      "loss is averaged over the mask's area; images with alpha_mask use their "
                                      "transparency even without this.")
    guidance_scale: float = option(1.0, "FLUX.1 dev, FLUX.2 dev and other models with a distilled-guidance input: "
                                        "guidance value fed to the model while "
                                        "training. 1.0 as sd-scripts recommends for LoRA (kohya's CLI default 3.5): "
                                        "the LoRA then learns without leaning on the distilled guidance, and still "
                                        "works at the usual 3.5 when sampling.", min=0.0, max=100.0, step=0.1)
    noise_offset_random_strength: bool = option(False, "Offset noise of a random strength U(0, 1) x noise_offset "
                                                       "per batch (kohya noise_offset_random_strength).")
    adaptive_noise_scale: float = option(0.0, "Adds |mean of each latent channel| x this to noise_offset (kohya "
                                              "adaptive_noise_scale; needs noise_offset; may be negative, the offset "
                                              "stays >= 0). 0 = off.", min=-1.0, max=1.0, step=0.0001)
    multires_noise_iterations: int = option(0, "Pyramid (multi-resolution) noise with this many levels (kohya "
                                               "multires_noise_iterations; 6-10 is usual). SD1/SD2/SDXL only, as in "
                                               "sd-scripts. 0 = off.", min=0, max=64)
    multires_noise_discount: float = option(0.3, "Weight of each coarser pyramid level: discount^level (kohya "
                                                 "multires_noise_discount).", min=0.0, max=1.0, step=0.01)
    ip_noise_gamma: float = option(0.0, "Input perturbation: the noisy input gets noise + gamma x randn, the target "
                                        "keeps the noise (kohya ip_noise_gamma; ~0.1). Every model (sd-scripts' SD3 "
                                        "trainer ignores it). 0 = off.", min=0.0, max=1.0, step=0.001)
    ip_noise_gamma_random_strength: bool = option(False, "Input perturbation of a random strength U(0, 1) x "
                                                         "ip_noise_gamma per batch (kohya "
                                                         "ip_noise_gamma_random_strength).")
    huber_schedule: str = option("snr", "huber/smooth_l1 threshold c per timestep t (kohya huber_schedule): constant "
                                        "c x huber_scale; exponential exp(ln(c) t / 1000) x huber_scale; snr "
                                        "(1 - c) / (1 + sigma)^2 + c (no huber_scale, as in sd-scripts). Flow models "
                                        "use t = 1000 sigma; snr there uses the flow SNR, (1 - c)(1 - sigma)^2 + c, "
                                        "where sd-scripts refuses it.", choices=("constant", "exponential", "snr"))
    huber_c: float = option(0.1, "Huber threshold / decay parameter c (kohya huber_c).", min=0.0001, max=10.0,
                            step=0.001)
    huber_scale: float = option(1.0, "Scale of the constant and exponential huber schedules (kohya huber_scale).",
                                min=0.0001, max=100.0, step=0.01)
    debiased_estimation_loss: bool = option(False, "Weight the loss by 1/sqrt(SNR) (eps) or 1/(SNR+1) (v), SNR "
                                                   "capped at 1000 (kohya debiased_estimation_loss). SD1/SD2/SDXL.")
    scale_v_pred_loss_like_noise_pred: bool = option(False, "v-prediction models: weight the loss by SNR/(SNR+1) so "
                                                            "it scales like an eps loss (kohya "
                                                            "scale_v_pred_loss_like_noise_pred). An error on other "
                                                            "models, as in sd-scripts.")
    v_pred_like_loss: float = option(0.0, "eps models: add this x a v-prediction-like loss, loss x (1 + k (SNR+1)/"
                                          "SNR) (kohya v_pred_like_loss). An error on v models, as in sd-scripts. "
                                          "0 = off.", min=0.0, max=100.0, step=0.01)
    zero_terminal_snr: bool = option(False, "Rescale the model's noise schedule to zero terminal SNR (kohya "
                                            "zero_terminal_snr, meant for v-prediction); the last sigma is ComfyUI's "
                                            "zsnr one, so sample with ModelSamplingDiscrete zsnr on. Loss weights keep "
                                            "the original SNR, as in sd-scripts. SD1/SD2/SDXL.")

    # ---- Network Training settings node (kohya --network_args for LoRA+ and block learning rates, and
    # scale_weight_norms)
    loraplus_lr_ratio: float = option(0.0, "LoRA+: the up weights learn at this x the learning rate, the down "
                                           "weights at the learning rate (kohya network_args loraplus_lr_ratio; the "
                                           "LoRA+ paper suggests 16). 0 = off.", min=0.0, max=1000.0, step=0.1)
    loraplus_unet_lr_ratio: float = option(0.0, "LoRA+ ratio of the diffusion-model LoRA only (kohya "
                                                "loraplus_unet_lr_ratio). 0 = loraplus_lr_ratio.",
                                           min=0.0, max=1000.0, step=0.1)
    loraplus_text_encoder_lr_ratio: float = option(0.0, "LoRA+ ratio of the text-encoder LoRA only (kohya "
                                                        "loraplus_text_encoder_lr_ratio). 0 = loraplus_lr_ratio.",
                                                   min=0.0, max=1000.0, step=0.1)
    down_lr_weight: str = option("", "SD1/SD2/SDXL: learning-rate weight of each down (input) block, shallow to "
                                     "deep: 12 comma-separated values (SDXL 9; missing ones are 1, empty ones 0) or "
                                     "cosine, sine, linear, reverse_linear or zeros with an optional +base, e.g. "
                                     "sine+0.5 (kohya network_args down_lr_weight). Empty = 1.", check=_lr_weight)
    mid_lr_weight: str = option("", "Learning-rate weight of the mid block: 1 value (SDXL 3, comma-separated) (kohya "
                                    "mid_lr_weight). Empty = 1.", check=_mid_lr_weight)
    up_lr_weight: str = option("", "Learning-rate weight of each up (output) block, deep to shallow, as "
                                   "down_lr_weight (kohya up_lr_weight). Empty = 1.", check=_lr_weight)
    block_lr_zero_threshold: float = option(0.0, "Block weights not above this become 0: those blocks are not "
                                                 "trained (kohya block_lr_zero_threshold).", min=0.0, max=100.0,
                                            step=0.01)
    scale_weight_norms: float = option(0.0, "Max-norm regularisation after each step: a module whose weight delta "
                                            "(up x down x alpha/rank) has a larger norm is scaled down to this "
                                            "(kohya scale_weight_norms; 1 is a usual start). The console shows the "
                                            "keys scaled and the average key norm. 0 = off.",
                                       min=0.0, max=1000.0, step=0.01)

    # ---- Validation settings node (sd-scripts' validation split and loss)
    validation_split: float = option(0.0, "Fraction of each subset's images held out of training for the validation "
                                          "loss: per subset, shuffled with validation_seed, training keeps "
                                          "ceil(n x (1 - split)), validation the rest (kohya validation_split). "
                                          "Regularisation images stay in training. 0 = no validation.",
                                     min=0.0, max=0.99, step=0.01)
    validation_seed: int = option(-1, "Seed of the split and of the validation noise (kohya validation_seed). -1 = "
                                      "the training seed, as sd-scripts without it.", min=-1, max=2**63 - 1)
    validate_every_n_steps: int = option(0, "Also compute the validation loss every N steps (kohya "
                                            "validate_every_n_steps). 0 = off.", min=0, max=1_000_000)
    validate_every_n_epochs: int = option(0, "Compute the validation loss at the end of every N-th epoch (kohya "
                                             "validate_every_n_epochs). 0 = every epoch, sd-scripts' default.",
                                          min=0, max=100_000)
    max_validation_steps: int = option(0, "At most this many validation batches per validation (kohya "
                                          "max_validation_steps). 0 = all of them.", min=0, max=1_000_000)

    def __post_init__(self):
        check_options(self)
        ok = 0 <= self.min_timestep < self.max_timestep <= 1000 or 0 <= self.min_timestep == self.max_timestep <= 999
        if not ok:
            raise ValueError(f"need 0 <= min_timestep ({self.min_timestep}) < max_timestep ({self.max_timestep}) <= 1000 "
                             "(or min == max <= 999 to train one timestep)")
        if self.adaptive_noise_scale and not self.noise_offset:
            raise ValueError(f"adaptive_noise_scale={self.adaptive_noise_scale} needs noise_offset (sd-scripts' rule): "
                             "set noise_offset, or adaptive_noise_scale to 0")
        if isinstance(self.lr_warmup_steps, float) and (self.lr_warmup_steps == 0 or self.lr_warmup_steps >= 1):
            object.__setattr__(self, "lr_warmup_steps", int(self.lr_warmup_steps))  # whole steps stay an int
        if self.lr_warmup_steps > 0 and (self.lr_scheduler == "adafactor" or self.lr_scheduler_type.strip()):
            what = f"lr_scheduler_type {self.lr_scheduler_type!r}" if self.lr_scheduler_type.strip() else \
                "lr_scheduler 'adafactor'"
            raise ValueError(f"lr_warmup_steps={self.lr_warmup_steps} with {what}, which has no warm-up "
                             "(sd-scripts' rule); set lr_warmup_steps to 0")
        if self.lr_scheduler == "constant" and self.lr_warmup_steps > 0:
            raise ValueError(f"lr_warmup_steps={self.lr_warmup_steps} with lr_scheduler 'constant': a constant "
                             "schedule has no warm-up (sd-scripts' rule); choose 'constant_with_warmup' or set "
                             "lr_warmup_steps to 0")

    def optimizer_kwargs(self) -> dict[str, Any]:
        return _optimizer_args(self.optimizer_args)

    @property
    def optimizer_name(self) -> str:
        """The optimizer that runs: ``optimizer_class`` when set, else ``optimizer_type``."""
        return self.optimizer_class.strip() or self.optimizer_type

    def scheduler_kwargs(self) -> dict[str, Any]:
        return _optimizer_args(self.lr_scheduler_args)

    def with_epochs_resolved(self, dataset, plan) -> "TrainConfig":
        """This config with ``max_train_steps`` from ``max_train_epochs`` (when set) for ``dataset`` bucketed by
        ``plan``, counting the global batches of all processes (kohya: epochs x ceil(batches / processes /
        accumulation))."""
        if not self.max_train_epochs:
            return self
        import dataclasses
        import math

        from .batching import batches_per_epoch
        from .distributed import global_dataset

        per_epoch = math.ceil(batches_per_epoch(global_dataset(dataset), plan) / self.gradient_accumulation_steps)
        return dataclasses.replace(self, max_train_steps=max(1, self.max_train_epochs * per_epoch))
