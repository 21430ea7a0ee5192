"""Optimizers and learning-rate schedules (sd-scripts names and semantics).

Optimizers
    :data:`OPTIMIZERS` maps the user-facing name (the node's combo option, sd-scripts'
    ``--optimizer_type``) to an :class:`OptimizerSpec`: every optimizer sd-scripts' ``get_optimizer`` names
    (torch, bitsandbytes, lion-pytorch, dadaptation, prodigyopt, transformers' Adafactor, schedulefree). Names
    are matched case-insensitively; any other class is given as ``module.Class`` (:func:`optimizer_spec`).
    :func:`build_optimizer` constructs one and returns the kohya ``ss_optimizer`` string next to it.
    Every optimizer runs with its own defaults (weight decay included: AdamW 0.01, Adam and SGD 0)
    unless ``optimizer_args`` set them; only sd-scripts' own choices (SGDNesterov's momentum, Adafactor's
    relative_step) are added.

    Libraries other than torch are imported lazily. Their optimizers are **always listed** by
    :func:`available_optimizers` (so a workflow saved on a machine with the library still validates
    elsewhere), and :func:`build_optimizer` raises :class:`OptimizerUnavailableError` saying
    ``pip install <package>`` when it is missing. :func:`optimizer_is_installed` tells the two
    apart for a UI that wants to grey it out.

    Schedule-free optimizers have train and eval weights: :func:`optimizer_train_mode` switches them (the loop
    trains in train mode and hands previews and checkpoints the eval weights).

Schedules
    :func:`lr_lambda` is a pure function ``(schedule, step, total_steps, warmup_steps) -> factor``
    with the diffusers formulas sd-scripts uses; :func:`build_scheduler` wraps it in a
    ``torch.optim.lr_scheduler.LambdaLR``. Step ``k`` (0-based optimizer step) runs with
    ``base_lr * lr_lambda(..., k, ...)``, so a warmup starts at factor 0 exactly like sd-scripts.
    Warmup may be an int (steps), a float < 1 (ratio of total steps) or a ``"10%"`` string.
    ``constant`` with a warmup raises ``ValueError`` (sd-scripts rule). ``adafactor`` is
    :class:`AdafactorSchedule`; a ``scheduler_type`` builds any torch (or ``module.Class``) scheduler.

    Resume: build the optimizer and scheduler with the same config, then call
    :func:`load_scheduler_state` (works whichever of optimizer/scheduler state is loaded first).
"""
from __future__ import annotations

import ast
import importlib
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch
from torch.optim.lr_scheduler import LambdaLR

log = logging.getLogger(__name__)

__all__ = [
    "OptimizerSpec",
    "OptimizerUnavailableError",
    "OPTIMIZERS",
    "PIP_PACKAGES",
    "optimizer_spec",
    "check_class_path",
    "available_optimizers",
    "optimizer_is_installed",
    "optimizer_state_bytes",
    "build_optimizer",
    "optimizer_repr",
    "parse_optimizer_args",
    "is_schedule_free",
    "optimizer_train_mode",
    "SCHEDULES",
    "AdafactorSchedule",
    "resolve_warmup_steps",
    "lr_lambda",
    "build_scheduler",
    "load_scheduler_state",
]


class OptimizerUnavailableError(ImportError):
    """The chosen optimizer (or LR scheduler class) needs a package that is not installed (message names the fix)."""


# top-level module -> pip package, for the `pip install` hint of an optimizer given as module.Class (pip treats
# '-' and '_' alike, so an unknown module's own name is the usual guess)
PIP_PACKAGES: Dict[str, str] = {
    "bitsandbytes": "bitsandbytes", "lion_pytorch": "lion-pytorch", "prodigyopt": "prodigyopt",
    "dadaptation": "dadaptation", "schedulefree": "schedulefree", "pytorch_optimizer": "pytorch-optimizer",
    "transformers": "transformers", "came_pytorch": "came-pytorch",
}
_CLASS_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

# OptimizerSpec.kind
ADAPTIVE = "adaptive"            # D-Adaptation, Prodigy: the learning rate is a multiplier of the estimated step (~1.0)
ADAFACTOR = "adafactor"          # transformers' Adafactor: relative_step, the adafactor schedule
SCHEDULE_FREE = "schedule_free"  # train()/eval() modes, no LR schedule


@dataclass(frozen=True)
class OptimizerSpec:
    """How to build one named optimizer."""

    name: str
    module: str = field(metadata={"help": "module that holds the class (imported lazily)"})
    class_name: str
    defaults: Mapping[str, Any] = field(default_factory=dict, metadata={
        "help": "kwargs applied unless the user sets them; listed in ss_optimizer like sd-scripts' own additions"})
    pip: Optional[str] = field(default=None, metadata={"help": "package to install when the import fails"})
    help: str = ""
    state_bytes: float = field(default=8.0, metadata={"help": "optimizer state per fp32 parameter, in bytes "
                                                              "(the memory planner's figure)"})
    fixed: Mapping[str, Any] = field(default_factory=dict, metadata={
        "help": "kwargs always passed but not listed in ss_optimizer (sd-scripts passes them as separate "
                "arguments, e.g. SGDNesterov's nesterov=True); optimizer_args still override them"})
    kind: str = field(default="", metadata={"help": "sd-scripts quirks: ADAPTIVE, ADAFACTOR, SCHEDULE_FREE or ''"})

    def load_class(self) -> type:
        try:
            mod = importlib.import_module(self.module)
        except Exception as exc:  # ImportError, or a broken install (e.g. bitsandbytes without CUDA libs)
            if self.pip:
                raise OptimizerUnavailableError(
                    f"optimizer {self.name!r} needs the {self.pip!r} package, which could not be imported "
                    f"({type(exc).__name__}: {exc}). Install it with `pip install {self.pip}` in ComfyUI's "
                    f"Python environment, or choose another optimizer such as 'AdamW'."
                ) from exc
            raise
        cls = getattr(mod, self.class_name, None)
        if cls is not None:
            return cls
        if self.name in OPTIMIZERS and self.pip:  # a named one: the installed package is too old
            raise OptimizerUnavailableError(
                f"optimizer {self.name!r}: the installed {self.pip!r} has no {self.module}.{self.class_name}; "
                f"update it with `pip install -U {self.pip}`")
        if self.module == "torch.optim" and "." not in self.name:
            raise ValueError(f"unknown optimizer {self.name!r}: not one of {', '.join(OPTIMIZERS)}, and torch.optim "
                             f"has no class {self.class_name!r} (class names are case-sensitive; another library's "
                             "class is given as module.Class, e.g. pytorch_optimizer.CAME)")
        raise ValueError(f"optimizer {self.name!r}: module {self.module!r} has no class {self.class_name!r}")


def _bnb(name: str, cls: str, help: str, state_bytes: float, **kw: Any) -> OptimizerSpec:
    return OptimizerSpec(name, "bitsandbytes.optim", cls, pip="bitsandbytes", help=help, state_bytes=state_bytes, **kw)


def _dadapt(name: str, cls: str, help: str, state_bytes: float, module: str = "dadaptation") -> OptimizerSpec:
    return OptimizerSpec(name, module, cls, pip="dadaptation", help=help + "; learning rate ~1.0",
                         state_bytes=state_bytes, kind=ADAPTIVE)


def _sf(name: str, help: str, state_bytes: float) -> OptimizerSpec:
    return OptimizerSpec(name, "schedulefree", name, pip="schedulefree", help=help + "; no LR schedule",
                         state_bytes=state_bytes, kind=SCHEDULE_FREE)


# sd-scripts' optimizer_type names (library/train_util.py get_optimizer) with the class and the defaults it adds.
# state_bytes: fp32 state per parameter (8-bit states ~1 byte per moment plus block scales; Adafactor's factored
# second moment is about (rows + cols) / (rows * cols) of a matrix: for LoRA's rank-r matrices ~4/r bytes, counted
# as 1 byte, approximate).
OPTIMIZERS: Dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in [
        OptimizerSpec("AdamW", "torch.optim", "AdamW", help="torch AdamW (sd-scripts default; weight decay 0.01)"),
        _bnb("AdamW8bit", "AdamW8bit", "bitsandbytes 8-bit AdamW: less optimizer memory", 2.0),
        OptimizerSpec("Adam", "torch.optim", "Adam", {}, help="torch Adam"),
        OptimizerSpec("SGD", "torch.optim", "SGD", {}, help="torch SGD", state_bytes=0.0),
        OptimizerSpec("SGDNesterov", "torch.optim", "SGD", {"momentum": 0.9}, fixed={"nesterov": True},
                      help="torch SGD with Nesterov momentum 0.9 (sd-scripts)", state_bytes=4.0),
        _bnb("PagedAdamW", "PagedAdamW", "bitsandbytes paged AdamW (state may page out to CPU memory on CUDA)", 8.0),
        _bnb("PagedAdamW8bit", "PagedAdamW8bit", "bitsandbytes paged 8-bit AdamW", 2.0),
        _bnb("PagedAdamW32bit", "PagedAdamW32bit", "bitsandbytes paged 32-bit AdamW", 8.0),
        OptimizerSpec("Lion", "lion_pytorch", "Lion", pip="lion-pytorch", state_bytes=4.0,
                      help="lion-pytorch Lion: one moment; usually 3-10x smaller learning rate than AdamW"),
        _bnb("Lion8bit", "Lion8bit", "bitsandbytes 8-bit Lion", 1.0),
        _bnb("PagedLion8bit", "PagedLion8bit", "bitsandbytes paged 8-bit Lion", 1.0),
        _bnb("SGDNesterov8bit", "SGD8bit", "bitsandbytes 8-bit SGD with Nesterov momentum 0.9 (sd-scripts)", 1.0,
             defaults={"momentum": 0.9}, fixed={"nesterov": True}),
        _dadapt("DAdaptation", "DAdaptAdamPreprint", "D-Adaptation AdamPreprint (sd-scripts' DAdaptation)", 12.0,
                "dadaptation.experimental"),
        _dadapt("DAdaptAdam", "DAdaptAdam", "D-Adaptation Adam", 12.0),
        _dadapt("DAdaptAdaGrad", "DAdaptAdaGrad", "D-Adaptation AdaGrad", 12.0),
        _dadapt("DAdaptAdan", "DAdaptAdan", "D-Adaptation Adan (weight decay 0.02 by default)", 20.0),
        _dadapt("DAdaptAdanIP", "DAdaptAdanIP", "D-Adaptation Adan, inverse-proportional (experimental)", 20.0,
                "dadaptation.experimental"),
        _dadapt("DAdaptLion", "DAdaptLion", "D-Adaptation Lion", 8.0),
        _dadapt("DAdaptSGD", "DAdaptSGD", "D-Adaptation SGD", 12.0),
        OptimizerSpec("Prodigy", "prodigyopt", "Prodigy", pip="prodigyopt", state_bytes=16.0, kind=ADAPTIVE,
                      help="Prodigy (prodigyopt): adapts its step size; learning rate ~1.0"),
        OptimizerSpec("Adafactor", "transformers.optimization", "Adafactor", {"relative_step": True},
                      pip="transformers", state_bytes=1.0, kind=ADAFACTOR,
                      help="transformers Adafactor; relative_step=True (default) computes its own step size with "
                           "the adafactor schedule"),
        _sf("RAdamScheduleFree", "schedule-free RAdam", 8.0),
        _sf("AdamWScheduleFree", "schedule-free AdamW", 8.0),
        _sf("SGDScheduleFree", "schedule-free SGD (momentum 0.9)", 4.0),
    ]
}
_ALIASES = {"dadaptadampreprint": "DAdaptation"}  # sd-scripts accepts both names
_BY_LOWER = {**{k.lower(): k for k in OPTIMIZERS}, **_ALIASES}


def optimizer_spec(name: str) -> OptimizerSpec:
    """The spec of ``name``: a named optimizer (case-insensitive, sd-scripts' names) or, as sd-scripts allows any
    class, ``module.Class`` (``torch.optim.RAdam``, ``pytorch_optimizer.CAME``; a bare name is a torch.optim class,
    case-sensitive). A class path gets no defaults; its memory figure is that of a named spec of the same class,
    else 8 bytes (two moments, assumed)."""
    text = str(name).strip()
    key = _BY_LOWER.get(text.lower())
    if key is not None:
        return OPTIMIZERS[key]
    if not _CLASS_PATH.fullmatch(text):
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}, or give a class as "
                         "module.Class (e.g. torch.optim.RAdam)")
    module, _, cls = text.rpartition(".")
    module = module or "torch.optim"
    top = module.split(".")[0]
    same = next((s for s in OPTIMIZERS.values() if (s.module, s.class_name) == (module, cls) and not s.defaults
                 and not s.fixed), None)
    return OptimizerSpec(text, module, cls, pip=None if top == "torch" else PIP_PACKAGES.get(top, top),
                         help=f"{module}.{cls} with the optimizer arguments only",
                         state_bytes=same.state_bytes if same is not None else 8.0)


_spec = optimizer_spec


def check_class_path(text: str) -> str:
    """An option's check: empty, or a class name / dotted ``module.Class`` (syntax only; imported when training)."""
    if text and not _CLASS_PATH.fullmatch(text.strip()):
        raise ValueError(f"{text!r} is not a class name: give module.Class, e.g. pytorch_optimizer.CAME")
    return text


def available_optimizers() -> List[str]:
    """Names for the node's combo. Includes optional ones (see module doc)."""
    return list(OPTIMIZERS)


def optimizer_state_bytes(name: str) -> float:
    """Bytes of optimizer state per fp32 parameter (AdamW: two fp32 moments = 8; approximate for 8-bit and
    factored states, 8 for a class path the table does not know)."""
    return _spec(name).state_bytes


def optimizer_is_installed(name: str) -> bool:
    """True if ``name``'s package can be imported right now."""
    try:
        _spec(name).load_class()
        return True
    except (OptimizerUnavailableError, ValueError):
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


def is_schedule_free(optimizer: Any) -> bool:
    """An optimizer with ``train()`` / ``eval()`` modes (schedulefree's, pytorch_optimizer's ScheduleFree*)."""
    return callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))


def optimizer_train_mode(optimizer: Any, train: bool) -> bool:
    """Switch a schedule-free optimizer to train mode (the weights the gradients are taken at) or eval mode (the
    averaged weights, what previews sample and checkpoints save), as sd-scripts does around sampling and saving;
    switching to the mode it is in changes nothing. Returns False (and does nothing) for other optimizers."""
    if not is_schedule_free(optimizer):
        return False
    (optimizer.train if train else optimizer.eval)()
    return True


def _group_lrs(groups: List[Any], lr: float) -> List[float]:
    return [float(g.get("lr", lr)) if isinstance(g, Mapping) else lr for g in groups]


def _adafactor_lr(groups: List[Any], lr: float, kwargs: Dict[str, Any]) -> Optional[float]:
    """sd-scripts' Adafactor rules; returns the lr to construct it with (None with relative_step)."""
    if not kwargs.get("relative_step") and kwargs.get("warmup_init", False):
        log.info("Adafactor: warmup_init=True needs relative_step: relative_step set to True (as sd-scripts)")
        kwargs["relative_step"] = True
    if not kwargs.get("relative_step"):
        if kwargs.get("clip_threshold", 1.0) != 1.0:
            log.warning("Adafactor: clip_threshold=1.0 is recommended (got %s)", kwargs["clip_threshold"])
        return lr
    if lr != 0.0:
        log.warning("Adafactor with relative_step: learning rate %g is only the initial value the adafactor "
                    "schedule reports; Adafactor computes its own step size (as sd-scripts)", lr)
    had = [g.pop("lr") for g in groups if isinstance(g, dict) and "lr" in g]
    if len(set(had)) > 1:
        log.warning("Adafactor with relative_step: the per-group learning rates (text encoder) are ignored")
    return None


def build_optimizer(
    name: str,
    param_groups: Union[Iterable[torch.Tensor], Iterable[Dict[str, Any]]],
    lr: float,
    **optimizer_args: Any,
) -> Tuple[torch.optim.Optimizer, str]:
    """Construct the optimizer ``name`` (a named one or ``module.Class``, see :func:`optimizer_spec`) over
    ``param_groups`` (params or group dicts, each group may carry its own ``lr``). ``optimizer_args`` override the
    spec's defaults.

    sd-scripts' quirks: D-Adaptation / Prodigy warn below lr 0.1 and with several group learning rates;
    Adafactor with ``relative_step`` (its default) is built with ``lr=None`` and without group learning rates and
    gets the ``adafactor`` schedule from :func:`build_scheduler` (``warmup_init`` implies ``relative_step``); a
    schedule-free optimizer starts in train mode.

    Returns ``(optimizer, optimizer_repr)`` where the repr is kohya's ``ss_optimizer`` string.
    """
    spec = _spec(name)
    cls = spec.load_class()
    kwargs = dict(spec.defaults)
    kwargs.update(optimizer_args)
    groups = [dict(g) if isinstance(g, Mapping) else g for g in param_groups]  # the caller's dicts stay as given
    if not groups:
        raise ValueError("no trainable parameters were given to the optimizer")
    lr = float(lr)
    construct_lr: Optional[float] = lr
    if spec.kind == ADAPTIVE:
        lrs = _group_lrs(groups, lr)
        if lrs[0] <= 0.1:
            log.warning("%s: learning rate %g is low; D-Adaptation and Prodigy expect about 1.0 (a multiplier of the "
                        "step size they estimate)", spec.name, lrs[0])
        if len(set(lrs)) > 1:
            log.warning("%s with several learning rates %s (e.g. text encoder and U-Net): sd-scripts notes that only "
                        "the first one takes effect", spec.name, sorted(set(lrs)))
    elif spec.kind == ADAFACTOR:
        construct_lr = _adafactor_lr(groups, lr, kwargs)
    try:
        opt = cls(groups, lr=construct_lr, **{**spec.fixed, **kwargs})
    except TypeError as exc:
        raise ValueError(f"optimizer {spec.name!r} rejected its arguments {kwargs}: {exc}") from exc
    if spec.kind == ADAFACTOR and construct_lr is None:
        opt.lora_loop_adafactor_lr = lr  # type: ignore[attr-defined]  # the adafactor schedule's initial_lr
    optimizer_train_mode(opt, True)
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
    "adafactor",
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
    * ``adafactor``: 1 (:class:`AdafactorSchedule` reports relative-step Adafactor's own step size instead)
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    step = int(step)
    if schedule in ("constant", "adafactor"):
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


class AdafactorSchedule(LambdaLR):
    """transformers' ``AdafactorSchedule`` as sd-scripts uses it with relative-step Adafactor: the learning rate it
    reports (and writes into the groups, which relative-step Adafactor ignores) is the step size Adafactor computes
    itself (``Adafactor._get_lr`` of each group's first parameter), and ``initial_lr`` before the first step.
    Unlike transformers' it reads the optimizer state rather than the gradients, so it reports the same after a
    resume, and gives one value per group."""

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float):
        for group in optimizer.param_groups:
            group["initial_lr"] = float(initial_lr)
        super().__init__(optimizer, _one)
        for group in optimizer.param_groups:
            del group["initial_lr"]

    def reported_lrs(self) -> List[float]:
        opt = self.optimizer
        out = []
        for group, base in zip(opt.param_groups, self.base_lrs):
            state = opt.state.get(group["params"][0]) if group["params"] else None
            out.append(float(opt._get_lr(group, state)) if state and "step" in state else float(base))
        return out

    def get_lr(self) -> List[float]:  # type: ignore[override]
        return self.reported_lrs()


def _one(_step: int) -> float:
    return 1.0


def _scheduler_class(path: str) -> type:
    """``lr_scheduler_type``: a torch.optim.lr_scheduler class name or ``module.Class`` (sd-scripts)."""
    text = path.strip()
    check_class_path(text)
    module, _, name = text.rpartition(".")
    module = module or "torch.optim.lr_scheduler"
    try:
        mod = importlib.import_module(module)
    except Exception as exc:
        top = module.split(".")[0]
        pip = PIP_PACKAGES.get(top, top)
        raise OptimizerUnavailableError(
            f"lr_scheduler_type {path!r} needs the module {module!r}, which could not be imported "
            f"({type(exc).__name__}: {exc}). Install the package that provides it (usually `pip install {pip}`)."
        ) from exc
    cls = getattr(mod, name, None)
    if not isinstance(cls, type):
        raise ValueError(f"lr_scheduler_type {path!r}: module {module!r} has no class {name!r} (names are "
                         "case-sensitive, e.g. CosineAnnealingLR)")
    if issubclass(cls, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise ValueError(f"lr_scheduler_type {path!r} steps on a validation metric, which training here does not "
                         "have; choose a scheduler that steps by itself")
    return cls


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    total_steps: int,
    warmup: Warmup = 0,
    num_cycles: int = 1,
    power: float = 1.0,
    scheduler_type: str = "",
    scheduler_args: Optional[Mapping[str, Any]] = None,
) -> LambdaLR:
    """A ``LambdaLR`` following :func:`lr_lambda`; step it once per optimizer step.

    sd-scripts' rules (``get_scheduler_fix``), in its order:

    * a schedule-free optimizer (:func:`is_schedule_free`) runs at its constant learning rate: a schedule, warmup
      or ``scheduler_type`` is ignored with a warning (warm it up with ``optimizer_args warmup_steps=N``);
    * ``scheduler_type`` (kohya ``lr_scheduler_type``): that class (torch.optim.lr_scheduler or ``module.Class``)
      built as ``cls(optimizer, **scheduler_args)``, with no warmup;
    * relative-step Adafactor always gets ``adafactor`` (:class:`AdafactorSchedule`, initial lr = the learning
      rate); ``adafactor`` needs such an optimizer and no warmup.

    Raises ``ValueError`` for ``constant`` with a warmup (use ``constant_with_warmup``), for an
    unknown schedule, or for ``total_steps`` < 1.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    total_steps = int(total_steps)
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup_steps = resolve_warmup_steps(warmup, total_steps)
    scheduler_type = (scheduler_type or "").strip()
    if is_schedule_free(optimizer):
        if schedule != "constant" or warmup_steps or scheduler_type:
            log.warning("schedule-free optimizer %s: the learning rate stays constant (lr schedule %r, warmup %d "
                        "steps and lr_scheduler_type %r are not used, as in sd-scripts); warm it up with "
                        "optimizer_args warmup_steps=N", type(optimizer).__name__, schedule, warmup_steps,
                        scheduler_type)
        schedule, warmup_steps, scheduler_type = "constant", 0, ""
    if scheduler_type:
        if warmup_steps:
            raise ValueError(f"lr_scheduler_type {scheduler_type!r} does not use lr_warmup_steps (sd-scripts' rule); "
                             "set the warm-up to 0")
        args = dict(scheduler_args or {})
        cls = _scheduler_class(scheduler_type)
        try:
            sched = cls(optimizer, **args)
        except TypeError as exc:
            raise ValueError(f"lr_scheduler_type {scheduler_type!r} rejected its arguments {args}: {exc}") from exc
        sched.lora_loop_config = {"scheduler_type": f"{cls.__module__}.{cls.__name__}",  # type: ignore[attr-defined]
                                  "scheduler_args": args}
        return sched
    adafactor_lr = getattr(optimizer, "lora_loop_adafactor_lr", None)
    if adafactor_lr is not None and schedule != "adafactor":
        log.info("Adafactor with relative_step: the adafactor schedule is used instead of %r (as sd-scripts)",
                 schedule)
        schedule = "adafactor"
    if schedule == "adafactor":
        relative = bool(optimizer.param_groups and optimizer.param_groups[0].get("relative_step"))
        if not (hasattr(optimizer, "_get_lr") and relative):
            raise ValueError("lr schedule 'adafactor' reports the step size relative-step Adafactor computes itself: "
                             "use it with optimizer Adafactor (relative_step=True, its default); choose another "
                             "schedule otherwise")
        if warmup_steps:
            raise ValueError(f"lr schedule 'adafactor' does not use warmup (got {warmup!r}); set it to 0")
        initial = adafactor_lr if adafactor_lr is not None else optimizer.param_groups[0].get("lr") or 0.0
        sched: LambdaLR = AdafactorSchedule(optimizer, initial)
    else:
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
    if isinstance(scheduler, LambdaLR):
        state.setdefault("lr_lambdas", [None] * len(scheduler.optimizer.param_groups))
    scheduler.load_state_dict(state)
    if mine is not None:
        scheduler.lora_loop_config = mine  # type: ignore[attr-defined]  # the closure's real config
    if isinstance(scheduler, AdafactorSchedule):  # what Adafactor computes from its (loaded) state
        scheduler._last_lr = scheduler.reported_lrs()  # type: ignore[attr-defined]
    elif type(scheduler) is LambdaLR:
        # recompute from the (possibly new) lambda so group LRs match what step() would produce
        scheduler._last_lr = [base * lam(scheduler.last_epoch)  # type: ignore[attr-defined]
                              for base, lam in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    # other schedulers (lr_scheduler_type) restore their own last learning rates
    groups = scheduler.optimizer.param_groups
    if len(groups) != len(scheduler.base_lrs):
        raise ValueError(
            f"scheduler state has {len(scheduler.base_lrs)} parameter groups but the optimizer has {len(groups)}"
        )
    for group, lr in zip(groups, scheduler.get_last_lr()):
        group["lr"] = lr
