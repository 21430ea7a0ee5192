"""pytest fixtures for the ComfyUI-backed tiers. Import with ``from comfy_fixtures import *``
in a conftest or test module; tests using ``comfy`` are skipped with a clear message when no
ComfyUI checkout exists."""
import pytest

import comfy_env


@pytest.fixture(scope="session")
def comfy():
    if comfy_env.find_comfyui() is None:
        pytest.skip(comfy_env.SKIP_REASON)
    return comfy_env.boot()


@pytest.fixture(scope="session")
def tiny_sd15(comfy, tmp_path_factory) -> str:
    """A small single-file SD1.5 checkpoint built in code (headless/tiny_checkpoint.py: about 630 MB, a few
    seconds), written once per session: what the headless commands load through ComfyUI's checkpoint loader."""
    from headless.tiny_checkpoint import write_sd15

    return comfy_env.call(write_sd15, str(tmp_path_factory.mktemp("tiny_ckpt") / "tiny_sd15.safetensors"))
