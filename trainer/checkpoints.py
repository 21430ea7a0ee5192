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
import re
from dataclasses import dataclass
from typing import Any

import torch

from .export import SAVE_DTYPES, save_lora
from .loop import Position, Trainer
from .options import check_options, option
from .state import TENSORS_EXT, StateError, TrainState, config_mismatches, load_state, save_state, state_paths

log = logging.getLogger(__name__)

STEP_DIGITS = 8
STATE_SUFFIX = "-state"
# settings that make a saved optimizer state unusable when they differ (everything else only warns)
STRICT_KEYS = ("optimizer_type", "optimizer_class", "network")
# options that are left out of the fingerprint while empty, so states saved before they existed still match
OMITTED_WHEN_EMPTY = ("optimizer_class", "lr_scheduler_type", "lr_scheduler_args")


@dataclass(frozen=True)
class CheckpointConfig:
    output_name: str = option("my_lora", "Name of the run: checkpoints go to <loras>/<name>_checkpoints/"
                                         "<name>-step00000100.safetensors (+ -state.tensors/.json beside each). May "
                                         "hold subfolders: 'project/my_lora'. Cancel saves the last completed step "
                                         "there too.")
    save_every_n_steps: int = option(0, "Save a checkpoint (LoRA + resumable state) every N optimizer steps; 0 = off "
                                        "(kohya save_every_n_steps).", min=0, max=1_000_000)
    save_every_n_epochs: int = option(0, "Save a checkpoint at the end of every N-th epoch; 0 = off (kohya "
                                         "save_every_n_epochs; named by step like the others).", min=0, max=100_000)
    save_last_n: int = option(0, "Keep only the newest K checkpoints of this output name in its _checkpoints folder, "
                                 "whichever run wrote them (older ones and their state files are deleted); 0 = keep "
                                 "all.", min=0, max=100_000)
    save_dtype: str = option("fp16", "Precision of the checkpoint LoRA files (the -state files always keep fp32).",
                             choices=tuple(SAVE_DTYPES))
    resume_from: str = option("", "Path of a '-state.json' file (or its checkpoint .safetensors) from a "
                                  "<name>_checkpoints folder, absolute or relative to the loras folder: continue that "
                                  "run up to 'steps'. Empty = off. Only safetensors + JSON are read (no pickle).")

    def __post_init__(self):
        check_options(self)
        from .savefile import validate_filename

        validate_filename(self.output_name, subfolders=True)

    def periodic(self) -> bool:
        return self.save_every_n_steps > 0 or self.save_every_n_epochs > 0


def checkpoint_stem(name: str, step: int) -> str:
    return f"{name}-step{step:0{STEP_DIGITS}d}"


def run_name(name: str) -> str:
    """The file-name part of an output name (``project/my_lora`` or ``project\\my_lora`` -> ``my_lora``)."""
    from .savefile import validate_filename

    return validate_filename(name, subfolders=True).rpartition("/")[2]


def checkpoint_folder(loras_dir: str, name: str) -> str:
    """``<loras>/<name>_checkpoints``; ``name`` may hold subfolders (``project/my_lora``), which must stay inside
    the loras folder (a symlink leading outside is refused)."""
    from .savefile import inside, validate_filename

    rel = validate_filename(name, subfolders=True)
    folder = os.path.join(loras_dir, *f"{rel}_checkpoints".split("/"))
    if not inside(os.path.realpath(os.path.abspath(loras_dir)), folder):
        raise ValueError(f"output_name {name!r}: {folder} resolves outside the loras folder {loras_dir} (symlink?); "
                         "choose another name")
    return folder


# ------------------------------------------------------------------------------------------ capture

GROUPS_KEY = "param_groups"  # strict too; states saved before it was recorded are not checked
NETWORK_TRAINING_OPTIONS = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio",
                            "down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold",
                            "scale_weight_norms")


def config_fingerprint(trainer: Trainer, network) -> dict[str, Any]:
    """What a saved state must agree with to be resumed (the step count is not part of it)."""
    cfg = {k: v for k, v in dataclasses.asdict(trainer.cfg).items()
           if k != "max_train_steps" and not (k in OMITTED_WHEN_EMPTY and not v)}
    sp = network.spec
    cfg["network"] = {"family": sp.family, "rank": sp.rank, "alpha": sp.alpha, "conv_rank": sp.conv_rank,
                      "conv_alpha": sp.conv_alpha, "modules": len(network)}
    # the optimizer's groups (LoRA+ and block lr weights split them): its saved state fits the same groups only
    cfg[GROUPS_KEY] = [[g.get("name", ""), len(g["params"])] for g in trainer.optimizer.param_groups]
    for k in NETWORK_TRAINING_OPTIONS:  # off: left out, so states saved before these options existed match
        if not cfg.get(k, True):
            cfg.pop(k)
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
        scheduler=_cpu_clone(sched), rng={"seed": int(trainer.cfg.seed)},
        config=config_fingerprint(trainer, network), extra=info)


def apply_state(trainer: Trainer, network, state: TrainState, source: str = "the training state") -> None:
    """Load ``state`` into a freshly built trainer and its (installed) network.

    Raises :class:`StateError` when the step is past ``steps`` or the optimizer / network do not match;
    other setting changes (learning rate, seed, ...) are logged and the new values apply from here."""
    if state.step > trainer.cfg.max_train_steps:
        raise StateError(f"{source} is at step {state.step}, past steps={trainer.cfg.max_train_steps}; set steps "
                         f"to more than {state.step} to continue it (or disconnect it to start over)")
    now = config_fingerprint(trainer, network)
    diff = config_mismatches(state.config, now, ignore=("dataset",) + (() if GROUPS_KEY in state.config
                                                                       else (GROUPS_KEY,)))
    strict = [d for d in diff if d.split(":", 1)[0] in STRICT_KEYS + (GROUPS_KEY,)]
    if strict:
        raise StateError(f"cannot resume from {source}: " + "; ".join(strict) +
                         ". Use the same optimizer, LoRA network (Inject LoRA settings) and LoRA+ / block learning "
                         "rates (Network Training settings), or start a new run.")
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
    size: int = 0          # bytes of the LoRA file

    def paths(self) -> list[str]:
        return [self.lora_path, *state_paths(self.state_prefix)]


_STEP_RE = re.compile(r"-step(\d{%d,})\.safetensors$" % STEP_DIGITS)


def checkpoints_in(folder: str, name: str) -> list[Saved]:
    """The checkpoints of ``name`` in ``folder`` (whichever run wrote them), oldest written first."""
    base = run_name(name)
    found = []
    try:
        entries = os.listdir(folder)
    except FileNotFoundError:
        return []
    for entry in entries:
        m = _STEP_RE.search(entry)
        if not m or entry[: m.start()] != base:
            continue
        path = os.path.join(folder, entry)
        try:
            mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            continue
        stem = entry[: -len(".safetensors")]
        found.append((mtime, int(m.group(1)), Saved(int(m.group(1)), path, os.path.join(folder, stem + STATE_SUFFIX))))
    return [s for _, _, s in sorted(found, key=lambda x: (x[0], x[1]))]


class CheckpointWriter:
    """Writes checkpoints of one run into ``<loras>/<name>_checkpoints`` and prunes old ones: ``save_last_n``
    counts every checkpoint of that name in the folder, whichever run wrote it, and keeps the newest."""

    def __init__(self, loras_dir: str, cfg: CheckpointConfig):
        self.cfg = cfg
        self.loras_dir = loras_dir
        self.folder = checkpoint_folder(loras_dir, cfg.output_name)
        self.saved: list[Saved] = []

    def relative(self, saved: Saved) -> str:
        """A checkpoint's name relative to the loras folder (what LoRA loaders list)."""
        return os.path.relpath(saved.lora_path, self.loras_dir).replace(os.sep, "/")

    def due(self, step: int, epoch_end: bool, epoch: int) -> bool:
        c = self.cfg
        if c.save_every_n_steps > 0 and step % c.save_every_n_steps == 0:
            return True
        return c.save_every_n_epochs > 0 and epoch_end and (epoch + 1) % c.save_every_n_epochs == 0

    @property
    def last(self) -> Saved | None:
        return self.saved[-1] if self.saved else None

    def save(self, trainer: Trainer, network, reason: str = "checkpoint", record=None) -> Saved:
        """Write the LoRA (metadata from ``record``, a TrainingRecord) and the resumable state of
        ``trainer``'s current step; both atomically."""
        step = trainer.step
        if self.last is not None and self.last.step == step:
            return self.last
        os.makedirs(self.folder, exist_ok=True)
        stem = checkpoint_stem(run_name(self.cfg.output_name), step)
        lora = save_lora(network, self.folder, stem, self.cfg.save_dtype, "overwrite", record)
        prefix = os.path.join(self.folder, stem + STATE_SUFFIX)
        save_state(capture_state(trainer, network, {"started_at": getattr(record, "started_at", None)}), prefix)
        saved = Saved(step, lora.path, prefix, lora.size)
        self.saved.append(saved)
        log.info("LoRA Loop: %s at step %d: %s (+ %s.json/.tensors)", reason, step, lora.path,
                 os.path.basename(prefix))
        self._prune(saved)
        return saved

    def _prune(self, just_written: Saved) -> None:
        keep = self.cfg.save_last_n
        if keep <= 0:
            return
        present = [s for s in checkpoints_in(self.folder, self.cfg.output_name) if s.lora_path != just_written.lora_path]
        present.append(just_written)
        for old in present[: max(0, len(present) - keep)]:
            for p in old.paths():
                try:
                    os.remove(p)
                except FileNotFoundError:
                    pass
            self.saved = [s for s in self.saved if s.lora_path != old.lora_path]
            log.info("LoRA Loop: removed old checkpoint %s (save_last_n=%d)", old.lora_path, keep)
