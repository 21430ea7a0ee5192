"""Data-parallel training (trainer/distributed.py) on the tiny plain-torch trainer: two processes in a gloo group
that accelerate sets up, one sample each per step, train the same LoRA as one process with batches of two (the same
global batch): noise and timesteps are drawn for the global batch, each rank trains its shard, gradients are summed.
The dataset has three images, so every epoch ends with a one-sample batch that leaves one rank without samples."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(os.path.dirname(HERE), "support", "distributed_worker.py")

pytest.importorskip("accelerate", reason="the multi-process tests need accelerate (pip install accelerate)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path, world: int, batch: int, steps: int = 6, accum: int = 1, name: str = "out", **options) -> dict:
    (tmp_path / "data").mkdir(exist_ok=True)
    out = tmp_path / f"{name}.pt"
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS="1")
        if world == 1:
            for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
                env.pop(k)
        procs.append(subprocess.Popen([sys.executable, WORKER, str(tmp_path / "data"), str(batch), str(steps),
                                       str(accum), str(out), json.dumps(options)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    return torch.load(out)


def _close(a: dict, b: dict, rel: float = 1e-5) -> float:
    assert a.keys() == b.keys()
    worst = 0.0
    for k in a:
        d = (a[k].float() - b[k].float()).abs().max().item()
        worst = max(worst, d / max(a[k].float().abs().max().item(), 1e-12))
    assert worst <= rel, worst
    return worst


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    one = _run(tmp_path, world=1, batch=2, name="one")
    two = _run(tmp_path, world=2, batch=1, name="two")
    assert two["world"] == 2
    _close(one["sd"], two["sd"])
    assert one["losses"] == pytest.approx(two["losses"], rel=1e-5)
    # and the training moved: a run with a different global batch trains a different LoRA
    other = _run(tmp_path, world=1, batch=1, name="other")
    assert max((other["sd"][k].float() - one["sd"][k].float()).abs().max().item() for k in one["sd"]) > 1e-4


def test_two_processes_with_gradient_accumulation(tmp_path):
    one = _run(tmp_path, world=1, batch=2, steps=3, accum=2, name="one")
    two = _run(tmp_path, world=2, batch=1, steps=3, accum=2, name="two")
    _close(one["sd"], two["sd"])


def test_two_processes_equal_one_process_with_the_noise_and_loss_options(tmp_path):
    """Offset (random strength, adaptive), pyramid and input-perturbation noise are drawn for the global batch (the
    pyramid's std is the global batch's), the huber threshold and loss weights per sample."""
    options = dict(noise_offset=0.1, noise_offset_random_strength=True, adaptive_noise_scale=0.05,
                   multires_noise_iterations=3, ip_noise_gamma=0.1, ip_noise_gamma_random_strength=True,
                   loss_type="huber", huber_schedule="snr", debiased_estimation_loss=True)
    one = _run(tmp_path, world=1, batch=2, steps=4, name="one", **options)
    two = _run(tmp_path, world=2, batch=1, steps=4, name="two", **options)
    _close(one["sd"], two["sd"])
    assert one["losses"] == pytest.approx(two["losses"], rel=1e-5)
    plain = _run(tmp_path, world=1, batch=2, steps=4, name="plain")
    assert plain["losses"] != pytest.approx(one["losses"], rel=1e-3)


def test_two_processes_validate_in_step_without_changing_the_training(tmp_path):
    """Every rank validates every held-out batch between the same steps; the LoRA is the one trained on the same
    split without validation."""
    with_val = _run(tmp_path, world=2, batch=1, steps=3, name="val", validation_split=0.34, validate_every_n_steps=1)
    without = _run(tmp_path, world=2, batch=1, steps=3, name="noval", validation_split=0.34)
    assert with_val["sd"].keys() == without["sd"].keys()
    assert all(torch.equal(with_val["sd"][k], without["sd"][k]) for k in without["sd"])
    assert with_val["losses"] == without["losses"] and without["validation"] == []
    assert [s for s, _ in with_val["validation"]] == [1, 2, 3]
    assert all(math.isfinite(v) for _, v in with_val["validation"])


def test_shards_cover_the_batch_once():
    from trainer.distributed import Context

    for n in range(0, 9):
        for world in (1, 2, 3, 4):
            parts = [Context(rank=r, world_size=world).shard(n) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert max(hi - lo for lo, hi in parts) - min(hi - lo for lo, hi in parts) <= 1


def test_max_train_epochs_counts_global_batches(data):
    """kohya: steps = epochs x ceil(batches per epoch / processes / accumulation). Three images at batch 2 make
    two batches an epoch; two processes at batch 1 make the same two global batches."""
    import dataclasses

    from trainer import distributed
    from trainer.config import TrainConfig

    two = data.dataset.with_group_params(batch_size=2)
    assert TrainConfig(max_train_epochs=10).with_epochs_resolved(two, data.plan).max_train_steps == 20
    assert TrainConfig(max_train_epochs=10, gradient_accumulation_steps=2).with_epochs_resolved(
        two, data.plan).max_train_steps == 10
    assert TrainConfig(max_train_steps=7).with_epochs_resolved(two, data.plan).max_train_steps == 7  # off
    one = data.dataset.with_group_params(batch_size=1)
    assert TrainConfig(max_train_epochs=10).with_epochs_resolved(one, data.plan).max_train_steps == 30
    try:
        distributed.set_current(distributed.Context(rank=0, world_size=2))
        assert TrainConfig(max_train_epochs=10).with_epochs_resolved(one, data.plan).max_train_steps == 20
        assert distributed.global_dataset(one).groups[0].batch_size == 2
    finally:
        distributed.set_current(distributed.Context())
    assert dataclasses.replace(data).plan is data.plan
