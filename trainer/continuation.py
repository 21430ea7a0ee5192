"""Re-queue continuation: remember each Train LoRA node's last state and its inputs.

When a node runs again with the same upstream objects (ComfyUI's cache keeps them identical while
upstream nodes are unchanged) and the same widget values, and only ``steps`` grew, training continues
from the stored state instead of starting over. Only the latest state per node is kept; objects are
held through weak references where possible, so the registry never keeps a model alive."""
from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


class _Ident:
    """Identity of an upstream object without keeping it alive (weakref when possible)."""

    def __init__(self, obj: Any):
        try:
            self._ref = weakref.ref(obj)
            self._strong = None
        except TypeError:
            self._ref, self._strong = None, obj

    def get(self) -> Any:
        return self._ref() if self._ref is not None else self._strong


@dataclass
class _Entry:
    objects: dict[str, Any]      # name -> _Ident (or None for an unconnected input)
    values: dict[str, Any]       # every widget value except steps
    state: Any                   # trainer.state.TrainState

    def matches(self, objects: dict[str, Any], values: dict[str, Any]) -> bool:
        if values != self.values or set(objects) != set(self.objects):
            return False
        for k, obj in objects.items():
            ident = self.objects[k]
            if (ident is None) != (obj is None) or (ident is not None and ident.get() is not obj):
                return False
        return True


class ContinuationRegistry:
    def __init__(self):
        self._entries: dict[str, _Entry] = {}

    def lookup(self, node_id: str | None, objects: dict[str, Any], values: dict[str, Any], steps: int):
        """The stored state to continue from, or None (then the stored entry is dropped: the run starts over)."""
        entry = self._entries.get(node_id) if node_id is not None else None
        if entry is None:
            return None
        if entry.matches(objects, values) and entry.state.step <= steps:
            return entry.state
        log.info("Train LoRA: inputs changed (or steps shrank): training from the start")
        self._entries.pop(node_id, None)
        return None

    def remember(self, node_id: str | None, objects: dict[str, Any], values: dict[str, Any], state) -> None:
        if node_id is not None:
            self._entries[node_id] = _Entry({k: (None if v is None else _Ident(v)) for k, v in objects.items()},
                                            values, state)

    def clear(self) -> None:
        self._entries.clear()
