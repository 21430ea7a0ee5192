"""Aspect-ratio buckets, reproducing sd-scripts (``make_bucket_resolutions``, ``BucketManager``).

Per group (kohya dataset):

* ``enable_bucket`` and upscaling allowed: a fixed list of buckets of about ``resolution``'s area;
  each image goes to the bucket with the nearest aspect ratio (its own size when that is itself a
  bucket), is scaled to cover it (``int(x + 0.5)`` rounding) and centre-trimmed.
* ``bucket_no_upscale``: the bucket follows the image (downscaled to the target area only when
  larger), floored to ``bucket_reso_steps``; only trimming, never upscaling.
* ``enable_bucket=False``: one bucket of exactly ``resolution``; each image is scaled to cover it and
  centre-cropped. (kohya asserts instead when an image is smaller than the resolution, and needs
  ``random_crop`` when it is larger.)

Pixels are resized like kohya's defaults: area (PIL BOX) when shrinking, LANCZOS when enlarging.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from .augment import Augment, apply_color
from .dataset import GroupConfig, ImageRecord, LoraDataset
from .images import DEFAULT_MAX_PIXELS, ImageError, open_mask, open_rgb

logger = logging.getLogger(__name__)


def make_bucket_resolutions(
    max_reso: tuple[int, int], min_size: int = 256, max_size: int = 1024, divisible: int = 64
) -> list[tuple[int, int]]:
    """kohya ``model_util.make_bucket_resolutions``: sorted (w, h) buckets of area <= max_reso's."""
    max_area = max_reso[0] * max_reso[1]
    resos = set()
    side = int(math.sqrt(max_area) // divisible) * divisible
    resos.add((side, side))
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


def get_crop_ltrb(bucket: tuple[int, int], image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """kohya ``BucketManager.get_crop_ltrb``: SDXL crop conditioning computed letterbox-style, as if
    the image were fitted *inside* the bucket (not the actual trim; kept for parity)."""
    bucket_ar = bucket[0] / bucket[1]
    image_ar = image_size[0] / image_size[1]
    if bucket_ar > image_ar:
        rw, rh = bucket[1] * image_ar, bucket[1]
    else:
        rw, rh = bucket[0], bucket[0] / image_ar
    left = (bucket[0] - rw) // 2
    top = (bucket[1] - rh) // 2
    return left, top, left + rw, top + rh


@dataclass(frozen=True)
class BucketAssignment:
    bucket: tuple[int, int]
    resized: tuple[int, int]
    crop: tuple[int, int]
    crop_ltrb: tuple[float, float, float, float]
    original: tuple[int, int]

    @property
    def ar_error(self) -> float:
        return self.bucket[0] / self.bucket[1] - self.original[0] / self.original[1]

    def crop_top_left(self, flip: bool = False) -> tuple[int, int]:
        """SDXL ``crop_coords_top_left`` as kohya feeds it: (top, left); when flipped,
        left = bucket width - crop right."""
        left = self.bucket[0] - self.crop_ltrb[2] if flip else self.crop_ltrb[0]
        return int(self.crop_ltrb[1]), int(left)


@dataclass(frozen=True)
class GroupBuckets:
    """Effective bucket parameters of one group (after kohya's rounding) and its predefined buckets."""

    resolution: tuple[int, int]
    enable_bucket: bool
    no_upscale: bool
    min_bucket_reso: int | None
    max_bucket_reso: int | None
    reso_steps: int | None
    predefined: tuple[tuple[int, int], ...]

    @classmethod
    def from_group(cls, group: GroupConfig) -> "GroupBuckets":
        res = group.resolution
        if not group.enable_bucket:
            return cls(res, False, False, None, None, None, (res,))
        steps = group.bucket_reso_steps
        lo, hi = group.min_bucket_reso, group.max_bucket_reso
        if lo % steps:
            new = lo - lo % steps
            logger.warning("min_bucket_reso %d rounded down to %d (a multiple of bucket_reso_steps %d)", lo, new, steps)
            lo = new
        if hi % steps:
            new = hi + steps - hi % steps
            logger.warning("max_bucket_reso %d rounded up to %d (a multiple of bucket_reso_steps %d)", hi, new, steps)
            hi = new
        if min(res) < lo:
            raise ValueError(f"min_bucket_reso ({lo}) is larger than the smaller side of resolution {res}; "
                             "lower min_bucket_reso or raise the resolution")
        if max(res) > hi:
            raise ValueError(f"max_bucket_reso ({hi}) is smaller than the larger side of resolution {res}; "
                             "raise max_bucket_reso or lower the resolution")
        if lo <= 0:
            raise ValueError(f"min_bucket_reso must be at least bucket_reso_steps ({steps}), got {group.min_bucket_reso}")
        if group.bucket_no_upscale:
            return cls(res, True, True, lo, hi, steps, ())
        return cls(res, True, False, lo, hi, steps, tuple(make_bucket_resolutions(res, lo, hi, steps)))

    def select(self, width: int, height: int) -> BucketAssignment:
        """kohya ``BucketManager.select_bucket`` plus the trim offset and crop_ltrb."""
        ar = width / height
        if not self.no_upscale:
            reso = (width, height)
            if reso not in self.predefined:
                ars = np.array([w / h for w, h in self.predefined])
                reso = self.predefined[int(np.abs(ars - ar).argmin())]
            if ar > reso[0] / reso[1]:
                scale = reso[1] / height
            else:
                scale = reso[0] / width
            resized = (int(width * scale + 0.5), int(height * scale + 0.5))
        else:
            steps = self.reso_steps
            max_area = self.resolution[0] * self.resolution[1]

            def round_to_steps(x: float) -> int:
                x = int(x + 0.5)
                return x - x % steps

            if width * height > max_area:
                rw = math.sqrt(max_area * ar)
                rh = max_area / rw
                bw_r = round_to_steps(rw)
                bh_in_wr = round_to_steps(bw_r / ar)
                bh_r = round_to_steps(rh)
                bw_in_hr = round_to_steps(bh_r * ar)
                if bh_in_wr == 0 or bh_r == 0:
                    raise ValueError(f"image {width}x{height} is too narrow for bucket_reso_steps {steps}")
                ar_w = bw_r / bh_in_wr
                ar_h = bw_in_hr / bh_r
                if abs(ar_w - ar) < abs(ar_h - ar):
                    resized = (bw_r, int(bw_r / ar + 0.5))
                else:
                    resized = (int(bh_r * ar + 0.5), bh_r)
            else:
                resized = (width, height)
            reso = (resized[0] - resized[0] % steps, resized[1] - resized[1] % steps)
            if reso[0] <= 0 or reso[1] <= 0:
                raise ValueError(f"image {width}x{height} is smaller than bucket_reso_steps {steps} on one side; "
                                 "it cannot be bucketed without upscaling")
        crop = (max(0, (resized[0] - reso[0]) // 2), max(0, (resized[1] - reso[1]) // 2))
        return BucketAssignment(bucket=tuple(reso), resized=resized, crop=crop,
                                crop_ltrb=get_crop_ltrb(reso, (width, height)), original=(width, height))


def select_bucket(width: int, height: int, group: GroupConfig) -> BucketAssignment:
    """Bucket of one ``width`` x ``height`` image under ``group``'s settings (see GroupBuckets)."""
    return GroupBuckets.from_group(group).select(width, height)


@dataclass
class BucketPlan:
    assignments: list[BucketAssignment]
    groups: list[GroupBuckets]
    repeats: list[int] = field(default_factory=list)
    group_of_image: list[int] = field(default_factory=list)

    def bucket_info(self, group: int | None = None) -> dict | None:
        """kohya ``ss_bucket_info``: buckets sorted by (w, h), counts include repeats; mean absolute
        aspect-ratio error over images (without repeats). ``group=None`` merges all bucketed groups.
        None when bucketing is off for the selected group(s) (as kohya)."""
        sel = [g for g in range(len(self.groups)) if (group is None or g == group) and self.groups[g].enable_bucket]
        if not sel:
            return None
        counts: dict[tuple[int, int], int] = {}
        errors = []
        for i, a in enumerate(self.assignments):
            if self.group_of_image[i] not in sel or self.repeats[i] == 0:
                continue
            counts[a.bucket] = counts.get(a.bucket, 0) + self.repeats[i]
            errors.append(abs(a.ar_error))
        buckets = {i: {"resolution": list(r), "count": counts[r]} for i, r in enumerate(sorted(counts))}
        mean = float(np.mean(errors)) if errors else 0.0
        return {"buckets": buckets, "mean_img_ar_error": mean}


def plan_buckets(dataset: LoraDataset) -> BucketPlan:
    """Assign every image of ``dataset`` to a bucket using its group's settings."""
    groups = [GroupBuckets.from_group(g) for g in dataset.groups]
    assignments = []
    for rec in dataset.images:
        try:
            assignments.append(groups[rec.group_index].select(rec.width, rec.height))
        except ValueError as e:
            raise ValueError(f"{rec.path}: {e}") from e
    return BucketPlan(assignments=assignments, groups=groups, repeats=dataset.sample_repeats(),
                      group_of_image=[r.group_index for r in dataset.images])


def check_reso_steps(plan: BucketPlan, min_steps: int) -> None:
    """Raise when a group's bucket_reso_steps is not a multiple of ``min_steps`` (kohya: 64 for
    SD1/SD2 and FLUX, 32 for SDXL/SD3)."""
    for i, g in enumerate(plan.groups):
        if g.reso_steps is not None and g.reso_steps % min_steps:
            raise ValueError(f"dataset group {i + 1}: bucket_reso_steps is {g.reso_steps}; this model needs a "
                             f"multiple of {min_steps}")


def _fit(im: Image.Image, assignment: BucketAssignment, flip: bool, crop: tuple[int, int] | None = None) -> Image.Image:
    """Resize, trim (centre, or at ``crop``'s top-left: random_crop) and optionally flip one (oriented,
    original-size) image to its bucket."""
    rw, rh = assignment.resized
    if (rw, rh) != im.size:
        shrink = im.size[0] >= rw and im.size[1] >= rh
        im = im.resize((rw, rh), Image.Resampling.BOX if shrink else Image.Resampling.LANCZOS)
    bw, bh = assignment.bucket
    left, top = crop if crop is not None else assignment.crop
    if (bw, bh) != im.size:
        im = im.crop((left, top, left + bw, top + bh))
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return im


def load_training_mask(record: ImageRecord, alpha: bool, assignment: BucketAssignment, flip: bool = False,
                       max_pixels: int = DEFAULT_MAX_PIXELS, crop: tuple[int, int] | None = None) -> torch.Tensor:
    """The loss mask of one image, resized, trimmed and flipped exactly as its pixels: float32 (H, W) in [0, 1] of
    the bucket size. From the image's transparency (``alpha``) or from its mask image (``record.mask_path``), which
    is scaled to the image's size first (it must have the image's aspect ratio)."""
    path = record.path if alpha else record.mask_path
    im = open_mask(path, alpha, max_pixels)
    w, h = assignment.original
    if im.size != (w, h):
        if alpha:
            raise ImageError(record.path, f"image is now {im.size[0]}x{im.size[1]}, was {w}x{h} when the dataset was "
                             "loaded", "reload the dataset")
        mw, mh = im.size
        if abs(mw / mh - w / h) > 0.01 * (w / h):
            raise ImageError(path, f"mask is {mw}x{mh}, its image {record.path} is {w}x{h}: another aspect ratio",
                             "make the mask the image's size (white = train, black = ignore)")
        im = im.resize((w, h), Image.Resampling.BOX if mw >= w and mh >= h else Image.Resampling.LANCZOS)
    arr = np.asarray(_fit(im, assignment, flip, crop), dtype=np.uint8)
    return torch.from_numpy(arr.astype(np.float32) / 255.0)


def load_training_pixels(
    record: ImageRecord, assignment: BucketAssignment, flip: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
    augment: Augment | None = None,
) -> torch.Tensor:
    """Decode, resize, centre-trim and optionally flip one image: float32 (H, W, 3) in [0, 1] of
    exactly the bucket size (ComfyUI IMAGE layout without the batch dimension). ``augment``: one random crop /
    colour version of it (``trainer/augment.py``; colour before the flip, as sd-scripts)."""
    im = open_rgb(record.path, max_pixels)
    if im.size != tuple(assignment.original):
        raise ImageError(record.path, f"image is now {im.size[0]}x{im.size[1]}, was "
                         f"{assignment.original[0]}x{assignment.original[1]} when the dataset was loaded",
                         "reload the dataset")
    if augment is not None:
        im = apply_color(_fit(im, assignment, False, augment.crop), augment)
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else im
    else:
        im = _fit(im, assignment, flip)
    bw, bh = assignment.bucket
    arr = np.asarray(im, dtype=np.uint8)
    out = torch.from_numpy(arr.astype(np.float32) / 255.0)
    if tuple(out.shape) != (bh, bw, 3):  # pragma: no cover - guarded by the arithmetic above
        raise RuntimeError(f"internal error: {record.path} gave {tuple(out.shape)}, bucket {bw}x{bh}")
    return out
