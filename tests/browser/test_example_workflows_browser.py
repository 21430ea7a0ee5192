"""The shipped UI workflows load in the real ComfyUI frontend without errors, and the frontend's own
graphToPrompt turns each into exactly its API twin (the one the Python tests run)."""
from __future__ import annotations

import json
import os

import pytest

from workflows_index import EXAMPLES

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("ex", EXAMPLES, ids=[e["ui"] for e in EXAMPLES])
def test_example_loads_and_converts_to_its_api_twin(comfy_page, comfy_server, ex):
    if not comfy_server.has_node("LoraLoop_TrainLoRA"):
        pytest.skip("the LoRA Loop nodes are not registered on the server")
    with open(os.path.join(PACK_ROOT, "example_workflows", ex["ui"]), encoding="utf-8") as f:
        ui = json.load(f)
    with open(os.path.join(PACK_ROOT, "tests", "workflows", ex["api"]), encoding="utf-8") as f:
        api = json.load(f)
    out = comfy_page.evaluate("""async (wf) => {
        await window.app.loadGraphData(wf);
        const p = await window.app.graphToPrompt();
        return p.output;
    }""", ui)
    assert set(out) == set(api)
    for nid, node in api.items():
        assert out[nid]["class_type"] == node["class_type"], nid
        got = {k: out[nid]["inputs"].get(k) for k in node["inputs"]}
        assert got == node["inputs"], (nid, got, node["inputs"])
    assert comfy_page.problems.ours() == [], comfy_page.problems.ours()
