"""Turn a UI-format workflow (what ComfyUI's Save writes: LiteGraph "nodes" and "links") into the API-format
prompt its executor runs, as the frontend's graphToPrompt does, so a saved workflow runs without a browser.

The node definitions come from ComfyUI's registered classes (``INPUT_TYPES``, what ``/object_info`` serves): the
UI file stores widget values by position, and the definition says which input each value belongs to. What the
frontend does and is done here: a widget input fed by a link (a "converted widget") takes the link; the
"control after generate" value the frontend keeps after seed widgets is skipped; frontend-only nodes are dropped
(Note, MarkdownNote), followed through (Reroute) or put into their targets (PrimitiveNode: its value becomes the
target's input); muted nodes (mode 2) are dropped with the links from them; a bypassed node (mode 4) passes its
input of the consumer's type through to its consumers. Group nodes and subgraphs are not supported: an error
names the node (unpack it in ComfyUI and save again)."""
from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
NOTES = {"MarkdownNote", "Note"}
VIRTUAL_NODES = NOTES | {"Reroute", "PrimitiveNode"}  # frontend-only: never sent to the server
MUTED, BYPASSED = 2, 4
# The frontend adds a "control after generate" widget after INT inputs that ask for it, and after any INT input
# named seed / noise_seed; its value is stored in widgets_values right after the seed.
SEED_NAMES = ("seed", "noise_seed")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")


class WorkflowError(ValueError):
    """The workflow cannot be turned into a prompt (the message names the node)."""


def _node_def(class_type: str):
    """(inputs [(name, spec)], output types, output names) of a registered node class."""
    import nodes

    cls = nodes.NODE_CLASS_MAPPINGS[class_type]
    it = cls.INPUT_TYPES()
    inputs = list(it.get("required", {}).items()) + list(it.get("optional", {}).items())
    outputs = list(getattr(cls, "RETURN_TYPES", ()))
    names = list(getattr(cls, "RETURN_NAMES", None) or outputs)
    return inputs, outputs, names


def _opts(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def _is_widget(spec) -> bool:
    t = spec[0]
    return (isinstance(t, list) or t in WIDGET_TYPES) and not _opts(spec).get("forceInput")


def _has_control(name: str, spec) -> bool:
    return bool(_opts(spec).get("control_after_generate")) or (spec[0] == "INT" and name in SEED_NAMES)


def _default(spec):
    t, opts = spec[0], _opts(spec)
    if "default" in opts:
        return opts["default"]
    if isinstance(t, list):
        return t[0] if t else None
    if t == "COMBO":
        return (opts.get("options") or [None])[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(t)


def _label(node: dict) -> str:
    title = f' "{node["title"]}"' if node.get("title") else ""
    return f"node {node['id']}{title} ({node.get('type')})"


def _links(ui: dict) -> dict:
    """link id -> (origin id, origin slot); links are lists (workflow 0.4) or objects (workflow 1)."""
    out = {}
    for link in ui.get("links") or []:
        if isinstance(link, dict):
            out[link["id"]] = (link["origin_id"], link["origin_slot"])
        else:
            out[link[0]] = (link[1], link[2])
    return out


def _check_supported(ui: dict) -> None:
    import nodes

    subgraphs = {s.get("id"): s.get("name") for s in (ui.get("definitions") or {}).get("subgraphs") or []}
    groups = set((ui.get("extra") or {}).get("groupNodes") or {})
    for node in ui["nodes"]:
        t = node.get("type")
        if t in subgraphs or t in groups or str(t).startswith(("workflow>", "workflow/")):
            kind = f"subgraph {subgraphs[t]!r}" if t in subgraphs else "group node"
            raise WorkflowError(f"{_label(node)} is a {kind}: group nodes and subgraphs do not run headless yet; "
                                "unpack it in ComfyUI (right-click > Unpack Subgraph / Convert to nodes) and save")
        if t not in VIRTUAL_NODES and node.get("mode", 0) not in (MUTED, BYPASSED) \
                and t not in nodes.NODE_CLASS_MAPPINGS:
            raise WorkflowError(f"{_label(node)}: ComfyUI has no node of this type (is the custom node pack that "
                                "provides it installed? headless runs load other packs with --load_custom_nodes)")


class _Graph:
    def __init__(self, ui: dict):
        self.nodes = {n["id"]: n for n in ui["nodes"]}
        self.links = _links(ui)

    def source(self, link_id, want_type, seen=()):
        """What a link delivers once frontend-only and bypassed nodes are resolved: ["id", slot], ("value", v)
        for a PrimitiveNode, or None (nothing: a muted node, a dangling link, a bypassed node without a match)."""
        if link_id is None or link_id not in self.links or link_id in seen:
            return None
        origin_id, slot = self.links[link_id]
        node = self.nodes.get(origin_id)
        if node is None:
            return None
        seen = (*seen, link_id)
        t, mode, inputs = node.get("type"), node.get("mode", 0), node.get("inputs") or []
        if t == "PrimitiveNode":
            values = node.get("widgets_values") or []
            return ("value", values[0]) if values else None
        if t == "Reroute":
            return self.source(inputs[0].get("link") if inputs else None, want_type, seen)
        if t in NOTES or mode == MUTED:
            return None
        if mode == BYPASSED:  # as the frontend: the input at the output's slot if its type fits, else the first
            order = [slot] + [i for i in range(len(inputs)) if i != slot]
            for i in order:
                if i < len(inputs) and (inputs[i].get("type") == want_type or want_type in ("*", "")):
                    return self.source(inputs[i].get("link"), want_type, seen)
            return None
        return [str(origin_id), slot]


def _widget_values(node: dict, specs: list) -> dict:
    """input name -> the widget value stored for it."""
    values = node.get("widgets_values")
    if isinstance(values, dict):  # some nodes save their widgets by name
        return {name: values.get(name, _default(spec)) for name, spec in specs if _is_widget(spec)}
    values, out = list(values or []), {}
    for name, spec in specs:
        if not _is_widget(spec):
            continue
        out[name] = values.pop(0) if values else _default(spec)
        if _has_control(name, spec) and values and values[0] in CONTROL_VALUES:
            values.pop(0)
    return out


def ui_to_api(ui: dict) -> dict:
    """The API prompt ({id: {class_type, inputs, _meta}}) the frontend would queue for this UI workflow."""
    _check_supported(ui)
    graph = _Graph(ui)
    api = {}
    for node in sorted(ui["nodes"], key=lambda n: (isinstance(n["id"], str), n["id"])):
        if node.get("type") in VIRTUAL_NODES or node.get("mode", 0) in (MUTED, BYPASSED):
            continue
        specs = _node_def(node["type"])[0]
        out = _widget_values(node, specs)
        for inp in node.get("inputs") or []:
            if inp.get("link") is None:
                continue
            src = graph.source(inp["link"], inp.get("type"))
            if isinstance(src, tuple):
                out[inp["name"]] = src[1]
            elif src is not None:
                out[inp["name"]] = src
            else:  # fed by nothing (a muted node...): the frontend drops the input, widget value included
                out.pop(inp["name"], None)
        entry = {"class_type": node["type"], "inputs": out}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        api[str(node["id"])] = entry
    return api


def is_ui_workflow(data) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def is_api_prompt(data) -> bool:
    return isinstance(data, dict) and bool(data) and \
        all(isinstance(v, dict) and "class_type" in v and "inputs" in v for v in data.values())
