"""sd-scripts' validation split and validation loss (trainer/validation.py) on the tiny plain-torch trainer."""
from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest
import torch
from tiny_trainer import TinyModel, installed, text_encoder

from trainer.buckets import BucketPlan
from trainer.config import TrainConfig
from trainer.loop import Trainer
from trainer.objectives import DiscreteObjective, FlowObjective, ddpm_sigmas
from trainer.record import DatasetSummary, TrainingRecord
from trainer.validation import (Validator, _seeded, split, split_indices, validation_sigmas,
                                validation_timesteps)


def _grown(data, n_train=10, n_reg=3):
    """``data`` (three images) grown to ``n_train`` training images and a regularisation subset of ``n_reg``."""
    ds, plan = data.dataset, data.plan
    reg_subset = dataclasses.replace(ds.subsets[0], is_reg=True)
    images, assignments, latents = [], [], {}
    for i in range(n_train + n_reg):
        src = i % len(ds.images)
        images.append(dataclasses.replace(ds.images[src], path=f"img{i}.png", subset_index=int(i >= n_train)))
        assignments.append(plan.assignments[src])
        latents[(i, False)] = data.latents[(src, False)] + i
    grown = dataclasses.replace(ds, subsets=[ds.subsets[0], reg_subset], images=images)
    plan2 = BucketPlan(assignments=assignments, groups=plan.groups, repeats=grown.sample_repeats(),
                       group_of_image=[r.group_index for r in images])
    return dataclasses.replace(data, dataset=dataclasses.replace(grown, plan=plan2), plan=plan2, latents=latents)


def test_split_sizes_and_order_follow_sd_scripts(data):
    big = _grown(data)
    for fraction in (0.1, 0.25, 0.3, 0.5):
        train, val = split(big, fraction, 7)
        # sd-scripts split_train_val: random.seed(validation_seed); random.shuffle(paths); first ceil(n(1-split))
        paths = [f"img{i}.png" for i in range(10)]
        random.seed(7)
        random.shuffle(paths)
        keep = math.ceil(10 * (1 - fraction))
        assert {r.path for r in train.dataset.images if r.subset_index == 0} == set(paths[:keep])
        assert [r.path for r in val.dataset.images] == sorted(paths[keep:], key=lambda p: int(p[3:-4]))
        # regularisation images all stay in training
        assert sum(r.subset_index == 1 for r in train.dataset.images) == 3
        assert len(train.dataset.images) == keep + 3 and len(val.dataset.images) == 10 - keep
        # latents and plans follow the images
        for part in (train, val):
            assert len(part.plan.assignments) == len(part.dataset.images) == len(part.latents)
            for i, rec in enumerate(part.dataset.images):
                assert torch.equal(part.latents[(i, False)], big.latents[(int(rec.path[3:-4]), False)])
        assert val.plan.repeats == [1] * len(val.dataset.images)
    # deterministic; another seed, another split
    a, b, c = split(big, 0.3, 7)[1], split(big, 0.3, 7)[1], split(big, 0.3, 8)[1]
    assert [r.path for r in a.dataset.images] == [r.path for r in b.dataset.images]
    assert [r.path for r in a.dataset.images] != [r.path for r in c.dataset.images]


def test_split_off_and_too_small(data):
    assert split(data, 0.0, 0) == (data, None)
    assert split(data, 0.2, 0)[1] is None  # ceil(3 x 0.8) = 3: nothing left over
    tr, val = split(data, 0.34, 0)
    assert len(tr.dataset.images) == 2 and len(val.dataset.images) == 1
    assert split_indices(list(range(5)), 0.5, 1)[0] + split_indices(list(range(5)), 0.5, 1)[1] != list(range(5))


def test_fixed_timesteps_and_sigmas():
    assert validation_timesteps(0, 1000) == [200, 400, 600, 800]
    assert validation_timesteps(100, 900) == list(np.linspace(100, 900, 6, dtype=int)[1:-1])
    disc = DiscreteObjective(ddpm_sigmas(), "eps")
    assert validation_sigmas(disc, [200, 400]) == [float(ddpm_sigmas()[200]), float(ddpm_sigmas()[400])]
    assert validation_sigmas(FlowObjective(), [200, 400, 600, 800]) == [0.2, 0.4, 0.6, 0.8]


def _trainer(data, steps=6, **kw):
    model = TinyModel()
    net = installed(model)
    cfg = TrainConfig(max_train_steps=steps, learning_rate=3e-3, seed=1, **kw)
    tr = Trainer(model=model, network=net, data=data, cfg=cfg, objective=DiscreteObjective(ddpm_sigmas(), "eps"),
                 text_encoder=text_encoder)
    return tr, net, model


def test_validation_loss_is_the_hand_computation(data):
    train, val = split(data, 0.34, 5)
    tr, net, model = _trainer(train, validation_split=0.34, validation_seed=5)
    v = Validator(val, tr.cfg)
    got = v.loss(tr)
    sig = ddpm_sigmas()
    total = []
    with torch.no_grad():
        for b, samples in enumerate(v.batches):
            raw = torch.stack([val.latents[(s.image_index, s.flip)] for s in samples])
            x0 = raw * 0.5
            ctx = torch.stack([val.text_conds[val.dataset.images[s.image_index].caption] for s in samples])
            for k, t in enumerate([200, 400, 600, 800]):
                noise = torch.randn(tuple(x0.shape), generator=_seeded(5, b, k))
                s = sig[t].expand(x0.shape[0])
                x_t = x0 + s[:, None, None, None] * noise
                eps_hat = model.net(x_t, s, ctx)  # pred = (x_t - denoised) / sigma = the eps the model predicts
                total.append(((eps_hat - noise) ** 2).mean().item())
    assert got == pytest.approx(sum(total) / len(total), rel=1e-6)
    assert v.loss(tr) == got  # the same number each time: fixed batches, timesteps and noise
    net.train()
    v.loss(tr)
    assert net.training  # the network's mode is restored after the eval-mode pass


def test_training_is_bit_identical_with_and_without_validation(data):
    train, val = split(data, 0.34, 0)
    tr1, net1, _ = _trainer(train)
    res1 = tr1.run()
    tr2, net2, _ = _trainer(train, validation_split=0.34, validate_every_n_steps=2)
    tr2.validator = Validator(val, tr2.cfg)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    res2 = tr2.run()
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is as validation found it
    sd1, sd2 = net1.kohya_state_dict(), net2.kohya_state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert res1.losses == res2.losses
    # every 2 steps, and at each epoch end (2 training images, batch 1: an epoch every 2 steps)
    assert [s for s, _ in tr2.validation_losses] == [2, 4, 6]
    assert all(math.isfinite(v) for _, v in tr2.validation_losses)


def test_cadence_epochs_and_cap(data):
    big = _grown(data)
    train, val = split(big, 0.3, 0)
    cfg = TrainConfig(validation_split=0.3, validate_every_n_epochs=2, max_validation_steps=2)
    v = Validator(val, cfg)
    assert len(v.batches) == 2  # 3 held-out images, batch size 1, capped at 2
    assert not v.due(5, False, 0) and not v.due(5, True, 0) and v.due(5, True, 1)
    v2 = Validator(val, TrainConfig(validation_split=0.3, validate_every_n_steps=3))
    assert v2.due(3, False, 0) and not v2.due(4, False, 0) and v2.due(4, True, 0)  # + every epoch by default


def test_record_writes_sd_scripts_values(data):
    summary = DatasetSummary.of(data.dataset, data.plan)
    rec = TrainingRecord(config=TrainConfig(), optimizer="x", mixed_precision="no", gradient_checkpointing=False,
                         prediction="eps", dataset=summary, steps=1, epoch=1, started_at=0, finished_at=0,
                         trains_text_encoder=False)
    off = rec.training_options()
    assert off["validation_split"] == 0.0
    assert all(off[k] is None for k in ("validation_seed", "validate_every_n_steps", "validate_every_n_epochs",
                                        "max_validation_steps"))
    on = dataclasses.replace(rec, config=TrainConfig(validation_split=0.2, validation_seed=3, validate_every_n_steps=5,
                                                     validate_every_n_epochs=2, max_validation_steps=4))
    opts = on.training_options()
    assert (opts["validation_split"], opts["validation_seed"], opts["validate_every_n_steps"],
            opts["validate_every_n_epochs"], opts["max_validation_steps"]) == (0.2, 3, 5, 2, 4)


def test_flow_validation_uses_fixed_sigmas(data):
    """A flow objective: the loss at sigmas 0.2, 0.4, 0.6, 0.8 with the flow target (noise - x0), by hand."""
    train, val = split(data, 0.34, 2)
    model = TinyModel()
    net = installed(model)
    cfg = TrainConfig(max_train_steps=1, validation_split=0.34, validation_seed=2)
    tr = Trainer(model=model, network=net, data=train, cfg=cfg, objective=FlowObjective(), text_encoder=text_encoder)
    v = Validator(val, cfg)
    total = []
    with torch.no_grad():
        for b, samples in enumerate(v.batches):
            x0 = torch.stack([val.latents[(s.image_index, s.flip)] for s in samples]) * 0.5
            ctx = torch.stack([val.text_conds[val.dataset.images[s.image_index].caption] for s in samples])
            for k, sv in enumerate([0.2, 0.4, 0.6, 0.8]):
                noise = torch.randn(tuple(x0.shape), generator=_seeded(2, b, k))
                s = torch.full((x0.shape[0],), sv)
                x_t = sv * noise + (1 - sv) * x0
                denoised = model.denoise(x_t, s, {"ctx": ctx})
                pred = (x_t - denoised) / sv
                total.append(((pred - (noise - x0)) ** 2).mean().item())
    assert v.loss(tr) == pytest.approx(sum(total) / len(total), rel=1e-6)
