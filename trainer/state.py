"""Resumable training state: safetensors + JSON, never pickle.

A state is saved as two files next to each other:

* ``<prefix>.tensors`` (safetensors format; the extension keeps it out of ComfyUI's LoRA lists): every
  tensor (LoRA weights under ``lora/<kohya key>``, optimizer
  per-parameter state such as ``optimizer/state/0/exp_avg``, ...).
  Its header metadata carries ``lora_loop.state_id``.
* ``<prefix>.json``: everything else (step/epoch/batch position, optimizer param groups,
  scheduler state, seed, config), with ``{"__tensor__": key}`` placeholders
  for tensors, ``{"__tuple__": [...]}`` for tuples, ``{"__dict__": [[k, v], ...]}`` for dicts whose
  keys are not plain strings (the optimizer's integer param ids) and ``{"__float__": "nan"}`` for
  non-finite floats. Floats are written with ``repr`` precision, so values come back bitwise.

Both files are written atomically (tensors first, JSON last) and share a random ``state_id``; a
pair from two different saves (e.g. a crash between the two writes) is refused on load.

The JSON encoding is generic (:func:`to_flat` / :func:`from_flat`), so optimizer and scheduler
``state_dict()`` round-trip exactly: ``opt.load_state_dict(restored)`` continues bitwise.
"""
from __future__ import annotations

import json
import logging
import math
import numbers
import os
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, MutableMapping, Optional, Tuple

import torch

from .savefile import atomic_save_safetensors, atomic_write_text

log = logging.getLogger(__name__)

__all__ = [
    "STATE_FORMAT",
    "STATE_VERSION",
    "TrainState",
    "StateError",
    "to_flat",
    "from_flat",
    "config_mismatches",
    "state_paths",
    "save_state",
    "load_state",
]

STATE_FORMAT = "lora_loop.train_state"
STATE_VERSION = 1
_MARKERS = ("__tensor__", "__tuple__", "__dict__", "__float__")


class StateError(ValueError):
    """A saved training state is missing, corrupt or does not fit (message names file and fix)."""


@dataclass
class TrainState:
    """Everything needed to continue a run exactly where it stopped."""

    step: int = field(metadata={"help": "optimizer steps done so far"})
    epoch: int = field(metadata={"help": "current epoch (0-based)"})
    batch_index: int = field(metadata={"help": "position in the current epoch's batch list"})
    lora: Dict[str, torch.Tensor] = field(default_factory=dict, metadata={"help": "kohya LoRA state dict"})
    optimizer: Dict[str, Any] = field(default_factory=dict, metadata={"help": "torch optimizer state_dict()"})
    scheduler: Dict[str, Any] = field(default_factory=dict, metadata={"help": "LR scheduler state_dict()"})
    rng: Dict[str, Any] = field(default_factory=dict, metadata={
        "help": "{'seed': ...}: the loop draws all randomness from generators seeded by (seed, step, micro-step), "
                "so no generator state has to be stored"})
    config: Dict[str, Any] = field(default_factory=dict, metadata={"help": "training config that must match on resume"})
    extra: Dict[str, Any] = field(default_factory=dict, metadata={"help": "anything else (loss history, counters); tensors allowed"})


# --------------------------------------------------------------------------------------------
# generic flattening
# --------------------------------------------------------------------------------------------

def _unique(key: str, tensors: Mapping[str, Any]) -> str:
    if key not in tensors:
        return key
    n = 1
    while f"{key}#{n}" in tensors:
        n += 1
    return f"{key}#{n}"


def to_flat(obj: Any, prefix: str, tensors: MutableMapping[str, torch.Tensor]) -> Any:
    """Encode ``obj`` as JSON-able data; tensors are moved into ``tensors`` under ``prefix/...``."""
    if isinstance(obj, torch.Tensor):
        key = _unique(prefix, tensors)
        tensors[key] = obj.detach()
        return {"__tensor__": key}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        f = float(obj)
        return f if math.isfinite(f) else {"__float__": repr(f)}
    if isinstance(obj, tuple):
        return {"__tuple__": [to_flat(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [to_flat(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        plain = all(isinstance(k, str) for k in obj) and not any(k in _MARKERS for k in obj)
        if plain:
            return {k: to_flat(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
        return {"__dict__": [[to_flat(k, f"{prefix}/key{i}", tensors), to_flat(v, f"{prefix}/{k}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    raise TypeError(f"cannot store a {type(obj).__name__} at {prefix!r} in a training state "
                    "(allowed: tensors, numbers, str, bool, None, lists, tuples, dicts)")


def from_flat(data: Any, tensors: Mapping[str, torch.Tensor], where: str = "state") -> Any:
    """Inverse of :func:`to_flat`."""
    if isinstance(data, list):
        return [from_flat(v, tensors, where) for v in data]
    if isinstance(data, dict):
        if len(data) == 1:
            (k, v), = data.items()
            if k == "__tensor__":
                if v not in tensors:
                    raise StateError(f"{where}: tensor {v!r} is missing from the tensor file")
                return tensors[v]
            if k == "__tuple__":
                return tuple(from_flat(x, tensors, where) for x in v)
            if k == "__dict__":
                return {_hashable(from_flat(a, tensors, where)): from_flat(b, tensors, where) for a, b in v}
            if k == "__float__":
                return float(v)
        return {k: from_flat(v, tensors, where) for k, v in data.items()}
    return data


def _hashable(k: Any) -> Any:
    return tuple(_hashable(x) for x in k) if isinstance(k, list) else k


def _referenced(data: Any, out: set) -> set:
    if isinstance(data, list):
        for v in data:
            _referenced(v, out)
    elif isinstance(data, dict):
        if len(data) == 1 and "__tensor__" in data:
            out.add(data["__tensor__"])
        else:
            for v in data.values():
                _referenced(v, out)
    return out


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------

def config_mismatches(saved: Mapping[str, Any], current: Mapping[str, Any],
                      ignore: Iterable[str] = ()) -> List[str]:
    """Human-readable lines for every key whose value differs (compared in JSON form)."""
    skip = set(ignore)
    out = []

    def norm(v: Any) -> str:
        return json.dumps(to_flat(v, "config", {}), sort_keys=True)

    for key in sorted(set(saved) | set(current)):
        if key in skip:
            continue
        if key not in saved:
            out.append(f"{key}: not in the saved state, now {current[key]!r}")
        elif key not in current:
            out.append(f"{key}: saved {saved[key]!r}, now missing")
        elif norm(saved[key]) != norm(current[key]):
            out.append(f"{key}: saved {saved[key]!r}, now {current[key]!r}")
    return out


# --------------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------------

# safetensors content under an extension ComfyUI does not list as a model file: the state files next to the
# checkpoint LoRAs must not show up in LoraLoader's list
TENSORS_EXT = ".tensors"


def state_paths(path_prefix: str) -> Tuple[str, str]:
    """(``<prefix>.tensors``, ``<prefix>.json``); a prefix ending in either is accepted."""
    prefix = os.fspath(path_prefix)
    for ext in (TENSORS_EXT, ".json"):
        if prefix.endswith(ext):
            prefix = prefix[: -len(ext)]
    return prefix + TENSORS_EXT, prefix + ".json"


def save_state(state: TrainState, path_prefix: str) -> Tuple[str, str]:
    """Write ``state`` to ``<prefix>.tensors`` + ``<prefix>.json`` atomically; returns both paths."""
    st_path, js_path = state_paths(path_prefix)
    tensors: Dict[str, torch.Tensor] = {}
    lora_keys = []
    for k, t in state.lora.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"LoRA entry {k!r} is a {type(t).__name__}, not a tensor")
        tensors[f"lora/{k}"] = t.detach()
        lora_keys.append(k)
    state_id = uuid.uuid4().hex
    doc = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "state_id": state_id,
        "tensor_file": os.path.basename(st_path),
        "step": int(state.step),
        "epoch": int(state.epoch),
        "batch_index": int(state.batch_index),
        "lora_keys": lora_keys,
        "optimizer": to_flat(state.optimizer, "optimizer", tensors),
        "scheduler": to_flat(state.scheduler, "scheduler", tensors),
        "rng": to_flat(state.rng, "rng", tensors),
        "config": to_flat(state.config, "config", tensors),
        "extra": to_flat(state.extra, "extra", tensors),
    }
    text = json.dumps(doc, indent=1, allow_nan=False)
    atomic_save_safetensors(tensors, st_path, {"format": STATE_FORMAT, "lora_loop.state_id": state_id})
    atomic_write_text(js_path, text)
    return st_path, js_path


def load_state(path_prefix: str, device: Optional[torch.device] = None) -> TrainState:
    """Read a state written by :func:`save_state`. Tensors are on the CPU; ``device`` moves only the
    LoRA weights (``Optimizer.load_state_dict`` moves optimizer state to its parameters itself)."""
    from safetensors import safe_open

    st_path, js_path = state_paths(path_prefix)
    for p in (js_path, st_path):
        if not os.path.isfile(p):
            raise StateError(f"training state file {p} is missing; both {os.path.basename(st_path)} and "
                             f"{os.path.basename(js_path)} are needed to resume (or start a new run)")
    try:
        with open(js_path, "r", encoding="utf-8") as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StateError(f"training state file {js_path} is corrupt ({exc}); use another checkpoint") from exc
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise StateError(f"{js_path} is not a LoRA Loop training state")
    if doc.get("version") != STATE_VERSION:
        raise StateError(f"{js_path} has state version {doc.get('version')!r}; this version reads {STATE_VERSION}")
    required = ("state_id", "step", "epoch", "batch_index", "lora_keys", "optimizer", "scheduler", "rng", "config")
    missing = [k for k in required if k not in doc]
    if missing:
        raise StateError(f"training state file {js_path} lacks {', '.join(missing)}; use another checkpoint")
    try:
        with safe_open(st_path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise StateError(f"training state file {st_path} is unreadable ({exc}); use another checkpoint") from exc
    if meta.get("lora_loop.state_id") != doc["state_id"]:
        raise StateError(
            f"{st_path} and {js_path} come from different saves (interrupted save?); use another checkpoint"
        )
    wanted = {f"lora/{k}" for k in doc["lora_keys"]}
    for section in ("optimizer", "scheduler", "rng", "config", "extra"):
        _referenced(doc.get(section), wanted)
    absent = sorted(wanted - set(tensors))
    surplus = sorted(set(tensors) - wanted)
    if absent or surplus:
        raise StateError(
            f"{st_path} does not match {js_path}: missing tensors {absent[:5]}{'...' if len(absent) > 5 else ''}, "
            f"unexpected tensors {surplus[:5]}{'...' if len(surplus) > 5 else ''}; use another checkpoint"
        )
    lora = {k: tensors[f"lora/{k}"] for k in doc["lora_keys"]}
    if device is not None:  # optimizer.load_state_dict moves its own state; RNG states stay on CPU
        lora = {k: v.to(device) for k, v in lora.items()}
    return TrainState(
        step=int(doc["step"]),
        epoch=int(doc["epoch"]),
        batch_index=int(doc["batch_index"]),
        lora=lora,
        optimizer=from_flat(doc["optimizer"], tensors, js_path),
        scheduler=from_flat(doc["scheduler"], tensors, js_path),
        rng=from_flat(doc["rng"], tensors, js_path),
        config=from_flat(doc["config"], tensors, js_path),
        extra=from_flat(doc.get("extra", {}), tensors, js_path),
    )
