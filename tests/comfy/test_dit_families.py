"""The newer families (Qwen-Image, Z-Image, Lumina 2, Chroma, HiDream, Wan 2.1) and models only the generic family
handles (AuraFlow, Kandinsky 5 image, HunyuanDiT: flow and v-prediction) through ComfyUI's real executor on tiny
real-architecture models built through ``comfy.supported_models``.

For each family its example graph (Qwen-Image, Z-Image; the FLUX one for the others), with the UNET / CLIP / VAE
loaders swapped for the tiny model, trains, and:
* the loss falls on a paired comparison (a second Train LoRA with lr ~ 0 and the same seed sees the same draws);
* the file has the family's modules (its trainers' targets), names and metadata;
* core's LoraLoader loads it with zero "lora key not loaded" and reproduces the trained MODEL (<= 1e-5 relative);
  where the text encoder trains (Chroma's T5), the conditioning too."""
from __future__ import annotations

import os
import re

import pytest
import torch
from safetensors import safe_open

import comfy_env
import graphs
from comfy_fixtures import comfy  # noqa: F401

from trainer.network import split_kohya_key

pytestmark = pytest.mark.comfy

WORKFLOW = "train_then_generate_flux.api.json"
STEPS = 8
EVAL_STEPS = 3

# family -> the tiny model's expected modules (count, block lists, what must be absent), its text encoders'
# prefixes, the file's metadata, and the workflow / learning rate / loss fall / options its run uses
FAMILIES = {
    # 2 blocks x 14 Linear (img/txt mod, 8 attention, 4 MLP)
    "qwen_image": dict(modules=28, lists=("transformer_blocks",), te={"text_encoders.qwen25_7b"},
                       module="networks.lora_qwen_image", base="qwen_image", arch="Qwen-Image/lora",
                       workflow="train_then_generate_qwen_image.api.json"),
    # layers only, adaLN excluded: 2 x (qkv, out, w1, w2, w3)
    "z_image": dict(modules=10, lists=("layers",), absent=("adaLN", "refiner"), te={"text_encoders.qwen3_4b"},
                    module="networks.lora_zimage", base="z_image", arch="Z-Image/lora",
                    workflow="train_then_generate_z_image.api.json"),
    # refiners 2 x 6 + 2 x 5, layers 2 x 6, final_layer 2
    "lumina2": dict(modules=36, lists=("noise_refiner", "context_refiner", "layers", "final_layer"),
                    te={"text_encoders.gemma2_2b"}, module="networks.lora_lumina", base="lumina2",
                    arch="lumina-2/lora"),
    # 2 double x 8 + 2 single x 2; the approximator stays frozen; T5 trains as lora_te1
    "chroma": dict(modules=20, lists=("double_blocks", "single_blocks"), absent=("distilled_guidance",),
                   te={"lora_te1"}, module="networks.lora_flux", base="chroma", arch="chroma/lora"),
    # 1 double x 15 + 2 single x 8: routed experts frozen
    "hidream": dict(modules=31, lists=("double_stream_blocks", "single_stream_blocks"), absent=("ff_i_experts_",),
                    te={"lora_te1", "lora_te2", "lora_te3", "text_encoders.llama"}, module="networks.lora",
                    base="hidream_i1", arch="hidream-i1/lora", lr=3e-2, drop=0.97),
    # 2 double x 8 + 2 single x 2; the shared modulation stays frozen
    "flux2": dict(modules=20, lists=("double_blocks", "single_blocks"), absent=("modulation",),
                  te={"text_encoders.qwen3_4b"}, module="networks.lora_flux_2", base="flux2", arch="Flux.2-dev/lora",
                  lr=3e-2),
    # 2 double x 10 + 2 single x 3; the text token refiner stays frozen
    "hunyuan_image": dict(modules=26, lists=("double_blocks", "single_blocks"), absent=("txt_in",),
                          te={"text_encoders.qwen25_7b"}, module="networks.lora_hunyuan_image",
                          base="hunyuan_image_2.1", arch="hunyuan-image-2.1/lora"),
    # a one-frame clip: 2 blocks x (self/cross attention q, k, v, o + ffn.0, ffn.2)
    "wan21": dict(modules=20, lists=("blocks",), te={"text_encoders.umt5xxl"}, module="networks.lora_wan",
                  base="wan2.1", arch="wan2.1/lora"),
    "wan22": dict(modules=20, lists=("blocks",), te={"text_encoders.umt5xxl"}, module="networks.lora_wan",
                  base="wan2.2", arch="wan2.1/lora", lr=3e-2),
    # the generic family: every Linear of the block lists it finds; n_layers 3 of which 1 double: 1 x 16 + 2 x 8
    "auraflow": dict(modules=1 * 16 + 2 * 8, lists=("double_layers", "single_layers"), module="networks.lora",
                     base="auraflow", arch="auraflow/lora", lr=3e-2),
    "kandinsky5_image": dict(modules=1 * 7 + 2 * 11, lists=("text_transformer_blocks", "visual_transformer_blocks"),
                             module="networks.lora", base="kandinsky5image", arch="kandinsky5image/lora"),
    # depth 4: the last block also has a skip_linear
    "hunyuan_dit": dict(modules=3 * 8 + 1 * 9, lists=("blocks",), module="networks.lora", base="hunyuandit",
                        arch="hunyuandit/lora", options=dict(min_timestep=500, max_timestep=500)),
}



def _results():
    from lora_loop_testing_pack import RESULTS

    return RESULTS


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def _graph(comfy, family: str) -> dict:
    exp = FAMILIES[family]
    ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", f"dit_{family}"), n=1)
    p = graphs.tiny_train_graph(graphs.load_api(exp.get("workflow", WORKFLOW)), family=family, dataset=ds,
                                steps=STEPS, lr=exp.get("lr", 1e-2), save_name=f"dit_{family}")
    train_id = graphs.one(p, "LoraLoop_TrainLoRA")
    if exp.get("options"):  # discrete models: one timestep, so the paired batches repeat exactly
        graphs.train_options(p, train_id, **exp["options"])
    if exp.get("te"):  # every text encoder of the family trains along (T5 through train_t5)
        inject = p[graphs.one(p, "LoraLoop_InjectLoRA")]["inputs"]
        inject["train_text_encoder"] = True
        inject["train_t5"] = family in ("chroma", "hidream")
        p[graphs.one(p, "LoraLoop_EncodeDataset")]["inputs"].pop("clip")  # captions encoded while training
        graphs.train_options(p, train_id, text_encoder_lr=1e-3)
    # Save LoRA's verify: the file through ComfyUI's loader against the trained network (reported on the node)
    p[graphs.one(p, "LoraLoop_SaveLoRA")]["inputs"].update(verify=True, model=[train_id, 0], clip=[train_id, 1])
    graphs.add_paired_eval(p, train_id, EVAL_STEPS, text_encoder=bool(exp.get("te")))
    return p


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_trains_saves_and_reloads_exactly(comfy, family):
    exp = FAMILIES[family]
    res = _results()
    p = _graph(comfy, family)
    loader = graphs.one(p, "LoraLoopTest_TinyModel")
    train = [k for k in graphs.nodes_of(p, "LoraLoop_TrainLoRA") if k != "eval"][0]
    log = comfy["log"]
    n = len(log.records)
    ex, _ = comfy_env.run_prompt(p, f"dit-{family}")

    outputs = ex.history_result["outputs"]
    losses = outputs[train]["lora_loop_chart"][0]["loss"]
    after = outputs["eval"]["lora_loop_chart"][0]["loss"]
    assert len(losses) == STEPS and all(torch.isfinite(torch.tensor(losses + after)))
    before = losses[:EVAL_STEPS]
    assert sum(after) < exp.get("drop", 0.95) * sum(before), (before, after)
    assert all(a < b for a, b in zip(after, before)), (before, after)

    # the memory plan was made from the model's own conds
    notes = outputs[train]["lora_loop_chart"][0]["notes"]
    plan = [n for n in notes if n.startswith("memory: ")]
    assert plan and "no estimate" not in plan[0], notes
    # the run logs which modules it chose and what stays frozen
    chose = [r for r in log.records[n:] if "modules in the blocks of" in r]
    assert chose and "stay frozen" in chose[0], log.records[n:n + 40]

    save = [k for k in graphs.nodes_of(p, "LoraLoop_SaveLoRA") if k != "eval_save"][0]
    name = graphs.saved_lora(ex, None, save)
    report = outputs[save]["text"][0]
    m = re.search(r"verify: 0 unloaded keys, largest prediction difference ([0-9.e+-]+)", report)
    assert m and float(m.group(1)) <= 1e-5, report
    if exp.get("te"):
        te_diff = re.search(r"text encoder ([0-9.e+-]+)", report)
        assert te_diff and float(te_diff.group(1)) <= 1e-5, report
    with safe_open(os.path.join(comfy["tmp"], "models", "loras", name), "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
    modules = {split_kohya_key(k)[0] for k in keys}
    unet = {m for m in modules if m.startswith("lora_unet_")}
    te = modules - unet
    assert len(unet) == exp["modules"], sorted(unet)
    for lst in exp["lists"]:
        assert any(m.startswith(f"lora_unet_{lst}_") for m in unet), (lst, sorted(unet)[:6])
    assert all(m.startswith(tuple(f"lora_unet_{lst}_" for lst in exp["lists"])) for m in unet), sorted(unet)
    for word in exp.get("absent", ()):
        assert not any(word in m for m in unet), (word, sorted(unet))
    assert {_te_prefix(m) for m in te} == exp.get("te", set()), sorted(te)[:4]
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in keys)
    assert meta["ss_network_module"] == exp["module"]
    assert meta["ss_base_model_version"] == exp["base"]
    assert meta["modelspec.architecture"] == exp["arch"]

    # trained MODEL vs core LoraLoader(saved file) vs the untouched input
    q = {k: v for k, v in p.items() if k not in ("eval", "eval_save")}
    q["ll"] = {"class_type": "LoraLoader", "inputs": {"model": [loader, 0], "clip": [loader, 1], "lora_name": name,
                                                      "strength_model": 1.0, "strength_clip": 1.0}}
    for model_ref, clip_ref, tag, prefix in (([train, 0], [train, 1], "trained", "t"),
                                             (["ll", 0], ["ll", 1], "loaded", "l"),
                                             ([loader, 0], [loader, 1], "base", "b")):
        graphs.add_predict_branch(q, model_ref, clip_ref, f"dit_{family}_{tag}", prefix, 0.7,
                                  text="sks pattern 0, checkerboard", save_cond=True)
    n = len(log.records)
    comfy_env.run_prompt(q, f"dit-{family}-cmp", executor=ex)
    assert [r for r in log.records[n:] if "lora key not loaded" in r] == []
    trained, loaded, base = (res[f"dit_{family}_{t}"] for t in ("trained", "loaded", "base"))
    assert _rel(loaded, trained) <= 1e-5
    assert _rel(trained, base) > 1e-6, "the trained LoRA has no effect"
    if exp.get("te"):  # every tensor of the conditioning: as trained == as loaded, != the base encoders'
        ct, cl, cb = (_cond_tensors(res[f"dit_{family}_{t}_cond"][0]) for t in ("trained", "loaded", "base"))
        assert ct.keys() == cl.keys() == cb.keys()
        for k in ct:
            assert _rel(cl[k], ct[k]) <= 1e-5, k
        assert max(_rel(ct[k], cb[k]) for k in ct) > 1e-7, "the text-encoder LoRA had no effect"


def _te_prefix(name: str) -> str:
    if name.startswith("text_encoders."):
        return ".".join(name.split(".")[:2])
    return re.match(r"lora_te\d*", name).group(0)


def _cond_tensors(entry) -> dict:
    tensor, extra = entry
    out = {"cond": tensor}
    out.update({k: v for k, v in extra.items() if torch.is_tensor(v) and v.is_floating_point()})
    return out


def test_refused_parameterisation_names_itself(comfy):
    """Cosmos Predict2 samples with ComfyUI's COSMOS_RFLOW: refused by name, before anything trains."""
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="cosmos_predict2",
                                dataset=graphs.make_dataset(os.path.join(comfy["tmp"], "in", "dit_cosmos"), n=1),
                                steps=2, save_name="never")
    ex = comfy_env.execute(p, "dit-cosmos")
    assert not ex.success
    msg = [d for e, d in ex.status_messages if e == "execution_error"][0]["exception_message"]
    assert "Cosmos rectified flow" in msg and "COSMOS_RFLOW" in msg and "eps, v-prediction and flow" in msg, msg
