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
                              "previews. A line may carry sd-scripts' sample-prompt options for its image: --n "
                              "negative, --w/--h size, --d seed, --l cfg, --s steps, --ss sampler.",
                          multiline=True)
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

    def prompt_specs(self) -> list["PromptSpec"]:
        """Each prompt line with its own settings: sd-scripts' sample-prompt options in the line override this
        node's values for that image (``--n`` negative, ``--w`` / ``--h`` size, ``--d`` seed, ``--l`` cfg,
        ``--s`` steps, ``--ss`` sampler); a line without them uses the node's values and seed + its index."""
        return [parse_prompt_line(line, self, self.seed + i) for i, line in enumerate(self.prompt_list())]

    @property
    def enabled(self) -> bool:
        return bool(self.prompt_list())

    def due(self, step: int, total: int) -> bool:
        if not self.enabled:
            return False
        return step >= total or (self.every_n_steps > 0 and step % self.every_n_steps == 0)


@dataclass(frozen=True)
class PromptSpec:
    prompt: str
    negative: str
    config: PreviewConfig
    seed: int


# sd-scripts' sample_sampler names -> ComfyUI's sampler (and scheduler) names
KOHYA_SAMPLERS = {"ddim": ("ddim", None), "pndm": ("euler", None), "lms": ("lms", None), "euler": ("euler", None),
                  "euler_a": ("euler_ancestral", None), "heun": ("heun", None), "dpm_2": ("dpm_2", None),
                  "dpm_2_a": ("dpm_2_ancestral", None), "dpmsolver": ("dpmpp_2m", None),
                  "dpmsolver++": ("dpmpp_2m", None), "dpmsingle": ("dpmpp_sde", None),
                  "k_lms": ("lms", "karras"), "k_euler": ("euler", "karras"),
                  "k_euler_a": ("euler_ancestral", "karras"), "k_dpm_2": ("dpm_2", "karras"),
                  "k_dpm_2_a": ("dpm_2_ancestral", "karras")}


def kohya_sampler(name: str) -> tuple[str, str | None]:
    """(ComfyUI sampler, scheduler or None) for an sd-scripts sampler name (a ComfyUI name passes through)."""
    key = name.strip().lower()
    if key in KOHYA_SAMPLERS:
        return KOHYA_SAMPLERS[key]
    return key, None


def parse_prompt_line(line: str, cfg: PreviewConfig, seed: int) -> PromptSpec:
    """One sample-prompt line in sd-scripts' format (``a cat --n blurry --w 512 --h 768 --d 42 --l 7 --s 28``):
    the text before the first `` --`` is the prompt; each option overrides ``cfg`` for this image. Sizes are
    rounded down to multiples of 8; an option we do not know is ignored with a warning (as sd-scripts does)."""
    import dataclasses

    parts = (" " + line).split(" --")
    prompt = parts[0].strip()
    negative, changes = cfg.negative, {}
    for part in parts[1:]:
        key, _, value = part.strip().partition(" ")
        value = value.strip()
        try:
            if key == "n":
                negative = value
            elif key in ("w", "h"):
                changes["width" if key == "w" else "height"] = max(16, int(value) // 8 * 8)
            elif key == "d":
                seed = int(value)
            elif key == "l":
                changes["cfg"] = float(value)
            elif key == "s":
                changes["steps"] = int(value)
            elif key == "ss":
                sampler, scheduler = kohya_sampler(value)
                changes["sampler"] = sampler
                if scheduler:
                    changes["scheduler"] = scheduler
            else:
                log.warning("LoRA Loop: preview prompt option --%s is not supported (ignored): %r", key, line)
        except ValueError:
            raise ValueError(f"preview prompt {line!r}: --{key} needs a number, got {value!r}") from None
    try:
        config = dataclasses.replace(cfg, **changes) if changes else cfg
    except ValueError as e:
        raise ValueError(f"preview prompt {line!r}: {e}") from None
    return PromptSpec(prompt, negative, config, seed)


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
            prompts = self.cfg.prompt_specs()
            with isolated_rng(), torch.inference_mode(False), torch.no_grad():
                for i, spec in enumerate(prompts):
                    def on_step(done: int, total: int, i: int = i) -> None:
                        if self.progress is not None:
                            self.progress(i, len(prompts), done, total)

                    on_step(0, spec.config.steps)
                    img = self.sample(spec.prompt, spec.negative, spec.config, spec.seed, on_step)
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
