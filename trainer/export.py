"""Write a trained network as a kohya-format .safetensors LoRA (atomic, never silently overwriting)."""
from __future__ import annotations

import logging
import os

import torch

from .savefile import atomic_save_safetensors, resolve_output_path

log = logging.getLogger(__name__)

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def lora_metadata(network, output_name: str, save_dtype: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    from .metadata import metadata_for_network

    meta = metadata_for_network(network, output_name=output_name, save_precision=save_dtype)
    if extra:
        meta.update({str(k): str(v) for k, v in extra.items()})
    return meta


def save_lora(network, folder: str, filename: str, save_dtype: str = "fp16", if_exists: str = "increment",
              extra_metadata: dict[str, str] | None = None) -> str:
    """Save ``network`` into ``folder``; returns the absolute path written."""
    if save_dtype not in SAVE_DTYPES:
        raise ValueError(f"save_dtype must be one of {', '.join(SAVE_DTYPES)}, got {save_dtype!r}")
    os.makedirs(folder, exist_ok=True)
    path = resolve_output_path(folder, filename, ".safetensors", if_exists)
    name = os.path.splitext(os.path.basename(path))[0]
    dtype = SAVE_DTYPES[save_dtype]
    tensors = network.kohya_state_dict(dtype=None if dtype == torch.float32 else dtype)
    meta = lora_metadata(network, name, save_dtype, extra_metadata)
    atomic_save_safetensors(tensors, path, meta)
    log.info("saved LoRA %s (%d modules, %s)", path, len(network), save_dtype)
    return path
