"""The live loss chart in a real browser against a real ComfyUI server (see conftest.py).

Behavioural checks on data-* attributes, never pixels; synthetic server events go through the
frontend's own api.dispatchCustomEvent, so the code path is the one a websocket message takes."""
from __future__ import annotations

import json
import os

import pytest

pytestmark = pytest.mark.browser

NODE = "LoraLoop_TrainLoRA"
EXTENSION = "lora_loop.lossChart"
CHART = '[data-testid="lora-loop-chart"]'
TIMEOUT_MS = 15_000

# JS helpers installed into the page once per test.
PAGE_HELPERS = r"""
() => {
  const api = window.app.api ?? window.comfyAPI.api.api;
  const chartOf = (node) => node && node[Symbol.for("lora_loop.chart")];
  window.__ll = {
    api,
    chartOf,
    add(pos = [200, 200]) {
      const node = window.LiteGraph.createNode("LoraLoop_TrainLoRA");
      if (!node) throw new Error("LiteGraph.createNode('LoraLoop_TrainLoRA') returned null");
      node.pos = pos;
      window.app.rootGraph.add(node);
      return node;
    },
    send(detail) { api.dispatchCustomEvent("lora_loop.progress", detail); },
    attrs(node) {
      const c = chartOf(node);
      if (!c) return null;
      const d = c.el.dataset;
      return { points: Number(d.points), step: Number(d.step), total: Number(d.total), status: d.status,
               header: c.headerEl.textContent, testid: d.testid };
    },
  };
}
"""


def points(start: int, n: int) -> list[list[float]]:
    return [[s, 1.0 / s, 1e-4] for s in range(start, start + n)]


def event(node_id: str, step: int, pts, *, prompt_id="p-browser", total=100, status="training", eta=12.0) -> dict:
    return {"node": node_id, "display_node": node_id, "prompt_id": prompt_id, "step": step, "total": total,
            "points": pts, "elapsed": 1.5, "eta": eta, "status": status}


def require_node(server):
    if not server.has_node(NODE):
        pytest.skip(f"{NODE} is not registered by the server yet (the pack's nodes failed to load or are "
                    f"unfinished); see the server log:\n{server.log_tail(2000)}")


def install_helpers(page):
    page.evaluate(PAGE_HELPERS)


def wait_attr(page, js_node_expr: str, key: str, expected, timeout=TIMEOUT_MS):
    """Poll (no fixed sleeps) until chart attribute `key` of the node equals `expected`."""
    page.wait_for_function(
        f"([key, expected]) => {{ const a = window.__ll.attrs({js_node_expr}); return a && a[key] === expected; }}",
        arg=[key, expected], timeout=timeout)


# ---- (1) extension loads cleanly ----------------------------------------------------------------

def test_extension_registered_without_errors(comfy_page, comfy_server):
    page = comfy_page
    listed = page.evaluate("() => fetch('/extensions').then(r => r.json())")
    ours = sorted(u for u in listed if u.startswith("/extensions/lora_loop/"))
    assert "/extensions/lora_loop/loss_chart.js" in ours, listed
    assert page.evaluate("(name) => window.app.extensions.filter(e => e.name === name).length", EXTENSION) == 1
    # Every module of ours actually loaded (a failed import would leave the extension unregistered
    # or log an error naming the file).
    assert page.problems.ours() == [], "\n".join(page.problems.ours())
    # Only scripts/app.js and scripts/api.js are imported: no legacy-API deprecation warning.
    assert "deprecated legacy API" not in comfy_server.log_tail(1_000_000)


# ---- (2) chart on a top-level node --------------------------------------------------------------

def test_chart_widget_live_events_and_final_output(comfy_page, comfy_server):
    require_node(comfy_server)
    page = comfy_page
    install_helpers(page)
    node_id = page.evaluate("() => { window.__n = window.__ll.add(); return String(window.__n.id); }")
    chart = page.locator(CHART)
    from playwright.sync_api import expect

    expect(chart).to_have_count(1, timeout=TIMEOUT_MS)
    assert page.evaluate("() => document.querySelector('[data-testid=\"lora-loop-chart\"]') === "
                         "window.__ll.chartOf(window.__n).el")
    expect(chart).to_have_attribute("data-points", "0")
    expect(chart).to_have_attribute("data-status", "idle")

    page.evaluate("(d) => window.__ll.send(d)", event(node_id, 3, points(1, 3)))
    expect(chart).to_have_attribute("data-points", "3", timeout=TIMEOUT_MS)
    page.evaluate("(d) => window.__ll.send(d)", event(node_id, 8, points(4, 5), eta=123.0))
    expect(chart).to_have_attribute("data-points", "8", timeout=TIMEOUT_MS)
    expect(chart).to_have_attribute("data-step", "8")
    expect(chart).to_have_attribute("data-total", "100")
    expect(chart).to_have_attribute("data-status", "training")
    assert page.evaluate("() => window.__ll.attrs(window.__n).header") == \
        "step 8/100 · loss 0.1250 · lr 1.0e-4 · ETA 2:03"
    # Re-delivered event: no duplicates. Event for another node id: ignored.
    page.evaluate("(d) => window.__ll.send(d)", event(node_id, 8, points(4, 5)))
    page.evaluate("(d) => window.__ll.send(d)", event("99999", 20, points(9, 12)))
    page.evaluate("(d) => window.__ll.send(d)", event(node_id, 9, points(9, 1)))
    expect(chart).to_have_attribute("data-points", "9", timeout=TIMEOUT_MS)

    # The canvas got drawn at a real size (the DOM widget was laid out by the frontend).
    page.wait_for_function("() => { const c = window.__ll.chartOf(window.__n).canvas; return c.width > 10 && c.height > 10; }",
                           timeout=TIMEOUT_MS)

    # Final UI output through node.onExecuted (what the 'executed' message and history do).
    final = {"steps": list(range(1, 101)), "loss": [1.0 / s for s in range(1, 101)], "lr": [1e-4] * 100,
             "total": 100, "elapsed": 3723.0, "status": "done"}
    page.evaluate("(out) => window.__n.onExecuted({lora_loop_chart: [out]})", final)
    expect(chart).to_have_attribute("data-points", "100", timeout=TIMEOUT_MS)
    expect(chart).to_have_attribute("data-status", "done")
    assert page.evaluate("() => window.__ll.attrs(window.__n).header") == \
        "step 100/100 · loss 0.0100 · lr 1.0e-4 · done in 1:02:03"
    # Outputs without our key leave the chart alone.
    page.evaluate("() => window.__n.onExecuted({text: ['x']})")
    expect(chart).to_have_attribute("data-points", "100")
    assert page.problems.ours() == [], "\n".join(page.problems.ours())


def test_chart_is_not_serialized(comfy_page, comfy_server):
    require_node(comfy_server)
    page = comfy_page
    install_helpers(page)
    page.evaluate("() => { window.__n = window.__ll.add(); }")
    node_id = page.evaluate("() => String(window.__n.id)")
    page.evaluate("(d) => window.__ll.send(d)", event(node_id, 5, points(1, 5)))
    wait_attr(page, "window.__n", "points", 5)
    res = page.evaluate("""async () => {
        const n = window.__n;
        const names = n.widgets.map(w => w.name);
        const wf = window.app.graph.serialize();
        const sn = wf.nodes.find(x => String(x.id) === String(n.id));
        const p = await window.app.graphToPrompt();
        const valuesBefore = n.widgets.filter(w => w.serialize !== false).map(w => w.value);
        return { names, values: sn.widgets_values, json: JSON.stringify(wf),
                 inputs: p.output[String(n.id)].inputs, valuesBefore, workflowNode: sn };
    }""")
    assert "lora_loop_chart" in res["names"]
    chart_index = res["names"].index("lora_loop_chart")
    values = res["values"] or []
    assert len(values) <= chart_index or values[chart_index] is None, \
        f"chart widget leaked into widgets_values: {values}"
    assert len([v for v in values if v is not None]) == len(res["valuesBefore"]), (values, res["valuesBefore"])
    assert "lora_loop_chart" not in res["inputs"], res["inputs"]
    assert "lora-loop-chart" not in res["json"] and "0.2500" not in res["json"]

    # Round trip: loading the saved workflow restores the node's own widget values and a fresh chart.
    after = page.evaluate("""async (wf) => {
        await window.app.loadGraphData(wf);
        const n = window.app.graph.nodes.find(x => x.comfyClass === "LoraLoop_TrainLoRA");
        return { values: n.widgets.filter(w => w.serialize !== false).map(w => w.value),
                 attrs: window.__ll.attrs(n), charts: n.widgets.filter(w => w.name === "lora_loop_chart").length };
    }""", json.loads(res["json"]))
    assert after["values"] == res["valuesBefore"]
    assert after["charts"] == 1
    assert after["attrs"]["points"] == 0


def test_chart_in_vue_nodes_mode(comfy_page, comfy_server):
    """The same DOM widget works when the frontend renders nodes with Vue (Comfy.VueNodes.Enabled)."""
    require_node(comfy_server)
    page = comfy_page
    install_helpers(page)
    setting = "Comfy.VueNodes.Enabled"
    if page.evaluate("(id) => window.app.extensionManager.setting.get(id) === undefined", setting):
        pytest.skip(f"this frontend has no {setting} setting")
    page.evaluate("(id) => window.app.extensionManager.setting.set(id, true)", setting)
    try:
        node_id = page.evaluate("() => { window.__n = window.__ll.add([100, 100]); return String(window.__n.id); }")
        page.evaluate("(d) => window.__ll.send(d)", event(node_id, 3, points(1, 3)))
        wait_attr(page, "window.__n", "points", 3)
        # Mounted in the document and laid out at a real size by the Vue node renderer.
        page.wait_for_function("() => { const c = window.__ll.chartOf(window.__n); "
                               "return c.el.isConnected && c.canvas.width > 10 && c.canvas.height > 10; }",
                               timeout=TIMEOUT_MS)
    finally:
        # Settings are stored server-side for the whole session: switch back for the other tests.
        page.evaluate("(id) => window.app.extensionManager.setting.set(id, false)", setting)
    assert page.problems.ours() == [], "\n".join(page.problems.ours())


# ---- (3) node inside a subgraph: colon execution id ---------------------------------------------

def test_chart_in_subgraph_uses_execution_id(comfy_page, comfy_server):
    require_node(comfy_server)
    page = comfy_page
    install_helpers(page)
    ids = page.evaluate("""() => {
        const graph = window.app.rootGraph;
        if (typeof graph.convertToSubgraph !== "function") return null;
        const n = window.__ll.add();
        const { node: sg, subgraph } = graph.convertToSubgraph(new Set([n]));
        const inner = subgraph.nodes.find(x => x.comfyClass === "LoraLoop_TrainLoRA");
        window.__sg = sg; window.__inner = inner;
        return { outer: String(sg.id), inner: inner ? String(inner.id) : null,
                 hasChart: !!window.__ll.chartOf(inner) };
    }""")
    if ids is None:
        pytest.skip("this frontend has no LGraph.convertToSubgraph; cannot build a subgraph in the test")
    assert ids["inner"] is not None and ids["hasChart"], ids
    exec_id = f"{ids['outer']}:{ids['inner']}"
    page.evaluate("(d) => window.__ll.send(d)", event(exec_id, 4, points(1, 4)))
    wait_attr(page, "window.__inner", "points", 4)
    # The bare inner id does not address the inner node (it is not a top-level node id): its
    # points 5-6 are dropped, so the next exec-id event (step 7) brings the count to 5, not 7.
    if not page.evaluate("(id) => !!window.app.rootGraph.getNodeById(Number(id))", ids["inner"]):
        page.evaluate("(d) => window.__ll.send(d)", event(ids["inner"], 6, points(5, 2)))
    page.evaluate("(d) => window.__ll.send(d)", event(exec_id, 7, points(7, 1), status="done", eta=None))
    wait_attr(page, "window.__inner", "status", "done")
    assert page.evaluate("() => window.__ll.attrs(window.__inner).points") == 5
    assert page.problems.ours() == [], "\n".join(page.problems.ours())


# ---- real training run (filled in by the lead) --------------------------------------------------

def real_training_prompt(server, seed: int = 0) -> dict:
    """The shipped SD1.5 example graph, shrunk to a tiny real training run: the tiny test model, a
    generated 3-image dataset in the server's input folder, 12 steps."""
    import graphs

    ds = graphs.make_dataset(os.path.join(server.tmp, "in", "chart_ds"), n=3)
    p = graphs.tiny_train_graph(graphs.load_api("train_then_generate_sd15.api.json"), family="sd15",
                                dataset=ds, steps=12, save_name="chart_run", train_seed=seed)
    return p


def train_node_id(prompt: dict) -> str:
    import graphs

    return graphs.one(prompt, "LoraLoop_TrainLoRA")


def test_real_training_run_draws_points(comfy_page, comfy_server):
    """Queues a real tiny training prompt on the server and checks that the Python side's
    'lora_loop.progress' events and final UI output reach the chart.

    1. Over our own websocket (ComfyServer.run_prompt_ws): the events follow the protocol.
    2. In the page: the same prompt, loaded into the graph and queued under the page's client id,
       makes the chart's data-points grow and end with status "done"."""
    require_node(comfy_server)
    if not comfy_server.has_node("LoraLoopTest_TinyModel"):
        pytest.skip("the test-only node pack (tests/support/testing_pack) is not loaded on the server")
    prompt = real_training_prompt(comfy_server)
    TRAIN_NODE_ID = train_node_id(prompt)

    run = comfy_server.run_prompt_ws(prompt, timeout=600)
    assert run.end == "execution_success", run.messages[-5:]
    events = run.events("lora_loop.progress")
    assert events, "no lora_loop.progress events"
    steps = [p[0] for e in events for p in e["points"]]
    assert steps == sorted(steps) and len(steps) == len(set(steps)), steps
    assert events[-1]["status"] == "done" and events[-1]["step"] == events[-1]["total"]
    assert all(e["node"] == TRAIN_NODE_ID and e["prompt_id"] == run.prompt_id for e in events)
    final = run.history["outputs"][TRAIN_NODE_ID]["lora_loop_chart"][0]
    assert final["steps"] == steps and final["status"] == "done"

    page = comfy_page
    install_helpers(page)
    client_id = page.evaluate("""async (p) => {
        await window.app.loadApiJson(p, "lora_loop_real_run");
        window.__n = window.app.rootGraph.getNodeById(Number(%s));
        return window.__ll.api.clientId ?? window.__ll.api.initialClientId;
    }""" % json.dumps(TRAIN_NODE_ID), prompt)
    assert client_id, "the page has no websocket client id"
    # a different training seed: the page's run really trains (not served from ComfyUI's cache)
    prompt = real_training_prompt(comfy_server, seed=1)
    prompt_id = comfy_server.queue_prompt(prompt, client_id)
    entry = comfy_server.wait_history(prompt_id, timeout=600)
    assert entry["status"]["status_str"] == "success", entry["status"]
    wait_attr(page, "window.__n", "status", "done", timeout=60_000)
    assert page.evaluate("() => window.__ll.attrs(window.__n).points") == len(final["steps"])


# ---- validation curve ---------------------------------------------------------------------------

def test_chart_draws_validation_points(comfy_page, comfy_server):
    """Validation points from live events and from the final output: counted on the chart, shown in the header;
    without them the header and the attribute stay as before."""
    require_node(comfy_server)
    page = comfy_page
    install_helpers(page)
    node_id = page.evaluate("() => { window.__n = window.__ll.add(); return String(window.__n.id); }")
    chart = page.locator(CHART)
    from playwright.sync_api import expect

    expect(chart).to_have_count(1, timeout=TIMEOUT_MS)
    page.evaluate("(d) => window.__ll.send(d)", event(node_id, 4, points(1, 4)))
    expect(chart).to_have_attribute("data-points", "4", timeout=TIMEOUT_MS)
    expect(chart).to_have_attribute("data-validation", "0")
    assert "val" not in page.evaluate("() => window.__ll.attrs(window.__n).header")
    page.evaluate("(d) => window.__ll.send(d)", {**event(node_id, 8, points(5, 4)), "validation": [[4, 0.5], [8, 0.4]]})
    expect(chart).to_have_attribute("data-validation", "2", timeout=TIMEOUT_MS)
    assert page.evaluate("() => window.__ll.attrs(window.__n).header") == \
        "step 8/100 · loss 0.1250 · val 0.4000 · lr 1.0e-4 · ETA 0:12"
    final = {"steps": list(range(1, 13)), "loss": [1.0 / s for s in range(1, 13)], "lr": [1e-4] * 12,
             "total": 12, "elapsed": 3.0, "status": "done", "validation": [[4, 0.5], [8, 0.4], [12, 0.35]]}
    page.evaluate("(out) => window.__n.onExecuted({lora_loop_chart: [out]})", final)
    expect(chart).to_have_attribute("data-validation", "3", timeout=TIMEOUT_MS)
    assert page.problems.ours() == [], "\n".join(page.problems.ours())
