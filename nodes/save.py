"""Save LoRA node: write the network into ComfyUI's loras folder (kohya format), say what was saved, and
optionally verify the file through ComfyUI's own LoRA loader."""
from __future__ import annotations

import json
import logging

from ..trainer.export import SaveConfig
from ._api import CATEGORY, LoraNetwork, io
from .progress import SAVE_EVENT, send_event
from .schema import widget

log = logging.getLogger(__name__)
UI_KEY = "lora_loop_saved"


def loras_folder() -> str:
    import folder_paths

    return folder_paths.get_folder_paths("loras")[0]


class SaveLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraLoop_SaveLoRA",
            display_name="Save LoRA (LoRA Loop)",
            category=f"{CATEGORY}/training",
            description="Save the trained LoRA as a kohya-format .safetensors into models/loras, where every LoRA "
                        "loader (ComfyUI, A1111/Forge, diffusers) finds it. Shows the saved name and size on the "
                        "node; 'verify' reloads it through ComfyUI's LoRA loader and reports what differs.",
            is_experimental=True,
            is_output_node=True,
            inputs=[
                LoraNetwork.Input("network", tooltip="The trained LORA_NETWORK from Train LoRA."),
                widget(SaveConfig, "filename"), widget(SaveConfig, "save_dtype"), widget(SaveConfig, "if_exists"),
                widget(SaveConfig, "verify", optional=True),
                io.Model.Input("model", optional=True,
                               tooltip="For verify: Train LoRA's model output (or the checkpoint's MODEL)."),
                io.Clip.Input("clip", optional=True,
                              tooltip="For verify: Train LoRA's clip output (or the checkpoint's CLIP)."),
            ],
            outputs=[io.String.Output(display_name="lora_name",
                                      tooltip="The saved file name relative to the loras folder (what LoraLoader "
                                              "lists).")],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def execute(cls, network, filename, save_dtype, if_exists, verify=False, model=None, clip=None) -> io.NodeOutput:
        from ..trainer.export import save_lora

        SaveConfig(filename, save_dtype, if_exists, verify)
        uid = cls.hidden.unique_id
        extra = {}
        pnginfo = cls.hidden.extra_pnginfo
        if isinstance(pnginfo, dict) and pnginfo.get("workflow") is not None:
            extra["lora_loop_workflow"] = json.dumps(pnginfo["workflow"])
        if verify and model is None:
            raise ValueError("Save LoRA: verify needs the model input: connect Train LoRA's model (and clip) outputs, "
                             "or turn verify off")
        from ..trainer import distributed

        ctx = distributed.current()
        if not ctx.main:  # headless, several processes: the first one writes the file
            text = f"not written by process {ctx.rank} of {ctx.world_size}: process 0 saves {filename}"
            return io.NodeOutput(filename, ui={"text": [text]})

        def status(text: str) -> None:  # shown in the node's "saved" box (web/loss_chart.js)
            send_event(SAVE_EVENT, {"node": uid, "display_node": uid, "text": text})

        status(f"saving {filename}...")
        try:
            saved = save_lora(network, loras_folder(), filename, save_dtype, if_exists, network.record, extra,
                              subfolders=True)
        except OSError as e:
            status(f"NOT saved: {e.strerror or e}")
            raise OSError(e.errno, f"{e.strerror or e}; the trained network is still in memory: fix it and run "
                                   "again, only saving re-runs") from e
        except ValueError as e:
            status(f"NOT saved: {e}")
            raise
        lines = [f"saved {saved.describe()}"]
        if verify:
            from ..trainer.adapter import verify_saved_lora

            status(lines[0] + "\nverifying through ComfyUI's LoRA loader...")
            report = verify_saved_lora(model, clip, network, saved.path)
            log.info("Save LoRA: %s", report.describe())
            lines.append(report.describe())
        text = "\n".join(lines)
        return io.NodeOutput(saved.name, ui={"text": [text], UI_KEY: [{"name": saved.name, "size": saved.size,
                                                                      "text": text}]})
