"""Tests for trainer.optim (plain torch)."""
import sys

import pytest
import torch

from trainer.optim import (
    OPTIMIZERS,
    OptimizerUnavailableError,
    SCHEDULES,
    available_optimizers,
    build_optimizer,
    build_scheduler,
    load_scheduler_state,
    lr_lambda,
    optimizer_is_installed,
    parse_optimizer_args,
    resolve_warmup_steps,
)


def params(n=2):
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(3, 3, generator=g)) for _ in range(n)]


@pytest.mark.parametrize("name,cls,extra", [
    ("AdamW", torch.optim.AdamW, {"weight_decay": 0.01}),
    ("adamw", torch.optim.AdamW, {"weight_decay": 0.01}),
    ("Adam", torch.optim.Adam, {}),
    ("SGD", torch.optim.SGD, {}),
    ("SGDNesterov", torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
])
def test_optimizer_names_map_to_classes(name, cls, extra):
    opt, rep = build_optimizer(name, params(), lr=1e-3)
    assert type(opt) is cls
    assert opt.param_groups[0]["lr"] == 1e-3
    for k, v in extra.items():
        assert opt.param_groups[0][k] == v


def test_optimizer_repr_like_kohya():
    _, rep = build_optimizer("AdamW", params(), lr=1e-4)
    assert rep == "torch.optim.adamw.AdamW"  # sd-scripts lists only the arguments it passed
    _, rep = build_optimizer("AdamW", params(), lr=1e-4, weight_decay=0.1, betas=(0.9, 0.99))
    assert rep == "torch.optim.adamw.AdamW(weight_decay=0.1,betas=(0.9, 0.99))"
    _, rep = build_optimizer("Adam", params(), lr=1e-4)
    assert rep == "torch.optim.adam.Adam"


def test_param_groups_keep_their_lr():
    p = params(2)
    opt, _ = build_optimizer("AdamW", [{"params": [p[0]], "lr": 1e-3}, {"params": [p[1]]}], lr=1e-4)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-4]


def test_unknown_and_bad_args():
    with pytest.raises(ValueError, match="unknown optimizer 'Nope'.*AdamW"):
        build_optimizer("Nope", params(), 1e-4)
    with pytest.raises(ValueError, match="rejected its arguments"):
        build_optimizer("AdamW", params(), 1e-4, not_an_arg=1)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer("AdamW", [], 1e-4)


def test_adamw8bit_missing_bitsandbytes(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    monkeypatch.delitem(sys.modules, "bitsandbytes.optim", raising=False)
    assert "AdamW8bit" in available_optimizers()
    assert not optimizer_is_installed("AdamW8bit")
    with pytest.raises(OptimizerUnavailableError) as ei:
        build_optimizer("AdamW8bit", params(), 1e-4)
    msg = str(ei.value)
    assert "pip install bitsandbytes" in msg and "AdamW8bit" in msg
    assert isinstance(ei.value, ImportError)


def test_available_lists_every_spec():
    assert available_optimizers() == list(OPTIMIZERS)
    assert available_optimizers()[0] == "AdamW"
    assert optimizer_is_installed("AdamW")


def test_parse_optimizer_args():
    assert parse_optimizer_args("weight_decay=0.1 betas=0.9,0.99 decouple=True name=foo") == {
        "weight_decay": 0.1, "betas": (0.9, 0.99), "decouple": True, "name": "foo"}
    assert parse_optimizer_args("") == {} and parse_optimizer_args(None) == {}
    with pytest.raises(ValueError, match="key=value"):
        parse_optimizer_args("weight_decay")


# ---------------------------------------------------------------- schedules

def test_warmup_resolution():
    assert resolve_warmup_steps(10, 100) == 10
    assert resolve_warmup_steps(0.1, 1000) == 100
    assert resolve_warmup_steps("5%", 200) == 10
    assert resolve_warmup_steps("0.25", 100) == 25
    assert resolve_warmup_steps(20.0, 100) == 20
    assert resolve_warmup_steps(None, 100) == 0
    for bad in (-1, 2.5, "abc", "150%"):
        with pytest.raises(ValueError):
            resolve_warmup_steps(bad, 100)


def test_schedule_factors():
    T, W = 110, 10
    for s in ("constant_with_warmup", "cosine", "linear", "cosine_with_restarts", "polynomial"):
        assert lr_lambda(s, 0, T, W) == 0.0
        assert lr_lambda(s, 5, T, W) == pytest.approx(0.5)
        assert lr_lambda(s, W, T, W) == pytest.approx(1.0)
    assert lr_lambda("constant", 0, T) == 1.0 and lr_lambda("constant", 99, T) == 1.0
    assert lr_lambda("constant_with_warmup", 100, T, W) == 1.0
    # cosine: 0.5 at mid-decay, 0 at end
    assert lr_lambda("cosine", W + 50, T, W) == pytest.approx(0.5)
    assert lr_lambda("cosine", T, T, W) == pytest.approx(0.0, abs=1e-12)
    # linear: 0.5 at mid, 0 at end
    assert lr_lambda("linear", W + 50, T, W) == pytest.approx(0.5)
    assert lr_lambda("linear", T, T, W) == 0.0
    # polynomial power 2 at mid: 0.25
    assert lr_lambda("polynomial", W + 50, T, W, power=2.0) == pytest.approx(0.25)
    # restarts: 2 cycles -> back to 1 at the half
    assert lr_lambda("cosine_with_restarts", W + 25, T, W, num_cycles=2) == pytest.approx(0.5)
    assert lr_lambda("cosine_with_restarts", W + 50, T, W, num_cycles=2) == pytest.approx(1.0)
    for s in SCHEDULES:
        vals = [lr_lambda(s, k, T, W if s != "constant" else 0, num_cycles=3) for k in range(T + 5)]
        assert all(0.0 <= v <= 1.0 for v in vals)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_lambda("step", 0, 10)


def test_constant_with_warmup_is_rejected():
    opt, _ = build_optimizer("AdamW", params(), 1e-3)
    with pytest.raises(ValueError, match="constant_with_warmup"):
        build_scheduler(opt, "constant", 100, warmup=10)
    with pytest.raises(ValueError, match="constant_with_warmup"):
        build_scheduler(opt, "constant", 100, warmup=0.1)
    build_scheduler(opt, "constant", 100, warmup=0)


def test_scheduler_follows_lr_lambda():
    opt, _ = build_optimizer("SGD", params(), 2.0)
    sched = build_scheduler(opt, "cosine", 20, warmup=0.25)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([2.0 * lr_lambda("cosine", k, 20, 5) for k in range(20)])


def _run(opt, sched, n):
    lrs = []
    for _ in range(n):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("optimizer_first", [True, False])
def test_scheduler_resume_gives_identical_lrs(optimizer_first):
    def make():
        p = params(2)
        for x in p:
            x.grad = torch.ones_like(x)
        opt, _ = build_optimizer("AdamW", [{"params": [p[0]], "lr": 1e-3}, {"params": [p[1]], "lr": 5e-4}], 1e-4)
        return opt

    opt = make()
    sched = build_scheduler(opt, "linear", 12, warmup=3)
    straight = _run(opt, sched, 12)

    opt = make()
    sched = build_scheduler(opt, "linear", 12, warmup=3)
    first = _run(opt, sched, 5)
    opt_state, sched_state = opt.state_dict(), sched.state_dict()

    opt2 = make()
    if optimizer_first:  # the awkward order: optimizer state, then a fresh scheduler
        opt2.load_state_dict(opt_state)
        sched2 = build_scheduler(opt2, "linear", 12, warmup=3)
    else:
        sched2 = build_scheduler(opt2, "linear", 12, warmup=3)
        opt2.load_state_dict(opt_state)
    load_scheduler_state(sched2, sched_state)
    rest = _run(opt2, sched2, 7)
    assert first + rest == straight


def test_scheduler_resume_rejects_other_schedule():
    opt, _ = build_optimizer("AdamW", params(), 1e-3)
    sched = build_scheduler(opt, "linear", 12, warmup=3)
    state = sched.state_dict()
    other = build_scheduler(build_optimizer("AdamW", params(), 1e-3)[0], "cosine", 12, warmup=3)
    with pytest.raises(ValueError, match="does not match"):
        load_scheduler_state(other, state)


def test_scheduler_resume_non_strict_uses_new_schedule():
    opt, _ = build_optimizer("SGD", params(), 1.0)
    sched = build_scheduler(opt, "linear", 10)
    _run(opt, sched, 4)
    state = sched.state_dict()
    opt2, _ = build_optimizer("SGD", params(), 1.0)
    longer = build_scheduler(opt2, "linear", 20)  # user raised the step count
    load_scheduler_state(longer, state, strict=False)
    assert longer.last_epoch == 4
    assert opt2.param_groups[0]["lr"] == pytest.approx(lr_lambda("linear", 4, 20))
    assert longer.lora_loop_config["total_steps"] == 20
    lrs = _run(opt2, longer, 3)
    assert [x[0] for x in lrs] == pytest.approx([lr_lambda("linear", k, 20) for k in (4, 5, 6)])


def test_lr_scheduler_help_lists_what_the_combo_offers():
    from trainer.config import TrainConfig
    from trainer.options import choices_of, help_of

    assert choices_of(TrainConfig, "lr_scheduler") == list(SCHEDULES)
    import re

    text = help_of(TrainConfig, "lr_scheduler")
    named = set(re.findall(r"[a-z_]+", text))
    assert set(SCHEDULES) <= named, set(SCHEDULES) - named
