"""Checkpoints and full training state: capture, save, prune, resume.

Layout (kohya-style step naming, one folder per output name)::

    <loras>/<name>_checkpoints/<name>-step00000100.safetensors        a kohya LoRA (any LoRA loader reads it)
    <loras>/<name>_checkpoints/<name>-step00000100-state.tensors      resumable state: tensors (safetensors)
    <loras>/<name>_checkpoints/<name>-step00000100-state.json         resumable state: everything else

Every file is written atomically (temp file + rename). The state pair is written with
:func:`trainer.state.save_state` (safetensors + JSON, never pickle).

A :class:`~trainer.state.TrainState` captured here holds the LoRA weights (fp32, kohya keys), the
optimizer and LR-scheduler state, the step and data position (epoch, batch index), the seed (the
loop draws all randomness from generators seeded by (seed, step, micro-step), so no RNG stream has
to be stored), the loss/lr history and a config fingerprint. Resuming from it continues bit for bit.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .loop import Position, Trainer
from .state import TENSORS_EXT, StateError, TrainState, config_mismatches, load_state, save_state, state_paths

log = logging.getLogger(__name__)

STEP_DIGITS = 8
STATE_SUFFIX = "-state"
# settings that make a saved optimizer state unusable when they differ (everything else only warns)
STRICT_KEYS = ("optimizer_type", "network")


@dataclass(frozen=True)
class CheckpointConfig:
    output_name: str = field(default="my_lora", metadata={
        "help": "Name of the run: checkpoints go to <loras>/<name>_checkpoints/<name>-step00000100.safetensors "
                "(+ -state.tensors/.json beside each)."})
    save_every_n_steps: int = field(default=0, metadata={
        "help": "Save a checkpoint (LoRA + resumable state) every N optimizer steps; 0 = off (kohya "
                "save_every_n_steps)."})
    save_every_n_epochs: int = field(default=0, metadata={
        "help": "Save a checkpoint at the end of every N-th epoch; 0 = off (kohya save_every_n_epochs; named by "
                "step like the others)."})
    save_last_n: int = field(default=0, metadata={
        "help": "Keep only the newest K checkpoints written by this run (older ones and their state files are "
                "deleted); 0 = keep all."})
    save_dtype: str = field(default="fp16", metadata={
        "help": "Precision of the checkpoint LoRA files (the -state files always keep fp32)."})

    def periodic(self) -> bool:
        return self.save_every_n_steps > 0 or self.save_every_n_epochs > 0


def checkpoint_stem(name: str, step: int) -> str:
    return f"{name}-step{step:0{STEP_DIGITS}d}"


def checkpoint_folder(loras_dir: str, name: str) -> str:
    from .savefile import validate_filename

    validate_filename(name)
    return os.path.join(loras_dir, f"{name}_checkpoints")


# ------------------------------------------------------------------------------------------ capture

def config_fingerprint(trainer: Trainer, network) -> dict[str, Any]:
    """What a saved state must agree with to be resumed (the step count is not part of it)."""
    cfg = {k: v for k, v in dataclasses.asdict(trainer.cfg).items() if k != "max_train_steps"}
    net = network.metadata() if callable(getattr(network, "metadata", None)) else {}
    cfg["network"] = {"family": net.get("family", getattr(network, "family", None)),
                      "rank": getattr(network, "rank", None), "alpha": getattr(network, "alpha", None),
                      "conv_rank": getattr(network, "conv_rank", None),
                      "conv_alpha": getattr(network, "conv_alpha", None), "modules": len(network)}
    try:
        from .batching import batches_per_epoch

        cfg["dataset"] = {"images": len(trainer.data.dataset.images),
                          "batches_per_epoch": batches_per_epoch(trainer.data.dataset, trainer.data.plan)}
    except Exception:  # stand-in datasets in tests
        pass
    return cfg


def _cpu_clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu_clone(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_cpu_clone(v) for v in obj)
    return copy.deepcopy(obj)


def capture_state(trainer: Trainer, network, extra: dict | None = None) -> TrainState:
    """A self-contained snapshot (tensors copied to CPU): later steps do not change it."""
    sched = trainer.scheduler.state_dict()
    if "lora_loop_config" not in sched and hasattr(trainer.scheduler, "lora_loop_config"):
        sched["lora_loop_config"] = dict(trainer.scheduler.lora_loop_config)
    info = {"losses": list(trainer.losses), "lrs": list(trainer.lrs),
            "max_train_steps": int(trainer.cfg.max_train_steps)}
    info.update(extra or {})
    return TrainState(
        step=int(trainer.step), epoch=int(trainer.position.epoch), batch_index=int(trainer.position.batch_index),
        lora=_cpu_clone(network.kohya_state_dict()), optimizer=_cpu_clone(trainer.optimizer.state_dict()),
        scheduler=_cpu_clone(sched), rng={"generators": {}, "seed": int(trainer.cfg.seed)},
        config=config_fingerprint(trainer, network), extra=info)


def apply_state(trainer: Trainer, network, state: TrainState, source: str = "the training state") -> None:
    """Load ``state`` into a freshly built trainer and its (installed) network.

    Raises :class:`StateError` when the step is past ``steps`` or the optimizer / network do not match;
    other setting changes (learning rate, seed, ...) are logged and the new values apply from here."""
    if state.step > trainer.cfg.max_train_steps:
        raise StateError(f"{source} is at step {state.step}, past steps={trainer.cfg.max_train_steps}; set steps "
                         f"to more than {state.step} to continue it (or disconnect it to start over)")
    now = config_fingerprint(trainer, network)
    diff = config_mismatches(state.config, now, ignore=("dataset",))
    strict = [d for d in diff if d.split(":", 1)[0] in STRICT_KEYS]
    if strict:
        raise StateError(f"cannot resume from {source}: " + "; ".join(strict) +
                         ". Use the same optimizer and LoRA network (Inject LoRA settings), or start a new run.")
    if diff:
        log.warning("resuming from %s with changed settings (the new values apply from step %d):\n  %s",
                    source, state.step, "\n  ".join(diff))
    ds_diff = config_mismatches(state.config.get("dataset", {}), now.get("dataset", {}))
    if ds_diff:
        log.warning("resuming from %s on a different dataset (%s): the data order continues from epoch %d, "
                    "batch %d of the new one", source, "; ".join(ds_diff), state.epoch, state.batch_index)
    if int(state.rng.get("seed", trainer.cfg.seed)) != trainer.cfg.seed:
        log.warning("resuming from %s with seed %s instead of %s: noise and data order follow the new seed",
                    source, state.rng.get("seed"), trainer.cfg.seed)
    try:
        network.load_kohya_state_dict(state.lora, strict=True, source=source)
    except ValueError as exc:
        raise StateError(str(exc) + ". The state belongs to a different LoRA network (Inject LoRA settings or "
                         "model); connect the same ones, or start a new run.") from exc
    extra = state.extra or {}
    # copies: Optimizer.load_state_dict keeps same-device tensors, and later steps update them in place
    trainer.load_progress(state.step, Position(state.epoch, state.batch_index), _cpu_clone(state.optimizer),
                          _cpu_clone(state.scheduler), list(extra.get("losses", [])), list(extra.get("lrs", [])))


# ------------------------------------------------------------------------------------------ files

def resolve_state_path(path: str, loras_dir: str | None) -> str:
    """A user-typed state location -> the ``...-state`` prefix.

    Accepts an absolute path or one relative to the loras folder, naming the state prefix, either state
    file, or the checkpoint LoRA file beside it (``name-step00000100.safetensors``)."""
    p = os.path.expanduser(path.strip().strip('"'))
    if not os.path.isabs(p):
        if loras_dir is None:
            raise StateError(f"resume_from {path!r} is relative but no loras folder is known; give an absolute path")
        p = os.path.join(loras_dir, p)
    for ext in (".safetensors", TENSORS_EXT, ".json"):
        if p.endswith(ext):
            p = p[: -len(ext)]
    if not p.endswith(STATE_SUFFIX):
        p += STATE_SUFFIX
    if not os.path.isfile(p + ".json"):
        raise StateError(f"no training state at {p}.json (resume_from={path!r}); give a '-state.json' file from a "
                         "<name>_checkpoints folder (absolute or relative to the loras folder)")
    return p


def load_checkpoint_state(path: str, loras_dir: str | None = None) -> TrainState:
    return load_state(resolve_state_path(path, loras_dir))


@dataclass
class Saved:
    step: int
    lora_path: str
    state_prefix: str

    def paths(self) -> list[str]:
        return [self.lora_path, *state_paths(self.state_prefix)]


class CheckpointWriter:
    """Writes checkpoints of one run into ``<loras>/<name>_checkpoints`` and prunes old ones.

    ``save_lora_file(network, folder, stem, step)`` writes the LoRA file (the session passes one that sets
    the training metadata and calls ``export.save_lora``); it must return the written path."""

    def __init__(self, loras_dir: str, cfg: CheckpointConfig,
                 save_lora_file: Callable[[Any, str, str, int], str] | None = None):
        self.cfg = cfg
        self.folder = checkpoint_folder(loras_dir, cfg.output_name)
        self.saved: list[Saved] = []
        self._save_lora_file = save_lora_file or self._default_save

    def _default_save(self, network, folder: str, stem: str, step: int) -> str:
        from .export import save_lora

        return save_lora(network, folder, stem, self.cfg.save_dtype, "overwrite", {"ss_steps": str(step)})

    def due(self, step: int, epoch_end: bool, epoch: int) -> bool:
        c = self.cfg
        if c.save_every_n_steps > 0 and step % c.save_every_n_steps == 0:
            return True
        return c.save_every_n_epochs > 0 and epoch_end and (epoch + 1) % c.save_every_n_epochs == 0

    @property
    def last(self) -> Saved | None:
        return self.saved[-1] if self.saved else None

    def save(self, trainer: Trainer, network, reason: str = "checkpoint") -> Saved:
        step = trainer.step
        if self.last is not None and self.last.step == step:
            return self.last
        os.makedirs(self.folder, exist_ok=True)
        stem = checkpoint_stem(self.cfg.output_name, step)
        lora_path = self._save_lora_file(network, self.folder, stem, step)
        prefix = os.path.join(self.folder, stem + STATE_SUFFIX)
        save_state(capture_state(trainer, network), prefix)
        saved = Saved(step, lora_path, prefix)
        self.saved.append(saved)
        log.info("LoRA Loop: %s at step %d: %s (+ %s.json/.tensors)", reason, step, lora_path,
                 os.path.basename(prefix))
        self._prune()
        return saved

    def _prune(self) -> None:
        keep = self.cfg.save_last_n
        if keep <= 0:
            return
        while len(self.saved) > keep:
            old = self.saved.pop(0)
            for p in old.paths():
                try:
                    os.remove(p)
                except FileNotFoundError:
                    pass
            log.info("LoRA Loop: removed old checkpoint %s (save_last_n=%d)", old.lora_path, keep)

