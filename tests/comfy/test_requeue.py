"""Re-queue semantics through ComfyUI's real executor: unchanged inputs are served from the cache;
when only 'steps' grows the node continues from its previous run (running only the new steps, equal
to a straight run with a constant LR); when steps shrink or anything else changes it starts over."""
from __future__ import annotations

import os

import torch
from safetensors import safe_open

import comfy_env
import graphs
from comfy_fixtures import comfy  # noqa: F401

WORKFLOW = "train_then_generate_sd15.api.json"


def _graph(comfy, steps):
    ds = os.path.join(comfy["tmp"], "in", "requeue_ds")
    if not os.path.isdir(ds):  # written once: rewriting would change Load Dataset's fingerprint
        graphs.make_dataset(ds, n=3)
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=steps,
                                save_name="requeue")
    p[graphs.one(p, "LoraLoop_TrainLoRA")]["inputs"]["lr_scheduler"] = "constant"
    return p


def _run(p, pid, ex, read=True):
    """Run ``p``; returns the Train LoRA progress values seen and the saved LoRA tensors."""
    total = p[graphs.one(p, "LoraLoop_TrainLoRA")]["inputs"]["steps"]
    _, seen = comfy_env.execute_watching(p, pid, total, executor=ex)
    assert ex.success, ex.status_messages
    if not read:
        return seen, None

    from folder_paths import get_folder_paths

    with safe_open(os.path.join(get_folder_paths("loras")[0], graphs.saved_lora(ex, p)), "pt") as f:
        return seen, {k: f.get_tensor(k) for k in f.keys()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_requeue_with_more_steps_continues(comfy):
    train = graphs.one(_graph(comfy, 4), "LoraLoop_TrainLoRA")
    _, straight = _run(_graph(comfy, 8), "rq-straight", comfy_env.new_executor())

    ex = comfy_env.new_executor()
    seen4, _ = _run(_graph(comfy, 4), "rq-4", ex)
    assert seen4 == [1, 2, 3, 4]
    n = len(comfy["log"].records)
    seen8, continued = _run(_graph(comfy, 8), "rq-8", ex)
    assert [r for r in comfy["log"].records[n:] if "steps raised from 4 to 8: continuing from step 4" in r]
    # the resumed bar starts at 4, and only steps 5..8 were trained
    assert seen8 == [4, 5, 6, 7, 8], seen8
    assert _same(continued, straight), "4 + 4 continued steps differ from a straight 8-step run"
    chart = ex.history_result["outputs"][train]["lora_loop_chart"][0]
    assert chart["start"] == 4 and len(chart["loss"]) == 8

    # unchanged: served from ComfyUI's cache, no step runs
    seen_cached, _ = _run(_graph(comfy, 8), "rq-8-again", ex, read=False)
    assert seen_cached == []
    cached = [d for e, d in ex.status_messages if e == "execution_cached"]
    assert cached and train in cached[-1]["nodes"]

    # fewer steps: from scratch
    seen3, _ = _run(_graph(comfy, 3), "rq-3", ex)
    assert seen3 == [1, 2, 3]
    # another setting changed (seed) with more steps: from scratch too
    p = _graph(comfy, 5)
    p[train]["inputs"]["seed"] = 1
    seen5, _ = _run(p, "rq-seed", ex)
    assert seen5 == [1, 2, 3, 4, 5]


def test_requeue_after_cancel_continues_to_the_same_result(comfy):
    def cosine(steps):
        p = _graph(comfy, steps)
        p[graphs.one(p, "LoraLoop_TrainLoRA")]["inputs"].update(lr_scheduler="cosine", output_name="rq_cancel")
        return p

    _, straight = _run(cosine(6), "rqc-straight", comfy_env.new_executor())
    ex = comfy_env.new_executor()
    comfy_env.execute_watching(cosine(6), "rqc-cancel", 6, executor=ex, cancel_at=2)
    assert "execution_interrupted" in [e for e, _ in ex.status_messages]
    n = len(comfy["log"].records)
    seen, resumed = _run(cosine(6), "rqc-again", ex)
    assert [r for r in comfy["log"].records[n:] if "continuing the cancelled run from step" in r]
    assert seen[0] in (2, 3) and seen[-1] == 6 and 1 not in seen, seen
    assert _same(resumed, straight), "Cancel + re-queue differs from the uninterrupted run"
