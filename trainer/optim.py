"""Optimizers and learning-rate schedules (sd-scripts names and semantics).

Optimizers
    :data:`OPTIMIZERS` maps the user-facing name (the node's combo option, sd-scripts'
    ``--optimizer_type``) to an :class:`OptimizerSpec`. :func:`build_optimizer` constructs one and
    returns the kohya ``ss_optimizer`` string next to it. Names are matched case-insensitively.
    Every optimizer runs with its own defaults (weight decay included: AdamW 0.01, Adam and SGD 0)
    unless ``optimizer_args`` set them; only sd-scripts' own choices (SGDNesterov's momentum) are added.

    ``AdamW8bit`` needs bitsandbytes, which is imported lazily. It is **always listed** by
    :func:`available_optimizers` (so a workflow saved on a machine with bitsandbytes still validates
    elsewhere), and :func:`build_optimizer` raises :class:`OptimizerUnavailableError` saying
    ``pip install bitsandbytes`` when it is missing. :func:`optimizer_is_installed` tells the two
    apart for a UI that wants to grey it out.

Schedules
    :func:`lr_lambda` is a pure function ``(schedule, step, total_steps, warmup_steps) -> factor``
    with the diffusers formulas sd-scripts uses; :func:`build_scheduler` wraps it in a
    ``torch.optim.lr_scheduler.LambdaLR``. Step ``k`` (0-based optimizer step) runs with
    ``base_lr * lr_lambda(..., k, ...)``, so a warmup starts at factor 0 exactly like sd-scripts.
    Warmup may be an int (steps), a float < 1 (ratio of total steps) or a ``"10%"`` string.
    ``constant`` with a warmup raises ``ValueError`` (sd-scripts rule).

    Resume: build the optimizer and scheduler with the same config, then call
    :func:`load_scheduler_state` (works whichever of optimizer/scheduler state is loaded first).
"""
from __future__ import annotations

import ast
import importlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch
from torch.optim.lr_scheduler import LambdaLR

log = logging.getLogger(__name__)

__all__ = [
    "OptimizerSpec",
    "OptimizerUnavailableError",
    "OPTIMIZERS",
    "available_optimizers",
    "optimizer_is_installed",
    "optimizer_state_bytes",
    "build_optimizer",
    "optimizer_repr",
    "parse_optimizer_args",
    "SCHEDULES",
    "resolve_warmup_steps",
    "lr_lambda",
    "build_scheduler",
    "load_scheduler_state",
]


class OptimizerUnavailableError(ImportError):
    """The chosen optimizer needs a package that is not installed (message names the fix)."""


@dataclass(frozen=True)
class OptimizerSpec:
    """How to build one named optimizer."""

    name: str
    module: str = field(metadata={"help": "module that holds the class (imported lazily)"})
    class_name: str
    defaults: Mapping[str, Any] = field(default_factory=dict, metadata={"help": "kwargs applied unless the user sets them"})
    pip: Optional[str] = field(default=None, metadata={"help": "package to install when the import fails"})
    help: str = ""
    state_bytes: float = field(default=8.0, metadata={"help": "optimizer state per fp32 parameter, in bytes "
                                                              "(the memory planner's figure)"})

    def load_class(self) -> type:
        try:
            mod = importlib.import_module(self.module)
            return getattr(mod, self.class_name)
        except Exception as exc:  # ImportError, or a broken install (e.g. bitsandbytes without CUDA libs)
            if self.pip:
                raise OptimizerUnavailableError(
                    f"optimizer {self.name!r} needs the {self.pip!r} package, which could not be imported "
                    f"({type(exc).__name__}: {exc}). Install it with `pip install {self.pip}` in ComfyUI's "
                    f"Python environment, or choose another optimizer such as 'AdamW'."
                ) from exc
            raise


OPTIMIZERS: Dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in [
        OptimizerSpec("AdamW", "torch.optim", "AdamW", help="torch AdamW (sd-scripts default; weight decay 0.01)"),
        OptimizerSpec("AdamW8bit", "bitsandbytes.optim", "AdamW8bit", pip="bitsandbytes",
                      help="bitsandbytes 8-bit AdamW: less optimizer memory; needs bitsandbytes (CUDA)",
                      state_bytes=2.0),
        OptimizerSpec("Adam", "torch.optim", "Adam", {}, help="torch Adam"),
        OptimizerSpec("SGD", "torch.optim", "SGD", {}, help="torch SGD", state_bytes=0.0),
        OptimizerSpec("SGDNesterov", "torch.optim", "SGD", {"momentum": 0.9, "nesterov": True},
                      help="torch SGD with Nesterov momentum 0.9 (sd-scripts)", state_bytes=4.0),
    ]
}
_BY_LOWER = {k.lower(): k for k in OPTIMIZERS}


def _spec(name: str) -> OptimizerSpec:
    key = _BY_LOWER.get(str(name).strip().lower())
    if key is None:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[key]


def available_optimizers() -> List[str]:
    """Names for the node's combo. Includes optional ones (see module doc)."""
    return list(OPTIMIZERS)


def optimizer_state_bytes(name: str) -> float:
    """Bytes of optimizer state per fp32 parameter (AdamW: two fp32 moments = 8)."""
    return _spec(name).state_bytes


def optimizer_is_installed(name: str) -> bool:
    """True if ``name``'s package can be imported right now."""
    try:
        _spec(name).load_class()
        return True
    except OptimizerUnavailableError:
        return False


def parse_optimizer_args(text: Union[str, Iterable[str], None]) -> Dict[str, Any]:
    """sd-scripts ``--optimizer_args``: ``"weight_decay=0.1 betas=0.9,0.99"`` -> dict.

    Values go through ``ast.literal_eval`` (so ``0.9,0.99`` is a tuple, ``True`` a bool); values
    that are not Python literals stay strings. Items are separated by whitespace or newlines.
    """
    if text is None:
        return {}
    items = text.split() if isinstance(text, str) else [s for t in text for s in str(t).split()]
    out: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"optimizer argument {item!r} must look like key=value (e.g. weight_decay=0.01)")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key.isidentifier():
            raise ValueError(f"optimizer argument name {key!r} is not a valid name")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def optimizer_repr(cls: type, kwargs: Mapping[str, Any]) -> str:
    """kohya ``ss_optimizer``: ``"<module>.<Class>(k=v,...)"`` (no parentheses without kwargs)."""
    name = f"{cls.__module__}.{cls.__name__}"
    if not kwargs:
        return name
    return f"{name}({','.join(f'{k}={v}' for k, v in kwargs.items())})"


def build_optimizer(
    name: str,
    param_groups: Union[Iterable[torch.Tensor], Iterable[Dict[str, Any]]],
    lr: float,
    **optimizer_args: Any,
) -> Tuple[torch.optim.Optimizer, str]:
    """Construct the optimizer ``name`` over ``param_groups`` (params or group dicts, each group may
    carry its own ``lr``). ``optimizer_args`` override the spec's defaults.

    Returns ``(optimizer, optimizer_repr)`` where the repr is kohya's ``ss_optimizer`` string.
    """
    spec = _spec(name)
    cls = spec.load_class()
    kwargs = dict(spec.defaults)
    kwargs.update(optimizer_args)
    groups = list(param_groups)
    if not groups:
        raise ValueError("no trainable parameters were given to the optimizer")
    try:
        opt = cls(groups, lr=float(lr), **kwargs)
    except TypeError as exc:
        raise ValueError(f"optimizer {spec.name!r} rejected its arguments {kwargs}: {exc}") from exc
    return opt, optimizer_repr(cls, kwargs)


# --------------------------------------------------------------------------------------------
# LR schedules
# --------------------------------------------------------------------------------------------

SCHEDULES: Tuple[str, ...] = (
    "constant",
    "constant_with_warmup",
    "cosine",
    "linear",
    "cosine_with_restarts",
    "polynomial",
)

Warmup = Union[int, float, str, None]


def resolve_warmup_steps(warmup: Warmup, total_steps: int) -> int:
    """sd-scripts ``int_or_float``: int -> steps; float < 1 -> ``int(ratio * total_steps)``;
    ``"10%"`` -> ratio 0.1; a whole float >= 1 (e.g. from a FLOAT widget) -> steps."""
    if warmup is None:
        return 0
    if isinstance(warmup, str):
        s = warmup.strip()
        try:
            if s.endswith("%"):
                pct = float(s[:-1])
                if not 0 <= pct <= 100:
                    raise ValueError
                return int(pct / 100.0 * total_steps)
            warmup = float(s) if any(c in s for c in ".eE") else int(s)
        except ValueError:
            raise ValueError(f"warmup {warmup!r} must be steps (100), a ratio (0.1) or a percentage (10%)") from None
    if isinstance(warmup, bool):
        raise ValueError("warmup must be a number of steps or a ratio, not a bool")
    if isinstance(warmup, float):
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        if warmup < 1.0:
            return int(warmup * total_steps)
        if warmup.is_integer():
            return int(warmup)
        raise ValueError(f"warmup {warmup} is neither a whole number of steps nor a ratio below 1")
    warmup = int(warmup)
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    return warmup


def lr_lambda(
    schedule: str,
    step: int,
    total_steps: int,
    warmup_steps: int = 0,
    num_cycles: int = 1,
    power: float = 1.0,
) -> float:
    """LR factor in [0, 1] for 0-based optimizer ``step`` (diffusers/sd-scripts formulas).

    * warmup (all but ``constant``): ``step / warmup_steps`` while ``step < warmup_steps``
    * ``constant``: 1; ``constant_with_warmup``: 1 after warmup
    * ``linear``: ``(total - step) / (total - warmup)``, 0 at the end
    * ``cosine``: ``0.5 * (1 + cos(pi * progress))``, progress = (step-warmup)/(total-warmup)
    * ``cosine_with_restarts``: ``num_cycles`` hard restarts of the cosine
    * ``polynomial``: ``(1 - progress) ** power`` (sd-scripts/diffusers end at lr_end=1e-7
      absolute; here the end is 0)
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    step = int(step)
    if schedule == "constant":
        return 1.0
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    if schedule == "constant_with_warmup":
        return 1.0
    progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))
    if schedule == "cosine_with_restarts":
        if progress >= 1.0:
            return 0.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(num_cycles) * progress) % 1.0))))
    # polynomial
    return max(0.0, 1.0 - min(progress, 1.0)) ** float(power)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    total_steps: int,
    warmup: Warmup = 0,
    num_cycles: int = 1,
    power: float = 1.0,
) -> LambdaLR:
    """A ``LambdaLR`` following :func:`lr_lambda`; step it once per optimizer step.

    Raises ``ValueError`` for ``constant`` with a warmup (use ``constant_with_warmup``), for an
    unknown schedule, or for ``total_steps`` < 1.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    total_steps = int(total_steps)
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup_steps = resolve_warmup_steps(warmup, total_steps)
    if schedule == "constant" and warmup_steps > 0:
        raise ValueError(
            f"lr schedule 'constant' does not use warmup (got {warmup!r}); choose 'constant_with_warmup' "
            "to warm up, or set warmup to 0"
        )
    if warmup_steps > total_steps:
        log.warning("lr warmup (%d steps) is longer than training (%d steps)", warmup_steps, total_steps)

    def factor(step: int) -> float:  # a closure: LambdaLR keeps it out of state_dict
        return lr_lambda(schedule, step, total_steps, warmup_steps, num_cycles, power)

    sched = LambdaLR(optimizer, factor)
    sched.lora_loop_config = {  # type: ignore[attr-defined]
        "schedule": schedule, "total_steps": total_steps, "warmup_steps": warmup_steps,
        "num_cycles": int(num_cycles), "power": float(power),
    }
    return sched


def load_scheduler_state(scheduler: LambdaLR, state: Mapping[str, Any], strict: bool = True) -> None:
    """Restore a scheduler and re-apply its LRs to the optimizer's param groups.

    ``LambdaLR.load_state_dict`` alone leaves the groups at whatever LR they had (the scheduler's
    construction sets step-0 LRs), so the next step would use the wrong LR if the optimizer state
    was loaded before the scheduler was built. This makes the order irrelevant.

    With ``strict`` (default) a state saved from a different schedule config (schedule, total
    steps, warmup, cycles, power) raises ``ValueError``. With ``strict=False`` the step counter is
    restored and the *current* schedule applies from there (e.g. "continue with more steps"; the
    base LRs also come from the saved state).
    """
    state = dict(state)
    mine = getattr(scheduler, "lora_loop_config", None)
    saved = state.get("lora_loop_config")
    if mine is not None and saved is not None and dict(saved) != dict(mine):
        if strict:
            raise ValueError(
                f"the saved LR schedule {dict(saved)} does not match the current one {dict(mine)}; "
                "resume with the same schedule, steps and warmup, or start a new run"
            )
        log.info("LR schedule changed on resume: %s -> %s", dict(saved), dict(mine))
    state.setdefault("lr_lambdas", [None] * len(scheduler.optimizer.param_groups))
    scheduler.load_state_dict(state)
    if mine is not None:
        scheduler.lora_loop_config = mine  # type: ignore[attr-defined]  # the closure's real config
    # recompute from the (possibly new) lambda so group LRs match what step() would produce
    scheduler._last_lr = [base * lam(scheduler.last_epoch)  # type: ignore[attr-defined]
                          for base, lam in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    groups = scheduler.optimizer.param_groups
    if len(groups) != len(scheduler.base_lrs):
        raise ValueError(
            f"scheduler state has {len(scheduler.base_lrs)} parameter groups but the optimizer has {len(groups)}"
        )
    for group, lr in zip(groups, scheduler.get_last_lr()):
        group["lr"] = lr
