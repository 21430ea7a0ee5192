"""The training loop on a tiny plain-torch denoiser (no ComfyUI): loss falls, runs are bit-identical,
gradients reach only LoRA weights, NaN stops training with the last good weights kept."""
from __future__ import annotations

import pytest
import torch
from tiny_trainer import TinyDenoiser, TinyModel, installed, text_encoder

from trainer.config import TrainConfig
from trainer.loop import Trainer, TrainingDiverged
from trainer.objectives import DiscreteObjective, ddpm_sigmas


def _run(data, steps=30, seed=0, lr=3e-3, **kw):
    model = TinyModel()
    net = installed(model)
    cfg = TrainConfig(max_train_steps=steps, learning_rate=lr, seed=seed, **kw)
    obj = DiscreteObjective(ddpm_sigmas(), "eps")
    tr = Trainer(model=model, network=net, data=data, cfg=cfg, objective=obj, text_encoder=text_encoder)
    res = tr.run()
    net.remove()
    return net, res, model


def test_loss_falls(data):
    # a fixed batch and fixed noise level make the loss comparable step to step
    _, res, _ = _run(data, steps=60, lr=1e-2, min_timestep=500, max_timestep=501)
    first, last = sum(res.losses[:5]) / 5, sum(res.losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)


def test_same_seed_is_bit_identical_and_base_untouched(data):
    net1, res1, m1 = _run(data, steps=5, seed=3)
    net2, res2, m2 = _run(data, steps=5, seed=3)
    sd1, sd2 = net1.kohya_state_dict(), net2.kohya_state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert res1.losses == res2.losses
    base = TinyDenoiser()
    assert all(torch.equal(a, b) for a, b in zip(base.state_dict().values(), m1.net.state_dict().values()))
    _, res3, _ = _run(data, steps=5, seed=4)
    assert res3.losses != res1.losses


def test_nan_stops_with_last_good_weights(data):
    model = TinyModel()
    net = installed(model)
    cfg = TrainConfig(max_train_steps=5, learning_rate=1e-3)
    obj = DiscreteObjective(ddpm_sigmas(), "eps")
    tr = Trainer(model=model, network=net, data=data, cfg=cfg, objective=obj, text_encoder=text_encoder)
    calls = {"n": 0}
    real = model.denoise

    def flaky(x_t, sigma, conds):
        calls["n"] += 1
        out = real(x_t, sigma, conds)
        return out * float("nan") if calls["n"] == 3 else out

    model.denoise = flaky
    snapshot = {}

    def on_step(info):
        snapshot.clear()
        snapshot.update({k: v.clone() for k, v in net.kohya_state_dict().items()})

    with pytest.raises(TrainingDiverged) as e:
        tr.run(on_step=on_step)
    assert e.value.step == 3
    now = net.kohya_state_dict()
    assert all(torch.equal(now[k], snapshot[k]) for k in now)


def test_should_stop_ends_within_one_step(data):
    model = TinyModel()
    net = installed(model)
    cfg = TrainConfig(max_train_steps=50, learning_rate=1e-3)
    tr = Trainer(model=model, network=net, data=data, cfg=cfg, objective=DiscreteObjective(ddpm_sigmas(), "eps"),
                 text_encoder=text_encoder)
    steps = []
    res = tr.run(on_step=lambda i: steps.append(i.step), should_stop=lambda: len(steps) >= 2)
    assert res.stopped_early and res.steps_done == 2


def test_fp16_autocast_uses_loss_scaling(data):
    """fp16 mixed precision (GPU in practice; CPU autocast here) goes through a GradScaler and still learns."""
    class Fp16Model(TinyModel):
        autocast_dtype = torch.float16

        def autocast(self):
            return torch.autocast("cpu", dtype=torch.float16)

    model = Fp16Model()
    net = installed(model)
    before = {k: v.clone() for k, v in net.kohya_state_dict().items()}
    tr = Trainer(model=model, network=net, data=data, cfg=TrainConfig(max_train_steps=3, learning_rate=1e-3),
                 objective=DiscreteObjective(ddpm_sigmas(), "eps"), text_encoder=text_encoder)
    assert tr.scaler is not None and tr.scaler.is_enabled()
    res = tr.run()
    net.remove()
    assert all(torch.isfinite(torch.tensor(res.losses)))
    after = net.kohya_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("lora_up.weight"))
    assert all(v.dtype == torch.float32 for k, v in after.items() if k.endswith(".weight"))


@pytest.mark.parametrize("optimizer,args,decay", [("AdamW", "", 0.01), ("Adam", "", 0.0), ("SGD", "", 0.0),
                                                  ("SGDNesterov", "", 0.0), ("Adam", "weight_decay=0.05", 0.05)])
def test_weight_decay_is_the_optimizers_own_unless_set(data, optimizer, args, decay):
    model = TinyModel()
    cfg = TrainConfig(max_train_steps=1, optimizer_type=optimizer, optimizer_args=args)
    tr = Trainer(model=model, network=installed(model), data=data, cfg=cfg,
                 objective=DiscreteObjective(ddpm_sigmas(), "eps"), text_encoder=text_encoder)
    assert all(g["weight_decay"] == decay for g in tr.optimizer.param_groups)
    assert ("weight_decay" in tr.optimizer_repr) == bool(args)


def test_schedule_parameters_reach_the_scheduler(data):
    def lrs(**kw):
        model = TinyModel()
        cfg = TrainConfig(max_train_steps=8, learning_rate=1e-3, **kw)
        tr = Trainer(model=model, network=installed(model), data=data, cfg=cfg,
                     objective=DiscreteObjective(ddpm_sigmas(), "eps"), text_encoder=text_encoder)
        return tr.run().lrs

    cosine = lrs(lr_scheduler="cosine")
    restarts = lrs(lr_scheduler="cosine_with_restarts", lr_scheduler_num_cycles=2)
    assert restarts != cosine and restarts[4] == pytest.approx(1e-3)  # the second cycle starts at step 4
    assert lrs(lr_scheduler="cosine_with_restarts") == pytest.approx(cosine)  # one cycle = cosine
    linear = lrs(lr_scheduler="linear")
    squared = lrs(lr_scheduler="polynomial", lr_scheduler_power=2.0)
    assert squared == pytest.approx([lr ** 2 / 1e-3 for lr in linear])
    with pytest.raises(ValueError, match="optimizer argument"):
        TrainConfig(optimizer_args="weight_decay")
    with pytest.raises(ValueError, match="lr_scheduler must be one of"):
        TrainConfig(lr_scheduler="nope")
