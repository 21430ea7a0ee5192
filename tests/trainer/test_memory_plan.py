"""The memory plan arithmetic and what ``auto`` picks (plain torch; the measurements are tested in
tests/comfy/test_memory_planner.py)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.memory import (LiveBytes, MemoryEstimate, StepMemory, choose_plan, fixed_plan, network_bytes,
                            plan_candidates)

MIB = 2 ** 20


def _plans(weights=1000 * MIB, blocks=10, plain=StepMemory(800 * MIB, 900 * MIB),
           ckpt=StepMemory(50 * MIB, 150 * MIB)):
    return plan_candidates(weights=weights, block_weights=[weights // (blocks + 1)] * blocks,
                           network=network_bytes(1_000_000, 4, 8), plain=plain, checkpointed=ckpt,
                           grad_bytes=4_000_000)


def test_live_bytes_counts_new_storages_once_and_frees_them():
    w = torch.randn(256, 256, requires_grad=True)
    x = torch.randn(32, 256)
    with LiveBytes() as live:
        h = x @ w
        view = h[:, :8]                      # a view: no new storage
        h.add_(1)                            # in place: no new storage
        y = h.relu()
        after_forward = live.mark()
        y.sum().backward()
        del view, h
    assert after_forward == 2 * 32 * 256 * 4                 # h and y; the weight and input were made before
    assert live.peak >= after_forward + 256 * 256 * 4       # + w.grad
    before = live.live
    del y
    assert live.live == before - 32 * 256 * 4                # freed storages leave the count
    assert live.peak < after_forward + 2 * 256 * 256 * 4


def test_plans_come_fastest_first_and_streaming_moves_weights_off_the_device():
    plans = _plans()
    assert [p.mode for p in plans[:2]] == ["resident", "checkpointed"]
    streamed = plans[2:]
    assert [p.blocks_to_swap for p in streamed] == list(range(1, 11))
    assert all(p.checkpointing for p in plans[1:]) and not plans[0].checkpointing
    w = [p.estimate.weights for p in streamed]
    assert w == sorted(w, reverse=True) and streamed[-1].estimate.streamed == 10 * (1000 * MIB // 11)
    # the LoRA gradients the measured peak holds are counted once (in ``network``)
    assert plans[0].estimate.workspace == 100 * MIB - 4_000_000
    assert plans[0].estimate.network == 16_000_000


def test_auto_picks_the_fastest_plan_that_fits_and_never_streams_when_everything_fits():
    plans = _plans()
    resident = plans[0].estimate.total
    assert choose_plan(plans, int(resident / 0.85) + 1) == (plans[0], True)
    plan, fits = choose_plan(plans, int(plans[1].estimate.total / 0.85) + 1)
    assert fits and plan.mode == "checkpointed"
    plan, fits = choose_plan(plans, int(plans[1].estimate.total * 0.9))
    assert fits and plan.mode == "streamed" and plan.estimate.total <= plans[1].estimate.total * 0.9 * 0.85
    plan, fits = choose_plan(plans, 10 * MIB)                       # nothing fits: the leanest, and says so
    assert not fits and plan == min(plans, key=lambda p: p.estimate.total)


@settings(max_examples=200, deadline=None)
@given(free=st.integers(1, 10 ** 11), act=st.integers(0, 10 ** 10), ckpt_act=st.integers(0, 10 ** 9),
       weights=st.integers(10 ** 6, 10 ** 11))
def test_auto_never_picks_a_plan_the_estimate_says_does_not_fit(free, act, ckpt_act, weights):
    plans = _plans(weights=weights, plain=StepMemory(act, act + 10), ckpt=StepMemory(ckpt_act, ckpt_act + 10))
    plan, fits = choose_plan(plans, free)
    if fits:
        assert plan.estimate.total <= free * 0.85
        faster = plans[:plans.index(plan)]
        assert all(p.estimate.total > free * 0.85 for p in faster)
    else:
        assert all(p.estimate.total > free * 0.85 for p in plans)


def test_fixed_modes_and_their_errors():
    plans = _plans()
    assert fixed_plan(plans, "resident") is plans[0]
    assert fixed_plan(plans, "streamed", 3).blocks_to_swap == 3
    with pytest.raises(ValueError, match="1 to 10"):
        fixed_plan(plans, "streamed", 11)
    with pytest.raises(ValueError, match="choose one of"):
        fixed_plan(plans, "auto")


def test_estimate_text_names_every_part():
    e = MemoryEstimate(10 * 2 ** 30, 200 * MIB, 2 * 2 ** 30, 100 * MIB, streamed=2 ** 30)
    text = e.describe()
    for part in ("weights 10.00 GiB", "LoRA+optimizer 200 MiB", "activations 2.00 GiB", "workspace 100 MiB",
                 "1.00 GiB of weights streamed"):
        assert part in text, text
