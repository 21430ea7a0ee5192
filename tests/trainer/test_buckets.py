"""Bucketing against sd-scripts: library/model_util.py make_bucket_resolutions and library/train_util.py
BucketManager.select_bucket (bucket lists, assignments and resize/crop values)."""
import pytest
import torch
from PIL import Image

from trainer.buckets import (BucketPlan, GroupBuckets, check_reso_steps, get_crop_ltrb, load_training_pixels,
                             make_bucket_resolutions, plan_buckets, select_bucket)
from trainer.dataset import GroupConfig, load_folder


def test_bucket_list_512_defaults():
    assert make_bucket_resolutions((512, 512), 256, 1024, 64) == [
        (256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576),
        (512, 512), (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256),
        (1024, 256)]


def test_bucket_list_768():
    assert make_bucket_resolutions((768, 768), 256, 1024, 64) == [
        (256, 1024), (320, 1024), (384, 1024), (448, 1024), (512, 1024), (576, 960), (576, 1024), (640, 896),
        (704, 832), (768, 768), (832, 704), (896, 640), (960, 576), (1024, 256), (1024, 320), (1024, 384),
        (1024, 448), (1024, 512), (1024, 576)]


def test_bucket_list_1024_2048():
    b = make_bucket_resolutions((1024, 1024), 256, 2048, 64)
    assert len(b) == 41
    for r in [(832, 1216), (896, 1152), (960, 1088), (1024, 1024), (1152, 896), (1216, 832), (1344, 768),
              (2048, 256), (2048, 320), (2048, 384), (2048, 448), (2048, 512)]:
        assert r in b
    assert all(w * h <= 1024 * 1024 for w, h in b)


def test_bucket_list_1024_defaults_not_equal_area():
    b = make_bucket_resolutions((1024, 1024), 256, 1024, 64)
    expected = {(w, 1024) for w in range(256, 1025, 64)} | {(1024, h) for h in range(256, 1025, 64)}
    assert len(b) == 25 and set(b) == expected


@pytest.mark.parametrize("group,image,bucket,resized", [
    (dict(resolution=(512, 512)), (1024, 768), (576, 448), (597, 448)),
    (dict(resolution=(512, 512)), (1920, 1080), (640, 384), (683, 384)),
    (dict(resolution=(512, 512)), (600, 400), (640, 384), (640, 427)),
    (dict(resolution=(512, 512)), (300, 300), (512, 512), (512, 512)),
    (dict(resolution=(1024, 1024), max_bucket_reso=2048), (1920, 1080), (1344, 768), (1365, 768)),
    (dict(resolution=(1024, 1024), max_bucket_reso=2048), (3000, 2000), (1216, 832), (1248, 832)),
    (dict(resolution=(1024, 1024), bucket_no_upscale=True), (600, 400), (576, 384), (600, 400)),
    (dict(resolution=(1024, 1024), bucket_no_upscale=True), (1023, 1023), (960, 960), (1023, 1023)),
    (dict(resolution=(1024, 1024), bucket_no_upscale=True), (3000, 2000), (1216, 832), (1248, 832)),
])
def test_assignment_table(group, image, bucket, resized):
    a = select_bucket(*image, GroupConfig(**group))
    assert a.bucket == bucket and a.resized == resized and a.original == image
    # the trim offset is the centre of the overhang
    assert a.crop == ((resized[0] - bucket[0]) // 2, (resized[1] - bucket[1]) // 2)


def test_exact_bucket_size_is_kept():
    a = select_bucket(640, 384, GroupConfig(resolution=(512, 512)))
    assert a.bucket == (640, 384) and a.resized == (640, 384) and a.crop == (0, 0)


def test_crop_ltrb_examples():
    assert get_crop_ltrb((640, 384), (600, 400)) == (32, 0, 608, 384)
    assert get_crop_ltrb((512, 2048), (512, 4096)) == (128, 0, 384, 2048)
    a = select_bucket(600, 400, GroupConfig(resolution=(512, 512)))
    assert a.crop_ltrb == (32, 0, 608, 384)
    assert a.crop_top_left(False) == (0, 32)
    assert a.crop_top_left(True) == (0, 640 - 608)


def test_no_bucket_single_resolution():
    g = GroupConfig(resolution=(512, 512), enable_bucket=False)
    for size in [(1920, 1080), (300, 200), (512, 512)]:
        a = select_bucket(*size, g)
        assert a.bucket == (512, 512)
        assert a.resized[0] >= 512 and a.resized[1] >= 512


def test_min_max_rounding_and_errors(caplog):
    gb = GroupBuckets.from_group(GroupConfig(resolution=(512, 512), min_bucket_reso=300, max_bucket_reso=1000))
    assert (gb.min_bucket_reso, gb.max_bucket_reso) == (256, 1024)
    assert "rounded" in caplog.text
    with pytest.raises(ValueError, match="max_bucket_reso"):
        GroupBuckets.from_group(GroupConfig(resolution=(1024, 1024), max_bucket_reso=512))
    with pytest.raises(ValueError, match="min_bucket_reso"):
        GroupBuckets.from_group(GroupConfig(resolution=(512, 512), min_bucket_reso=640))


def _folder(tmp_path, sizes, sub="2_thing"):
    d = tmp_path / sub
    d.mkdir(parents=True)
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (i * 20 % 255, 100, 50)).save(d / f"img{i}.png")
    return tmp_path


def test_plan_and_bucket_info(tmp_path):
    ds = load_folder(_folder(tmp_path, [(600, 400), (600, 400), (300, 300)]), group=GroupConfig(resolution=(512, 512)))
    plan = plan_buckets(ds)
    assert isinstance(plan, BucketPlan) and len(plan.assignments) == 3
    info = plan.bucket_info()
    assert info["buckets"] == {0: {"resolution": [512, 512], "count": 2}, 1: {"resolution": [640, 384], "count": 4}}
    expected = (abs(640 / 384 - 1.5) * 2 + 0) / 3
    assert info["mean_img_ar_error"] == pytest.approx(expected)
    assert plan_buckets(ds.with_group_params(enable_bucket=False)).bucket_info() is None
    check_reso_steps(plan, 64)
    with pytest.raises(ValueError, match="multiple of 128"):
        check_reso_steps(plan, 128)


def test_load_training_pixels(tmp_path):
    d = tmp_path / "1_x"
    d.mkdir()
    im = Image.new("RGB", (600, 400), (255, 255, 255))
    im.paste((255, 0, 0), (0, 0, 300, 400))  # left half red
    im.save(d / "a.png")
    ds = load_folder(tmp_path, group=GroupConfig(resolution=(512, 512)))
    plan = plan_buckets(ds)
    a = plan.assignments[0]
    t = load_training_pixels(ds.images[0], a, flip=False)
    assert t.dtype == torch.float32 and tuple(t.shape) == (384, 640, 3)
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert torch.allclose(t[:, 0], torch.tensor([1.0, 0.0, 0.0]))  # left column red
    assert torch.allclose(t[:, -1], torch.tensor([1.0, 1.0, 1.0]))  # right column white
    f = load_training_pixels(ds.images[0], a, flip=True)
    assert torch.equal(f, torch.flip(t, dims=[1]))
    assert torch.equal(t, load_training_pixels(ds.images[0], a, flip=False))  # deterministic


def test_load_training_pixels_downscale(tmp_path):
    d = tmp_path / "1_x"
    d.mkdir()
    Image.new("RGB", (1920, 1080), (10, 20, 30)).save(d / "big.jpg", quality=95)
    ds = load_folder(tmp_path, group=GroupConfig(resolution=(512, 512)))
    plan = plan_buckets(ds)
    t = load_training_pixels(ds.images[0], plan.assignments[0])
    assert tuple(t.shape) == (384, 640, 3)


def test_changed_file_is_reported(tmp_path):
    d = tmp_path / "1_x"
    d.mkdir()
    Image.new("RGB", (600, 400)).save(d / "a.png")
    ds = load_folder(tmp_path, group=GroupConfig(resolution=(512, 512)))
    plan = plan_buckets(ds)
    Image.new("RGB", (400, 400)).save(d / "a.png")
    with pytest.raises(Exception, match="a.png"):
        load_training_pixels(ds.images[0], plan.assignments[0])
