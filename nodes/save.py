"""Save LoRA node: write the network into ComfyUI's loras folder (kohya format)."""
from __future__ import annotations

import json
import os

from ._api import CATEGORY, LoraNetwork, io, ui


def loras_folder() -> str:
    import folder_paths

    return folder_paths.get_folder_paths("loras")[0]


class SaveLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraLoop_SaveLoRA",
            display_name="Save LoRA",
            category=f"{CATEGORY}/training",
            description="Save the trained LoRA as a kohya-format .safetensors into models/loras, where every LoRA "
                        "loader (ComfyUI, A1111/Forge, diffusers) finds it.",
            is_experimental=True,
            is_output_node=True,
            inputs=[
                LoraNetwork.Input("network", tooltip="The trained LORA_NETWORK from Train LoRA."),
                io.String.Input("filename", default="my_lora",
                                tooltip="File name (no folders, no '..'); '.safetensors' is added. It is written into "
                                        "the first models/loras folder."),
                io.Combo.Input("save_dtype", options=["fp16", "bf16", "fp32"], default="fp16",
                               tooltip="Precision of the saved weights (kohya save_precision). fp16 halves the file; "
                                       "fp32 keeps the trained weights exactly."),
                io.Combo.Input("if_exists", options=["increment", "error", "overwrite"], default="increment",
                               tooltip="When the file exists: increment = write name_00001.safetensors (next free "
                                       "number), error = stop with an error, overwrite = replace it."),
            ],
            outputs=[io.String.Output(display_name="lora_name",
                                      tooltip="The saved file name relative to the loras folder (what LoraLoader "
                                              "lists).")],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def execute(cls, network, filename, save_dtype, if_exists) -> io.NodeOutput:
        from ..trainer.export import save_lora

        extra = {}
        pnginfo = cls.hidden.extra_pnginfo
        if isinstance(pnginfo, dict) and pnginfo.get("workflow") is not None:
            extra["lora_loop_workflow"] = json.dumps(pnginfo["workflow"])
        folder = loras_folder()
        path = save_lora(network, folder, filename, save_dtype, if_exists, extra)
        name = os.path.relpath(path, folder).replace(os.sep, "/")
        return io.NodeOutput(name, ui=ui.PreviewText(f"saved {name}"))
