"""LoRA Loop nodes: thin V3 nodes that parse inputs and call trainer/."""
from ._api import ComfyExtension
from .dataset import BucketImages, EncodeDataset, LoadDataset
from .kohya_config import LoadKohyaConfig
from .network import InjectLoRA
from .save import SaveLoRA
from .settings import SETTINGS_NODES
from .train import TrainLoRA

NODES = [LoadDataset, BucketImages, EncodeDataset, InjectLoRA, TrainLoRA, SaveLoRA, *SETTINGS_NODES, LoadKohyaConfig]


class LoraLoopExtension(ComfyExtension):
    async def get_node_list(self):
        return list(NODES)
