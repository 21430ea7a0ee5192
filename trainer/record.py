"""What a training run was, as plain typed values: the record the saver writes into the file header.

The session builds a :class:`TrainingRecord` from the real objects (the ``TrainConfig``, the
``LoraDataset`` and its ``BucketPlan``, what the model ran with) and hands it to the saver explicitly;
``metadata`` turns it into kohya ``ss_*`` keys. Nothing here is guessed from attribute names."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from .batching import batches_per_epoch
from .buckets import BucketPlan
from .config import TrainConfig
from .dataset import LoraDataset


@dataclass(frozen=True)
class DatasetSummary:
    """The dataset values sd-scripts writes (``ss_num_train_images`` ... ``ss_bucket_info``)."""

    num_train_images: int              # training images x repeats
    num_reg_images: int                # regularisation images x repeats
    num_batches_per_epoch: int
    resolution: tuple[int, int]        # of the first group (folder mode has one)
    batch_size_per_device: int
    enable_bucket: bool
    min_bucket_reso: int
    max_bucket_reso: int
    bucket_no_upscale: bool
    flip_aug: bool
    shuffle_caption: bool
    keep_tokens: int
    caption_dropout_rate: float
    caption_dropout_every_n_epochs: int
    caption_tag_dropout_rate: float
    dataset_dirs: dict[str, dict[str, int]]
    reg_dataset_dirs: dict[str, dict[str, int]]
    tag_frequency: dict[str, dict[str, int]]
    bucket_info: dict | None
    #: kohya ``ss_datasets`` (one entry per [[datasets]]) when the dataset came from a TOML, else None
    datasets: list[dict[str, Any]] | None = None
    num_validation_images: int = 0     # the images validation_split held out (each used once per validation)

    @classmethod
    def of(cls, dataset: LoraDataset, plan: BucketPlan) -> "DatasetSummary":
        g0 = dataset.groups[0]
        caps = [s.caption for s in dataset.subsets if not s.is_reg] or [s.caption for s in dataset.subsets]
        c0 = caps[0]
        from_toml = dataset.source.lower().endswith(".toml")
        return cls(
            num_train_images=dataset.num_train_images, num_reg_images=dataset.num_reg_images,
            num_batches_per_epoch=batches_per_epoch(dataset, plan), resolution=tuple(g0.resolution),
            batch_size_per_device=g0.batch_size, enable_bucket=g0.enable_bucket,
            min_bucket_reso=g0.min_bucket_reso, max_bucket_reso=g0.max_bucket_reso,
            bucket_no_upscale=g0.bucket_no_upscale, flip_aug=any(s.flip_aug for s in dataset.subsets),
            shuffle_caption=c0.shuffle_caption, keep_tokens=c0.keep_tokens,
            caption_dropout_rate=c0.caption_dropout_rate,
            caption_dropout_every_n_epochs=c0.caption_dropout_every_n_epochs,
            caption_tag_dropout_rate=c0.caption_tag_dropout_rate,
            dataset_dirs=dataset.dataset_dirs(False), reg_dataset_dirs=dataset.dataset_dirs(True),
            tag_frequency=dataset.tag_frequency(), bucket_info=plan.bucket_info(),
            datasets=_toml_datasets(dataset, plan) if from_toml else None)


def _toml_datasets(dataset: LoraDataset, plan: BucketPlan) -> list[dict[str, Any]]:
    """kohya ``ss_datasets`` entries (train_network.py, dataset-config branch)."""
    counts = dataset.subset_image_counts()
    freq = dataset.tag_frequency()
    out = []
    for gi, g in enumerate(dataset.groups):
        subs = [(si, s) for si, s in enumerate(dataset.subsets) if s.group_index == gi]
        train = sum(s.num_repeats * counts[si] for si, s in subs if not s.is_reg)
        reg = sum(s.num_repeats * counts[si] for si, s in subs if s.is_reg)
        names = [os.path.basename(os.path.normpath(s.image_dir)) for _, s in subs]
        out.append({
            "is_dreambooth": True, "batch_size_per_device": g.batch_size, "num_train_images": train,
            "num_reg_images": reg, "resolution": list(g.resolution), "enable_bucket": g.enable_bucket,
            "min_bucket_reso": g.min_bucket_reso, "max_bucket_reso": g.max_bucket_reso,
            "tag_frequency": {n: freq[n] for n in names if n in freq}, "bucket_info": plan.bucket_info(gi),
            "subsets": [{"img_count": counts[si], "num_repeats": s.num_repeats, "color_aug": False,
                         "flip_aug": s.flip_aug, "random_crop": False, "shuffle_caption": s.caption.shuffle_caption,
                         "keep_tokens": s.caption.keep_tokens,
                         "keep_tokens_separator": s.caption.keep_tokens_separator,
                         "secondary_separator": s.caption.secondary_separator, "enable_wildcard": False,
                         "caption_prefix": s.caption.caption_prefix, "caption_suffix": s.caption.caption_suffix,
                         "image_dir": os.path.basename(os.path.normpath(s.image_dir)),
                         "class_tokens": s.class_tokens, "is_reg": s.is_reg} for si, s in subs],
        })
    return out


def num_epochs(max_train_steps: int, batches_per_epoch: int, gradient_accumulation_steps: int) -> int:
    """kohya ``num_train_epochs``: ceil(max_train_steps / ceil(batches per epoch / accumulation))."""
    per_epoch = max(1, math.ceil(batches_per_epoch / max(1, gradient_accumulation_steps)))
    return math.ceil(max_train_steps / per_epoch)


#: options whose "off" is sd-scripts' None (not given)
_NONE_WHEN_OFF = ("noise_offset", "multires_noise_iterations", "adaptive_noise_scale", "ip_noise_gamma",
                  "min_snr_gamma", "v_pred_like_loss")
#: options sd-scripts' flow-model trainers do not apply (trainer/noise.py, objectives.FlowObjective)
_NOT_FOR_FLOW = ("noise_offset", "noise_offset_random_strength", "adaptive_noise_scale", "multires_noise_iterations",
                 "min_snr_gamma", "debiased_estimation_loss", "v_pred_like_loss", "zero_terminal_snr")


@dataclass(frozen=True)
class TrainingRecord:
    """One run, for the file header. ``epoch`` is the 1-based epoch of the last trained batch."""

    config: TrainConfig
    optimizer: str                     # kohya ss_optimizer: "<module>.<Class>(k=v,...)"
    mixed_precision: str               # what ran: "no", "fp16" or "bf16"
    gradient_checkpointing: bool       # what ran
    prediction: str                    # "eps", "v" or "flow" (the model's own)
    dataset: DatasetSummary
    steps: int
    epoch: int
    started_at: float                  # start of the first run (kept across resumes)
    finished_at: float
    trains_text_encoder: bool
    unet_config: dict = field(default_factory=dict)
    config_class_names: tuple[str, ...] = ()
    model_name: str | None = None      # the checkpoint / diffusion-model file, as ComfyUI's loader named it

    @property
    def num_epochs(self) -> int:
        return num_epochs(self.config.max_train_steps, self.dataset.num_batches_per_epoch,
                          self.config.gradient_accumulation_steps)

    def training_options(self) -> dict[str, Any]:
        """kohya option name -> value, as the run used them (sd-scripts writes ``args.<name>``). An option that is
        off at 0 is None, as sd-scripts writes an option not given; on a flow model the noise and loss-weight
        options its trainers do not apply are written as off."""
        cfg = self.config
        out: dict[str, Any] = {f: getattr(cfg, f) for f in cfg.__dataclass_fields__ if f != "optimizer_args"}
        out.update(optimizer=self.optimizer, mixed_precision=self.mixed_precision,
                   gradient_checkpointing=self.gradient_checkpointing, unet_lr=cfg.learning_rate,
                   text_encoder_lr=cfg.text_encoder_lr if self.trains_text_encoder else None,
                   cache_latents=True, min_timestep=cfg.min_timestep, max_timestep=cfg.max_timestep)
        if self.prediction == "flow":
            out.update({k: False if isinstance(out[k], bool) else 0 for k in _NOT_FOR_FLOW})
        for k in _NONE_WHEN_OFF:
            if not out[k]:
                out[k] = None
        # sd-scripts' validation options: not given = None (validation_seed -1: the training seed)
        if out["validation_seed"] < 0:
            out["validation_seed"] = None
        for k in ("validate_every_n_steps", "validate_every_n_epochs", "max_validation_steps"):
            out[k] = out[k] or None
        return out


def record_of(trainer, *, started_at: float, mixed_precision: str = "no", gradient_checkpointing: bool = False,
              prediction: str = "eps", dataset: DatasetSummary | None = None, unet_config: dict | None = None,
              config_class_names: tuple[str, ...] = (), model_name: str | None = None) -> TrainingRecord:
    """The record of ``trainer`` (a loop.Trainer) at its current step; the rest is what the caller knows about
    the model it trains."""
    import time

    pos = trainer.position
    epoch = pos.epoch if pos.batch_index == 0 and trainer.step else pos.epoch + 1
    return TrainingRecord(
        config=trainer.cfg, optimizer=trainer.optimizer_repr, mixed_precision=mixed_precision,
        gradient_checkpointing=gradient_checkpointing, prediction=prediction,
        dataset=dataset or DatasetSummary.of(trainer.data.dataset, trainer.data.plan), steps=trainer.step,
        epoch=epoch, started_at=started_at, finished_at=time.time(), trains_text_encoder=trainer.train_te,
        unet_config=dict(unet_config or {}), config_class_names=tuple(config_class_names), model_name=model_name)
