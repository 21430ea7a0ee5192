"""sd-scripts' validation split and validation loss.

:func:`split` holds a fraction of each subset's images out of training (sd-scripts ``split_train_val``: the
subset's images shuffled with the validation seed, training keeps the first ``ceil(n x (1 - split))``, validation
the rest; regularisation subsets stay whole in training). :class:`Validator` computes the loss on those images
without gradients, the network in eval mode, at :data:`NUM_VALIDATION_TIMESTEPS` fixed timesteps
``np.linspace(min_timestep, max_timestep, 6, dtype=int)[1:-1]`` (sd-scripts' 200, 400, 600, 800), averaged over
batches and timesteps. Flow models use the sigmas ``t / 1000`` of the same timesteps (sd-scripts' flow trainers
draw their validation sigmas at random with the validation seed; fixed sigmas make one validation comparable
with the next). Its noise comes from its own generators seeded by the validation seed, and the global RNG state
is restored afterwards, so the trained LoRA is the same bit for bit with and without validation."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random

import numpy as np
import torch

from .batching import Sample, epoch_batches
from .buckets import BucketPlan
from .captions import process_caption
from .encoded import EncodedDataset
from .objectives import FLOW_SIGMA_MIN, per_sample_loss

log = logging.getLogger(__name__)

NUM_VALIDATION_TIMESTEPS = 4  # sd-scripts' NUM_VALIDATION_TIMESTEPS


def validation_seed(cfg) -> int:
    """The seed of the split and of the validation noise: validation_seed, else the training seed."""
    return cfg.seed if cfg.validation_seed < 0 else cfg.validation_seed


def split_indices(indices: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """sd-scripts ``split_train_val`` on one subset's images: (training, validation) indices. Validation is the
    complement of training (sd-scripts cuts it at ``n - round(n x split)``, which overlaps training for some n)."""
    shuffled = list(indices)
    random.Random(seed).shuffle(shuffled)  # = random.seed(validation_seed); random.shuffle(...)
    keep = math.ceil(len(shuffled) * (1 - fraction))
    return shuffled[:keep], shuffled[keep:]


def _part(data: EncodedDataset, chosen: list[int], repeats_once: bool) -> EncodedDataset:
    ds, plan = data.dataset, data.plan
    images = [ds.images[i] for i in chosen]
    part = dataclasses.replace(ds, images=images, plan=None)
    repeats = [1] * len(images) if repeats_once else part.sample_repeats()
    new_plan = BucketPlan(assignments=[plan.assignments[i] for i in chosen], groups=plan.groups, repeats=repeats,
                          group_of_image=[r.group_index for r in images])
    part = dataclasses.replace(part, plan=new_plan)
    latents = {(new, flip): data.latents[(old, flip)] for new, old in enumerate(chosen) for flip in (False, True)
               if (old, flip) in data.latents}
    def pick(per_image: dict) -> dict:
        return {(new, flip): per_image[(old, flip)] for new, old in enumerate(chosen) for flip in (False, True)
                if (old, flip) in per_image}

    return dataclasses.replace(data, dataset=part, plan=new_plan, latents=latents, masks=pick(data.masks),
                               variants=pick(data.variants), variant_masks=pick(data.variant_masks))


def split(data: EncodedDataset, fraction: float, seed: int) -> tuple[EncodedDataset, EncodedDataset | None]:
    """(training data, validation data or None). ``fraction`` 0 returns ``data`` itself. Training keeps the
    dataset's order (and its regularisation balancing over the images it keeps); each validation image is used
    once per validation (its repeats do not apply)."""
    if not fraction > 0:
        return data, None
    train_idx, val_idx = [], []
    for s, sub in enumerate(data.dataset.subsets):
        mine = [i for i, r in enumerate(data.dataset.images) if r.subset_index == s]
        if sub.is_reg:
            train_idx += mine
            continue
        t, v = split_indices(mine, fraction, seed)
        train_idx += t
        val_idx += v
    if not val_idx:
        log.warning("validation_split %s leaves no image for validation (each subset keeps ceil(n x (1 - split)) "
                    "images for training): no validation loss", fraction)
        return data, None
    return _part(data, sorted(train_idx), False), _part(data, sorted(val_idx), True)


def validation_timesteps(min_timestep: int, max_timestep: int) -> list[int]:
    """sd-scripts: ``np.linspace(min_timestep, max_timestep, NUM_VALIDATION_TIMESTEPS + 2, dtype=int)[1:-1]``."""
    return [int(t) for t in np.linspace(min_timestep, max_timestep, NUM_VALIDATION_TIMESTEPS + 2, dtype=int)[1:-1]]


def validation_sigmas(objective, timesteps: list[int]) -> list[float]:
    """The sigma of each validation timestep: the model's table for discrete models, ``t / 1000`` for flow."""
    if objective.kind == "flow":
        return [max(FLOW_SIGMA_MIN, t / 1000.0) for t in timesteps]
    return [float(s) for s in objective.sigmas_for(torch.tensor(timesteps))]


def _seeded(seed: int, *parts: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    h = (seed ^ 0x5A17) & 0xFFFFFFFF
    for p in parts:
        h = (h * 1_000_003 + p + 0x7F4A7C15) & 0xFFFFFFFFFFFF
    g.manual_seed(h)
    return g


@contextlib.contextmanager
def _rng_kept():
    """sd-scripts' switch_rng_state / restore_rng_state: whatever validation draws from the global RNGs is undone."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    py = random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        random.setstate(py)


class Validator:
    """The validation loss of a :class:`~trainer.loop.Trainer` on ``data`` (the held-out images), at the
    cadence of ``cfg`` (validate_every_n_steps, validate_every_n_epochs, max_validation_steps)."""

    def __init__(self, data: EncodedDataset, cfg):
        self.data = data
        self.cfg = cfg
        self.seed = validation_seed(cfg)
        batches = epoch_batches(data.dataset, data.plan, 0, self.seed)  # the same batches every time
        if cfg.max_validation_steps:
            batches = batches[:cfg.max_validation_steps]
        self.batches: list[list[Sample]] = batches
        self.timesteps = validation_timesteps(cfg.min_timestep, cfg.max_timestep)

    def due(self, step: int, epoch_end: bool, epoch: int) -> bool:
        """After ``step`` (1-based), whose batch was the last of 0-based ``epoch`` when ``epoch_end``."""
        if not self.batches:
            return False
        n = self.cfg.validate_every_n_steps
        if n and step % n == 0:
            return True
        if epoch_end:
            every = self.cfg.validate_every_n_epochs
            return not every or (epoch + 1) % every == 0
        return False

    def _inputs(self, trainer, b: int, samples: list[Sample]):
        d, model = self.data, trainer.model
        raw = torch.stack([d.latents[(s.image_index, s.flip)] for s in samples])
        x0 = model.process_latent_in(raw.to(model.device, torch.float32))
        captions, sizes = [], []
        total = trainer.cfg.max_train_steps
        for i, s in enumerate(samples):
            rec = d.dataset.images[s.image_index]
            rng = random.Random(f"lora-loop-validation:{self.seed}:{b}:{i}")
            captions.append(process_caption(rec.caption, d.dataset.subsets[rec.subset_index].caption, rng, 1,
                                            total, total))  # token warm-up over: the whole caption
            sizes.append(d.size_conditioning(s) if trainer.size_conditioning else None)
        if trainer.train_te:
            conds = trainer.text_encoder(captions)
        else:
            missing = [c for c in captions if c not in d.text_conds]
            fresh = dict(zip(missing, trainer.text_encoder(missing))) if missing else {}
            conds = [d.text_conds[c] if c in d.text_conds else fresh[c] for c in captions]
        return x0, model.batch_conds(conds, tuple(x0.shape), sizes)

    def loss(self, trainer) -> float:
        """The mean loss over the validation batches x timesteps (no gradients, network in eval mode)."""
        cfg, objective = trainer.cfg, trainer.objective
        sigmas = validation_sigmas(objective, self.timesteps)
        total, n = 0.0, 0
        was_training = trainer.network.training
        trainer.network.eval()
        try:
            with torch.no_grad(), _rng_kept():
                for b, samples in enumerate(self.batches):
                    x0, conds = self._inputs(trainer, b, samples)
                    mask = self.data.loss_masks(samples, cfg.masked_loss, x0)
                    for k, s in enumerate(sigmas):
                        gen = _seeded(self.seed, b, k)
                        noise = trainer.noise.noise(x0, gen)
                        input_noise = trainer.noise.input_noise(noise, gen)
                        sigma = torch.full((x0.shape[0],), s, dtype=torch.float32).to(x0.device)
                        x_t = objective.noisy(x0, input_noise, sigma)
                        with trainer.model.autocast():
                            denoised = trainer.model.denoise(x_t, sigma, conds)
                        pred = objective.prediction(denoised.float(), x_t, sigma)
                        target = objective.target(x0, noise, sigma)
                        huber_c = objective.huber_threshold(sigma, **trainer.huber) if trainer.huber else None
                        weights = objective.loss_weight(sigma, **trainer.weighting)
                        total += (per_sample_loss(pred, target, cfg.loss_type, huber_c, mask) * weights).mean().item()
                        n += 1
        finally:
            trainer.network.train(was_training)
        loss = total / max(n, 1)
        ctx = trainer.ctx
        if ctx.distributed:  # every rank validated every batch: the same number, kept in step
            loss = ctx.sum(loss) / ctx.world_size
        return loss
