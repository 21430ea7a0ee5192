"""Headless commands: sd-scripts-style training, workflows and the demo, run through ComfyUI in-process."""
