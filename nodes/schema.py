"""Node inputs built from the config dataclasses: each option is declared once (``trainer.options.option``:
type, default, help, bounds, choices) and the widget, its tooltip and the value parsing come from there."""
from __future__ import annotations

import typing
from typing import Any, Iterable

from ..trainer.options import base_type, choices_of, default_of, field_of
from ._api import io


def _kind(cls, name: str) -> tuple[Any, bool]:
    """(base type, optional) of a field: ``str | None`` -> (str, True); ``tuple[int, int]`` -> (tuple, False)."""
    kind, nullable = base_type(typing.get_type_hints(cls)[name])
    return typing.get_origin(kind) or kind, nullable


def input_id(cls, name: str) -> str:
    """The node input name of a field (its ``widget`` override, else the field name)."""
    return field_of(cls, name).metadata.get("widget") or name


def widget(cls, name: str, *, optional: bool = False, tooltip: str | None = None, extra_tooltip: str = "",
           options: list[str] | None = None, **extra: Any):
    """The V3 input for one config field."""
    f = field_of(cls, name)
    meta = f.metadata
    kind, nullable = _kind(cls, name)
    default = default_of(cls, name)
    common = dict(optional=optional, tooltip=((tooltip if tooltip is not None else meta.get("help", "")) +
                                              (" " + extra_tooltip if extra_tooltip else "")).strip())
    iid = input_id(cls, name)
    if kind is bool:
        return io.Boolean.Input(iid, default=bool(default), **common, **extra)
    if kind is int or kind is tuple:  # a square (w, h) pair is one INT widget (Bucket Images' resolution)
        return io.Int.Input(iid, default=int(default[0] if kind is tuple else default), min=meta.get("min"),
                            max=meta.get("max"), step=meta.get("step"), **common, **extra)
    if kind is float:
        return io.Float.Input(iid, default=float(default), min=meta.get("min"), max=meta.get("max"),
                              step=meta.get("step"), round=meta.get("round"), **common, **extra)
    if kind is str:
        choices = options if options is not None else choices_of(cls, name)
        if choices is not None:
            if default not in choices:
                default = choices[0]
            return io.Combo.Input(iid, options=list(choices), default=default, **common, **extra)
        return io.String.Input(iid, default="" if default is None and nullable else default,
                               multiline=bool(meta.get("multiline")), **common, **extra)
    raise TypeError(f"{cls.__name__}.{name}: no widget for type {kind!r}")


def widgets(cls, names: Iterable[str], **kwargs: Any) -> list:
    return [widget(cls, n, **kwargs) for n in names]


def values_of(cls, names: Iterable[str], inputs: dict[str, Any]) -> dict[str, Any]:
    """Field name -> value from node inputs (keyed by input id); empty strings become None for ``str | None``
    fields; inputs that were not given keep the field's default."""
    out: dict[str, Any] = {}
    for name in names:
        iid = input_id(cls, name)
        if iid not in inputs or inputs[iid] is None:
            continue
        v = inputs[iid]
        kind, nullable = _kind(cls, name)
        if nullable and kind is str and v == "":
            v = None
        if kind is tuple and isinstance(v, int):
            v = (v, v)
        out[name] = v
    return out
