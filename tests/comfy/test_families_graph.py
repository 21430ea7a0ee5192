"""SDXL, SD3 and FLUX.1 (dev/schnell) through ComfyUI's real executor on tiny real-architecture models.

For each family the shipped example graph (SDXL twin for SDXL and SD3, FLUX twin for FLUX dev/schnell) trains
U-Net/DiT + text-encoder LoRA, and:
* the loss falls: a second Train LoRA node continues from the trained network with a negligible learning rate
  and the same seed, so it sees exactly the noise/timestep draws of the first steps; its losses must be lower
  than the first steps' losses (a paired comparison: no noise variance in the check);
* the saved file uses the family's kohya names and metadata, loads through core's LoraLoader with zero
  "lora key not loaded" and reproduces the trained MODEL's and CLIP's outputs (<= 1e-5 relative).
Also: FLUX train_blocks, unsupported models, SDXL per-sample size conditioning (ADM ``y``)."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open

import comfy_env
import graphs
from comfy_fixtures import comfy  # noqa: F401

SDXL_WF = "train_then_generate_sdxl.api.json"
FLUX_WF = "train_then_generate_flux.api.json"

# family -> expectations (sd-scripts networks/lora_flux.py, lora_sd3.py; metadata as train_network.py writes it)
FAMILIES = {
    "sdxl": dict(workflow=SDXL_WF, te={"lora_te1", "lora_te2"}, unet_prefixes=("lora_unet_input_blocks_",
                 "lora_unet_middle_block_", "lora_unet_output_blocks_"), module="networks.lora",
                 base="sdxl_base_v1-0", arch="stable-diffusion-xl-v1-base/lora",
                 impl="https://github.com/Stability-AI/generative-models", pred="epsilon", sigma=2.0),
    "sd3": dict(workflow=SDXL_WF, te={"lora_te1", "lora_te2"}, unet_prefixes=("lora_unet_joint_blocks_",),
                module="networks.lora_sd3", base="medium", arch="stable-diffusion-3-medium/lora",
                impl="diffusers", pred="epsilon", sigma=0.7),
    "flux": dict(workflow=FLUX_WF, te={"lora_te1", "lora_te3"}, unet_prefixes=("lora_unet_double_blocks_",
                 "lora_unet_single_blocks_"), module="networks.lora_flux", base="flux1", arch="flux-1-dev/lora",
                 impl="https://github.com/black-forest-labs/flux", pred=None, sigma=0.7),
    "flux_schnell": dict(workflow=FLUX_WF, te={"lora_te1", "lora_te3"}, unet_prefixes=("lora_unet_double_blocks_",
                         "lora_unet_single_blocks_"), module="networks.lora_flux", base="flux1",
                         arch="flux-1-schnell/lora", impl="https://github.com/black-forest-labs/flux", pred=None,
                         sigma=0.7),
}
STEPS = 10
EVAL_STEPS = 4


def _results():
    from lora_loop_testing_pack import RESULTS

    return RESULTS


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def _saved(ex, p, save_id=None) -> str:
    save_id = save_id or graphs.one(p, "LoraLoop_SaveLoRA")
    return graphs.saved_lora(ex, None, save_id)


def _lora_path(comfy, name: str) -> str:
    return os.path.join(comfy["tmp"], "models", "loras", name)


def _family_graph(comfy, family: str) -> dict:
    exp = FAMILIES[family]
    ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", f"fam_{family}"), n=1)
    p = graphs.tiny_train_graph(graphs.load_api(exp["workflow"]), family=family, dataset=ds, steps=STEPS, lr=1e-2,
                                save_name=f"fam_{family}")
    inject = p[graphs.one(p, "LoraLoop_InjectLoRA")]["inputs"]
    inject["train_text_encoder"] = True
    inject["train_t5"] = family.startswith("flux")
    # the text encoder is trained: captions are encoded during training, not by Encode Dataset
    p[graphs.one(p, "LoraLoop_EncodeDataset")]["inputs"].pop("clip")
    train_id = graphs.one(p, "LoraLoop_TrainLoRA")
    graphs.train_options(p, train_id, text_encoder_lr=1e-3)
    if family == "sdxl":
        graphs.train_options(p, train_id, min_timestep=500, max_timestep=500)  # one timestep: a repeated batch
    # the same draws again with the trained network (lr ~ 0: it stays as trained)
    graphs.add_paired_eval(p, train_id, EVAL_STEPS, text_encoder=True)
    return p


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_graph_trains_saves_and_reloads_exactly(comfy, family):
    exp = FAMILIES[family]
    res = _results()
    p = _family_graph(comfy, family)
    loader = graphs.one(p, "LoraLoopTest_TinyModel")
    train = [k for k in graphs.nodes_of(p, "LoraLoop_TrainLoRA") if k != "eval"][0]
    save = [k for k in graphs.nodes_of(p, "LoraLoop_SaveLoRA") if k != "eval_save"][0]
    ex, _ = comfy_env.run_prompt(p, f"fam-{family}")

    # the loss is finite and falls on the repeated batch (paired: same draws before/after training)
    outputs = ex.history_result["outputs"]
    losses = outputs[train]["lora_loop_chart"][0]["loss"]
    after = outputs["eval"]["lora_loop_chart"][0]["loss"]
    assert len(losses) == STEPS and len(after) == EVAL_STEPS
    assert all(torch.isfinite(torch.tensor(losses + after)))
    before = losses[:EVAL_STEPS]
    assert sum(after) < 0.95 * sum(before), (before, after)
    assert all(a < b for a, b in zip(after, before)), (before, after)

    # file: kohya names per family, metadata per family
    name = _saved(ex, p, save)
    with safe_open(_lora_path(comfy, name), "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
    modules = {k.split(".")[0] for k in keys}
    unet = {m for m in modules if m.startswith("lora_unet_")}
    te = {m.split("_text_model_")[0] if "_text_model_" in m else m.split("_encoder_")[0]
          for m in modules if m.startswith("lora_te")}
    assert modules == unet | {m for m in modules if m.startswith("lora_te")}
    assert te == exp["te"], te
    for prefix in exp["unet_prefixes"]:
        assert any(m.startswith(prefix) for m in unet), (prefix, sorted(unet)[:5])
    assert all(m.startswith(exp["unet_prefixes"]) for m in unet), sorted(unet)[:5]
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in keys)
    assert len(keys) == 3 * len(modules)
    assert meta["ss_network_module"] == exp["module"]
    assert meta["ss_base_model_version"] == exp["base"]
    assert meta["modelspec.architecture"] == exp["arch"]
    assert meta["modelspec.implementation"] == exp["impl"]
    assert meta.get("modelspec.prediction_type") == exp["pred"]
    assert meta["ss_v2"] == "False"
    assert int(meta["ss_steps"]) == STEPS

    # second prompt: trained MODEL/CLIP vs core LoraLoader(saved file) vs the untouched inputs
    q = {k: v for k, v in p.items() if k not in ("eval", "eval_save")}
    q["ll"] = {"class_type": "LoraLoader", "inputs": {"model": [loader, 0], "clip": [loader, 1], "lora_name": name,
                                                      "strength_model": 1.0, "strength_clip": 1.0}}
    sig = exp["sigma"]
    for model_ref, clip_ref, tag, prefix in (([train, 0], [train, 1], "trained", "t"), (["ll", 0], ["ll", 1], "loaded", "l"),
                                             ([loader, 0], [loader, 1], "base", "b")):
        graphs.add_predict_branch(q, model_ref, clip_ref, f"{family}_{tag}", prefix, sig,
                                  text="sks pattern 0, checkerboard", save_cond=True)
    log = comfy["log"]
    n = len(log.records)
    comfy_env.run_prompt(q, f"fam-{family}-cmp", executor=ex)
    assert [r for r in log.records[n:] if "lora key not loaded" in r] == []
    trained, loaded, base = res[f"{family}_trained"], res[f"{family}_loaded"], res[f"{family}_base"]
    assert _rel(loaded, trained) <= 1e-5
    assert _rel(trained, base) > 1e-6, "the trained LoRA has no effect"
    # text encoders: every encoder's part of the conditioning, as trained == as loaded != base
    ct, cl, cb = (res[f"{family}_{t}_cond"][0] for t in ("trained", "loaded", "base"))
    assert _rel(cl[0], ct[0]) <= 1e-5
    assert _rel(cl[1]["pooled_output"], ct[1]["pooled_output"]) <= 1e-5
    for te, (t_part, l_part, b_part) in _te_parts(family, ct, cl, cb).items():
        assert _rel(l_part, t_part) <= 1e-5, te
        assert _rel(t_part, b_part) > 1e-7, f"{te} LoRA had no effect"


def _te_parts(family: str, *conds) -> dict:
    """Per text encoder, its own slice of each CONDITIONING entry ([tensor, {"pooled_output": ...}])."""
    from tiny_models import CLIP_G, CLIP_L

    lw, gw = CLIP_L["hidden_size"], CLIP_G["hidden_size"]
    if family.startswith("flux"):  # CLIP-L -> pooled vector, T5 -> token sequence
        return {"lora_te1": [c[1]["pooled_output"] for c in conds], "lora_te3": [c[0] for c in conds]}
    # SDXL and SD3: token sequence = cat(CLIP-L, CLIP-G) on the channel axis (SD3 zero-pads it to 4096)
    return {"lora_te1": [c[0][..., :lw] for c in conds], "lora_te2": [c[0][..., lw:lw + gw] for c in conds]}


@pytest.mark.parametrize("blocks,present,absent", [("single", "lora_unet_single_blocks_", "lora_unet_double_blocks_"),
                                                   ("double", "lora_unet_double_blocks_", "lora_unet_single_blocks_")])
def test_flux_train_blocks_restricts_modules(comfy, blocks, present, absent):
    p = {"1": {"class_type": "LoraLoopTest_TinyModel", "inputs": {"family": "flux", "seed": 0}},
         "2": {"class_type": "LoraLoop_InjectLoRA", "inputs": {"model": ["1", 0], "network_dim": 4, "network_alpha": 4.0,
                                                               "conv_dim": 0, "conv_alpha": 1.0,
                                                               "train_text_encoder": False, "init_seed": 0,
                                                               "train_blocks": blocks}},
         "3": {"class_type": "LoraLoop_SaveLoRA", "inputs": {"network": ["2", 2], "filename": f"blocks_{blocks}",
                                                             "save_dtype": "fp32", "if_exists": "increment"}}}
    ex, _ = comfy_env.run_prompt(p, f"blocks-{blocks}")
    with safe_open(_lora_path(comfy, _saved(ex, p, "3")), "pt") as f:
        modules = {k.split(".")[0] for k in f.keys()}
        meta = f.metadata()
    assert modules and all(m.startswith(present) for m in modules), sorted(modules)[:5]
    assert not any(m.startswith(absent) for m in modules)
    # tiny FLUX: 2 double blocks x 10 Linears, 2 single blocks x 3
    assert len(modules) == (6 if blocks == "single" else 20)
    assert '"train_blocks": "%s"' % blocks in meta["ss_network_args"]


@pytest.mark.parametrize("kind", ["StableAudio", "SDXL_instructpix2pix", "WAN21_I2V"])
def test_unsupported_model_gives_a_clear_error(comfy, kind):

    p = {"1": {"class_type": "LoraLoopTest_UnsupportedModel", "inputs": {"kind": kind}},
         "2": {"class_type": "LoraLoop_InjectLoRA", "inputs": {"model": ["1", 0], "network_dim": 4, "network_alpha": 4.0,
                                                               "conv_dim": 0, "conv_alpha": 1.0,
                                                               "train_text_encoder": False, "init_seed": 0}},
         "3": {"class_type": "LoraLoop_SaveLoRA", "inputs": {"network": ["2", 2], "filename": "never",
                                                             "save_dtype": "fp32", "if_exists": "increment"}}}
    ex = comfy_env.execute(p, f"bad-{kind}")
    assert not ex.success
    errors = [d for e, d in ex.status_messages if e == "execution_error"]
    assert errors, ex.status_messages
    msg = errors[0]["exception_message"]
    assert kind in msg and "not supported" in msg, msg
    for fam in ("Stable Diffusion 1.x", "Stable Diffusion 2.x", "Stable Diffusion XL", "Stable Diffusion 3", "FLUX.1",
                "generic family"):
        assert fam in msg, msg
    reason = {"StableAudio": "audio model", "SDXL_instructpix2pix": "InstructPix2Pix", "WAN21_I2V": "input image"}
    assert reason[kind] in msg, msg


# ----------------------------------------------------------------------------- SDXL size conditioning

# name -> original size; at resolution 128 (buckets of 64 px steps, 64..256) they fall into three buckets:
# 128x128 (three images, one with a letterbox crop), 192x64 (two), 64x192 (one)
ADM_IMAGES = {"sq_a": (96, 96), "sq_b": (128, 128), "sq_crop": (100, 88), "wide_a": (240, 80), "wide_b": (300, 100),
              "tall": (80, 250)}


def _make_sized_dataset(folder: str) -> str:
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    for i, (name, (w, h)) in enumerate(ADM_IMAGES.items()):
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        img = torch.stack([(xx * 255 // w), (yy * 255 // h), ((xx // 8 + yy // 8 + i) % 2) * 255], -1)
        Image.fromarray(img.to(torch.uint8).numpy()).save(os.path.join(folder, f"{name}.png"))
        with open(os.path.join(folder, f"{name}.txt"), "w", encoding="utf-8") as f:
            f.write(f"photo of {name}, image {i}")  # unique captions: the pooled part of y identifies the image
    return folder


def test_sdxl_size_conditioning_is_per_sample(comfy):
    """Every training sample's ADM vector ``y`` carries its OWN original size, kohya crop top-left and bucket."""
    from lora_loop_testing_pack import RESULTS, _MODEL_CACHE

    from trainer.buckets import plan_buckets
    from trainer.dataset import load_folder

    folder = _make_sized_dataset(os.path.join(comfy["tmp"], "in", "adm"))
    p = graphs.tiny_train_graph(graphs.load_api(SDXL_WF), family="sdxl", dataset=folder, steps=5, resolution=128,
                                save_name="adm")
    for cls in ("KSampler", "VAEDecode", "PreviewImage", "CLIPTextEncode", "EmptyLatentImage"):
        for k in graphs.nodes_of(p, cls):
            del p[k]
    loader = graphs.one(p, "LoraLoopTest_TinyModel")
    p["rec"] = {"class_type": "LoraLoopTest_RecordModelInputs", "inputs": {"model": [loader, 0], "name": "adm"}}
    p[graphs.one(p, "LoraLoop_InjectLoRA")]["inputs"]["model"] = ["rec", 0]
    p[graphs.one(p, "LoraLoop_BucketImages")]["inputs"].update(batch_size=2, max_bucket_reso=256)
    p[graphs.one(p, "LoraLoop_TrainLoRA")]["inputs"]["memory"] = "resident"
    comfy_env.run_prompt(p, "adm")
    calls = RESULTS["adm"]
    assert len(calls) == 5

    # expected values computed here from the dataset records and kohya's bucket assignment
    ds = load_folder(folder)
    ds = ds.with_node_group_settings(dict(resolution=(128, 128), batch_size=2, enable_bucket=True, min_bucket_reso=64,
                                          max_bucket_reso=256, bucket_reso_steps=64, bucket_no_upscale=False))
    plan = plan_buckets(ds)
    buckets = {plan.assignments[i].bucket for i in range(len(ds.images))}
    assert len(buckets) == 3, buckets

    mp, clip, _ = _MODEL_CACHE[("sdxl", 0, "default")]
    embed = mp.model.embedder
    pooled_dim = mp.model.model_config.unet_config["adm_in_channels"] - 6 * 256
    expected = {}
    for i, rec in enumerate(ds.images):
        a = plan.assignments[i]
        assert a.original == (rec.width, rec.height)
        top, left = int(a.crop_ltrb[1]), int(a.crop_ltrb[0])
        size = torch.cat([embed(torch.Tensor([v])) for v in (rec.height, rec.width, top, left, a.bucket[1],
                                                              a.bucket[0])]).flatten()
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(rec.caption), show_pbar=False)
        expected[i] = (cond[0][1]["pooled_output"].flatten()[:pooled_dim].float(), size.float(), a)
    assert any(e[2].crop_ltrb[1] != 0 for e in expected.values()), "no image with a non-zero crop top"

    seen, batch_sizes = set(), []
    for call in calls:
        y = call["y"]
        assert y is not None and y.shape[0] == call["x_shape"][0]
        batch_sizes.append(y.shape[0])
        for row in y:
            who = [i for i, e in expected.items() if torch.allclose(row[:pooled_dim], e[0], atol=1e-5)]
            assert len(who) == 1, "cannot tell which image this sample is"
            i = who[0]
            pooled, size, a = expected[i]
            latent_hw = tuple(call["x_shape"][-2:])
            assert latent_hw == (a.bucket[1] // 8, a.bucket[0] // 8), (ds.images[i].path, latent_hw, a.bucket)
            assert torch.allclose(row[pooled_dim:], size, atol=1e-5), \
                f"{os.path.basename(ds.images[i].path)}: y carries another sample's size/crop/target conditioning"
            seen.add(i)
    assert seen == set(range(len(ds.images))), seen
    assert max(batch_sizes) > 1 and min(batch_sizes) == 1, batch_sizes
