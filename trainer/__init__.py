"""Training core of LoRA Loop: plain torch, importable without ComfyUI.

Only ``comfy_adapter`` touches ``comfy.*`` (lazily)."""
