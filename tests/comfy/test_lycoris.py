"""LyCORIS adapters (LoHa, LoKr, DoRA) through the real graph: Network Options picks the adapter, Train LoRA trains
it (the loss falls on a paired evaluation), the file has LyCORIS' keys and header (``ss_network_module``
lycoris.kohya, ``ss_network_args`` algo), and Save LoRA's verify reloads it through ComfyUI's own LoRA loader with
zero unloaded keys and the trained model's prediction (U-Net and text encoder); init_lora continues a file."""
from __future__ import annotations

import json
import os
import re

import pytest
import torch
from safetensors import safe_open

import comfy_env
import graphs
from comfy_fixtures import comfy  # noqa: F401

WORKFLOW = "train_then_generate_sd15.api.json"
STEPS, EVAL_STEPS = 8, 4

CASES = {
    # name: (family, Network Options, Inject LoRA, the file-key suffixes every module has, ss_network_args)
    "loha": ("sd15", {"algo": "loha"}, {"network_dim": 4, "network_alpha": 2.0, "conv_dim": 2, "conv_alpha": 1.0},
             {".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".alpha"}, {"algo": "loha"}),
    "lokr": ("sdxl", {"algo": "lokr", "factor": 8, "decompose_both": True}, {"network_dim": 2, "network_alpha": 1.0},
             None, {"algo": "lokr", "factor": "8", "decompose_both": "True"}),
    "dora": ("sd15", {"algo": "lora", "dora_wd": True}, {"network_dim": 4, "network_alpha": 4.0, "conv_dim": 2},
             {".lora_down.weight", ".lora_up.weight", ".alpha", ".dora_scale"},
             {"algo": "lora", "dora_wd": "True", "wd_on_output": "False"}),
}


def _dataset(comfy, name, n=3):
    path = os.path.join(comfy["tmp"], "in", name)
    if not os.path.isdir(path):
        graphs.make_dataset(path, n=n)
    return path


def _graph(comfy, case: str, save_name: str, init_lora: str | None = None) -> dict:
    family, options, inject, _, _ = CASES[case]
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family=family, dataset=_dataset(comfy, "lyco"),
                                steps=STEPS, lr=2e-3, save_name=save_name)
    graphs.network_options(p, **options)
    inputs = p[graphs.one(p, "LoraLoop_InjectLoRA")]["inputs"]
    inputs.update(inject, train_text_encoder=True)
    if init_lora:
        inputs["init_lora"] = init_lora
    p[graphs.one(p, "LoraLoop_EncodeDataset")]["inputs"].pop("clip")  # captions encoded while training
    train = graphs.one(p, "LoraLoop_TrainLoRA")
    graphs.train_options(p, train, text_encoder_lr=1e-3, timestep_sampling="uniform", min_timestep=500,
                         max_timestep=501)
    p[graphs.one(p, "LoraLoop_SaveLoRA")]["inputs"].update(verify=True, model=[train, 0], clip=[train, 1])
    graphs.add_paired_eval(p, train, EVAL_STEPS, text_encoder=True)
    return p


def _load(name):
    import folder_paths

    with safe_open(os.path.join(folder_paths.get_folder_paths("loras")[0], name), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.mark.parametrize("case", list(CASES))
def test_lycoris_trains_saves_and_reloads_exactly_through_comfyuis_loader(comfy, case):
    from trainer.network import split_kohya_key

    family, _, _, suffixes, args = CASES[case]
    p = _graph(comfy, case, f"lyco_{case}")
    ex, _ = comfy_env.run_prompt(p, f"lyco-{case}")
    outputs = ex.history_result["outputs"]
    train = [k for k in graphs.nodes_of(p, "LoraLoop_TrainLoRA") if k != "eval"][0]
    losses = outputs[train]["lora_loop_chart"][0]["loss"]
    after = outputs["eval"]["lora_loop_chart"][0]["loss"]
    assert len(losses) == STEPS and all(torch.isfinite(torch.tensor(losses + after)))
    assert sum(after) < sum(losses[:EVAL_STEPS]), (losses[:EVAL_STEPS], after)  # it learned
    notes = outputs[train]["lora_loop_chart"][0]["notes"]  # the memory plan measured the adapter's step
    plan = [n for n in notes if n.startswith("memory: ")]
    assert plan and "no estimate" not in plan[0], notes

    save = [k for k in graphs.nodes_of(p, "LoraLoop_SaveLoRA") if k != "eval_save"][0]
    report = outputs[save]["text"][0]
    m = re.search(r"verify: 0 unloaded keys, largest prediction difference ([0-9.e+-]+)", report)
    assert m and float(m.group(1)) <= 1e-5, report
    te = re.search(r"text encoder ([0-9.e+-]+)", report)
    assert te and float(te.group(1)) <= 1e-5, report

    sd, meta = _load(graphs.saved_lora(ex, None, save))
    by_module: dict[str, set] = {}
    for k in sd:
        name, suf = split_kohya_key(k)
        assert suf, k
        by_module.setdefault(name, set()).add(suf)
    assert any(n.startswith("lora_unet_") for n in by_module) and any(n.startswith("lora_te") for n in by_module)
    if suffixes is not None:
        assert all(s == suffixes for s in by_module.values()), {n: s for n, s in by_module.items() if s != suffixes}
    else:  # LoKr: w1 or its factors, w2 or its factors, nothing else
        for n, s in by_module.items():
            assert s <= {".lokr_w1", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2", ".lokr_w2_a", ".lokr_w2_b", ".alpha"}, s
            assert (".lokr_w1" in s) != (".lokr_w1_a" in s) and (".lokr_w2" in s) != (".lokr_w2_a" in s), (n, s)
        assert any(".lokr_w1_a" in s for s in by_module.values())  # decompose_both took effect somewhere
    if case == "loha":  # conv_dim: the 3x3 convs are LoHa modules too, their weights flattened to (r, in*3*3)
        convs = [k for k, v in sd.items() if k.endswith(".hada_w1_b") and "resnets" in k and "conv1" in k]
        assert convs, sorted(sd)[:10]
    assert meta["ss_network_module"] == "lycoris.kohya"
    net_args = json.loads(meta["ss_network_args"])
    assert {k: net_args.get(k) for k in args} == args, net_args


def test_init_lora_continues_a_lycoris_file(comfy):
    """A LoHa file as init_lora (dim_from_weights): the network is that file's LoHa, whatever the settings say, and
    it starts from the file's weights (the first loss equals the file's trained model's, not a fresh one's)."""
    p = _graph(comfy, "loha", "lyco_first")
    ex, _ = comfy_env.run_prompt(p, "lyco-first")
    first = graphs.saved_lora(ex, None, [k for k in graphs.nodes_of(p, "LoraLoop_SaveLoRA") if k != "eval_save"][0])
    q = _graph(comfy, "loha", "lyco_second", init_lora=first)
    graphs.network_options(q, algo="lora")  # the file decides
    ex, _ = comfy_env.run_prompt(q, "lyco-second", executor=ex)
    outputs = ex.history_result["outputs"]
    save = [k for k in graphs.nodes_of(q, "LoraLoop_SaveLoRA") if k != "eval_save"][0]
    assert "verify: 0 unloaded keys" in outputs[save]["text"][0], outputs[save]["text"][0]
    sd, meta = _load(graphs.saved_lora(ex, None, save))
    first_sd, _ = _load(first)
    assert set(sd) == set(first_sd)
    assert json.loads(meta["ss_network_args"])["algo"] == "loha"


@pytest.mark.parametrize("case", ["loha", "dora"])
def test_a_lycoris_run_resumes_bit_for_bit(comfy, case):
    """4 steps in one go == 2 steps, then a second Train LoRA continuing from the first one's TRAIN_STATE (the
    adapter's tensors and their optimizer state travel in the state)."""
    import copy

    def graph(name, steps):
        family, options, inject, _, _ = CASES[case]
        p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family=family, dataset=_dataset(comfy, "lyco"),
                                    steps=steps, lr=2e-3, save_name=name)
        graphs.network_options(p, **options)
        p[graphs.one(p, "LoraLoop_InjectLoRA")]["inputs"].update(inject)
        return p

    p = graph(f"straight_{case}", 4)
    ex, _ = comfy_env.run_prompt(p, f"straight-{case}", executor=comfy_env.new_executor())
    straight, _ = _load(graphs.saved_lora(ex, p))
    q = graph(f"chained_{case}", 2)
    t1 = graphs.one(q, "LoraLoop_TrainLoRA")
    q["t2"] = copy.deepcopy(q[t1])
    graphs.train_options(q, "t2", steps=4, train_state=[t1, 5], output_name="second")
    save = graphs.one(q, "LoraLoop_SaveLoRA")
    q[save]["inputs"]["network"] = ["t2", 2]
    ex, _ = comfy_env.run_prompt(q, f"chained-{case}", executor=comfy_env.new_executor())
    chained, _ = _load(graphs.saved_lora(ex, None, save))
    assert chained.keys() == straight.keys()
    assert all(torch.equal(chained[k], straight[k]) for k in straight), \
        [k for k in straight if not torch.equal(chained[k], straight[k])][:5]


def test_dora_starts_from_the_models_own_weights_while_another_clones_lora_is_merged(comfy):
    """DoRA's initial magnitudes are the norms of the MODEL's weights. A clone sampled before (here Train LoRA's
    output, its LoRA merged into the shared modules as LoraLoader merges) must not leak into them: Inject LoRA has
    ComfyUI load the MODEL itself first."""
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=_dataset(comfy, "lyco"), steps=2,
                                lr=1e-2, save_name="dora_merged_first")
    loader, train = graphs.one(p, "LoraLoopTest_TinyModel"), \
        graphs.one(p, "LoraLoop_TrainLoRA")
    graphs.add_predict_branch(p, [train, 0], [train, 1], "dora_merged_first", "tp", sigma=1.0, text="x")
    base = {loader: p[loader]}
    graphs.add_predict_branch(base, [loader, 0], [loader, 1], "dora_base_first", "bp", sigma=1.0, text="x")

    def inject_dora(seed: int, name: str) -> dict:
        return {loader: p[loader],
                "opts": {"class_type": "LoraLoop_NetworkOptions", "inputs": {"dora_wd": True}},
                "inj": {"class_type": "LoraLoop_InjectLoRA",
                        "inputs": {"model": [loader, 0], "clip": [loader, 1], "network_dim": 4, "network_alpha": 4.0,
                                   "conv_dim": 0, "conv_alpha": 1.0, "train_text_encoder": False,
                                   "init_seed": seed, "network_options": ["opts", 0]}},
                "save": {"class_type": "LoraLoop_SaveLoRA", "inputs": {"network": ["inj", 2], "filename": name,
                                                                       "save_dtype": "fp32", "if_exists": "increment"}}}

    ex = comfy_env.new_executor()
    comfy_env.run_prompt(base, "dora-base", executor=ex)  # the base weights are what ComfyUI has loaded
    q = inject_dora(1, "dora_clean")
    comfy_env.run_prompt(q, "dora-clean", executor=ex)
    clean, _ = _load(graphs.saved_lora(ex, q, "save"))
    comfy_env.run_prompt(p, "dora-merged", executor=ex)  # now the trained LoRA is merged into the shared modules
    q = inject_dora(2, "dora_after_merged")
    comfy_env.run_prompt(q, "dora-after-merged", executor=ex)
    after, _ = _load(graphs.saved_lora(ex, q, "save"))
    scales = [k for k in clean if k.endswith(".dora_scale")]
    assert scales and all(torch.equal(after[k], clean[k]) for k in scales), \
        [k for k in scales if not torch.equal(after[k], clean[k])][:3]
