"""Checkpoints and full-state resume on the plain-torch loop (no ComfyUI): a run stopped half way and
resumed from its saved state (safetensors + JSON) equals the straight run bit for bit; checkpoint
files are named, pruned and written like kohya; Cancel mid-step leaves a consistent state."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open

from trainer.checkpoints import (CheckpointConfig, CheckpointWriter, apply_state, capture_state,
                                 checkpoint_stem, load_checkpoint_state, resolve_state_path)
from trainer.config import TrainConfig
from trainer.loop import Trainer
from trainer.objectives import DiscreteObjective, ddpm_sigmas
from trainer.record import record_of
from trainer.state import StateError, load_state, save_state
import tiny_trainer as _h



def _trainer(data, steps, **kw):
    model = _h.TinyModel()
    net = _h.network(model)
    net.install({"unet": model.net})
    for p in net.parameters():
        p.requires_grad_(True)
    kw.setdefault("learning_rate", 3e-3)
    cfg = TrainConfig(max_train_steps=steps, **kw)
    tr = Trainer(model=model, network=net, data=data, cfg=cfg, objective=DiscreteObjective(ddpm_sigmas(), "eps"),
                 text_encoder=_h.text_encoder)
    return tr, net


def _sd(net):
    return {k: v.clone() for k, v in net.kohya_state_dict().items()}


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kw", [dict(lr_scheduler="cosine", lr_warmup_steps=2),
                                dict(gradient_accumulation_steps=2, optimizer_type="AdamW")])
def test_stop_half_way_save_load_resume_is_bitwise(data, tmp_path, kw):
    n = 8
    tr, net = _trainer(data, n, seed=5, **kw)
    straight = tr.run()
    want = _sd(net)

    tr, net = _trainer(data, n, seed=5, **kw)
    done = []
    first = tr.run(on_step=lambda i: done.append(i.step), should_stop=lambda: len(done) >= n // 2)
    assert first.stopped_early and first.steps_done == n // 2
    save_state(capture_state(tr, net), str(tmp_path / "run-step00000004-state"))
    del tr, net

    state = load_state(str(tmp_path / "run-step00000004-state"))
    tr, net = _trainer(data, n, seed=5, **kw)
    apply_state(tr, net, state, "test")
    infos = []
    second = tr.run(on_step=infos.append)
    assert [i.step for i in infos] == list(range(n // 2 + 1, n + 1))
    assert [i.steps_this_run for i in infos] == list(range(1, n // 2 + 1))
    assert _equal(_sd(net), want)
    assert second.losses == straight.losses and second.lrs == straight.lrs


def test_continue_with_more_steps_constant_lr_equals_straight_run(data):
    tr, net = _trainer(data, 6, seed=1)
    tr.run()
    want = _sd(net)
    tr, net = _trainer(data, 3, seed=1)
    tr.run()
    state = capture_state(tr, net)
    tr.run()  # the captured state is a snapshot: later training must not change it
    tr, net = _trainer(data, 6, seed=1)
    apply_state(tr, net, state)
    tr.run()
    assert _equal(_sd(net), want)


def test_in_memory_state_is_not_changed_by_continuing_from_it(data):
    tr, net = _trainer(data, 2, seed=1)
    tr.run()
    state = capture_state(tr, net)
    before = {k: v.clone() for k, v in state.optimizer["state"][0].items()}
    tr2, net2 = _trainer(data, 4, seed=1)
    apply_state(tr2, net2, state)
    tr2.run()
    assert all(torch.equal(before[k], state.optimizer["state"][0][k]) for k in before)


def test_resume_refuses_past_steps_and_other_optimizer(data):
    tr, net = _trainer(data, 4, seed=1)
    tr.run()
    state = capture_state(tr, net)
    tr2, net2 = _trainer(data, 3, seed=1)
    with pytest.raises(StateError, match="past steps=3"):
        apply_state(tr2, net2, state, "the file x")
    tr3, net3 = _trainer(data, 8, seed=1, optimizer_type="SGD")
    with pytest.raises(StateError, match="optimizer_type"):
        apply_state(tr3, net3, state, "the file x")


def test_checkpoint_files_names_and_pruning(data, tmp_path):
    tr, net = _trainer(data, 7, seed=2)
    w = CheckpointWriter(str(tmp_path), CheckpointConfig(output_name="run", save_every_n_steps=2, save_last_n=2,
                                                         save_dtype="fp32"))
    saved_at = {}

    def on_step(info):
        if w.due(info.step, info.epoch_end, info.epoch):
            s = w.save(tr, net, record=record_of(tr, started_at=0.0))
            saved_at[info.step] = _sd(net)
            assert s.step == info.step

    tr.run(on_step=on_step)
    folder = tmp_path / "run_checkpoints"
    names = sorted(os.listdir(folder))
    assert names == sorted(f"{checkpoint_stem('run', s)}{suf}" for s in (4, 6)
                           for suf in (".safetensors", "-state.tensors", "-state.json")), names
    assert checkpoint_stem("run", 100) == "run-step00000100"
    with safe_open(str(folder / "run-step00000006.safetensors"), "pt") as f:
        assert f.metadata()["ss_steps"] == "6"
        assert all(torch.equal(f.get_tensor(k), saved_at[6][k]) for k in f.keys())
    st = load_checkpoint_state("run_checkpoints/run-step00000004.safetensors", str(tmp_path))
    assert st.step == 4 and _equal(st.lora, saved_at[4])
    doc = json.loads((folder / "run-step00000004-state.json").read_text())
    assert doc["step"] == 4 and "optimizer" in doc
    assert resolve_state_path(str(folder / "run-step00000004-state.json"), None).endswith("run-step00000004-state")
    with pytest.raises(StateError, match="no training state"):
        resolve_state_path("run_checkpoints/nothing-state.json", str(tmp_path))


def test_epoch_checkpoints(data, tmp_path):
    # 3 images, batch 1: an epoch is 3 steps
    tr, net = _trainer(data, 7, seed=2)
    w = CheckpointWriter(str(tmp_path), CheckpointConfig(output_name="ep", save_every_n_epochs=1))
    tr.run(on_step=lambda i: w.save(tr, net) if w.due(i.step, i.epoch_end, i.epoch) else None)
    assert [s.step for s in w.saved] == [3, 6]


def test_exception_mid_step_keeps_last_completed_step(data):
    tr, net = _trainer(data, 6, seed=2)
    real = tr.model.denoise
    calls = {"n": 0}

    class Interrupt(Exception):
        pass

    def denoise(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise Interrupt()
        return real(*a, **k)

    tr.model.denoise = denoise
    snap = {}
    with pytest.raises(Interrupt):
        tr.run(on_step=lambda i: snap.update(step=i.step, sd=_sd(net)))
    assert tr.step == 3 == snap["step"] and _equal(_sd(net), snap["sd"])
    assert all(p.grad is None for p in net.parameters())
    # the state of the last completed step continues exactly like an uninterrupted run
    state = capture_state(tr, net)
    tr2, net2 = _trainer(data, 6, seed=2)
    apply_state(tr2, net2, state)
    tr2.run()
    tr3, net3 = _trainer(data, 6, seed=2)
    tr3.run()
    assert _equal(_sd(net2), _sd(net3))


def test_resume_with_a_new_learning_rate_uses_it(data):
    tr, net = _trainer(data, 2, seed=1, learning_rate=1e-3)
    tr.run()
    state = capture_state(tr, net)
    tr2, net2 = _trainer(data, 4, seed=1, learning_rate=5e-4)
    apply_state(tr2, net2, state)
    res = tr2.run()
    assert res.lrs == [1e-3, 1e-3, 5e-4, 5e-4]


def test_output_names_with_subfolders_and_escapes(data, tmp_path):
    tr, net = _trainer(data, 2, seed=2)
    tr.run()
    for name in ("proj/run", "proj\\run"):  # either separator, like ComfyUI's own save nodes
        w = CheckpointWriter(str(tmp_path), CheckpointConfig(output_name=name))
        saved = w.save(tr, net, record=record_of(tr, started_at=0.0))
        assert saved.lora_path == str(tmp_path / "proj" / "run_checkpoints" / "run-step00000002.safetensors")
        assert w.relative(saved) == "proj/run_checkpoints/run-step00000002.safetensors"
    outside = tmp_path.parent / (tmp_path.name + "_outside")
    outside.mkdir()
    (tmp_path / "link").symlink_to(outside)
    with pytest.raises(ValueError, match="outside the loras folder"):  # a subfolder that is a symlink out
        CheckpointWriter(str(tmp_path), CheckpointConfig(output_name="link/run"))
    for bad in ("../run", "/abs/run"):
        with pytest.raises(ValueError, match="'..'|absolute"):
            CheckpointConfig(output_name=bad)
    assert list(outside.iterdir()) == []
