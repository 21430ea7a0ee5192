"""Encode Dataset's max_token_length (sd-scripts' option) on ComfyUI's own tokenizers: 0 keeps the whole caption in
77-token windows as ComfyUI encodes prompts; 75 / 150 / 225 keep 1 / 2 / 3 windows of every CLIP encoder (CLIP-L
and CLIP-G of SDXL alike), T5 is never cut; the cut captions are what trains."""
from __future__ import annotations

import os

import pytest

import comfy_env
import graphs
from comfy_fixtures import comfy  # noqa: F401

WORKFLOW = "train_then_generate_sd15.api.json"
LONG = ", ".join(f"tag{i} word{i}" for i in range(60))  # well over 150 CLIP tokens


def _clip(comfy, family: str):
    ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", f"mtl_{family}"), n=1)
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family=family, dataset=ds, steps=1,
                                save_name=f"mtl_{family}")
    ex, _ = comfy_env.run_prompt(p, f"mtl-{family}")
    from lora_loop_testing_pack import _MODEL_CACHE

    return next(v for k, v in _MODEL_CACHE.items() if k[0] == family)[1], ex


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
def test_captions_are_cut_to_whole_clip_windows(comfy, family):
    encode = comfy_env.pack_module(".trainer.adapter.encode")
    clip, _ = _clip(comfy, family)
    whole = encode.encode_caption(clip, LONG)[0][0]
    tokens = clip.tokenize(LONG)
    windows = {k: len(v) for k, v in tokens.items()}
    clip_keys = [k for k in windows if k in ("l", "g")]
    assert all(windows[k] >= 3 for k in clip_keys), windows
    for limit, n in ((75, 1), (150, 2), (225, 3)):
        cut = encode.encode_caption(clip, LONG, limit)[0][0]
        if family == "flux":  # the sequence is T5's (never cut); CLIP-L gives only the pooled vector
            assert cut.shape == whole.shape
        else:
            assert cut.shape[1] == 77 * n, (limit, cut.shape)
            assert (cut - whole[:, :77 * n]).abs().max() == 0  # the first windows are the same tokens
    short = encode.encode_caption(clip, "sks dog", 75)[0][0]
    assert short.shape == encode.encode_caption(clip, "sks dog")[0][0].shape


def test_training_uses_the_cut_captions(comfy):
    ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", "mtl_train"), n=2, captions=[LONG, "sks " + LONG])
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=ds, steps=2, save_name="mtl_train")
    encode_id = graphs.one(p, "LoraLoop_EncodeDataset")
    p[encode_id]["inputs"]["max_token_length"] = 150
    ex, _ = comfy_env.run_prompt(p, "mtl-train")
    data = ex.caches.outputs.get(encode_id).outputs[0][0]
    assert data.max_token_length == 150
    assert data.text_conds and all(c[0][0].shape[1] == 154 for c in data.text_conds.values())
