"""The README documents every node, input and output as the live schemas define them."""
import os

import node_docs
from comfy_fixtures import comfy  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_readme_node_reference_is_current(comfy):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert node_docs.current_block(readme).strip() == node_docs.render().strip(), \
        "README node reference is stale: run `python tests/support/node_docs.py`"


def test_readme_has_test_command_and_benchmark_table():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert "python -m pytest tests" in readme
    assert "| built-in" in readme.lower() or "built-in train lora" in readme.lower()
