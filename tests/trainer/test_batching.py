"""Epoch batches: repeats, bucket purity, determinism."""
import random
from collections import Counter

from PIL import Image

from trainer.batching import Sample, batches_per_epoch, epoch_batches
from trainer.buckets import plan_buckets
from trainer.dataset import GroupConfig, load_folder


def _dataset(tmp_path, flip_aug=False, batch_size=3):
    sizes = {"5_wide": [(600, 400)] * 4, "2_square": [(300, 300)] * 3, "3_tall": [(400, 600)] * 2}
    for folder, ss in sizes.items():
        d = tmp_path / folder
        d.mkdir()
        for i, s in enumerate(ss):
            Image.new("RGB", s, (i * 30, 0, 0)).save(d / f"{i}.png")
    return load_folder(str(tmp_path), flip_aug=flip_aug, group=GroupConfig(resolution=(512, 512), batch_size=batch_size))


def test_repeats_and_bucket_purity(tmp_path):
    ds = _dataset(tmp_path)
    plan = plan_buckets(ds)
    batches = epoch_batches(ds, plan, epoch=1, seed=42)
    counts = Counter(s.image_index for b in batches for s in b)
    for i, rec in enumerate(ds.images):
        assert counts[i] == ds.subsets[rec.subset_index].num_repeats
    assert sum(counts.values()) == ds.num_train_images == 4 * 5 + 3 * 2 + 2 * 3
    for b in batches:
        assert 1 <= len(b) <= 3
        assert len({plan.assignments[s.image_index].bucket for s in b}) == 1
        assert all(isinstance(s, Sample) and s.flip is False for s in b)
    # 20 wide samples -> 7 batches, 6 square -> 2, 6 tall -> 2
    assert len(batches) == batches_per_epoch(ds, plan) == 7 + 2 + 2


def test_determinism_and_private_rng(tmp_path):
    ds = _dataset(tmp_path, flip_aug=True)
    plan = plan_buckets(ds)
    random.seed(123)
    state = random.getstate()
    a = epoch_batches(ds, plan, epoch=1, seed=7)
    assert random.getstate() == state  # the global RNG is untouched
    random.seed(999)
    assert epoch_batches(ds, plan, epoch=1, seed=7) == a
    assert epoch_batches(ds, plan, epoch=2, seed=7) != a
    assert epoch_batches(ds, plan, epoch=1, seed=8) != a
    flips = [s.flip for b in a for s in b]
    assert any(flips) and not all(flips)


def test_batch_size_one_and_groups(tmp_path):
    ds = _dataset(tmp_path, batch_size=1)
    plan = plan_buckets(ds)
    assert batches_per_epoch(ds, plan) == ds.num_train_images
    assert all(len(b) == 1 for b in epoch_batches(ds, plan, 1, 0))
