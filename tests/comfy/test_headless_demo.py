"""The one-command demo (headless/demo.py): checkpoint and dataset built in code, sd-scripts-style training,
reload through ComfyUI's LoraLoader with zero unloaded keys, a before/after grid in ComfyUI's output folder."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from PIL import Image

import comfy_env
from comfy_fixtures import comfy  # noqa: F401

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end(comfy, tmp_path):
    script = os.path.join(comfy_env.PACK_ROOT, "headless", "demo.py")
    env = dict(os.environ, COMFYUI_PATH=comfy_env.find_comfyui() or "")
    flags = f"--output-directory {tmp_path / 'out'} --temp-directory {tmp_path}"
    p = subprocess.run([sys.executable, script, "--steps", "12", "--comfyui_args", flags], env=env,
                       capture_output=True, text=True, timeout=900)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-5000:]
    demo = tmp_path / "out" / "lora_loop_demo"
    grid = demo / "before_after.png"
    assert grid.is_file() and str(grid) in out
    with Image.open(grid) as im:
        assert im.width > im.height >= 64  # two images side by side
    assert "'lora key not loaded' warnings: 0" in out
    assert (demo / "lora_loop_demo.safetensors").is_file()
    assert sorted(os.listdir(demo / "sample"))  # previews while training, sd-scripts' sample names
    assert (tmp_path / "temp" / "lora_loop_demo" / "lora_loop_tiny_sd15.safetensors").is_file()
