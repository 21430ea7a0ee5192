"""What a new user meets in the real frontend (both frontends the tier runs): the node search tells LoRA Loop's
trainer from core's, a workflow made for an earlier LoRA Loop opens with its values and a message that says how
to update it, a real run shows what it is doing between steps (preview sampling), Save LoRA says what it saved,
Cancel says which checkpoint it wrote, and a finished job reopened from the queue shows its chart."""
from __future__ import annotations

import json
import os
import urllib.request

import pytest

pytestmark = pytest.mark.browser

LEGACY_UI = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workflows", "legacy",
                         "train_watch_generate_sd15.0.1.ui.json")
TIMEOUT_MS = 30_000

# Collects our events and the frontend's progress_text events; helpers to reach our nodes' elements.
PAGE_HELPERS = r"""
() => {
  const api = window.app.api ?? window.comfyAPI.api.api;
  window.__events = { progress: [], text: [], start: [], saving: [] };
  api.addEventListener("lora_loop.saving", (e) => window.__events.saving.push(e.detail));
  api.addEventListener("lora_loop.progress", (e) => window.__events.progress.push(e.detail));
  api.addEventListener("progress_text", (e) => window.__events.text.push(e.detail));
  api.addEventListener("execution_start", (e) => window.__events.start.push(e.detail));
  window.__ll = {
    api,
    node(type) { return window.app.rootGraph.nodes.find((n) => n.comfyClass === type); },
    chart(type = "LoraLoop_TrainLoRA") { const n = this.node(type); return n && n[Symbol.for("lora_loop.chart")]; },
    saved() { const n = this.node("LoraLoop_SaveLoRA"); return n && n[Symbol.for("lora_loop.saved")]; },
  };
}
"""


def close_dialogs(page, settle_ms: int = 1500, timeout_ms: int = TIMEOUT_MS) -> None:
    """Close what the frontend opens by itself at a first start (the Templates dialog), like a user: with its
    close (X) button. Waits until no dialog has been open for ``settle_ms`` (it can open late on a busy machine)."""
    quiet, waited = 0, 0
    while quiet < settle_ms and waited < timeout_ms:
        xy = page.evaluate("""() => {
            const d = document.querySelector('[role=dialog]');
            if (!d) return null;
            const box = d.getBoundingClientRect();
            const all = [...d.querySelectorAll('button')];
            const labelled = all.filter((b) => /close/i.test(b.getAttribute('aria-label') ?? ''));
            const top = (labelled.length ? labelled : all).map((b) => b.getBoundingClientRect())
                .filter((r) => r.width > 0 && r.top < box.top + 80);
            top.sort((a, b) => b.right - a.right);
            return top.length ? [top[0].x + top[0].width / 2, top[0].y + top[0].height / 2] : [0, 0];
        }""")
        if xy is None:
            quiet += 250
        else:
            quiet = 0
            page.mouse.click(*xy)
        page.wait_for_timeout(250)
        waited += 250


def _require_pack(server):
    for node in ("LoraLoop_TrainLoRA", "LoraLoop_PreviewSettings", "LoraLoopTest_TinyModel"):
        if not server.has_node(node):
            pytest.skip(f"{node} is not registered on the server:\n{server.log_tail(2000)}")


def test_node_search_tells_the_trainers_apart(comfy_page, comfy_server):
    _require_pack(comfy_server)
    page = comfy_page
    names = {k: v["display_name"] for k, v in comfy_server.object_info.items()}
    ours = {k: v for k, v in names.items() if k.startswith("LoraLoop_")}
    assert all(v.endswith("(LoRA Loop)") for v in ours.values()), ours
    core = {v for k, v in names.items() if not k.startswith(("LoraLoop", "LoraLoopTest"))}
    assert not core & set(ours.values()), core & set(ours.values())
    # the frontend's own search box, as a user opens it (double-click on an empty canvas)
    page.evaluate("() => window.app.graph.clear()")
    focused = "() => document.activeElement && document.activeElement.tagName === 'INPUT'"
    for _ in range(6):  # on a busy machine the canvas may not take the first double-click
        close_dialogs(page)
        page.mouse.dblclick(700, 500)
        try:
            page.wait_for_function(focused, timeout=5_000)
            break
        except Exception:
            page.keyboard.press("Escape")
    page.wait_for_function(focused, timeout=TIMEOUT_MS)
    page.keyboard.type("Train LoRA")
    page.wait_for_function("() => Array.from(document.querySelectorAll('[role=option]')).some("
                           "o => o.innerText.includes('(LoRA Loop)'))", timeout=TIMEOUT_MS)
    options = page.evaluate("() => Array.from(document.querySelectorAll('[role=option]')).map(o => o.innerText)")
    titles = [o.split("\n")[0].strip() for o in options if "Train LoRA" in o]
    assert "Train LoRA (LoRA Loop)" in titles and "Train LoRA" in titles, options  # two names, not one twice
    page.keyboard.press("Escape")


def test_old_workflow_opens_with_its_values_and_says_how_to_update(comfy_page, comfy_server):
    _require_pack(comfy_server)
    page = comfy_page
    with open(LEGACY_UI, encoding="utf-8") as f:
        old = json.load(f)
    res = page.evaluate("""async (wf) => {
        await window.app.loadGraphData(wf);
        const n = window.app.rootGraph.nodes.find((x) => x.comfyClass === "LoraLoop_TrainLoRA");
        const p = await window.app.graphToPrompt();
        const sent = p.workflow.nodes.find((x) => String(x.id) === String(n.id));
        return { values: Object.fromEntries(n.widgets.filter((w) => w.serialize !== false).map((w) => [w.name, w.value])),
                 inputs: n.inputs.map((i) => i.name), moved: n.properties.lora_loop_moved,
                 sentMoved: sent.properties.lora_loop_moved, prompt: p.output[String(n.id)].inputs };
    }""", old)
    v = res["values"]
    assert (v["steps"], v["learning_rate"], v["optimizer"], v["lr_scheduler"], v["seed"], v["output_name"]) == \
        (1000, 0.0001, "AdamW", "constant", 0, "my_lora"), v
    assert v["memory"] == "auto" and v["blocks_to_swap"] == 0  # 0.1's gradient_checkpointing false
    assert "vae" not in res["inputs"] and "train_state" not in res["inputs"]
    assert {"optimizer_settings", "noise_loss_settings", "checkpoint_settings", "preview_settings"} <= set(res["inputs"])
    assert res["moved"]["preview_prompts"].startswith("a photo of sks dog") and res["moved"]["save_every_n_steps"] == 250
    assert res["sentMoved"] == res["moved"]  # what the backend check reads (extra_pnginfo.workflow)
    assert "noise_offset" not in res["prompt"]
    page.wait_for_function("() => Array.from(document.querySelectorAll('.p-toast-message, [role=alert]'))"
                           ".some(t => t.innerText.includes('earlier LoRA Loop'))", timeout=TIMEOUT_MS)
    toast = page.evaluate("() => Array.from(document.querySelectorAll('.p-toast-message, [role=alert]'))"
                          ".map(t => t.innerText).find(t => t.includes('earlier LoRA Loop'))")
    for part in ("Previews (LoRA Loop)", "preview_settings", "Checkpoints & Resume (LoRA Loop)", "save_every_n_steps=250",
                 "vae connected"):
        assert part in toast, (part, toast)
    # following the message: a Previews node connected to preview_settings takes those values off the node
    left = page.evaluate("""() => {
        const train = window.app.rootGraph.nodes.find((x) => x.comfyClass === "LoraLoop_TrainLoRA");
        const prev = window.LiteGraph.createNode("LoraLoop_PreviewSettings");
        window.app.rootGraph.add(prev);
        prev.connect(0, train, train.inputs.findIndex((i) => i.name === "preview_settings"));
        return Object.keys(train.properties.lora_loop_moved ?? {});
    }""")
    assert "save_every_n_steps" in left and not [n for n in left if n.startswith("preview_") or n == "vae"], left
    assert page.problems.ours() == [], page.problems.ours()


def test_new_nodes_keep_their_seed_fixed(comfy_page, comfy_server):
    """The frontend would randomise a seed after every Run, which retrains instead of continuing."""
    _require_pack(comfy_server)
    values = comfy_page.evaluate("""() => ["LoraLoop_TrainLoRA", "LoraLoop_PreviewSettings"].map((t) => {
        const n = window.LiteGraph.createNode(t);
        window.app.rootGraph.add(n);
        return n.widgets.filter((w) => w.name === "control_after_generate").map((w) => w.value);
    })""")
    assert values == [["fixed"], ["fixed"]], values


def _training_prompt(server, name: str, steps: int, previews: bool, seed: int = 0) -> dict:
    import graphs

    ds = os.path.join(server.tmp, "in", "new_user_ds")
    if not os.path.isdir(ds):
        graphs.make_dataset(ds, n=3)
    p = graphs.tiny_train_graph(graphs.load_api("train_then_generate_sd15.api.json"), family="sd15", dataset=ds,
                                steps=steps, save_name=name, train_seed=seed)
    train = graphs.one(p, "LoraLoop_TrainLoRA")
    loader = graphs.one(p, "LoraLoopTest_TinyModel")
    graphs.train_options(p, train, object_info=server.object_info, output_name=name)
    if previews:
        graphs.train_options(p, train, object_info=server.object_info, preview_vae=[loader, 2], preview_prompts="sks pattern 1\nsks pattern 2",
                             preview_steps=2, preview_cfg=1.0, preview_width=64, preview_height=64,
                             preview_every_n_steps=2)
    p[graphs.one(p, "LoraLoop_SaveLoRA")]["inputs"].update(verify=True, model=[train, 0], clip=[train, 1])
    return p


def _queue_from_page(page, prompt: dict) -> str:
    """Load the API prompt into the page's graph and press Run the way the frontend does (the workflow goes with
    it, as extra_pnginfo); returns the prompt id."""
    page.evaluate("async (p) => { await window.app.loadApiJson(p, 'lora_loop_new_user'); }", prompt)
    page.evaluate("() => { window.__events.start = []; return window.app.queuePrompt(0, 1); }")
    page.wait_for_function("() => window.__events.start.length > 0", timeout=60_000)
    return page.evaluate("() => window.__events.start[0].prompt_id")


def test_a_real_run_says_what_it_does_and_what_it_saved(comfy_page, comfy_server):
    _require_pack(comfy_server)
    page = comfy_page
    page.evaluate(PAGE_HELPERS)
    prompt = _training_prompt(comfy_server, "new_user_run", steps=4, previews=True)
    prompt_id = _queue_from_page(page, prompt)
    entry = comfy_server.wait_history(prompt_id, timeout=600)
    assert entry["status"]["status_str"] == "success", entry["status"]
    page.wait_for_function("() => window.__ll.chart().state.status === 'done'", timeout=60_000)
    events = page.evaluate("() => window.__events.progress")
    phases = [e["phase"] for e in events if e.get("phase")]
    assert "loading the model for training" in phases, phases
    sampling = [p for p in phases if p.startswith("sampling preview")]
    # each image's start is sent at once; its sampler steps at most every 0.25 s (these tiny ones are faster)
    assert "sampling preview 1/2, step 0/2" in sampling and "sampling preview 2/2, step 0/2" in sampling, sampling
    assert any(e.get("eta") is not None for e in events if e.get("phase", "").startswith("sampling preview"))
    texts = [t.get("text", "") for t in page.evaluate("() => window.__events.text")]
    assert any("sampling preview" in t for t in texts), texts  # the status line on the node (progress_text)
    # Save LoRA shows what it saved (and the verify result) on the node itself
    page.wait_for_function("() => (window.__ll.saved()?.textContent ?? '').startsWith('saved new_user_run')",
                           timeout=TIMEOUT_MS)
    saved = page.evaluate("() => window.__ll.saved().textContent")
    assert "KB" in saved and "modules" in saved and "verify: 0 unloaded keys" in saved, saved
    saving = [e["text"] for e in page.evaluate("() => window.__events.saving")]
    assert saving[0] == "saving new_user_run..." and "verifying through ComfyUI's LoRA loader" in saving[-1], saving
    page.evaluate("() => { window.app.canvas.centerOnNode(window.__ll.node('LoraLoop_SaveLoRA')); "
                  "window.app.canvas.setDirty(true, true); }")
    page.wait_for_function("() => window.__ll.saved().isConnected && window.__ll.saved().offsetHeight > 10",
                           timeout=TIMEOUT_MS)  # laid out on the node, where the user sees it

    # reopened from the queue ("Open as workflow in new tab" opens a temporary 'Job <id>.json' workflow)
    workflow = entry["prompt"][3]["extra_pnginfo"]["workflow"]
    opened = page.evaluate("""async ([id, wf]) => {
        const ws = window.app.extensionManager.workflow;
        if (typeof ws?.createTemporary !== "function" || typeof ws?.openWorkflow !== "function") return false;
        await ws.openWorkflow(ws.createTemporary(`Job ${id}.json`, wf));
        return true;
    }""", [prompt_id, workflow])
    if not opened:
        pytest.skip("this frontend's workflow store has no createTemporary/openWorkflow")
    page.wait_for_function("() => { const c = window.__ll.chart(); return c && c.state.store.count === 4 && "
                           "c.state.status === 'done'; }", timeout=TIMEOUT_MS)
    page.wait_for_function("() => (window.__ll.saved()?.textContent ?? '').startsWith('saved new_user_run')",
                           timeout=TIMEOUT_MS)
    assert page.problems.ours() == [], page.problems.ours()


def test_cancel_says_which_checkpoint_it_wrote(comfy_page, comfy_server):
    _require_pack(comfy_server)
    page = comfy_page
    page.evaluate(PAGE_HELPERS)
    prompt = _training_prompt(comfy_server, "new_user_cancel", steps=200, previews=False)
    prompt_id = _queue_from_page(page, prompt)
    page.wait_for_function("() => (window.__ll.chart()?.state.step ?? 0) >= 2", timeout=120_000)
    urllib.request.urlopen(urllib.request.Request(comfy_server.url + "/interrupt", data=b"{}", method="POST",
                                                  headers={"Content-Type": "application/json"})).read()
    comfy_server.wait_history(prompt_id, timeout=120)
    page.wait_for_function("() => window.__ll.chart().state.status === 'cancelled'", timeout=TIMEOUT_MS)
    note = page.evaluate("() => document.querySelector('[data-testid=\"lora-loop-chart-note\"]').textContent")
    assert note.startswith("saved on Cancel: new_user_cancel_checkpoints/new_user_cancel-step"), note
    step = int(note.split("-step")[1].split(".")[0])
    from comfy_server import http_json

    listed = http_json(comfy_server.url + "/models/loras")  # what every LoRA loader lists
    assert f"new_user_cancel_checkpoints/new_user_cancel-step{step:08d}.safetensors" in listed, listed
    assert "cancelled in" in page.evaluate("() => window.__ll.chart().headerEl.textContent")
    assert page.problems.ours() == [], page.problems.ours()
