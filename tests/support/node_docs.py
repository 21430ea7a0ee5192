"""Generate the node reference (docs/nodes.md) from the live node schemas (tooltips are the contract).

Usage: python tests/support/node_docs.py  -> rewrites the block between the NODE-REFERENCE markers in
docs/nodes.md. tests/comfy/test_readme.py checks the block is current."""
from __future__ import annotations

import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BEGIN, END = "<!-- NODE-REFERENCE:BEGIN -->", "<!-- NODE-REFERENCE:END -->"
REFERENCE = os.path.join("docs", "nodes.md")


def _fmt_default(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if v is None:
        return ""
    s = str(v)
    return f"`{s}`" if s else '`""`'


def render() -> str:
    import nodes as comfy_nodes

    sys.path.insert(0, HERE)
    out = []
    pack = [c for k, c in comfy_nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("LoraLoop_")]
    for cls in pack:
        schema = cls.GET_SCHEMA()
        out.append(f"### {schema.display_name} (`{schema.node_id}`)\n")
        out.append(f"{schema.description}\n")
        out.append("| input | type | default | contract |")
        out.append("|---|---|---|---|")
        for inp in schema.inputs:
            t = inp.get_io_type()
            opt = " (optional)" if inp.optional else ""
            default = _fmt_default(getattr(inp, "default", None))
            tip = (inp.tooltip or "").replace("|", "\\|").replace("\n", " ")
            out.append(f"| `{inp.id}`{opt} | {t} | {default} | {tip} |")
        out.append("\n| output | type | contract |")
        out.append("|---|---|---|")
        for o in schema.outputs:
            tip = (o.tooltip or "").replace("|", "\\|")
            out.append(f"| `{o.display_name}` | {o.get_io_type()} | {tip} |")
        out.append("")
    return "\n".join(out)


def current_block(readme: str) -> str:
    m = re.search(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), readme, re.S)
    return m.group(1) if m else ""


def main() -> None:
    sys.path.insert(0, HERE)
    import comfy_env

    comfy_env.boot()
    path = os.path.join(ROOT, REFERENCE)
    with open(path, encoding="utf-8") as f:
        readme = f.read()
    block = render()
    new = re.sub(re.escape(BEGIN) + r"\n.*?" + re.escape(END), lambda m: f"{BEGIN}\n{block}\n{END}", readme, flags=re.S)
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)
    print(f"{REFERENCE} node reference updated")


if __name__ == "__main__":
    main()
