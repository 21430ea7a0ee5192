"""sd-scripts' image augmentations that change pixels: ``random_crop`` and ``color_aug`` (``library/train_util.py``
``trim_and_resize_if_required`` and ``AugHelper.color_aug``).

sd-scripts draws them every time it loads an image, which rules out its latent cache. LoRA Loop keeps the cache: Encode
Dataset encodes ``augment_variants`` augmented versions of each such image once (cached like any latent), and each
epoch draws one of them per sample (:func:`variant_index`). Each version's draw is fixed by the image's content and
its number, so a re-run reuses the cache. The formulas are sd-scripts':

* random crop: the image is resized as for the centre crop (it covers the bucket), then the bucket is cut at a random
  offset, ``randint(0, excess)`` per axis (the centre crop takes ``excess // 2``). As in sd-scripts, the SDXL crop
  conditioning stays the centre crop's.
* colour: with probability 0.33, either (half each) a hue shift by ``uniform(-8, 8)`` on OpenCV's 0-180 hue scale,
  or sd-scripts' "gamma" ``clip(x ** uniform(0.95, 1.05), 0, 255)`` on the 0-255 pixel values (which, taken on 0-255
  rather than 0-1, brightens or darkens strongly; kept as sd-scripts does it).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

HUE_SHIFT_LIMIT = 8.0      # degrees on OpenCV's 0-180 hue scale
COLOR_AUG_P = 0.33
GAMMA_RANGE = (0.95, 1.05)


@dataclass(frozen=True)
class Augment:
    """One augmented version of an image: the crop's top-left in the resized image (None = the centre crop), a hue
    shift (OpenCV units) or a gamma (None = no colour change)."""

    crop: tuple[int, int] | None = None
    hue: float | None = None
    gamma: float | None = None

    def key(self) -> str:
        return f"crop={self.crop}|hue={self.hue!r}|gamma={self.gamma!r}"


def draw(sha256: str, index: int, resized: tuple[int, int], bucket: tuple[int, int], random_crop: bool,
         color_aug: bool) -> Augment:
    """The ``index``-th augmented version of the image with content hash ``sha256`` (a fixed draw)."""
    rng = random.Random(f"lora-loop-augment:{sha256}:{index}")
    crop = None
    if random_crop:
        crop = (rng.randint(0, max(0, resized[0] - bucket[0])), rng.randint(0, max(0, resized[1] - bucket[1])))
    hue = gamma = None
    if color_aug and rng.random() <= COLOR_AUG_P:
        if rng.random() > 0.5:
            hue = rng.uniform(-HUE_SHIFT_LIMIT, HUE_SHIFT_LIMIT)
        else:
            gamma = rng.uniform(*GAMMA_RANGE)
    return Augment(crop, hue, gamma)


def apply_color(im: Image.Image, aug: Augment) -> Image.Image:
    """The colour part of ``aug`` on an RGB image."""
    if aug.hue is not None:
        hsv = np.asarray(im.convert("HSV")).copy()
        shift = aug.hue / 180.0 * 256.0  # PIL's hue is 0-255 for a full turn, OpenCV's 0-180
        hsv[..., 0] = np.round(hsv[..., 0].astype(np.float64) + shift).astype(np.int64) % 256
        return Image.fromarray(hsv, "HSV").convert("RGB")
    if aug.gamma is not None:
        a = np.asarray(im).astype(np.float64)
        return Image.fromarray(np.clip(a ** aug.gamma, 0, 255).astype(np.uint8), "RGB")
    return im


def variant_index(seed: int, epoch: int, image_index: int, flip: bool, count: int) -> int:
    """Which of an image's ``count`` augmented versions a sample uses in ``epoch`` (one draw per epoch, as
    sd-scripts draws one augmentation per load)."""
    return random.Random(f"lora-loop-variant:{seed}:{epoch}:{image_index}:{int(flip)}").randrange(count)
