"""Cancel in every long phase (encoding, a training step, checkpoint saving, preview sampling), through ComfyUI's
real executor with a progress hook that raises on Cancel like the server's: no partial file, the trained steps
kept, and ComfyUI usable afterwards (the same prompt runs to the end). Three runs in one process do not grow
memory."""
from __future__ import annotations

import gc
import os

import psutil
import torch
from safetensors import safe_open

import comfy_env
import graphs
from comfy_fixtures import comfy  # noqa: F401

WORKFLOW = "train_then_generate_sd15.api.json"


def _loras():
    import folder_paths

    return folder_paths.get_folder_paths("loras")[0]


def _no_partial_files(*folders):
    """Every file is complete: no temp files left, every safetensors file opens."""
    for folder in folders:
        for dirpath, _, files in os.walk(folder):
            for f in files:
                assert not f.endswith(".tmp"), os.path.join(dirpath, f)
                if f.endswith((".safetensors", ".tensors")):
                    with safe_open(os.path.join(dirpath, f), "pt") as h:
                        list(h.keys())


def _interrupted(ex):
    return "execution_interrupted" in [e for e, _ in ex.status_messages]


def _graph(comfy, name, steps, n_images=3, **options):
    ds = os.path.join(comfy["tmp"], "in", f"cancel_{name}")
    if not os.path.isdir(ds):  # images no other test uses: their latents are not in the process-wide cache yet
        graphs.make_dataset(ds, n=n_images, seed=7100 + sum(map(ord, name)))
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=steps, save_name=name)
    graphs.train_options(p, output_name=name, **options)
    return p


def _finishes(p, pid, ex):
    mm = comfy_env.pack_module(".trainer.adapter.interrupt")
    assert not mm.interrupted()
    ex2, _ = comfy_env.run_prompt(p, pid, executor=ex)
    return ex2


def test_cancel_while_encoding(comfy):
    mm = __import__("comfy.model_management", fromlist=["x"])
    p = _graph(comfy, "enc", steps=7, n_images=5)
    p[graphs.one(p, "LoraLoop_EncodeDataset")]["inputs"].update(vae_batch_size=1)
    cache = os.path.join(comfy["tmp"], "out", "lora_loop_cache")
    ex, seen = comfy_env.execute_watching(p, "cancel-enc", total=5, cancel_at=2)  # Encode Dataset's bar: 5 images
    assert _interrupted(ex) and 2 in seen and 5 not in seen, seen  # stopped part way through the images
    errors = [d for e, d in ex.status_messages if e == "execution_interrupted"]
    assert errors and errors[0]["node_type"] == "LoraLoop_EncodeDataset", errors
    assert not mm.processing_interrupted()
    _no_partial_files(cache, _loras())
    assert not os.path.exists(os.path.join(_loras(), "enc_checkpoints"))  # nothing trained, nothing saved
    ex2 = _finishes(p, "cancel-enc-again", ex)
    assert graphs.saved_lora(ex2, p).startswith("enc")


def test_cancel_while_saving_a_checkpoint(comfy, monkeypatch):
    """Cancel pressed while a checkpoint is being written: the write completes (atomic), the run stops at that
    step, and the state written is the one of that step."""
    mm = __import__("comfy.model_management", fromlist=["x"])
    savefile = comfy_env.pack_module(".trainer.savefile")
    real = savefile.atomic_save_safetensors

    def pressing_cancel(tensors, path, metadata=None):
        if "_checkpoints" in path:
            mm.interrupt_current_processing(True)
        return real(tensors, path, metadata)

    monkeypatch.setattr(savefile, "atomic_save_safetensors", pressing_cancel)
    for mod in (comfy_env.pack_module(".trainer.export"), comfy_env.pack_module(".trainer.state")):
        monkeypatch.setattr(mod, "atomic_save_safetensors", pressing_cancel)
    p = _graph(comfy, "ckpt", steps=8, save_every_n_steps=2)
    ex, seen = comfy_env.execute_watching(p, "cancel-ckpt", total=8)
    assert _interrupted(ex) and max(seen) == 2, seen
    folder = os.path.join(_loras(), "ckpt_checkpoints")
    assert sorted(os.listdir(folder)) == ["ckpt-step00000002-state.json", "ckpt-step00000002-state.tensors",
                                          "ckpt-step00000002.safetensors"]
    _no_partial_files(folder)
    state = comfy_env.pack_module(".trainer.state").load_state(os.path.join(folder, "ckpt-step00000002-state"))
    assert state.step == 2
    monkeypatch.undo()
    ex2 = _finishes(p, "cancel-ckpt-again", ex)  # continues from the cancelled step (re-queue rule)
    chart = ex2.history_result["outputs"][graphs.one(p, "LoraLoop_TrainLoRA")]["lora_loop_chart"][0]
    assert chart["start"] == 2 and len(chart["loss"]) == 8


def test_cancel_while_sampling_previews(comfy):
    p = _graph(comfy, "prev", steps=6)
    loader = graphs.one(p, "LoraLoopTest_TinyModel")
    graphs.train_options(p, preview_vae=[loader, 2], preview_prompts="sks pattern 1\nsks pattern 2", preview_steps=3,
                         preview_cfg=1.0, preview_width=64, preview_height=64, preview_every_n_steps=2)
    n = len(comfy["log"].records)
    # Cancel when the training bar reaches step 2: the previews of step 2 are what runs next
    ex, seen = comfy_env.execute_watching(p, "cancel-prev", total=6, cancel_at=2)
    assert _interrupted(ex) and max(seen) == 2, seen
    log = comfy["log"].records[n:]
    assert [r for r in log if "sampling preview 1/2" in r], log[-20:]
    assert not [r for r in log if "preview image(s) at step 2" in r]  # the round did not finish
    folder = os.path.join(_loras(), "prev_checkpoints")
    assert sorted(os.listdir(folder)) == ["prev-step00000002-state.json", "prev-step00000002-state.tensors",
                                          "prev-step00000002.safetensors"]
    _no_partial_files(folder)
    ex2 = _finishes(p, "cancel-prev-again", ex)
    images = ex2.history_result["outputs"]  # the continued run samples its previews again
    chart = images[graphs.one(p, "LoraLoop_TrainLoRA")]["lora_loop_chart"][0]
    assert chart["start"] == 2 and chart["status"] == "done"


def test_a_checkpoint_that_cannot_be_written_does_not_end_the_run(comfy, monkeypatch):
    """A full or read-only checkpoint folder at one periodic save: the error is logged, training goes on to the
    end, and the later checkpoints and the final file are written."""
    savefile = comfy_env.pack_module(".trainer.savefile")
    real = savefile.atomic_save_safetensors
    failed = []

    def full_disk_once(tensors, path, metadata=None):
        if "_checkpoints" in path and not failed:
            failed.append(path)
            raise OSError(28, "No space left on device")
        return real(tensors, path, metadata)

    for mod in (savefile, comfy_env.pack_module(".trainer.export"), comfy_env.pack_module(".trainer.state")):
        monkeypatch.setattr(mod, "atomic_save_safetensors", full_disk_once)
    p = _graph(comfy, "fullck", steps=6, save_every_n_steps=2)
    n = len(comfy["log"].records)
    ex, _ = comfy_env.run_prompt(p, "full-ckpt")
    assert failed and graphs.saved_lora(ex, p).startswith("fullck")
    assert [r for r in comfy["log"].records[n:] if "could not write the checkpoint of step 2" in r]
    chart = ex.history_result["outputs"][graphs.one(p, "LoraLoop_TrainLoRA")]["lora_loop_chart"][0]
    assert len(chart["loss"]) == 6 and any("NOT written" in note for note in chart["notes"]), chart["notes"]
    names = sorted(f for f in os.listdir(os.path.join(_loras(), "fullck_checkpoints")) if f.endswith(".safetensors"))
    assert names == ["fullck-step00000004.safetensors", "fullck-step00000006.safetensors"], names
    _no_partial_files(os.path.join(_loras(), "fullck_checkpoints"))


def test_three_runs_in_one_process_do_not_grow_memory(comfy):
    """The same training three times (fresh executors, so nothing is served from cache): the process's RSS after
    the third run is within 5% of the RSS after the first."""
    import weakref

    proc = psutil.Process()
    rss, trained = [], []
    for i in range(3):
        p = _graph(comfy, "mem", steps=4, n_images=3)
        p[graphs.one(p, "LoraLoop_TrainLoRA")]["inputs"]["seed"] = 10 + i
        ex, _ = comfy_env.run_prompt(p, f"mem-{i}", executor=comfy_env.new_executor())
        outputs = ex.caches.outputs.get(graphs.one(p, "LoraLoop_TrainLoRA")).outputs
        trained.append((weakref.ref(outputs[0][0]), weakref.ref(outputs[2][0])))  # the trained MODEL and network
        del ex, outputs
        gc.collect()
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
        rss.append(proc.memory_info().rss)
    # what an earlier run trained is freed once its executor (ComfyUI's cache) is gone
    assert [(m() is None, n() is None) for m, n in trained[:2]] == [(True, True), (True, True)]
    growth = (rss[2] - rss[0]) / rss[0]
    print(f"RSS after runs 1..3: {[round(r / 2**20) for r in rss]} MiB ({growth:+.2%})")
    assert growth <= 0.05, f"RSS after runs 1..3: {[round(r / 2**20) for r in rss]} MiB (+{growth:.1%})"
