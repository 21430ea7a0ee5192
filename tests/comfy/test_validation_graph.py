"""The Validation node through the real graph: its options reach the trainer (a validation curve in Train LoRA's
chart output, the console line), the held-out images are not trained on, and the file records sd-scripts'
ss_validation_* keys."""
from __future__ import annotations

import math
import os

from safetensors import safe_open

import comfy_env
import graphs
from comfy_fixtures import comfy  # noqa: F401

WORKFLOW = "train_then_generate_sd15.api.json"


def test_validation_node_reaches_the_trainer_and_the_metadata(comfy):
    ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", "validation"), n=4)
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=3, save_name="val")
    graphs.train_options(p, validation_split=0.5, validation_seed=3, validate_every_n_steps=2,
                         max_validation_steps=1)
    log = comfy["log"]
    n = len(log.records)
    ex, _ = comfy_env.run_prompt(p, "validation")
    chart = ex.history_result["outputs"][graphs.one(p, "LoraLoop_TrainLoRA")]["lora_loop_chart"][0]
    # 2 training images (batch 1): epoch ends at steps 2 and 4; every 2 steps: step 2
    assert [s for s, _ in chart["validation"]] == [2]
    assert all(math.isfinite(v) for _, v in chart["validation"]) and len(chart["loss"]) == 3
    assert [r for r in log.records[n:] if "validation loss" in r]
    with safe_open(os.path.join(comfy["tmp"], "models", "loras", graphs.saved_lora(ex, p)), "pt") as f:
        meta = f.metadata()
    assert (meta["ss_validation_split"], meta["ss_validation_seed"], meta["ss_validate_every_n_steps"],
            meta["ss_validate_every_n_epochs"], meta["ss_max_validation_steps"], meta["ss_num_validation_images"],
            meta["ss_num_train_images"]) == ("0.5", "3", "2", "None", "1", "2", "2")
    # without the node: no validation curve, sd-scripts' defaults in the file
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=1, save_name="noval")
    ex, _ = comfy_env.run_prompt(p, "noval")
    chart = ex.history_result["outputs"][graphs.one(p, "LoraLoop_TrainLoRA")]["lora_loop_chart"][0]
    assert "validation" not in chart
    with safe_open(os.path.join(comfy["tmp"], "models", "loras", graphs.saved_lora(ex, p)), "pt") as f:
        meta = f.metadata()
    assert (meta["ss_validation_split"], meta["ss_validation_seed"], meta["ss_num_validation_images"]) == \
        ("0.0", "None", "0")


def test_load_kohya_config_fills_the_validation_settings(comfy, tmp_path):
    """A training config with sd-scripts' validation keys: Load kohya Config's validation output carries them (the
    report no longer asks to set them by hand), and a Validation-less file gives the defaults (off)."""
    import nodes

    path = tmp_path / "train.toml"
    path.write_text("[training_arguments]\nmax_train_steps = 4\nvalidation_split = 0.2\nvalidate_every_n_steps = 5\n"
                    "max_validation_steps = 3\n", encoding="utf-8")
    out = comfy_env.call(nodes.NODE_CLASS_MAPPINGS["LoraLoop_LoadKohyaConfig"].execute, str(path))
    validation = out.result[-1]
    assert validation.topic == "validation"
    assert (validation.values["validation_split"], validation.values["validate_every_n_steps"],
            validation.values["max_validation_steps"]) == (0.2, 5, 3)
    text = next(v for v in out.result if isinstance(v, str))
    assert not [ln for ln in text.splitlines() if ln.startswith("set on Validation")]
    path.write_text("[training_arguments]\nmax_train_steps = 4\n", encoding="utf-8")
    out = comfy_env.call(nodes.NODE_CLASS_MAPPINGS["LoraLoop_LoadKohyaConfig"].execute, str(path))
    assert out.result[-1].values.get("validation_split", 0.0) == 0.0  # no validation keys: Train LoRA's defaults
