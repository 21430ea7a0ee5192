"""docs/nodes.md documents every node, input and output as the live schemas define them; the README stays
short and keeps the test command and the benchmark table."""
import os

import node_docs
from comfy_fixtures import comfy  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_node_reference_is_current(comfy):
    with open(os.path.join(ROOT, node_docs.REFERENCE), encoding="utf-8") as f:
        reference = f.read()
    assert node_docs.current_block(reference).strip() == node_docs.render().strip(), \
        f"{node_docs.REFERENCE} is stale: run `python tests/support/node_docs.py`"


def test_readme_has_test_command_and_benchmark_table():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert "python -m pytest tests" in readme
    assert "| built-in" in readme.lower() or "built-in train lora" in readme.lower()


def test_every_input_and_output_has_a_tooltip(comfy):
    import nodes as comfy_nodes

    missing = []
    for key, cls in comfy_nodes.NODE_CLASS_MAPPINGS.items():
        if not key.startswith("LoraLoop_"):
            continue
        schema = cls.GET_SCHEMA()
        assert schema.is_experimental and schema.category.startswith("LoRA Loop/"), key
        missing += [f"{key}.{i.id}" for i in schema.inputs if not (i.tooltip or "").strip()]
        missing += [f"{key} -> {o.display_name}" for o in schema.outputs if not (o.tooltip or "").strip()]
    assert missing == []
