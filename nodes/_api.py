"""The single place that imports ComfyUI's node API (V3), and the pack's socket types."""
from comfy_api.latest import ComfyExtension, io, ui  # noqa: F401

CATEGORY = "LoRA Loop"

LoraDataset = io.Custom("LORA_DATASET")
LoraNetwork = io.Custom("LORA_NETWORK")
TrainState = io.Custom("TRAIN_STATE")
# settings nodes -> Train LoRA / Load Dataset
OptimizerSettingsIO = io.Custom("LORA_OPTIMIZER_SETTINGS")
NoiseLossSettingsIO = io.Custom("LORA_NOISE_LOSS_SETTINGS")
CheckpointSettingsIO = io.Custom("LORA_CHECKPOINT_SETTINGS")
PreviewSettingsIO = io.Custom("LORA_PREVIEW_SETTINGS")
CaptionSettingsIO = io.Custom("LORA_CAPTION_SETTINGS")
ValidationSettingsIO = io.Custom("LORA_VALIDATION_SETTINGS")
NetworkTrainingIO = io.Custom("LORA_NETWORK_TRAINING_SETTINGS")
# settings node -> Inject LoRA
NetworkOptionsIO = io.Custom("LORA_NETWORK_OPTIONS")
