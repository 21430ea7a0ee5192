"""Masked loss (sd-scripts masked_loss / alpha_mask): the masked loss formula on fixed tensors, masks read from the
alpha channel or from a mask folder and fitted to the bucket exactly as the pixels (resize, trim, flip), brought to
the latent's size by area averaging, which samples of a batch carry one, and the dataset errors a user can act on."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.batching import Sample
from trainer.buckets import load_training_mask, plan_buckets
from trainer.dataset import GroupConfig, load_folder, load_toml
from trainer.encoded import encode_dataset, latent_mask
from trainer.objectives import per_sample_loss


def test_masked_loss_is_the_mean_over_the_mask_area():
    pred = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).reshape(2, 3, 2, 4) / 10
    target = torch.zeros_like(pred)
    mask = torch.zeros(2, 1, 2, 4)
    mask[0, 0, :, :2] = 1.0       # sample 0: the left half
    mask[1, 0, 0, 0] = 0.5        # sample 1: one half-weight pixel
    got = per_sample_loss(pred, target, "l2", mask=mask)
    sq = pred ** 2
    want0 = sq[0, :, :, :2].sum() / (3 * 4)
    want1 = (sq[1, :, 0, 0] * 0.5).sum() / (3 * 0.5)
    torch.testing.assert_close(got, torch.stack([want0, want1]))
    torch.testing.assert_close(per_sample_loss(pred, target, "l1", mask=torch.ones(2, 1, 2, 4)),
                               per_sample_loss(pred, target, "l1"))
    assert float(per_sample_loss(pred, target, mask=torch.zeros(2, 1, 2, 4)).abs().max()) == 0.0  # nothing to train


def _rgba(path, w, h, alpha_left: int, alpha_right: int):
    a = np.zeros((h, w, 4), dtype=np.uint8)
    a[..., :3] = 90
    a[:, : w // 2, 3] = alpha_left
    a[:, w // 2:, 3] = alpha_right
    Image.fromarray(a, "RGBA").save(path)


def test_alpha_mask_is_fitted_like_the_pixels_and_flipped(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    _rgba(d / "a.png", 96, 64, 255, 0)  # left half trains
    ds = load_folder(str(d), alpha_mask=True, group=GroupConfig(resolution=(64, 64), min_bucket_reso=64,
                                                                 bucket_reso_steps=64))
    plan = plan_buckets(ds)
    a = plan.assignments[0]
    m = load_training_mask(ds.images[0], True, a, flip=False)
    assert tuple(m.shape) == (a.bucket[1], a.bucket[0])
    cols = m.mean(dim=0)
    assert float(cols[:8].min()) == 1.0 and float(cols[-8:].max()) == 0.0
    flipped = load_training_mask(ds.images[0], True, a, flip=True)
    torch.testing.assert_close(flipped, torch.flip(m, dims=[1]))
    small = latent_mask(m, (m.shape[0] // 8, m.shape[1] // 8))  # area average: each latent pixel's 8x8 block
    torch.testing.assert_close(small, m.reshape(m.shape[0] // 8, 8, m.shape[1] // 8, 8).mean(dim=(1, 3)))


def test_mask_folder_masks_and_their_errors(tmp_path):
    d, masks = tmp_path / "ds", tmp_path / "masks"
    d.mkdir()
    masks.mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (64, 64), (10, 20, 30)).save(d / f"{name}.png")
    Image.new("L", (32, 32), 128).save(masks / "a.jpg")  # half size, grey: scaled to the image, weight ~0.5
    with pytest.raises(ValueError, match=r"1 images .* have no mask image .*b\.png"):
        load_folder(str(d), conditioning_data_dir=str(masks))
    Image.new("RGB", (64, 64), (255, 0, 0)).save(masks / "b.png")  # the red channel is the mask
    ds = load_folder(str(d), conditioning_data_dir=str(masks))
    assert [os.path.basename(r.mask_path) for r in ds.images] == ["a.jpg", "b.png"]
    plan = plan_buckets(ds)
    ma = load_training_mask(ds.images[0], False, plan.assignments[0])
    mb = load_training_mask(ds.images[1], False, plan.assignments[1])
    assert abs(float(ma.mean()) - 128 / 255) < 2 / 255 and float(mb.min()) == 1.0
    Image.new("L", (64, 32), 255).save(masks / "a.jpg")  # another aspect ratio: named, with the fix
    ds = load_folder(str(d), conditioning_data_dir=str(masks))
    with pytest.raises(Exception, match="another aspect ratio"):
        load_training_mask(ds.images[0], False, plan_buckets(ds).assignments[0])


def test_toml_masks_and_which_samples_carry_them(tmp_path):
    """A TOML with an alpha-mask subset and a mask-folder subset: encode_dataset keeps each (image, flip)'s mask at
    the latent's size; a batch uses the alpha masks always and the folder's only with masked_loss."""
    alpha, plain, masks = tmp_path / "alpha", tmp_path / "plain", tmp_path / "masks"
    for p in (alpha, plain, masks):
        p.mkdir()
    _rgba(alpha / "x.png", 64, 64, 255, 0)
    Image.new("RGB", (64, 64), (1, 2, 3)).save(plain / "y.png")
    Image.new("L", (64, 64), 0).save(masks / "y.png")
    toml = tmp_path / "ds.toml"
    toml.write_text('[general]\nresolution = 64\nmin_bucket_reso = 64\n[[datasets]]\n'
                    '[[datasets.subsets]]\nimage_dir = "alpha"\nalpha_mask = true\nflip_aug = true\n'
                    '[[datasets.subsets]]\nimage_dir = "plain"\nconditioning_data_dir = "masks"\n', encoding="utf-8")
    ds = load_toml(str(toml))
    assert [s.alpha_mask for s in ds.subsets] == [True, False]
    assert ds.subsets[1].conditioning_data_dir == str(masks)
    plan = plan_buckets(ds)
    data = encode_dataset(ds, plan, vae_id="avg8", cache_dir=None, cache=_NoCache(),
                          encode_pixels=lambda px: torch.nn.functional.avg_pool2d(px.permute(0, 3, 1, 2), 8))
    assert set(data.masks) == {(0, False), (0, True), (1, False)}
    assert tuple(data.masks[(0, False)].shape) == (8, 8)
    torch.testing.assert_close(data.masks[(0, True)], torch.flip(data.masks[(0, False)], dims=[1]))
    like = torch.zeros(2, 4, 8, 8)
    batch = [Sample(0, False), Sample(1, False)]
    with_alpha = data.loss_masks(batch, masked_loss=False, like=like)
    assert tuple(with_alpha.shape) == (2, 1, 8, 8) and float(with_alpha[1].min()) == 1.0  # folder mask not used
    both = data.loss_masks(batch, masked_loss=True, like=like)
    assert float(both[1].max()) == 0.0  # the folder's black mask
    assert data.loss_masks([Sample(1, False)], masked_loss=False, like=like[:1]) is None


class _NoCache:
    def get(self, key, disk_dir):
        return None, ""

    def put(self, key, latent, disk_dir):
        pass
