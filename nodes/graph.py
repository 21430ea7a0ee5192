"""Facts about the queued graph itself (the API prompt ComfyUI passes as the hidden 'prompt' input)."""
from __future__ import annotations

from typing import Any

# loader inputs that name the model file (CheckpointLoaderSimple, UNETLoader, UnetLoaderGGUF, ...)
MODEL_FILE_INPUTS = ("ckpt_name", "unet_name", "model_name")


def upstream_model_file(prompt: Any, node_id: str | None, input_name: str = "model", max_hops: int = 64) -> str | None:
    """The file name of the checkpoint / diffusion model the MODEL input of ``node_id`` comes from: follows
    MODEL links upstream (through Inject LoRA, LoRA loaders, ModelSampling... nodes) to a loader with a
    ``ckpt_name`` / ``unet_name`` widget. None when the graph does not say (e.g. a model built in code)."""
    if not isinstance(prompt, dict) or node_id is None:
        return None
    node, name = str(node_id), input_name
    for _ in range(max_hops):
        inputs = (prompt.get(node) or {}).get("inputs") or {}
        link = inputs.get(name)
        if not (isinstance(link, list) and len(link) == 2):
            return None
        node = str(link[0])
        up = (prompt.get(node) or {}).get("inputs") or {}
        for key in MODEL_FILE_INPUTS:
            if isinstance(up.get(key), str) and up[key]:
                return up[key]
        name = "model"
    return None
