"""Every shipped example: the UI file and its API twin exist, the twin validates against the live node
definitions (execution.validate_prompt), and the UI file converts to exactly the twin."""
from __future__ import annotations

import json
import os

import pytest

import comfy_env
from comfy_fixtures import comfy  # noqa: F401
from workflows_index import EXAMPLES

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL_WIDGETS = {"ckpt_name": "checkpoints", "unet_name": "diffusion_models", "vae_name": "vae",
                 "clip_name": "text_encoders", "clip_name1": "text_encoders", "clip_name2": "text_encoders",
                 "clip_name3": "text_encoders"}


def _api(ex):
    with open(os.path.join(PACK_ROOT, "tests", "workflows", ex["api"]), encoding="utf-8") as f:
        return json.load(f)


def _ui(ex):
    with open(os.path.join(PACK_ROOT, "example_workflows", ex["ui"]), encoding="utf-8") as f:
        return json.load(f)


def provide_model_files(comfy, api: dict) -> None:
    """Validation checks combo values against the model folders: give each referenced file a stub."""
    import folder_paths

    for node in api.values():
        for key, value in node["inputs"].items():
            folder = MODEL_WIDGETS.get(key)
            if folder and isinstance(value, str):
                d = os.path.join(comfy["tmp"], "models", folder)
                os.makedirs(d, exist_ok=True)
                open(os.path.join(d, value), "wb").close()
                if d not in folder_paths.get_folder_paths(folder):
                    folder_paths.add_model_folder_path(folder, d)


@pytest.mark.parametrize("ex", EXAMPLES, ids=[e["api"] for e in EXAMPLES])
def test_api_twin_validates_against_live_nodes(comfy, ex):
    import execution

    api = _api(ex)
    provide_model_files(comfy, api)
    ok, err, outputs, node_errors = comfy_env.run_async(execution.validate_prompt, "v", api, None)
    assert ok, (err, node_errors)
    assert outputs


@pytest.mark.parametrize("ex", EXAMPLES, ids=[e["ui"] for e in EXAMPLES])
def test_ui_file_matches_api_twin(comfy, ex):
    from workflow_convert import _default, _node_def, ui_to_api

    ui, api = _ui(ex), _api(ex)
    assert os.path.isfile(os.path.join(PACK_ROOT, "example_workflows", os.path.splitext(ex["ui"])[0] + ".jpg")), \
        "every example needs a same-name .jpg thumbnail"
    converted = ui_to_api(ui)
    assert set(converted) == set(api)
    for nid, node in api.items():
        got = converted[nid]
        assert got["class_type"] == node["class_type"]
        assert {k: got["inputs"][k] for k in node["inputs"]} == node["inputs"], nid
        defaults = dict(_node_def(node["class_type"])[0])
        for k in set(got["inputs"]) - set(node["inputs"]):
            assert got["inputs"][k] == _default(defaults[k]), f"{nid}.{k} differs from its default"


def test_examples_use_only_core_and_pack_nodes(comfy):
    import nodes
    from workflow_convert import VIRTUAL_NODES

    for ex in EXAMPLES:
        types = [n["type"] for n in _ui(ex)["nodes"]]
        for t in types:
            assert t in nodes.NODE_CLASS_MAPPINGS or t in VIRTUAL_NODES, t
            assert not t.startswith("LoraLoopTest_"), t
        assert types.count("MarkdownNote") == 1, "every template says what it does, how to test it quickly and " \
                                                  "what a GPU run takes"
        note = next(n for n in _ui(ex)["nodes"] if n["type"] == "MarkdownNote")["widgets_values"][0]
        for part in ("Quick test on a CPU", "On a GPU", "Change"):
            assert part in note, (ex["ui"], part)


def test_the_sd_scripts_options_template_trains_with_its_settings(comfy):
    """The settings-nodes template on the tiny SD1.5: every settings node's value is what ran (the file's header)."""
    import graphs
    from safetensors import safe_open

    ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", "options_template"), n=4)
    p = graphs.tiny_train_graph(graphs.load_api("train_with_sd_scripts_options_sd15.api.json"), family="sd15",
                                dataset=ds, steps=4, save_name="options_template")
    ex, _ = comfy_env.run_prompt(p, "options-template")
    with safe_open(os.path.join(comfy["tmp"], "models", "loras", graphs.saved_lora(ex, p)), "pt") as f:
        meta = f.metadata()
    assert meta["ss_lr_scheduler"] == "cosine" and meta["ss_lr_warmup_steps"] == "0.05"  # a ratio, as given
    assert (meta["ss_noise_offset"], meta["ss_min_snr_gamma"], meta["ss_max_grad_norm"]) == ("0.05", "5.0", "1.0")
    assert (meta["ss_network_dropout"], meta["ss_scale_weight_norms"]) == ("0.1", "1.0")
    assert (meta["ss_shuffle_caption"], meta["ss_keep_tokens"], meta["ss_validation_split"]) == ("True", "1", "0.1")
