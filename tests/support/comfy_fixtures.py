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
