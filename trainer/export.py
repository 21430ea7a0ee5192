"""Write a trained network as a kohya-format .safetensors LoRA (atomic, never silently overwriting)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping

import torch

from .metadata import metadata_for
from .options import check_options, option
from .record import TrainingRecord
from .savefile import IF_EXISTS, atomic_save_safetensors, resolve_output_path

log = logging.getLogger(__name__)

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class SaveConfig:
    """Save LoRA's options."""

    filename: str = option("my_lora", "File name inside the first models/loras folder; '.safetensors' is added. "
                                      "Subfolders are allowed ('project/my_lora', created when missing); '..', "
                                      "absolute paths and symlinks leading outside the loras folder are refused.")
    save_dtype: str = option("fp16", "Precision of the saved weights (kohya save_precision). fp16 halves the file; "
                                     "fp32 keeps the trained weights exactly.", choices=tuple(SAVE_DTYPES))
    if_exists: str = option("increment", "When the file exists: increment = write name_00001.safetensors (next "
                                         "free number), error = stop with an error, overwrite = replace it.",
                            choices=IF_EXISTS)
    verify: bool = option(False, "After saving, load the file through ComfyUI's LoRA loader onto the base MODEL (and "
                                 "CLIP) and compare with the trained network: reports keys the loader did not load "
                                 "and the largest relative prediction difference. Needs the model input (and clip, "
                                 "to compare predictions).")

    def __post_init__(self):
        check_options(self)


@dataclass(frozen=True)
class SavedLoRA:
    path: str          # absolute path written
    name: str          # relative to the folder it was saved into, with '/' (what LoraLoader lists)
    size: int          # bytes
    modules: int

    def describe(self) -> str:
        return f"{self.name} ({human_size(self.size)}, {self.modules} modules)"


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def save_lora(network, folder: str, filename: str, save_dtype: str = "fp16", if_exists: str = "increment",
              record: TrainingRecord | None = None, extra_metadata: Mapping[str, str] | None = None,
              subfolders: bool = False) -> SavedLoRA:
    """Save ``network`` into ``folder`` with metadata from ``record`` (None: an untrained network)."""
    if save_dtype not in SAVE_DTYPES:
        raise ValueError(f"save_dtype must be one of {', '.join(SAVE_DTYPES)}, got {save_dtype!r}")
    path = resolve_output_path(folder, filename, ".safetensors", if_exists, subfolders=subfolders)
    name = os.path.splitext(os.path.basename(path))[0]
    dtype = SAVE_DTYPES[save_dtype]
    tensors = network.kohya_state_dict(dtype=None if dtype == torch.float32 else dtype)
    meta = metadata_for(network, record, output_name=name)
    meta.update({str(k): str(v) for k, v in (extra_metadata or {}).items()})
    try:
        atomic_save_safetensors(tensors, path, meta)
    except OSError as e:
        raise OSError(e.errno, f"could not write the LoRA to {path} ({e.strerror or e}). Check that "
                               f"{os.path.dirname(path)} is a writable folder and the disk has space") from e
    saved = SavedLoRA(path, os.path.relpath(path, os.path.abspath(folder)).replace(os.sep, "/"),
                      os.path.getsize(path), len(network))
    log.info("saved LoRA %s (%s, %d modules, %s)", path, human_size(saved.size), saved.modules, save_dtype)
    return saved
