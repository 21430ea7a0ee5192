"""Run a saved ComfyUI workflow without the browser: ``python headless/run_workflow.py WORKFLOW.json [--set
NODE.INPUT=VALUE ...] [--output_dir DIR] [--models_dir KIND=DIR ...]``.

WORKFLOW is what ComfyUI's Save writes (UI format, converted as the frontend does, see workflow.py) or its
Export (API). ``--set`` changes an input before the run, so a template runs with other files and sizes without
editing it: NODE is a node id, a node title, or a node type that occurs once; VALUE is read as JSON when it parses
(numbers, true/false, lists), else taken as text. ``--models_dir`` puts a folder first in a ComfyUI model folder
list (``loras=DIR``: where Save LoRA writes). The run goes through ComfyUI's own executor (runtime.py): progress
on the console, the first Ctrl-C cancels as ComfyUI's Cancel does. It prints the output nodes' texts and the files
written. Exit status: 0 done, 1 failed, 2 bad arguments, 130 interrupted. ComfyUI's options (``--comfyui``,
``--comfyui_args``, ``--cpu``, ``--load_custom_nodes``) are read by comfy_boot.py before this runs."""
from __future__ import annotations

import argparse
import json
import os
import sys


class UsageError(ValueError):
    """A bad argument: the message says what is wrong (exit status 2)."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="run_workflow.py", description="Run a saved ComfyUI workflow headless.",
                                epilog="ComfyUI options: --comfyui DIR, --comfyui_args \"...\", --cpu, "
                                       "--load_custom_nodes (other custom node packs).")
    p.add_argument("workflow", help="a workflow .json (UI format as ComfyUI saves it, or API format)")
    p.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="change an input; NODE: id, title, or a node type used once (repeatable)")
    p.add_argument("--output_dir", help="ComfyUI's output folder for this run (images, caches)")
    p.add_argument("--models_dir", action="append", default=[], metavar="KIND=DIR",
                   help="add DIR first to a model folder list: checkpoints, loras, vae, ... (repeatable)")
    return p.parse_args(argv)


def parse_value(text: str):
    """JSON when it parses (4, 0.5, true, [1, 2], "quoted"), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _describe(api: dict, nid: str) -> str:
    node = api[nid]
    title = node.get("_meta", {}).get("title")
    return f'{nid} "{title}" ({node["class_type"]})' if title else f"{nid} ({node['class_type']})"


def find_node(api: dict, ref: str) -> str:
    """The id of the node ``ref`` names: an id, else a title, else a node type; ambiguous or unknown: UsageError."""
    if ref in api:
        return ref
    for what, key in (("titled", lambda n: n.get("_meta", {}).get("title")), ("of type", lambda n: n["class_type"])):
        hits = [nid for nid, node in api.items() if key(node) == ref]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise UsageError(f"several nodes are {what} {ref!r}: " + ", ".join(_describe(api, h) for h in hits) +
                             "; use the node id")
    raise UsageError(f"no node {ref!r} in the workflow; its nodes: " + ", ".join(_describe(api, n) for n in api))


def _input_names(class_type: str, node: dict) -> list[str]:
    import nodes

    names = list(node["inputs"])
    if class_type in nodes.NODE_CLASS_MAPPINGS:
        from .workflow import _node_def

        names += [n for n, _ in _node_def(class_type)[0] if n not in names]
    return names


def apply_set(api: dict, item: str) -> tuple[str, str, object]:
    """Apply one ``NODE.INPUT=VALUE`` to ``api`` (in place); returns (node id, input, value)."""
    key, eq, raw = item.partition("=")
    ref, dot, name = key.rpartition(".")
    if not eq or not dot or not ref or not name:
        raise UsageError(f"--set {item!r}: expected NODE.INPUT=VALUE (e.g. KSampler.steps=4)")
    nid = find_node(api, ref)
    node = api[nid]
    names = _input_names(node["class_type"], node)
    if name not in names:
        raise UsageError(f"--set {item!r}: node {_describe(api, nid)} has no input {name!r}; its inputs: " +
                         ", ".join(names))
    value = parse_value(raw)
    node["inputs"][name] = value
    return nid, name, value


def load_workflow(path: str) -> tuple[dict, dict | None]:
    """(API prompt, the UI workflow or None) from a workflow file of either format."""
    from .workflow import is_api_prompt, is_ui_workflow, ui_to_api

    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise UsageError(f"cannot read the workflow: {e}") from e
    except ValueError as e:
        raise UsageError(f"{path}: not a JSON file ({e})") from e
    if is_ui_workflow(data):
        return ui_to_api(data), data
    if is_api_prompt(data):
        return data, None
    raise UsageError(f"{path}: neither a ComfyUI workflow (\"nodes\" and \"links\") nor an API prompt "
                     "({id: {class_type, inputs}})")


def add_model_dirs(items: list[str]) -> None:
    import folder_paths

    for item in items:
        kind, eq, folder = item.partition("=")
        if not eq or not kind or not folder:
            raise UsageError(f"--models_dir {item!r}: expected KIND=DIR (e.g. loras=/data/loras)")
        kind = folder_paths.map_legacy(kind)
        if kind not in folder_paths.folder_names_and_paths:
            raise UsageError(f"--models_dir {item!r}: ComfyUI has no model kind {kind!r}; its kinds: " +
                             ", ".join(sorted(folder_paths.folder_names_and_paths)))
        folder = os.path.abspath(os.path.expanduser(folder))
        if kind == "loras":
            os.makedirs(folder, exist_ok=True)  # Save LoRA writes into the first loras folder
        elif not os.path.isdir(folder):
            raise UsageError(f"--models_dir {item!r}: {folder} is not a folder")
        folder_paths.add_model_folder_path(kind, folder, is_default=True)


def main(argv: list[str], comfy=None) -> int:
    """The command (``comfy``: comfy_boot's handle, unused: ComfyUI is booted and this pack loaded already)."""
    import folder_paths

    from . import runtime
    from .workflow import WorkflowError

    args = parse_args(argv)
    try:
        api, ui = load_workflow(args.workflow)
        for item in args.set:
            nid, name, value = apply_set(api, item)
            print(f"set {_describe(api, nid)}.{name} = {value!r}")
        add_model_dirs(args.models_dir)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except WorkflowError as e:
        print(f"error: {args.workflow}: {e}", file=sys.stderr)
        return 1
    if args.output_dir:
        out = os.path.abspath(os.path.expanduser(args.output_dir))
        os.makedirs(out, exist_ok=True)
        folder_paths.set_output_directory(out)
    extra = {"extra_pnginfo": {"workflow": ui}} if ui else {}  # saved images carry the workflow, as in the UI
    result = runtime.run(api, what="the workflow", extra_data=extra)
    for nid, out in result.outputs.items():
        for text in out.get("text", []) or []:
            if isinstance(text, str) and nid in api:
                print(f"{_describe(api, nid)}: {text}")
    for path in runtime.output_files(result.outputs):
        print(path)
    if result.interrupted:
        print(f"interrupted after {result.seconds:.1f} s", file=sys.stderr)
        return 130
    if not result.success:
        print(f"error: {result.error or 'the workflow failed (see the log above)'}", file=sys.stderr)
        return 1
    print(f"done in {result.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import comfy_boot

    sys.exit(comfy_boot.main("run_workflow", sys.argv[1:]))
