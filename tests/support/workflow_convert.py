"""API-format <-> UI-format (LiteGraph) conversion for the shipped example workflows.

UI -> API is the pack's own (headless/workflow.py, used by the run_workflow command); this file adds API -> UI.
Both use the live node definitions (``INPUT_TYPES`` of ComfyUI's registered classes, the same data
``/object_info`` serves), so the example UI workflows and their API twins under tests/workflows stay
in sync: ``ui_to_api(example) == api_twin`` is tested. Run as a script to regenerate the UI files:
``python tests/support/workflow_convert.py`` (needs a ComfyUI checkout, see comfy_env)."""
from __future__ import annotations

import json
import os
import sys

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if PACK_ROOT not in sys.path:  # appended: ComfyUI's own ``nodes`` module is never shadowed by the pack's
    sys.path.append(PACK_ROOT)

from headless.workflow import VIRTUAL_NODES, _default, _has_control, _is_widget, _node_def, ui_to_api  # noqa: E402,F401

NOTE_ID = 100


def api_to_ui(api: dict, layout: dict[str, tuple] | None = None, note: str | None = None,
              view: dict | None = None) -> dict:
    """Build a LiteGraph workflow from an API prompt (ids must be integers as strings). ``layout``: node id ->
    (x, y) or (x, y, width, height); ``note``: Markdown for a note node at the top left; ``view``: the canvas
    scale and offset the workflow opens with."""
    ui_nodes, links = [], []
    link_id = 0
    out_links: dict[tuple[str, int], list[int]] = {}
    order = {nid: i for i, nid in enumerate(api)}
    for nid, node in api.items():
        inputs, outputs, names = _node_def(node["class_type"])
        ui_inputs, widgets = [], []
        for name, spec in inputs:
            val = node["inputs"].get(name)
            if isinstance(val, list) and len(val) == 2 and isinstance(val[0], str):
                link_id += 1
                src, slot = val
                links.append([link_id, int(src), slot, int(nid), len(ui_inputs), spec[0] if isinstance(spec[0], str) else "COMBO"])
                out_links.setdefault((src, slot), []).append(link_id)
                entry = {"name": name, "type": spec[0] if isinstance(spec[0], str) else "COMBO", "link": link_id}
                if _is_widget(spec):
                    entry["widget"] = {"name": name}
                    widgets.append(_default(spec))
                ui_inputs.append(entry)
                continue
            if _is_widget(spec):
                widgets.append(_default(spec) if val is None else val)
                if _has_control(name, spec):
                    widgets.append("fixed")
            elif not (len(spec) > 1 and spec[1].get("optional")):
                ui_inputs.append({"name": name, "type": spec[0], "link": None})
        place = (layout or {}).get(nid, (50 + 330 * (order[nid] % 5), 50 + 420 * (order[nid] // 5)))
        x, y = place[:2]
        size = list(place[2:4]) if len(place) >= 4 else [300, 120]
        ui_nodes.append({
            "id": int(nid), "type": node["class_type"], "pos": [x, y], "size": size, "flags": {},
            "order": order[nid], "mode": 0, "inputs": ui_inputs,
            "outputs": [{"name": n, "type": t, "slot_index": i, "links": []} for i, (t, n) in
                        enumerate(zip(outputs, names))],
            "properties": {"Node name for S&R": node["class_type"]},
            "widgets_values": widgets,
            **({"title": node["_meta"]["title"]} if node.get("_meta", {}).get("title") else {}),
        })
    by_id = {n["id"]: n for n in ui_nodes}
    for (src, slot), ids in out_links.items():
        by_id[int(src)]["outputs"][slot]["links"] = ids
    if note:
        ui_nodes.insert(0, {"id": NOTE_ID, "type": "MarkdownNote", "pos": [20, 40], "size": [320, 300], "flags": {},
                            "order": len(ui_nodes), "mode": 0, "inputs": [], "outputs": [],
                            "properties": {}, "widgets_values": [note], "title": "About this template",
                            "color": "#432", "bgcolor": "#653"})
    view = view or {"scale": 0.8, "offset": [0, 0]}
    return {"last_node_id": max(n["id"] for n in ui_nodes), "last_link_id": link_id, "nodes": ui_nodes,
            "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": view["scale"], "offset": list(view["offset"])}}, "version": 0.4}


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    import comfy_env

    comfy_env.boot()
    from workflows_index import EXAMPLES

    root = os.path.dirname(os.path.dirname(here))
    for ex in EXAMPLES:
        with open(os.path.join(root, "tests", "workflows", ex["api"]), encoding="utf-8") as f:
            api = json.load(f)
        ui = api_to_ui(api, ex.get("layout"), ex.get("note"), ex.get("view"))
        path = os.path.join(root, "example_workflows", ex["ui"])
        with open(path, "w", encoding="utf-8") as f:
            json.dump(ui, f, indent=1)
        print("wrote", path)


if __name__ == "__main__":
    main()
