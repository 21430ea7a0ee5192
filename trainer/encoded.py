"""Encoded dataset: raw VAE latents per (image, flip) and text conds per caption.

Latents are cached in memory (process-wide) and on disk, keyed by image content (sha256), VAE
identity, bucket, resize and crop, and flip - so a re-run with unchanged data does zero VAE encodes and
a changed resolution or bucket never reuses a stale latent. Latents are stored *raw* (like kohya's
npz caches); the model's ``process_latent_in`` is applied at train time."""
from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from . import augment as aug
from .batching import Sample
from .buckets import BucketAssignment, BucketPlan, load_training_mask, load_training_pixels
from .captions import is_deterministic
from .dataset import LoraDataset
from .options import check_options, option

log = logging.getLogger(__name__)

CACHE_VERSION = "1"
TOKEN_CHUNK = 75  # tokens per CLIP window (77 with its start and end tokens)


def _check_max_tokens(value: int) -> int:
    if value not in (0, 75, 150, 225):
        raise ValueError(f"max_token_length {value}: 0 (the whole caption) or 75, 150, 225 (sd-scripts' values)")
    return value


@dataclass(frozen=True)
class EncodeConfig:
    """Encode Dataset's options."""

    cache_latents_to_disk: bool = option(True, "Also keep latents on disk (ComfyUI temp/output 'lora_loop_cache' "
                                               "folder) so a restarted ComfyUI does not re-encode unchanged images.")
    vae_batch_size: int = option(4, "Images per VAE encode call.", min=1, max=64)
    max_token_length: int = option(0, "Caption length the CLIP text encoders see while training (kohya "
                                      "max_token_length): 0 = the whole caption, as ComfyUI encodes prompts (in "
                                      "windows of 75 tokens); 75, 150 or 225 = at most that many tokens (1, 2 or 3 "
                                      "windows), as sd-scripts cuts captions (its default without the option is "
                                      "75). T5 and LLM encoders are not cut.", min=0, max=225, step=75,
                                   check=_check_max_tokens)
    augment_variants: int = option(8, "Images with color_aug or random_crop: how many augmented versions of each are "
                                      "encoded (and cached); each epoch uses one at random. sd-scripts draws a new "
                                      "one each time, which rules out its latent cache.", min=1, max=64)

    def __post_init__(self):
        check_options(self)


@dataclass
class EncodedDataset:
    dataset: LoraDataset
    plan: BucketPlan
    latents: dict[tuple[int, bool], torch.Tensor]      # (image_index, flipped) -> raw latent (C, h, w)
    text_conds: dict[str, Any] = field(default_factory=dict)   # caption -> CONDITIONING
    vae_id: str = ""
    clip_id: str | None = None
    stats: dict = field(default_factory=dict)           # {"encoded": n, "memory_hits": n, "disk_hits": n}
    #: (image_index, flipped) -> loss mask at the latent's size (h, w) in [0, 1], for the images whose subset has
    #: masks (alpha_mask or conditioning_data_dir); see :func:`latent_mask`
    masks: dict[tuple[int, bool], torch.Tensor] = field(default_factory=dict)
    max_token_length: int = 0                            # EncodeConfig.max_token_length: what the captions were cut to
    #: (image_index, flipped) -> the latents of its augmented versions (color_aug / random_crop), and their masks
    variants: dict[tuple[int, bool], list[torch.Tensor]] = field(default_factory=dict)
    variant_masks: dict[tuple[int, bool], list[torch.Tensor]] = field(default_factory=dict)

    def __repr__(self) -> str:  # ComfyUI prints node inputs in error reports: keep it short
        return (f"EncodedDataset({len(self.dataset.images)} images, {len(self.latents)} latents, "
                f"{len(self.text_conds)} cached captions, source={self.dataset.source!r})")

    def size_conditioning(self, sample: Sample) -> dict:
        """SDXL size conditioning for one sample, as kohya computes it (original size, crop_ltrb
        top-left, bucket as target; crop_left mirrored when flipped)."""
        a: BucketAssignment = self.plan.assignments[sample.image_index]
        top, left = a.crop_top_left(sample.flip)
        return {"width": a.original[0], "height": a.original[1], "crop_w": left, "crop_h": top,
                "target_width": a.bucket[0], "target_height": a.bucket[1]}

    def deterministic_captions(self) -> bool:
        return all(is_deterministic(s.caption) for s in self.dataset.subsets)

    def choose(self, samples: list[Sample], seed: int, epoch: int) -> list[int | None]:
        """Which augmented version each sample uses this epoch (None: the image has none, its plain latent)."""
        return [aug.variant_index(seed, epoch, s.image_index, s.flip, len(self.variants[(s.image_index, s.flip)]))
                if (s.image_index, s.flip) in self.variants else None for s in samples]

    def latent(self, sample: Sample, variant: int | None = None) -> torch.Tensor:
        if variant is None:
            return self.latents[(sample.image_index, sample.flip)]
        return self.variants[(sample.image_index, sample.flip)][variant]

    def loss_masks(self, samples: list[Sample], masked_loss: bool, like: torch.Tensor,
                   variants: list[int | None] | None = None) -> torch.Tensor | None:
        """The loss masks of a batch, (B, 1, h, w) like ``like`` (B, C, h, w): an alpha-mask subset's always, a mask
        folder's with ``masked_loss`` (sd-scripts' rules), 1 for the other samples. None when no sample has one.
        ``variants`` (:meth:`choose`): the augmented versions the batch's latents are, whose masks are cut alike."""
        out, any_mask = [], False
        for j, s in enumerate(samples):
            sub = self.dataset.subsets[self.dataset.images[s.image_index].subset_index]
            v = variants[j] if variants is not None else None
            m = None
            if sub.alpha_mask or masked_loss:
                m = self.masks.get((s.image_index, s.flip)) if v is None else \
                    self.variant_masks.get((s.image_index, s.flip), [None] * (v + 1))[v]
            any_mask |= m is not None
            out.append(m)
        if not any_mask:
            return None
        h, w = like.shape[-2:]
        ones = torch.ones((h, w), dtype=torch.float32)
        masks = torch.stack([ones if m is None else m for m in out]).unsqueeze(1)
        return masks.reshape((len(samples), 1) + (1,) * (like.dim() - 4) + (h, w)).to(like.device)


def latent_mask(mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """A (H, W) pixel mask at the latent's size (h, w): the mean of each latent pixel's area (sd-scripts
    ``apply_masked_loss``: ``interpolate(mode="area")``)."""
    return torch.nn.functional.interpolate(mask[None, None].float(), size=tuple(hw), mode="area")[0, 0]


def has_masks(dataset: LoraDataset) -> bool:
    return any(s.alpha_mask or s.conditioning_data_dir for s in dataset.subsets)


def latent_cache_key(sha256: str, vae_id: str, a: BucketAssignment, flip: bool,
                     augment: aug.Augment | None = None) -> str:
    raw = f"v{CACHE_VERSION}|{sha256}|{vae_id}|{a.bucket}|{a.resized}|{a.crop}|{int(flip)}"
    if augment is not None:
        raw += "|" + augment.key()
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


class LatentCache:
    """Bounded in-memory LRU plus an optional on-disk safetensors store."""

    def __init__(self, max_items: int = 4096):
        self.mem: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.max_items = max_items

    def get(self, key: str, disk_dir: str | None) -> tuple[torch.Tensor | None, str]:
        if key in self.mem:
            self.mem.move_to_end(key)
            return self.mem[key], "memory"
        if disk_dir:
            path = os.path.join(disk_dir, key[:2], key + ".safetensors")
            if os.path.isfile(path):
                try:
                    from safetensors.torch import load_file

                    t = load_file(path)["latent"]
                    self.put(key, t, None)
                    return t, "disk"
                except Exception as e:  # corrupt cache entry: re-encode
                    log.warning("ignoring unreadable latent cache file %s (%s)", path, e)
        return None, ""

    def put(self, key: str, latent: torch.Tensor, disk_dir: str | None) -> None:
        self.mem[key] = latent
        self.mem.move_to_end(key)
        while len(self.mem) > self.max_items:
            self.mem.popitem(last=False)
        if disk_dir:
            from .savefile import atomic_save_safetensors

            folder = os.path.join(disk_dir, key[:2])
            os.makedirs(folder, exist_ok=True)
            atomic_save_safetensors({"latent": latent.contiguous()}, os.path.join(folder, key + ".safetensors"),
                                    {"format": "lora_loop_latent", "version": CACHE_VERSION})


LATENT_CACHE = LatentCache()


def encode_dataset(dataset: LoraDataset, plan: BucketPlan, *, vae_id: str,
                   encode_pixels: Callable[[torch.Tensor], torch.Tensor],
                   cache_dir: str | None, batch_size: int = 4,
                   progress: Callable[[int, int], None] | None = None,
                   cache: LatentCache = LATENT_CACHE, augment_variants: int = 8) -> EncodedDataset:
    """Encode every (image, flip) the training can draw, and ``augment_variants`` augmented versions of each image
    whose subset has color_aug or random_crop (``trainer/augment.py``). ``encode_pixels`` maps (B,H,W,3) [0,1]
    pixels to raw latents (B,C,h,w)."""
    # (image, flip, version): version None is the plain image, k its k-th augmented version
    wanted: list[tuple[int, bool, int | None]] = []
    augments: dict[tuple[int, int], aug.Augment] = {}
    for i, rec in enumerate(dataset.images):
        sub = dataset.subsets[rec.subset_index]
        versions: list[int | None] = [None]
        if sub.color_aug or sub.random_crop:
            a = plan.assignments[i]
            for k in range(augment_variants):
                augments[(i, k)] = aug.draw(rec.sha256, k, a.resized, a.bucket, sub.random_crop, sub.color_aug)
            versions += list(range(augment_variants))
        for flip in ((False, True) if sub.flip_aug else (False,)):
            wanted += [(i, flip, k) for k in versions]
    got: dict[tuple[int, bool, int | None], torch.Tensor] = {}
    stats = {"encoded": 0, "memory_hits": 0, "disk_hits": 0}
    todo: dict[tuple[int, int], list[tuple[tuple[int, bool, int | None], str]]] = {}
    for item in wanted:
        i, flip, k = item
        a = plan.assignments[i]
        key = latent_cache_key(dataset.images[i].sha256, vae_id, a, flip, augments.get((i, k)))
        t, where = cache.get(key, cache_dir)
        if t is not None:
            got[item] = t
            stats["memory_hits" if where == "memory" else "disk_hits"] += 1
        else:
            todo.setdefault(a.bucket, []).append((item, key))
    total, done = sum(len(v) for v in todo.values()), 0
    for bucket, items in todo.items():
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            pixels = torch.stack([load_training_pixels(dataset.images[i], plan.assignments[i], flip,
                                                       augment=augments.get((i, k)))
                                  for (i, flip, k), _ in chunk])
            lat = encode_pixels(pixels)
            for ((item, key), one) in zip(chunk, lat):
                one = one.detach().float().cpu().clone()
                got[item] = one
                cache.put(key, one, cache_dir)
                stats["encoded"] += 1
            done += len(chunk)
            if progress:
                progress(done, total)
    latents = {(i, flip): t for (i, flip, k), t in got.items() if k is None}
    variants: dict[tuple[int, bool], list[torch.Tensor]] = {}
    for (i, flip, k) in wanted:
        if k is not None:
            variants.setdefault((i, flip), []).append(got[(i, flip, k)])
    masks: dict[tuple[int, bool], torch.Tensor] = {}
    variant_masks: dict[tuple[int, bool], list[torch.Tensor]] = {}
    for i, flip, k in wanted:  # cheap beside the VAE: read again each time (the latent cache does not hold them)
        rec = dataset.images[i]
        sub = dataset.subsets[rec.subset_index]
        if sub.alpha_mask or rec.mask_path:
            crop = augments[(i, k)].crop if k is not None else None
            pixels = load_training_mask(rec, sub.alpha_mask, plan.assignments[i], flip, crop=crop)
            m = latent_mask(pixels, tuple(got[(i, flip, k)].shape[-2:]))
            if k is None:
                masks[(i, flip)] = m
            else:
                variant_masks.setdefault((i, flip), []).append(m)
    return EncodedDataset(dataset=dataset, plan=plan, latents=latents, vae_id=vae_id, stats=stats, masks=masks,
                          variants=variants, variant_masks=variant_masks)
