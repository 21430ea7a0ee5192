"""Helpers to turn the shipped API-format workflows into tiny, fast test graphs and make datasets."""
from __future__ import annotations

import copy
import json
import os

import numpy as np

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKFLOWS = os.path.join(PACK_ROOT, "tests", "workflows")


def load_api(name: str) -> dict:
    with open(os.path.join(WORKFLOWS, name), encoding="utf-8") as f:
        return json.load(f)


def nodes_of(prompt: dict, class_type: str) -> list[str]:
    return [k for k, v in prompt.items() if v["class_type"] == class_type]


def one(prompt: dict, class_type: str) -> str:
    ids = nodes_of(prompt, class_type)
    assert len(ids) == 1, f"expected one {class_type}, found {ids}"
    return ids[0]


def saved_lora(ex, p: dict, save_id: str | None = None) -> str:
    """The file name Save LoRA reports (relative to the loras folder) after the executor ``ex`` ran ``p``."""
    out = ex.history_result["outputs"][save_id or one(p, "LoraLoop_SaveLoRA")]
    assert out["text"][0].startswith("saved "), out["text"]
    return out["lora_loop_saved"][0]["name"]


def make_dataset(folder: str, n: int = 4, size: tuple[int, int] = (64, 64), seed: int = 0,
                 captions: list[str] | None = None) -> str:
    """Write ``n`` small images with distinct colour patterns and .txt captions into ``folder``."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = size
        base = rng.integers(0, 255, size=3)
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.zeros((h, w, 3), dtype=np.float32)
        img[...] = base
        img[(xx // 8 + yy // 8 + i) % 2 == 0] = 255 - base
        img += rng.normal(0, 8, size=img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(folder, f"img_{i:02d}.png"))
        cap = captions[i] if captions else f"sks pattern {i}, checkerboard"
        with open(os.path.join(folder, f"img_{i:02d}.txt"), "w", encoding="utf-8") as f:
            f.write(cap)
    return folder


# loader class -> the TinyModel output that stands in for each of its outputs (MODEL 0, CLIP 1, VAE 2)
LOADER_OUTPUTS = {"CheckpointLoaderSimple": (0, 1, 2), "UNETLoader": (0,), "DualCLIPLoader": (1,),
                  "CLIPLoader": (1,), "TripleCLIPLoader": (1,), "VAELoader": (2,)}


def swap_loaders(p: dict, family: str, model_seed: int = 0) -> dict:
    """Replace every model loader (checkpoint, or FLUX's separate UNET / CLIP / VAE loaders) by one
    ``LoraLoopTest_TinyModel`` and rewire their consumers to its MODEL / CLIP / VAE outputs (in place)."""
    loaders = {k: LOADER_OUTPUTS[v["class_type"]] for k, v in p.items() if v["class_type"] in LOADER_OUTPUTS}
    assert loaders, "the graph has no model loader to replace"
    tiny = min(loaders, key=lambda k: (len(k), k))
    for k in loaders:
        del p[k]
    p[tiny] = {"class_type": "LoraLoopTest_TinyModel", "inputs": {"family": family, "seed": model_seed}}
    for node in p.values():
        for name, val in node["inputs"].items():
            if isinstance(val, list) and len(val) == 2 and val[0] in loaders:
                node["inputs"][name] = [tiny, loaders[val[0]][val[1]]]
    return p


def tiny_train_graph(api: dict, *, family: str, dataset: str, steps: int = 6, lr: float = 1e-3,
                     resolution: int = 64, save_name: str = "tiny_lora", model_seed: int = 0,
                     train_seed: int = 0) -> dict:
    """The shipped example graph with the model loader(s) replaced by the tiny test model, small
    sizes and steps, fp32 save, and a PreviewImage instead of SaveImage."""
    p = swap_loaders(copy.deepcopy(api), family, model_seed)
    p[one(p, "LoraLoop_LoadDataset")]["inputs"]["path"] = dataset
    b = p[one(p, "LoraLoop_BucketImages")]["inputs"]
    b.update(resolution=resolution, min_bucket_reso=64, max_bucket_reso=max(128, resolution), bucket_reso_steps=64)
    t = p[one(p, "LoraLoop_TrainLoRA")]["inputs"]
    t.update(steps=steps, learning_rate=lr, seed=train_seed)
    s = p[one(p, "LoraLoop_SaveLoRA")]["inputs"]
    s.update(filename=save_name, save_dtype="fp32", if_exists="increment")
    for k in nodes_of(p, "EmptyLatentImage") + nodes_of(p, "EmptySD3LatentImage"):
        p[k]["inputs"].update(width=64, height=64)
    for k in nodes_of(p, "KSampler"):
        p[k]["inputs"].update(steps=2)
    for k in nodes_of(p, "SaveImage"):
        p[k] = {"class_type": "PreviewImage", "inputs": {"images": p[k]["inputs"]["images"]}}
    return p


# Train LoRA's settings sockets and the node type that feeds each
SETTINGS_SOCKETS = {"optimizer_settings": "LoraLoop_OptimizerSettings",
                    "noise_loss_settings": "LoraLoop_NoiseLossSettings",
                    "checkpoint_settings": "LoraLoop_CheckpointSettings",
                    "preview_settings": "LoraLoop_PreviewSettings",
                    "network_training": "LoraLoop_NetworkTraining",
                    "validation_settings": "LoraLoop_ValidationSettings"}
CAPTION_SOCKET = ("caption_settings", "LoraLoop_CaptionSettings")
NETWORK_OPTIONS_SOCKET = ("network_options", "LoraLoop_NetworkOptions")  # Inject LoRA's settings socket


def _inputs_of(class_type: str, object_info: dict | None = None) -> set[str]:
    """Input names of a node type: from a server's /object_info when given, else from the ComfyUI in-process."""
    if object_info is not None:
        it = object_info[class_type]["input"]
    else:
        import nodes

        it = nodes.NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()
    return set(it.get("required", {})) | set(it.get("optional", {}))


def _settings_node(p: dict, owner: str, socket: str, class_type: str) -> dict:
    """The settings node connected to ``owner``'s ``socket`` (created, and connected, when missing)."""
    link = p[owner]["inputs"].get(socket)
    if isinstance(link, list):
        return p[link[0]]["inputs"]
    nid = f"{owner}_{socket}"
    p[nid] = {"class_type": class_type, "inputs": {}}
    p[owner]["inputs"][socket] = [nid, 0]
    return p[nid]["inputs"]


def train_options(p: dict, train_id: str | None = None, *, object_info: dict | None = None, **options) -> dict:
    """Set options on Train LoRA or, for those that live on a settings node, on that node (created and connected
    when missing; a Previews node needs its ``vae``). Works from the live node schemas, so a test names each option
    as users see it; the Previews node's inputs take a ``preview_`` prefix (``preview_steps``, ``preview_vae``).
    ``object_info``: a server's /object_info (browser tier), else the in-process ComfyUI is asked. Returns the
    Train LoRA inputs."""
    train_id = train_id or one(p, "LoraLoop_TrainLoRA")
    own = _inputs_of("LoraLoop_TrainLoRA", object_info)
    for name, value in options.items():
        if name.startswith("preview_"):  # the Previews node's own names (steps, seed, ...) clash with Train LoRA's
            _settings_node(p, train_id, "preview_settings", SETTINGS_SOCKETS["preview_settings"])[name[8:]] = value
            continue
        if name in own:
            p[train_id]["inputs"][name] = value
            continue
        for socket, class_type in SETTINGS_SOCKETS.items():
            if name in _inputs_of(class_type, object_info):
                _settings_node(p, train_id, socket, class_type)[name] = value
                break
        else:
            raise KeyError(f"no LoRA Loop node has an input {name!r}")
    return p[train_id]["inputs"]


def caption_options(p: dict, **options) -> dict:
    """Set caption / augmentation options on the Captions & Augmentation node of Load Dataset (created when
    missing)."""
    ds = one(p, "LoraLoop_LoadDataset")
    node = _settings_node(p, ds, *CAPTION_SOCKET)
    node.update(options)
    return node


def network_options(p: dict, **options) -> dict:
    """Set options on the Network Options node of Inject LoRA (created and connected when missing)."""
    node = _settings_node(p, one(p, "LoraLoop_InjectLoRA"), *NETWORK_OPTIONS_SOCKET)
    node.update(options)
    return node


def add_paired_eval(p: dict, train_id: str, steps: int, text_encoder: bool = False) -> None:
    """A second Train LoRA ("eval") that continues from ``train_id``'s network with a negligible learning rate and
    the same seed: it sees exactly the noise/timestep draws of the first ``steps`` steps, so its losses are the
    trained network's on the same batches (a paired comparison). Saved by "eval_save" so that it runs."""
    p["eval"] = {"class_type": "LoraLoop_TrainLoRA",
                 "inputs": {k: v for k, v in p[train_id]["inputs"].items() if k != "optimizer_settings"}}
    p["eval"]["inputs"].update(network=[train_id, 2], steps=steps, learning_rate=1e-12)
    if text_encoder:
        train_options(p, "eval", text_encoder_lr=1e-12)
    p["eval_save"] = {"class_type": "LoraLoop_SaveLoRA", "inputs": {"network": ["eval", 2], "filename": "eval",
                                                                    "save_dtype": "fp32", "if_exists": "increment"}}


def add_predict_branch(p: dict, model_ref, clip_ref, name: str, prefix: str, sigma: float = 2.0,
                       text: str = "sks pattern 1, checkerboard", save_cond: bool = False, seed: int = 7) -> None:
    """Add CLIPTextEncode -> LoraLoopTest_ModelPredict -> SaveTensor (RESULTS[name]) for ``model_ref``;
    with ``save_cond`` also SaveConditioning (RESULTS[name + "_cond"])."""
    p[f"{prefix}_enc"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip_ref, "text": text}}
    p[f"{prefix}_pred"] = {"class_type": "LoraLoopTest_ModelPredict",
                           "inputs": {"model": model_ref, "positive": [f"{prefix}_enc", 0], "seed": seed,
                                      "width": 64, "height": 64, "sigma": sigma}}
    p[f"{prefix}_save"] = {"class_type": "LoraLoopTest_SaveTensor",
                           "inputs": {"latent": [f"{prefix}_pred", 0], "name": name}}
    if save_cond:
        p[f"{prefix}_cond"] = {"class_type": "LoraLoopTest_SaveConditioning",
                               "inputs": {"conditioning": [f"{prefix}_enc", 0], "name": name + "_cond"}}


def lora_reload_graph(loader_id: str, loader: dict, lora_name: str, name: str) -> dict:
    """A prompt that loads ``lora_name`` with core's LoraLoader onto the MODEL/CLIP of ``loader`` (the loader node
    ``loader_id``) and keeps its prediction as RESULTS[name] (LoraLoopTest_ModelPredict at sigma 1)."""
    return {loader_id: loader,
            "ll": {"class_type": "LoraLoader", "inputs": {"model": [loader_id, 0], "clip": [loader_id, 1],
                                                          "lora_name": lora_name, "strength_model": 1.0,
                                                          "strength_clip": 1.0}},
            "e": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ll", 1], "text": "x"}},
            "k": {"class_type": "LoraLoopTest_ModelPredict", "inputs": {"model": ["ll", 0], "positive": ["e", 0],
                                                                        "seed": 1, "width": 64, "height": 64,
                                                                        "sigma": 1.0}},
            "s": {"class_type": "LoraLoopTest_SaveTensor", "inputs": {"latent": ["k", 0], "name": name}}}
