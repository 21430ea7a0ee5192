"""The training loop: one visible optimisation step, plain torch.

The model is anything with ``process_latent_in``, ``batch_conds``, ``denoise``, ``autocast`` and
``device`` (``adapter.ComfyTrainModel`` in ComfyUI, tiny plain-torch models in tests). Randomness is
drawn from generators seeded by (seed, step, micro-step), so a run is reproducible bit for bit on
CPU and a resumed run continues exactly where it stopped."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from .batching import Sample, epoch_batches
from .captions import process_caption
from . import distributed
from .config import TrainConfig, lr_values
from .encoded import EncodedDataset
from .network_options import lr_options
from .noise import StepNoise
from .objectives import HUBER_OPTIONS, WEIGHTING_OPTIONS, per_sample_loss
from .optim import build_optimizer, build_scheduler, load_scheduler_state, optimizer_train_mode

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Loss became NaN/inf; the network keeps the weights of the last good step."""

    def __init__(self, step: int, loss: float, detail: str = ""):
        super().__init__(f"loss became {loss} at step {step}: training stopped, the LoRA keeps the weights of "
                         f"step {step - 1}. Lower the learning rate, enable max_grad_norm, or use fp32/bf16 "
                         "instead of fp16." + detail)
        self.step = step
        self.loss = loss


@dataclass
class StepInfo:
    step: int            # optimizer steps done so far (1-based after the first step)
    total: int
    loss: float          # mean loss of this step's micro-batches
    lr: float
    epoch: int
    elapsed: float
    epoch_end: bool = False   # this step consumed the last batch of its epoch
    steps_this_run: int = 0   # steps done by this run() call (resumed runs start later than step 0)
    max_norm: tuple | None = None  # scale_weight_norms: (keys scaled, average key norm, max key norm)


@dataclass
class Position:
    """Where the data stream stands: the next batch is batches(epoch)[batch_index]."""
    epoch: int = 0
    batch_index: int = 0


@dataclass
class TrainResult:
    steps_done: int
    losses: list[float]
    lrs: list[float]
    stopped_early: bool
    position: Position
    optimizer: torch.optim.Optimizer
    scheduler: Any
    elapsed: float
    extra: dict = field(default_factory=dict)


def _seeded(seed: int, *parts: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    h = seed & 0xFFFFFFFF
    for p in parts:
        h = (h * 1_000_003 + p + 0x9E3779B9) & 0xFFFFFFFFFFFF
    g.manual_seed(h)
    return g


def batch_stream(data: EncodedDataset, seed: int, pos: Position,
                 with_count: bool = False) -> Iterator[tuple]:
    """Endless stream of batches in kohya order; yields the position *of* each batch (and, with
    ``with_count``, the number of batches in that epoch)."""
    epoch, idx = pos.epoch, pos.batch_index
    while True:
        batches = epoch_batches(data.dataset, data.plan, epoch, seed)
        if not batches:
            raise ValueError("the dataset has no batches (no images?)")
        while idx < len(batches):
            yield (Position(epoch, idx), batches[idx], len(batches)) if with_count else (Position(epoch, idx),
                                                                                          batches[idx])
            idx += 1
        epoch, idx = epoch + 1, 0


class Trainer:
    """Owns one training run. ``run()`` executes steps until ``cfg.max_train_steps``."""

    def __init__(self, *, model, network, data: EncodedDataset, cfg: TrainConfig, objective,
                 text_encoder: Callable[[list[str]], list] | None = None,
                 size_conditioning: bool = False):
        self.model = model
        self.network = network
        self.data = data
        self.cfg = cfg
        self.objective = objective
        self.text_encoder = text_encoder
        self.size_conditioning = size_conditioning
        self.train_te = bool(network.text_encoder_names)
        self.noise = StepNoise.of(cfg, objective.kind)   # sd-scripts' noise options (trainer/noise.py)
        self.huber = {k: getattr(cfg, k) for k in HUBER_OPTIONS} if cfg.loss_type in ("huber", "smooth_l1") else None
        self.weighting = {k: getattr(cfg, k) for k in WEIGHTING_OPTIONS}
        self.ctx = distributed.current()  # several processes: global batches, sharded, gradients summed
        self.stream_data = data if not self.ctx.distributed else dataclasses.replace(
            data, dataset=distributed.global_dataset(data.dataset))
        # LoRA+ and block lr weights (Network Training settings) split the groups, sd-scripts' way
        groups = network.param_groups(cfg.learning_rate, text_encoder_lr=lr_values(cfg.text_encoder_lrs)
                                      or cfg.text_encoder_lr,
                                      **lr_options(cfg, network.family))
        self.dropouts = any(m.dropout or m.rank_dropout or m.module_dropout for m in network.loras())
        self.max_norm: tuple | None = None  # the last step's scale_weight_norms report
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer, self.optimizer_repr = build_optimizer(cfg.optimizer_name, groups, cfg.learning_rate,
                                                              **cfg.optimizer_kwargs())
        self.scheduler = build_scheduler(self.optimizer, cfg.lr_scheduler, cfg.max_train_steps,
                                         cfg.lr_warmup_steps, cfg.lr_scheduler_num_cycles, cfg.lr_scheduler_power,
                                         cfg.lr_scheduler_type, cfg.scheduler_kwargs())
        ran = getattr(self.scheduler, "lora_loop_config", {}).get("schedule")
        if ran == "adafactor" and cfg.lr_scheduler != ran:  # relative-step Adafactor: the record says what ran
            self.cfg = cfg = dataclasses.replace(cfg, lr_scheduler=ran)
        self.step = 0
        self.position = Position()
        self.validator = None  # a validation.Validator: the held-out loss between steps, at its cadence
        self.validation_losses: list[tuple[int, float]] = []  # (step, validation loss) of this run() call
        self.losses: list[float] = []
        self.lrs: list[float] = []
        self._last_lr = self.optimizer.param_groups[0]["lr"]
        # fp16 autocast needs loss scaling (small gradients underflow in fp16); bf16/fp32 do not
        fp16 = getattr(model, "autocast_dtype", None) == torch.float16
        self.scaler = torch.amp.GradScaler(torch.device(model.device).type, enabled=fp16) if fp16 else None

    # -- resume ---------------------------------------------------------------------------------------
    def load_progress(self, step: int, position: Position, optimizer_state: dict | None,
                      scheduler_state: dict | None, losses: list[float], lrs: list[float]) -> None:
        self.step = step
        self.position = position
        fresh_lrs = [g.get("initial_lr", g["lr"]) for g in self.optimizer.param_groups]
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)
        if scheduler_state is not None:
            # strict=False: a run continued with more steps keeps its step count under the new horizon
            scheduler_state = dict(scheduler_state)
            saved_base = list(scheduler_state.get("base_lrs", fresh_lrs))
            if saved_base != fresh_lrs and len(saved_base) == len(fresh_lrs):
                # the learning rate was changed for the continuation: the new one applies from here
                log.info("resume: learning rates %s -> %s", saved_base, fresh_lrs)
                scheduler_state["base_lrs"] = fresh_lrs
                for g, lr in zip(self.optimizer.param_groups, fresh_lrs):
                    g["initial_lr"] = lr
            load_scheduler_state(self.scheduler, scheduler_state, strict=False)
        self.losses = list(losses)
        self.lrs = list(lrs)

    # -- data -----------------------------------------------------------------------------------------
    def _batch_inputs(self, pos: Position, samples: list[Sample], shard: tuple[int, int] | None = None):
        """(x0 of the whole batch, conds of ``samples[lo:hi]``, the augmented version of each sample: None for a
        plain latent); ``shard`` None = all samples."""
        d = self.data
        variants = d.choose(samples, self.cfg.seed, pos.epoch)
        raw = torch.stack([d.latent(s, v) for s, v in zip(samples, variants)])
        x0 = self.model.process_latent_in(raw.to(self.model.device, torch.float32))
        lo, hi = shard if shard is not None else (0, len(samples))
        captions, sizes = [], []
        for i, s in enumerate(samples):
            if not lo <= i < hi:
                continue
            rec = d.dataset.images[s.image_index]
            subset = d.dataset.subsets[rec.subset_index]
            rng = random.Random(f"{self.cfg.seed}:{pos.epoch}:{pos.batch_index}:{i}")
            captions.append(process_caption(rec.caption, subset.caption, rng, pos.epoch + 1,  # kohya epochs: 1-based
                                            self.step, self.cfg.max_train_steps))
            sizes.append(d.size_conditioning(s) if self.size_conditioning else None)
        if self.train_te:
            conds = self.text_encoder(captions)
        else:
            conds = []
            missing = [c for c in captions if c not in d.text_conds]
            if missing:
                if self.text_encoder is None:
                    raise ValueError(f"no text conditioning for caption {missing[0]!r}: connect a CLIP to Encode "
                                     "Dataset or Train LoRA")
                with torch.no_grad():
                    fresh = dict(zip(missing, self.text_encoder(missing)))
            for c in captions:
                conds.append(d.text_conds[c] if c in d.text_conds else fresh[c])
        return x0, self.model.batch_conds(conds, (hi - lo,) + tuple(x0.shape[1:]), sizes), variants

    # -- the step -------------------------------------------------------------------------------------
    def run(self, on_step: Callable[[StepInfo], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> TrainResult:
        cfg = self.cfg
        accum = cfg.gradient_accumulation_steps
        stream = batch_stream(self.stream_data, cfg.seed, self.position, with_count=True)
        t0 = time.perf_counter()
        stopped = False
        start_step = self.step
        self.network.train()
        while self.step < cfg.max_train_steps:
            if self.ctx.any(should_stop is not None and should_stop()):  # every rank stops after the same step
                stopped = True
                break
            # schedule-free optimizers: train mode for the step; between steps (on_step: previews, checkpoints)
            # and after run() the network holds the averaged (eval) weights, as sd-scripts switches every step
            optimizer_train_mode(self.optimizer, True)
            try:
                with self._dropout_rng():
                    step_loss, pos, n_batches = self._step(stream, accum)
            except BaseException:
                # Cancel (ComfyUI raises from inside an op) or an error mid-step: drop the partial
                # gradients; weights, optimizer and position stay those of the last completed step.
                self.optimizer.zero_grad(set_to_none=True)
                optimizer_train_mode(self.optimizer, False)
                raise
            optimizer_train_mode(self.optimizer, False)
            self.step += 1
            self.position = Position(pos.epoch, pos.batch_index + 1)
            self.losses.append(step_loss)
            self.lrs.append(self._last_lr)
            if self.validator is not None and self.validator.due(self.step, pos.batch_index + 1 >= n_batches,
                                                                 pos.epoch):  # no gradients, its own generators
                self.validation_losses.append((self.step, self.validator.loss(self)))
            if on_step is not None:
                on_step(StepInfo(self.step, cfg.max_train_steps, step_loss, self._last_lr, pos.epoch,
                                 time.perf_counter() - t0, epoch_end=pos.batch_index + 1 >= n_batches,
                                 steps_this_run=self.step - start_step, max_norm=self.max_norm))
        self.network.eval()
        if self.max_norm is not None:
            log.info("scale_weight_norms %g: %d of %d modules scaled at the last step; average key norm %.4g, max "
                     "%.4g", cfg.scale_weight_norms, self.max_norm[0], len(self.network), self.max_norm[1],
                     self.max_norm[2])
        return TrainResult(self.step, self.losses, self.lrs, stopped, self.position, self.optimizer,
                           self.scheduler, time.perf_counter() - t0)

    def _step(self, stream, accum: int) -> tuple[float, Position, int]:
        """One optimizer step (``accum`` micro-batches). Returns (loss, position of the last batch, batches
        in its epoch). Raises TrainingDiverged before touching the weights when the loss is not finite.

        Several processes (``distributed``): each batch is a global one; noise and timesteps are drawn for all of
        it, this rank trains its shard with the loss divided by the global batch size, and the gradients are
        summed over the ranks: the same step as one process with the whole batch."""
        cfg = self.cfg
        ctx = self.ctx
        step_loss = 0.0
        for micro in range(accum):
            pos, samples, n_batches = next(stream)
            gen = _seeded(cfg.seed, self.step, micro)
            shard = ctx.shard(len(samples)) if ctx.distributed else None
            if shard is not None and shard[0] == shard[1]:
                continue  # fewer samples than processes: this rank only joins the gradient sum
            x0, conds, variants = self._batch_inputs(pos, samples, shard)
            mask = self.data.loss_masks(samples, cfg.masked_loss, x0, variants)
            noise = self.noise.noise(x0, gen)  # + offset / adaptive / pyramid noise (sd-scripts' order)
            sigma = self.objective.sample_sigmas(x0.shape[0], gen, latent_hw=tuple(x0.shape[-2:]))
            sigma = sigma.to(x0.device)
            input_noise = self.noise.input_noise(noise, gen)  # + ip_noise_gamma: the noisy input only
            if shard is not None:
                lo, hi = shard
                x0, noise, input_noise, sigma = x0[lo:hi], noise[lo:hi], input_noise[lo:hi], sigma[lo:hi]
                mask = mask[lo:hi] if mask is not None else None
            x_t = self.objective.noisy(x0, input_noise, sigma)
            with self.model.autocast():
                denoised = self.model.denoise(x_t, sigma, conds)
            pred = self.objective.prediction(denoised.float(), x_t, sigma)
            target = self.objective.target(x0, noise, sigma)
            huber_c = self.objective.huber_threshold(sigma, **self.huber) if self.huber is not None else None
            weights = self.objective.loss_weight(sigma, **self.weighting)
            per_sample = per_sample_loss(pred, target, cfg.loss_type, huber_c, mask) * weights
            if cfg.prior_loss_weight != 1.0:  # kohya: regularisation samples' loss x prior_loss_weight
                per_sample = per_sample * self._prior_weights(samples[shard[0]:shard[1]] if shard else samples,
                                                              per_sample)
            loss = per_sample.mean() if shard is None else per_sample.sum() / len(samples)
            scaled = loss / accum
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            step_loss += loss.item() / accum
        if ctx.distributed:
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            ctx.all_reduce_sum_([p.grad for p in self.params])
            step_loss = ctx.sum(step_loss)
        if not math.isfinite(step_loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(self.step + 1, step_loss)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self._last_lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the step when fp16 gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if cfg.scale_weight_norms > 0:  # sd-scripts: max-norm regularisation after the optimizer step
            self.max_norm = self.network.apply_max_norm_regularization(cfg.scale_weight_norms)
        return step_loss, pos, n_batches

    def _prior_weights(self, samples: list[Sample], like: torch.Tensor) -> torch.Tensor:
        """prior_loss_weight for each regularisation sample, 1 for the others."""
        d = self.data.dataset
        w = [self.cfg.prior_loss_weight if d.subsets[d.images[s.image_index].subset_index].is_reg else 1.0
             for s in samples]
        return torch.tensor(w, dtype=like.dtype, device=like.device)

    def _dropout_rng(self):
        """The LoRA dropouts draw from torch's global generators (as sd-scripts', which gradient checkpointing
        replays when it recomputes): inside a fork of them, seeded from (seed, step, rank), so a run and its resume
        are reproducible and ComfyUI's own random state is left as it was. Without dropouts: nothing."""
        if not self.dropouts:
            return contextlib.nullcontext()
        return _global_rng(_seeded(self.cfg.seed, self.step, _DROPOUT_STREAM + self.ctx.rank).initial_seed(),
                           torch.device(self.model.device))


_DROPOUT_STREAM = 1 << 20  # the noise generators use parts 0 .. accumulation-1


@contextlib.contextmanager
def _global_rng(seed: int, device: torch.device):
    """torch's CPU generator (and ``device``'s) seeded with ``seed`` inside, restored after."""
    cuda = device.type == "cuda"
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
