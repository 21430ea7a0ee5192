"""Generate the sd-scripts argument table of docs/headless.md from the argument rows of headless/kohya_cli.py
(name, sd-scripts default, kind, where it goes): ``python tests/support/headless_docs.py`` rewrites the block
between the ARGUMENTS markers. tests/trainer/test_kohya_cli.py checks the block is current."""
from __future__ import annotations

import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PAGE = os.path.join(ROOT, "docs", "headless.md")
BEGIN, END = "<!-- ARGUMENTS:BEGIN -->", "<!-- ARGUMENTS:END -->"
KIND_TEXT = {"mapped": "yes", "graph": "yes (graph)", "automatic": "taken care of", "unsupported": "**not supported**"}


def kohya_cli():
    """headless.kohya_cli, imported as a submodule of the pack (it imports the trainer relatively)."""
    from pack_import import pack_module

    return pack_module("headless.kohya_cli")


def _default(v) -> str:
    if v is None or v is False:
        return ""
    if v is True:
        return "on"
    return f"`{v}`"


def render() -> str:
    kc = kohya_cli()
    counts: dict[str, int] = {}
    rows = ["| sd-scripts argument | sd-scripts default | supported | where it goes / notes |", "|---|---|---|---|"]
    for o in sorted(kc.OPTIONS, key=lambda o: o.name):
        counts[o.kind] = counts.get(o.kind, 0) + 1
        note = (o.target or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `--{o.name}` | {_default(o.default)} | {KIND_TEXT[o.kind]} | {note} |")
    summary = ", ".join(f"{counts.get(k, 0)} {t.strip('*')}" for k, t in KIND_TEXT.items())
    return f"{len(kc.OPTIONS)} arguments: {summary}.\n\n" + "\n".join(rows)


def current_block(text: str) -> str:
    m = re.search(re.escape(BEGIN) + r"\n?(.*?)\n?" + re.escape(END), text, re.S)
    return m.group(1) if m else ""


def main() -> None:
    with open(PAGE, encoding="utf-8") as f:
        text = f.read()
    if BEGIN not in text:
        raise SystemExit(f"{PAGE} has no {BEGIN} marker")
    new = re.sub(re.escape(BEGIN) + r"\n?.*?\n?" + re.escape(END), lambda m: f"{BEGIN}\n{render()}\n{END}", text,
                 flags=re.S)
    with open(PAGE, "w", encoding="utf-8") as f:
        f.write(new)
    print(f"{os.path.relpath(PAGE, ROOT)} argument table updated")


if __name__ == "__main__":
    main()
