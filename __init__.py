"""LoRA Loop: train kohya-format LoRAs inside the ComfyUI graph."""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import LoraLoopExtension

    return LoraLoopExtension()
