"""API-format <-> UI-format (LiteGraph) conversion for the shipped example workflows.

Uses the live node definitions (``INPUT_TYPES`` of ComfyUI's registered classes, the same data
``/object_info`` serves), so the example UI workflows and their API twins under tests/workflows stay
in sync: ``ui_to_api(example) == api_twin`` is tested. Run as a script to regenerate the UI files:
``python tests/support/workflow_convert.py`` (needs a ComfyUI checkout, see comfy_env)."""
from __future__ import annotations

import json
import os
import sys

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# frontend-only nodes (never sent to the server): the note each template carries
VIRTUAL_NODES = {"MarkdownNote", "Note"}
NOTE_ID = 100
# The frontend adds a "control after generate" widget after INT inputs that ask for it, and after any INT
# input named seed / noise_seed; its value is stored in widgets_values right after the seed.
SEED_NAMES = ("seed", "noise_seed")


def _has_control(name: str, spec) -> bool:
    return spec[0] == "INT" and ((len(spec) > 1 and spec[1].get("control_after_generate")) or name in SEED_NAMES)


def _node_def(class_type: str):
    import nodes

    cls = nodes.NODE_CLASS_MAPPINGS[class_type]
    it = cls.INPUT_TYPES()
    inputs = list(it.get("required", {}).items()) + list(it.get("optional", {}).items())
    outputs = list(getattr(cls, "RETURN_TYPES", ()))
    names = list(getattr(cls, "RETURN_NAMES", None) or outputs)
    return inputs, outputs, names


def _is_widget(spec) -> bool:
    t = spec[0]
    return isinstance(t, list) or t in WIDGET_TYPES


def _default(spec):
    t, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    if "default" in opts:
        return opts["default"]
    if isinstance(t, list):
        return t[0] if t else None
    if t == "COMBO":
        return (opts.get("options") or [None])[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(t)


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


def ui_to_api(ui: dict) -> dict:
    """The inverse: what the frontend's graphToPrompt produces for these simple graphs."""
    links = {l[0]: l for l in ui["links"]}
    api = {}
    for node in sorted(ui["nodes"], key=lambda n: n["id"]):
        if node.get("mode", 0) != 0 or node["type"] in VIRTUAL_NODES:
            continue
        inputs, _, _ = _node_def(node["type"])
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values", []))
        out = {}
        for name, spec in inputs:
            if _is_widget(spec):
                v = values.pop(0)
                if _has_control(name, spec):
                    values.pop(0)
                if name in linked:
                    continue
                out[name] = v
            if name in linked:
                l = linked[name]
                out[name] = [str(l[1]), l[2]]
        entry = {"class_type": node["type"], "inputs": out}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        api[str(node["id"])] = entry
    return api


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
