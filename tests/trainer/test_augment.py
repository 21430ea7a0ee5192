"""random_crop and color_aug (trainer/augment.py): sd-scripts' draws and formulas, the augmented versions Encode
Dataset caches (pixels, masks and cache keys alike), and which version a sample uses per epoch."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from trainer import augment as aug
from trainer.batching import Sample
from trainer.buckets import load_training_mask, load_training_pixels, plan_buckets
from trainer.dataset import GroupConfig, load_folder
from trainer.encoded import LatentCache, encode_dataset


def test_draws_are_fixed_per_image_and_version_and_follow_sd_scripts_ranges():
    draws = [aug.draw("abc", k, (96, 64), (64, 64), True, True) for k in range(400)]
    assert draws == [aug.draw("abc", k, (96, 64), (64, 64), True, True) for k in range(400)]
    assert draws != [aug.draw("abd", k, (96, 64), (64, 64), True, True) for k in range(400)]
    assert all(0 <= d.crop[0] <= 32 and d.crop[1] == 0 for d in draws)  # randint(0, excess) per axis
    assert len({d.crop[0] for d in draws}) > 20
    coloured = [d for d in draws if d.hue is not None or d.gamma is not None]
    assert 0.25 < len(coloured) / len(draws) < 0.42  # p = 0.33
    assert all(-8 <= d.hue <= 8 for d in coloured if d.hue is not None)
    assert all(0.95 <= d.gamma <= 1.05 for d in coloured if d.gamma is not None)
    assert {d.hue is None for d in coloured} == {True, False}  # half hue, half gamma
    assert aug.draw("abc", 0, (96, 64), (64, 64), False, False) == aug.Augment()


def test_colour_formulas():
    im = Image.fromarray(np.full((4, 4, 3), (200, 40, 40), dtype=np.uint8), "RGB")
    gamma = np.asarray(aug.apply_color(im, aug.Augment(gamma=1.02)))
    want = np.clip(np.array([200, 40, 40], dtype=np.float64) ** 1.02, 0, 255).astype(np.uint8)  # on 0-255 values
    assert (gamma == want).all()
    hue = np.asarray(aug.apply_color(im, aug.Augment(hue=8.0))).astype(int)
    h0 = np.asarray(im.convert("HSV"))[0, 0, 0]
    h1 = np.asarray(Image.fromarray(hue.astype(np.uint8), "RGB").convert("HSV"))[0, 0, 0]
    assert abs((int(h1) - int(h0)) % 256 - round(8 / 180 * 256)) <= 1  # 8 OpenCV units = 8/180 of a turn


def _dataset(tmp_path, **kw):
    d = tmp_path / "ds"
    d.mkdir()
    a = np.zeros((64, 96, 4), dtype=np.uint8)
    a[..., 0] = np.arange(96, dtype=np.uint8)[None, :] * 2   # a horizontal ramp: crops differ
    a[..., 3] = 255
    a[:, :40, 3] = 0
    Image.fromarray(a, "RGBA").save(d / "x.png")
    return load_folder(str(d), group=GroupConfig(resolution=(64, 64), min_bucket_reso=64, bucket_reso_steps=64,
                                                 enable_bucket=False), **kw)


def test_random_crop_versions_are_encoded_once_with_their_masks(tmp_path):
    ds = _dataset(tmp_path, random_crop=True, alpha_mask=True, flip_aug=True)
    plan = plan_buckets(ds)
    a = plan.assignments[0]
    assert a.resized[0] > a.bucket[0]  # room to crop
    encoded = []

    def encode(px):
        encoded.append(len(px))
        return torch.nn.functional.avg_pool2d(px.permute(0, 3, 1, 2), 8)

    cache = LatentCache()
    data = encode_dataset(ds, plan, vae_id="avg", encode_pixels=encode, cache_dir=None, cache=cache,
                          augment_variants=4)
    assert sum(encoded) == 2 * (1 + 4)  # (plain + 4 versions) x (flip or not)
    assert set(data.variants) == {(0, False), (0, True)} and all(len(v) == 4 for v in data.variants.values())
    assert len({tuple(v.flatten()[:12].tolist()) for v in data.variants[(0, False)]}) > 1  # other crops
    for k, lat in enumerate(data.variants[(0, False)]):
        draw = aug.draw(ds.images[0].sha256, k, a.resized, a.bucket, True, False)
        px = load_training_pixels(ds.images[0], a, False, augment=draw)
        torch.testing.assert_close(lat, encode(px[None])[0])
        mask = load_training_mask(ds.images[0], True, a, False, crop=draw.crop)
        torch.testing.assert_close(data.variant_masks[(0, False)][k],
                                   torch.nn.functional.interpolate(mask[None, None], size=(8, 8), mode="area")[0, 0])
    encoded.clear()
    again = encode_dataset(ds, plan, vae_id="avg", encode_pixels=encode, cache_dir=None, cache=cache,
                           augment_variants=4)
    assert encoded == [] and again.stats["memory_hits"] == 10  # every version came from the cache
    # per epoch one version per sample, the same on a re-run, its mask cut alike
    s = Sample(0, False)
    picks = [data.choose([s], seed=3, epoch=e)[0] for e in range(12)]
    assert picks == [data.choose([s], seed=3, epoch=e)[0] for e in range(12)] and len(set(picks)) > 1
    like = torch.zeros(1, 3, 8, 8)
    torch.testing.assert_close(data.loss_masks([s], False, like, [picks[0]])[0, 0],
                               data.variant_masks[(0, False)][picks[0]])
    torch.testing.assert_close(data.latent(s, picks[0]), data.variants[(0, False)][picks[0]])
    assert data.choose([s], 3, 0) != [None] and data.latent(s) is data.latents[(0, False)]


def test_plain_subsets_have_no_versions(tmp_path):
    ds = _dataset(tmp_path)
    data = encode_dataset(ds, plan_buckets(ds), vae_id="avg", cache_dir=None, cache=LatentCache(),
                          encode_pixels=lambda px: torch.nn.functional.avg_pool2d(px.permute(0, 3, 1, 2), 8))
    assert data.variants == {} and data.choose([Sample(0, False)], 0, 0) == [None]
