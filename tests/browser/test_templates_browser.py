"""The shipped templates as a user opens them on a laptop screen (1366 x 768), on both frontends: each opens
with its note and Train LoRA in view, and the watch template, run for real on the tiny model, shows Train LoRA
with its chart and the latest preview without scrolling."""
from __future__ import annotations

import json
import os

import pytest

from workflows_index import EXAMPLES

pytestmark = pytest.mark.browser

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_JS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "js", "run_template_tiny.js")
LAPTOP = {"width": 1366, "height": 768}


@pytest.fixture
def laptop_page(comfy_page):
    comfy_page.set_viewport_size(LAPTOP)
    from test_new_user_browser import close_dialogs

    close_dialogs(comfy_page)
    return comfy_page


def _ui(ex):
    with open(os.path.join(PACK_ROOT, "example_workflows", ex["ui"]), encoding="utf-8") as f:
        return json.load(f)


def _inside(box, outer, slack=1.0):
    return box[0] >= outer[0] - slack and box[1] >= outer[1] - slack and box[2] <= outer[2] + slack and \
        box[3] <= outer[3] + slack


@pytest.mark.parametrize("ex", EXAMPLES, ids=[e["ui"] for e in EXAMPLES])
def test_template_opens_with_its_note_and_train_lora_in_view(laptop_page, comfy_server, ex):
    if not comfy_server.has_node("LoraLoop_TrainLoRA"):
        pytest.skip("the LoRA Loop nodes are not registered on the server")
    page = laptop_page
    res = page.evaluate("""async (wf) => {
        await window.app.loadGraphData(wf);
        await new Promise((r) => setTimeout(r, 500));
        const app = window.app, c = app.canvas, ds = c.ds, rect = c.canvas.getBoundingClientRect();
        const box = (n) => {
            const t = LiteGraph.NODE_TITLE_HEIGHT ?? 30;
            return [rect.left + (n.pos[0] + ds.offset[0]) * ds.scale, rect.top + (n.pos[1] - t + ds.offset[1]) * ds.scale,
                    rect.left + (n.pos[0] + n.size[0] + ds.offset[0]) * ds.scale,
                    rect.top + (n.pos[1] + n.size[1] + ds.offset[1]) * ds.scale];
        };
        const nodes = app.rootGraph.nodes;
        const train = nodes.find((n) => n.comfyClass === "LoraLoop_TrainLoRA");
        const note = nodes.find((n) => n.type === "MarkdownNote");
        const chart = train[Symbol.for("lora_loop.chart")].el.getBoundingClientRect();
        const boxes = nodes.map((n) => [n.title, n.pos[0], n.pos[1] - (LiteGraph.NODE_TITLE_HEIGHT ?? 30),
                                         n.pos[0] + n.size[0], n.pos[1] + n.size[1]]);
        return { train: box(train), note: note ? box(note) : null, scale: ds.scale, boxes,
                 chart: [chart.left, chart.top, chart.right, chart.bottom],
                 noteText: note ? note.widgets[0].value : "", viewport: [0, 0, window.innerWidth, window.innerHeight] };
    }""", _ui(ex))
    assert res["note"] is not None and "Quick test on a CPU" in res["noteText"]
    assert res["scale"] >= 0.75, res["scale"]  # text is still drawn (LiteGraph hides it below ~0.6)
    assert _inside(res["train"], res["viewport"]), res
    assert _inside(res["note"], res["viewport"]), res
    assert res["chart"][3] - res["chart"][1] >= 100, res  # the chart has room
    b = res["boxes"]  # as the frontend sized them: no node covers another (title bars included)
    covered = [(p[0], q[0]) for i, p in enumerate(b) for q in b[i + 1:]
               if min(p[3], q[3]) > max(p[1], q[1]) and min(p[4], q[4]) > max(p[2], q[2])]
    assert covered == [], covered


def test_watch_template_run_shows_chart_and_preview_on_a_laptop_screen(laptop_page, comfy_server):
    for node in ("LoraLoop_TrainLoRA", "LoraLoopTest_TinyModel"):
        if not comfy_server.has_node(node):
            pytest.skip(f"{node} is not registered on the server")
    import graphs

    graphs.make_dataset(os.path.join(comfy_server.tmp, "in", "my_dataset"), n=3)  # the template's own folder name
    page = laptop_page
    ex = next(e for e in EXAMPLES if e["api"] == "train_watch_generate_sd15.api.json")
    with open(RUN_JS, encoding="utf-8") as f:
        run = f.read()
    assert page.evaluate(run, [_ui(ex), {"steps": 4}]) == "queued"
    page.wait_for_function("() => window.__done", timeout=600_000)
    page.wait_for_function("() => window.__geometry().previews > 0", timeout=60_000)
    page.wait_for_timeout(500)
    geo = page.evaluate("() => window.__geometry()")
    assert geo["status"] == "done", geo
    viewport = [0, 0, *geo["viewport"]]
    assert _inside(geo["node"], viewport), geo   # Train LoRA, grown to hold the preview, is still on screen
    assert _inside(geo["chart"], viewport) and geo["chartOnTop"], geo  # and nothing covers the chart
    assert geo["node"][3] - geo["chart"][3] >= 60, geo  # room under the chart: the preview is drawn there
    shots = os.environ.get("LORA_LOOP_SCREENSHOTS")
    if shots:
        os.makedirs(shots, exist_ok=True)
        page.screenshot(path=os.path.join(shots, f"watch_template_laptop_{comfy_server.frontend.id}.png"))
    assert page.problems.ours() == [], page.problems.ours()
