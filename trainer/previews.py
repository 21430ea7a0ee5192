"""Sample previews during training, without changing the training.

The sampling itself is a callable handed in by the session (ComfyUI's own sampler on the training
ModelPatcher, see ``adapter.sample_preview``); this module decides *when* to sample and makes
sampling harmless for training:

* no autograd (``torch.no_grad``) but normal tensors (inference mode stays off, so nothing created
  while sampling can later poison a backward pass);
* the global torch / CUDA / python / numpy RNG states are restored afterwards (ComfyUI's
  ``prepare_noise`` calls ``torch.manual_seed``); training draws only from its own seeded generators;
* the LoRA network goes to eval mode (no dropout) and back to train mode, and every parameter gets
  its ``requires_grad`` back.
"""
from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import dataclass
from typing import Callable

import torch

from .options import check_options, option

log = logging.getLogger(__name__)


def _samplers() -> list[str]:
    from .adapter import sampler_names

    return sampler_names()[0]


def _schedulers() -> list[str]:
    from .adapter import sampler_names

    return sampler_names()[1]


@dataclass(frozen=True)
class PreviewConfig:
    prompts: str = option("", "Preview prompt(s), one per line (lines starting with '#' are skipped). Empty = no "
                              "previews.", multiline=True)
    negative: str = option("", "Negative prompt for every preview (used when cfg > 1).", multiline=True)
    sampler: str = option("euler", "ComfyUI sampler for the previews.", choices=_samplers)
    scheduler: str = option("normal", "ComfyUI scheduler for the previews.", choices=_schedulers)
    steps: int = option(20, "Sampling steps per preview image.", min=1, max=1000)
    cfg: float = option(7.0, "CFG scale of the previews (FLUX: use 1.0).", min=0.0, max=100.0, step=0.1)
    width: int = option(512, "Preview width in pixels.", min=16, max=4096, step=8)
    height: int = option(512, "Preview height in pixels.", min=16, max=4096, step=8)
    seed: int = option(0, "Noise seed of the first prompt (prompt i uses seed + i); the same every time, so previews "
                          "of different steps are comparable.", min=0, max=2**63 - 1)
    every_n_steps: int = option(0, "Sample every N optimizer steps (and always at the end); 0 = only at the end.",
                                min=0, max=1_000_000)

    def __post_init__(self):
        check_options(self)

    def prompt_list(self) -> list[str]:
        return [ln.strip() for ln in (self.prompts or "").splitlines() if ln.strip() and not ln.strip().startswith("#")]

    @property
    def enabled(self) -> bool:
        return bool(self.prompt_list())

    def due(self, step: int, total: int) -> bool:
        if not self.enabled:
            return False
        return step >= total or (self.every_n_steps > 0 and step % self.every_n_steps == 0)


# sample(prompt, negative, config, seed, on_step) -> IMAGE tensor (B, H, W, 3) in [0, 1]; on_step(done, total)
# is called after every sampler step
SampleFn = Callable[[str, str, PreviewConfig, int, Callable[[int, int], None]], torch.Tensor]
# progress(image_index (0-based), images, sampler step done, sampler steps)
PreviewProgress = Callable[[int, int, int, int], None]


@contextlib.contextmanager
def isolated_rng():
    """Run a block without leaving a trace in any global RNG."""
    py_state = random.getstate()
    try:
        import numpy as np

        np_state = np.random.get_state()
    except Exception:  # numpy missing
        np, np_state = None, None
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            if np_state is not None:
                np.random.set_state(np_state)


class PreviewRunner:
    """Keeps the preview images of one run; ``run(step, network)`` samples every prompt once."""

    def __init__(self, cfg: PreviewConfig, sample: SampleFn, after: Callable[[], None] | None = None,
                 progress: PreviewProgress | None = None):
        self.cfg = cfg
        self.sample = sample
        self.after = after          # e.g. make sure the training model is fully loaded again
        self.progress = progress
        self.images: list[torch.Tensor] = []   # one (1, H, W, 3) tensor per prompt per preview round
        self.steps: list[int] = []

    def due(self, step: int, total: int) -> bool:
        return self.cfg.due(step, total) and step not in self.steps

    def run(self, step: int, network) -> list[torch.Tensor]:
        params = list(network.parameters())
        grad_flags = [p.requires_grad for p in params]
        was_training = network.training
        network.eval()
        out: list[torch.Tensor] = []
        try:
            prompts = self.cfg.prompt_list()
            with isolated_rng(), torch.inference_mode(False), torch.no_grad():
                for i, prompt in enumerate(prompts):
                    def on_step(done: int, total: int, i: int = i) -> None:
                        if self.progress is not None:
                            self.progress(i, len(prompts), done, total)

                    on_step(0, self.cfg.steps)
                    img = self.sample(prompt, self.cfg.negative, self.cfg, self.cfg.seed + i, on_step)
                    out.extend(img.detach().float().cpu().clamp(0, 1)[j:j + 1] for j in range(img.shape[0]))
        finally:
            network.train(was_training)
            for p, flag in zip(params, grad_flags):
                p.requires_grad_(flag)
            if self.after is not None:
                self.after()
        self.steps.append(step)
        self.images.extend(out)
        log.info("LoRA Loop: %d preview image(s) at step %d", len(out), step)
        return out

    def batch(self) -> torch.Tensor | None:
        """All preview images as one IMAGE batch (in order: step, then prompt); None when there are none."""
        if not self.images:
            return None
        return torch.cat(self.images, dim=0)


def to_pil(image: torch.Tensor):
    """(1, H, W, 3) or (H, W, 3) float image in [0, 1] -> PIL image (for the live node preview)."""
    import numpy as np
    from PIL import Image

    if image.ndim == 4:
        image = image[0]
    arr = (image.detach().float().cpu().clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(arr[..., :3])
