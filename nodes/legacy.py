"""Workflows made for an earlier LoRA Loop: settings that moved from Train LoRA / Load Dataset to settings
nodes must not be lost silently. ``web/lib/legacy_layouts.json`` lists the old layouts; the frontend keeps the
values of the widgets that stayed and records the moved ones in the node's ``lora_loop_moved`` property. A run
stops with a message that says how to update when a moved setting had a non-default value and no settings
node carrying it is connected (API-format workflows are checked on their inputs)."""
from __future__ import annotations

import functools
import json
import os
from typing import Any

LAYOUTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "web", "lib",
                       "legacy_layouts.json")


@functools.lru_cache(maxsize=1)
def layouts() -> dict:
    with open(LAYOUTS, encoding="utf-8") as f:
        return json.load(f)


def _schema(node_type: str):
    """The live schema of one of the pack's nodes (the settings nodes' defaults and display names)."""
    from . import NODES

    return next(c.GET_SCHEMA() for c in NODES if c.GET_SCHEMA().node_id == node_type)


def _settings_defaults(node_type: str) -> dict[str, Any]:
    return {i.id: getattr(i, "default", None) for i in _schema(node_type).inputs}


def _workflow_node(extra_pnginfo, unique_id: str, node_type: str) -> dict | None:
    wf = extra_pnginfo.get("workflow") if isinstance(extra_pnginfo, dict) else None
    if not isinstance(wf, dict):
        return None
    graphs = [wf] + list((wf.get("definitions") or {}).get("subgraphs") or [])
    local = str(unique_id).split(":")[-1]
    for g in graphs:
        for n in g.get("nodes") or []:
            if str(n.get("id")) == local and n.get("type") == node_type:
                return n
    return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
    return a == b


def check(node_type: str, title: str, unique_id: str | None, prompt: Any, extra_pnginfo: Any,
          connected: dict[str, bool]) -> None:
    """Raise ValueError when this node's workflow still sets moved settings that no connected settings node
    carries. ``connected``: settings socket name -> whether something is connected to it."""
    doc = layouts()
    moved, links = {}, {}
    for layout in doc["nodes"].get(node_type, []):
        moved.update(layout["moved"])
        links.update(layout.get("moved_links", {}))
    if not (moved or links) or unique_id is None:
        return
    given: dict[str, Any] = {}
    api_inputs = ((prompt or {}).get(str(unique_id)) or {}).get("inputs") if isinstance(prompt, dict) else None
    if isinstance(api_inputs, dict):
        given.update({k: v for k, v in api_inputs.items() if k in moved and not isinstance(v, list)})
        given.update({k: doc["link"] for k, v in api_inputs.items() if k in links and isinstance(v, list)})
    moved.update(links)
    node = _workflow_node(extra_pnginfo, unique_id, node_type)
    if node is not None:
        given.update((node.get("properties") or {}).get("lora_loop_moved") or {})
    lost = []
    for old, value in given.items():
        socket, new = moved.get(old, (None, None))
        if socket is None or connected.get(socket):
            continue
        default = _settings_defaults(doc["sockets"][socket]).get(new)
        if not _same(value, default):
            lost.append((old, value, socket, new))
    if not lost:
        return
    nodes = {}
    for old, value, socket, new in lost:
        nodes.setdefault(socket, []).append(f"{new} connected (as '{old}' was)" if value == doc["link"]
                                            else f"{new}={value!r}")
    how = "; ".join(f"add a '{_display(doc['sockets'][s])}' node with {', '.join(v)} and connect it to {title}'s "
                    f"'{s}' input" for s, v in nodes.items())
    raise ValueError(
        f"{title}: this workflow was made for an earlier LoRA Loop, whose {title} node had settings that now live on "
        f"settings nodes, and it sets some of them: {', '.join(f'{o}={v!r}' for o, v, _, _ in lost)}. They would be "
        f"lost, so the run stops here. To update the workflow: {how} (double-click the canvas and search 'LoRA "
        "Loop'), or start from the updated template (Templates → lora-loop). The other values of this node were "
        "kept.")


def _display(node_type: str) -> str:
    return _schema(node_type).display_name
