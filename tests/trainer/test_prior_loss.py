"""kohya's prior_loss_weight: the loss of regularisation samples (is_reg subsets) is multiplied by it."""
from __future__ import annotations

import dataclasses

import pytest
from tiny_trainer import TinyModel, installed, text_encoder

from trainer.config import TrainConfig
from trainer.loop import Trainer
from trainer.objectives import DiscreteObjective, ddpm_sigmas


def _first_loss(data, **kw) -> float:
    model = TinyModel()
    net = installed(model)
    cfg = TrainConfig(max_train_steps=1, learning_rate=1e-3, seed=2, **kw)
    res = Trainer(model=model, network=net, data=data, cfg=cfg, objective=DiscreteObjective(ddpm_sigmas(), "eps"),
                  text_encoder=text_encoder).run()
    net.remove()
    return res.losses[0]


def test_reg_samples_are_weighted_and_others_not(data):
    plain = _first_loss(data)
    assert _first_loss(data, prior_loss_weight=2.5) == plain  # no reg images: nothing changes
    ds = data.dataset
    reg = dataclasses.replace(data, dataset=dataclasses.replace(
        ds, subsets=[dataclasses.replace(s, is_reg=True) for s in ds.subsets]))
    assert _first_loss(reg) == plain
    assert _first_loss(reg, prior_loss_weight=2.5) == pytest.approx(2.5 * plain, rel=1e-6)
