"""Shared pytest setup.

The pack root is *appended* to sys.path so ``import trainer`` works, while ComfyUI's own
``nodes`` module (if ComfyUI is on the path) is never shadowed by the pack's ``nodes/``."""
import os
import sys

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if PACK_ROOT not in sys.path:
    sys.path.append(PACK_ROOT)
SUPPORT = os.path.join(PACK_ROOT, "tests", "support")
if SUPPORT not in sys.path:
    sys.path.append(SUPPORT)
