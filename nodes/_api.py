"""The single place that imports ComfyUI's node API (V3)."""
from comfy_api.latest import ComfyExtension, io, ui  # noqa: F401

CATEGORY = "LoRA Loop"

LoraDataset = io.Custom("LORA_DATASET")
LoraNetwork = io.Custom("LORA_NETWORK")
TrainState = io.Custom("TRAIN_STATE")
