"""Tests for trainer.state: a training state written as safetensors + JSON comes back exactly (continuing a
run from it bit for bit is tested on the real loop in test_checkpoints.py)."""
import json
import os
import random

import pytest
import torch

from trainer.optim import build_optimizer, build_scheduler, load_scheduler_state
from trainer.state import StateError, TrainState, config_mismatches, from_flat, load_state, save_state, to_flat

CONFIG = {"lr": 1e-3, "schedule": "cosine", "steps": 6, "rank": 4, "betas": (0.9, 0.99)}


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.down = torch.nn.Parameter(torch.randn(4, 8, generator=g) * 0.1)
        self.up = torch.nn.Parameter(torch.zeros(8, 4))

    def forward(self, x):
        return x + x @ self.down.t() @ self.up.t()

    def lora(self):
        return {"lora_unet_x.lora_down.weight": self.down, "lora_unet_x.lora_up.weight": self.up,
                "lora_unet_x.alpha": torch.tensor(4.0)}


def setup():
    model = Tiny()
    opt, _ = build_optimizer("AdamW", [{"params": [model.down], "lr": 1e-3}, {"params": [model.up], "lr": 2e-3}],
                             lr=1e-3, betas=(0.9, 0.99))
    sched = build_scheduler(opt, "cosine", 6, warmup=2)
    gen = torch.Generator().manual_seed(1234)
    pyr = random.Random(99)
    return model, opt, sched, gen, pyr


def train(model, opt, sched, gen, pyr, n, log):
    for _ in range(n):
        x = torch.randn(3, 8, generator=gen) * (1 + pyr.random())
        y = torch.randn(3, 8, generator=gen)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        log.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)


def test_state_files_round_trip_exactly(tmp_path):
    model, opt, sched, gen, pyr = setup()
    lrs_a = []
    train(model, opt, sched, gen, pyr, 6, lrs_a)
    straight = {k: v.detach().clone() for k, v in model.lora().items()}

    model, opt, sched, gen, pyr = setup()
    lrs_b = []
    train(model, opt, sched, gen, pyr, 3, lrs_b)
    st = TrainState(step=3, epoch=0, batch_index=3, lora=model.lora(), optimizer=opt.state_dict(),
                    scheduler=sched.state_dict(), rng={"seed": 1234}, config=dict(CONFIG),
                    extra={"loss_history": [0.5, 0.25, float("nan")]})
    gen_state, py_state = gen.get_state(), pyr.getstate()
    st_path, js_path = save_state(st, str(tmp_path / "run-step00000003-state"))
    assert sorted(os.listdir(tmp_path)) == ["run-step00000003-state.json", "run-step00000003-state.tensors"]
    json.loads(open(js_path, encoding="utf-8").read())  # plain JSON
    loaded = load_state(str(tmp_path / "run-step00000003-state"))
    assert (loaded.step, loaded.epoch, loaded.batch_index, loaded.rng) == (3, 0, 3, {"seed": 1234})
    assert config_mismatches(loaded.config, CONFIG) == []
    assert loaded.extra["loss_history"][:2] == [0.5, 0.25] and loaded.extra["loss_history"][2] != 0.5
    sd = opt.state_dict()
    assert loaded.optimizer["param_groups"] == sd["param_groups"]
    for pid, s in sd["state"].items():
        for k, v in s.items():
            assert torch.equal(loaded.optimizer["state"][pid][k], v) and loaded.optimizer["state"][pid][k].dtype == v.dtype

    # fresh objects, restored from the files, continue exactly (data randomness continues as it was)
    model, opt, sched, gen, pyr = setup()
    with torch.no_grad():
        model.down.copy_(loaded.lora["lora_unet_x.lora_down.weight"])
        model.up.copy_(loaded.lora["lora_unet_x.lora_up.weight"])
    assert loaded.lora["lora_unet_x.alpha"].item() == 4.0
    opt.load_state_dict(loaded.optimizer)
    load_scheduler_state(sched, loaded.scheduler)
    gen.set_state(gen_state)
    pyr.setstate(py_state)
    train(model, opt, sched, gen, pyr, 3, lrs_b)
    assert lrs_b == lrs_a
    for k, v in model.lora().items():
        assert torch.equal(v.detach(), straight[k]), k


def test_flat_encoding_types():
    obj = {"t": (1, 2.5, None, "s", True), 3: "int key", "nested": [{"__tensor__": "tricky"}],
           "inf": float("-inf"), "py": random.Random(5).getstate(), "x": torch.arange(3)}
    tensors = {}
    data = json.loads(json.dumps(to_flat(obj, "p", tensors), allow_nan=False))
    back = from_flat(data, tensors)
    assert back["t"] == (1, 2.5, None, "s", True) and back[3] == "int key"
    assert back["nested"] == [{"__tensor__": "tricky"}]  # a user dict that looks like a marker survives
    assert back["inf"] == float("-inf")
    r = random.Random()
    r.setstate(back["py"])
    assert r.random() == random.Random(5).random()
    assert torch.equal(back["x"], torch.arange(3))
    with pytest.raises(TypeError, match="object"):
        to_flat({"bad": object()}, "p", {})


def test_config_mismatch_messages():
    assert config_mismatches(CONFIG, dict(CONFIG)) == []
    cur = dict(CONFIG, rank=8)
    cur.pop("schedule")
    cur["new"] = 1
    diff = config_mismatches(CONFIG, cur)
    assert any(d.startswith("rank: saved 4, now 8") for d in diff)
    assert any(d.startswith("schedule:") for d in diff) and any(d.startswith("new:") for d in diff)
    assert config_mismatches(CONFIG, dict(CONFIG, steps=12), ignore=["steps"]) == []


def _saved(tmp_path):
    st = TrainState(step=1, epoch=0, batch_index=1, lora={"a": torch.ones(2)}, optimizer={"state": {}, "param_groups": []},
                    scheduler={"last_epoch": 1}, rng={}, config={"x": 1})
    return save_state(st, str(tmp_path / "s"))


def test_load_errors(tmp_path):
    with pytest.raises(StateError, match="missing"):
        load_state(str(tmp_path / "nothing"))
    st_path, js_path = _saved(tmp_path)
    assert load_state(js_path).lora["a"].tolist() == [1.0, 1.0]  # either file name works as prefix

    good = open(js_path).read()
    open(js_path, "w").write(good[:-10])
    with pytest.raises(StateError, match="corrupt"):
        load_state(str(tmp_path / "s"))

    doc = json.loads(good)
    doc["lora_keys"].append("b")
    open(js_path, "w").write(json.dumps(doc))
    with pytest.raises(StateError, match="missing tensors"):
        load_state(str(tmp_path / "s"))

    doc = json.loads(good)
    doc["state_id"] = "0" * 32
    open(js_path, "w").write(json.dumps(doc))
    with pytest.raises(StateError, match="different saves"):
        load_state(str(tmp_path / "s"))

    doc = json.loads(good)
    del doc["optimizer"]
    open(js_path, "w").write(json.dumps(doc))
    with pytest.raises(StateError, match="lacks optimizer"):
        load_state(str(tmp_path / "s"))

    open(js_path, "w").write(good)
    open(st_path, "wb").write(b"garbage")
    with pytest.raises(StateError, match="unreadable"):
        load_state(str(tmp_path / "s"))

    os.remove(st_path)
    with pytest.raises(StateError, match=r"s\.tensors is missing"):
        load_state(str(tmp_path / "s"))
