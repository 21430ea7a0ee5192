"""Epoch batches with kohya's semantics, on a private RNG.

Per group and bucket, every image appears as often as its repeats (``BucketPlan.repeats``: the
subset's ``num_repeats``; regularisation images balanced like kohya). Each bucket is shuffled and
cut into batches of the group's ``batch_size`` (the last one may be short, a batch never mixes
buckets or groups), then the order of all batches is shuffled. Flip is drawn per sample (p=0.5)
when the image's subset has ``flip_aug``. Everything depends only on ``(seed, epoch)``; the global
``random`` state is never touched (kohya reseeds the global RNG with ``seed + epoch``).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .buckets import BucketPlan
from .dataset import LoraDataset


@dataclass(frozen=True)
class Sample:
    image_index: int
    flip: bool


def _buckets(dataset: LoraDataset, plan: BucketPlan) -> dict[tuple[int, tuple[int, int]], list[int]]:
    """{(group, bucket): [image index repeated per repeats]} in a stable order."""
    if len(plan.assignments) != len(dataset.images):
        raise ValueError("bucket plan does not match the dataset (re-run bucketing after changing the dataset)")
    out: dict[tuple[int, tuple[int, int]], list[int]] = {}
    for i, (rec, a) in enumerate(zip(dataset.images, plan.assignments)):
        n = plan.repeats[i] if plan.repeats else dataset.subsets[rec.subset_index].num_repeats
        if n > 0:
            out.setdefault((rec.group_index, a.bucket), []).extend([i] * n)
    return dict(sorted(out.items()))


def largest_batch(dataset: LoraDataset, plan: BucketPlan) -> tuple[int, int, int]:
    """(batch size, bucket width, bucket height) of the batch with the most pixels: the step that needs the most
    memory."""
    best = (0, (0, 0, 0))
    for (g, bucket), items in _buckets(dataset, plan).items():
        b = min(len(items), dataset.groups[g].batch_size)
        best = max(best, (b * bucket[0] * bucket[1], (b, bucket[0], bucket[1])))
    return best[1]


def batches_per_epoch(dataset: LoraDataset, plan: BucketPlan) -> int:
    """Σ over buckets of ceil(samples / batch_size) (kohya ``len(dataset)``)."""
    return sum(math.ceil(len(items) / dataset.groups[g].batch_size) for (g, _), items in _buckets(dataset, plan).items())


def epoch_batches(dataset: LoraDataset, plan: BucketPlan, epoch: int, seed: int) -> list[list[Sample]]:
    """The batches of one epoch, fully determined by ``(seed, epoch)``."""
    rng = random.Random(f"lora-loop-batches:{int(seed)}:{int(epoch)}")
    batches: list[list[int]] = []
    for (g, _bucket), items in _buckets(dataset, plan).items():
        items = items[:]
        rng.shuffle(items)
        bs = dataset.groups[g].batch_size
        for start in range(0, len(items), bs):
            batches.append(items[start:start + bs])
    rng.shuffle(batches)
    result = []
    for batch in batches:
        samples = []
        for i in batch:
            flip_aug = dataset.subsets[dataset.images[i].subset_index].flip_aug
            samples.append(Sample(i, bool(flip_aug and rng.random() < 0.5)))
        result.append(samples)
    return result
