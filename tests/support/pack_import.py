"""Import the pack's modules the way ComfyUI's loader sees them: the pack root as a package (its modules import each
other relatively), under a fixed name, for test and tool code that needs ``headless.*`` or ``trainer.*`` with their
relative imports intact."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = "lora_loop_under_test"


def pack_module(name: str):
    """The pack's module ``name`` (e.g. ``headless.kohya_cli``), imported as a submodule of the pack package."""
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, os.path.join(ROOT, "__init__.py"),
                                                      submodule_search_locations=[ROOT])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{PACKAGE}.{name}")
