"""One declaration per option: a dataclass field with its default, help text and bounds.

``option(...)`` is ``dataclasses.field`` with the metadata everything else is derived from: the node
widgets and tooltips (``nodes/schema.py``), the generated node reference, the range check
(:func:`check_options`, called from each config's ``__post_init__``) and, through the config objects,
the saved file's metadata."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import MISSING, field
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

Choices = Union[Sequence[str], Callable[[], Sequence[str]], None]


def option(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING, min: float | None = None,
           max: float | None = None, step: float | None = None, round: float | None = None,
           choices: Choices = None, multiline: bool = False, widget: str | None = None,
           check: Callable[[Any], Any] | None = None) -> Any:
    """A config field. ``min``/``max`` bound numbers (inclusive), ``choices`` lists the allowed strings (or a
    callable that returns them, for lists only known at run time), ``check`` is a parser that raises ValueError
    for a bad value, ``step``/``round``/``multiline`` shape the widget, ``widget`` names the node input when it
    differs from the field name."""
    meta = {"help": help, "min": min, "max": max, "step": step, "round": round, "choices": choices,
            "multiline": multiline, "widget": widget, "check": check}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def field_of(cls, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def help_of(cls, name: str) -> str:
    """The help text of a dataclass field (used as a node tooltip)."""
    return field_of(cls, name).metadata.get("help", "")


def default_of(cls, name: str) -> Any:
    f = field_of(cls, name)
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    raise KeyError(f"{cls.__name__}.{name} has no default")


def choices_of(cls, name: str) -> list[str] | None:
    c = field_of(cls, name).metadata.get("choices")
    if c is None:
        return None
    return list(c() if callable(c) else c)


def base_type(hint: Any) -> tuple[Any, bool]:
    """(type, optional) of an annotation: ``str | None`` -> (str, True)."""
    args = typing.get_args(hint)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else hint), True
    return hint, False


def _check_type(label: str, kind: Any, optional: bool, value: Any) -> None:
    if value is None:
        if not optional:
            raise ValueError(f"{label} must be set, got None")
        return
    if kind is bool:
        ok = isinstance(value, bool)
        want = "true or false"
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        want = "a whole number"
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # NaN != NaN
        want = "a number"
    elif kind is str:
        ok = isinstance(value, str)
        want = "a text"
    else:
        return
    if not ok:
        raise ValueError(f"{label} must be {want}, got {value!r}")


def check_options(obj: Any, names: Iterable[str] | None = None) -> None:
    """Raise ValueError naming the option when a value has the wrong type (bool/int/float/str fields; NaN is
    not a number here) or is outside its declared bounds or choices."""
    wanted = None if names is None else set(names)
    check_values(type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
                             if wanted is None or f.name in wanted})


def check_values(cls, values: Mapping[str, Any]) -> None:
    """``check_options`` for field values given by name, each on its own (a settings node carries a few fields
    of a config; checks that involve several fields run where the whole config is built)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        meta, value = f.metadata, values[f.name]
        label = meta.get("widget") or f.name
        _check_type(label, *base_type(hints[f.name]), value)
        if meta.get("check") is not None and value is not None:
            meta["check"](value)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            lo, hi = meta.get("min"), meta.get("max")
            if lo is not None and value < lo or hi is not None and value > hi:
                span = f"between {lo} and {hi}" if lo is not None and hi is not None else \
                    f">= {lo}" if lo is not None else f"<= {hi}"
                raise ValueError(f"{label} must be {span}, got {value}")
        elif isinstance(value, str) and meta.get("choices") is not None:
            c = meta["choices"]
            if callable(c):
                try:
                    c = c()
                except ImportError:  # a list only ComfyUI knows (its samplers), checked where ComfyUI runs
                    continue
            if value not in c:
                raise ValueError(f"{label} must be one of {', '.join(map(str, c))}, got {value!r}")
