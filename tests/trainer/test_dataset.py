"""Folder layouts and kohya dataset TOML loading."""
import logging
import os
import textwrap

import pytest
from PIL import Image

from trainer.captions import CaptionOptions
from trainer.dataset import GroupConfig, ImageRecord, LoraDataset, SubsetConfig, load_dataset, load_folder, load_toml, parse_dreambooth_folder_name


def _img(path, size=(64, 48), color=(200, 10, 10)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path)


@pytest.mark.parametrize("name,expected", [
    ("10_sks dog", (10, "sks dog")), ("3_ohwx_woman", (3, "ohwx_woman")), ("1_", (1, "")),
    ("sks dog", None), ("05_a b_c", (5, "a b_c")),
])
def test_folder_name_parsing(name, expected):
    assert parse_dreambooth_folder_name(name) == expected


def test_kohya_layout(tmp_path, caplog):
    _img(tmp_path / "10_sks dog" / "b.png")
    _img(tmp_path / "10_sks dog" / "a.jpg")
    (tmp_path / "10_sks dog" / "a.txt").write_text("sks dog, sitting, Grass\nignored", encoding="utf-8")
    (tmp_path / "10_sks dog" / "notes.md").write_text("not an image")
    _img(tmp_path / "3_ohwx_woman" / "c.PNG")
    _img(tmp_path / "misc" / "d.png")
    with caplog.at_level(logging.WARNING):
        ds = load_folder(str(tmp_path))
    assert "misc" in caplog.text
    assert [os.path.basename(s.image_dir) for s in ds.subsets] == ["10_sks dog", "3_ohwx_woman"]
    assert [(s.num_repeats, s.class_tokens) for s in ds.subsets] == [(10, "sks dog"), (3, "ohwx_woman")]
    assert [os.path.basename(r.path) for r in ds.images] == ["a.jpg", "b.png", "c.PNG"]
    assert all(os.path.isabs(r.path) for r in ds.images)
    a, b, c = ds.images
    assert a.caption == "sks dog, sitting, Grass"  # caption file wins, class tokens not prepended
    assert b.caption == "sks dog" and c.caption == "ohwx_woman"  # class tokens only when no caption
    assert (a.width, a.height) == (64, 48) and len(a.sha256) == 64
    assert ds.num_train_images == 2 * 10 + 1 * 3
    assert ds.dataset_dirs() == {"10_sks dog": {"n_repeats": 10, "img_count": 2},
                                 "3_ohwx_woman": {"n_repeats": 3, "img_count": 1}}
    assert ds.tag_frequency() == {"10_sks dog": {"sks dog": 2, "sitting": 1, "grass": 1},
                                  "3_ohwx_woman": {"ohwx_woman": 1}}
    assert ds.groups == [GroupConfig()] and ds.groups[0].enable_bucket
    assert ds.source == str(tmp_path)


def test_pointing_at_image_folder(tmp_path, caplog):
    _img(tmp_path / "imgs" / "a.png")
    ds = load_folder(str(tmp_path / "imgs"), num_repeats=4, class_tokens="cat",
                     caption=CaptionOptions(shuffle_caption=True), flip_aug=True)
    assert len(ds.images) == 1 and ds.subsets[0].num_repeats == 4 and ds.images[0].caption == "cat"
    assert ds.subsets[0].caption.shuffle_caption and ds.subsets[0].flip_aug
    _img(tmp_path / "5_my toy" / "a.png")
    with caplog.at_level(logging.INFO):
        ds = load_folder(str(tmp_path / "5_my toy"))
    assert (ds.subsets[0].num_repeats, ds.subsets[0].class_tokens) == (5, "my toy")
    assert "from its name" in caplog.text


def test_no_images_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(ValueError) as e:
        load_folder(str(tmp_path / "empty"))
    msg = str(e.value)
    assert str(tmp_path / "empty") in msg and "10_sks dog" in msg and ".png" in msg


def test_bad_files_skipped(tmp_path, caplog):
    d = tmp_path / "2_x"
    _img(d / "good.png")
    (d / "corrupt.png").write_bytes(b"not a png")
    Image.effect_noise((256, 256), 60).convert("RGB").save(d / "full.jpg", quality=90)
    raw = (d / "full.jpg").read_bytes()
    (d / "trunc.jpg").write_bytes(raw[: len(raw) * 3 // 4])  # header intact, pixel data cut
    os.remove(d / "full.jpg")
    _img(d / "badcap.png")
    (d / "badcap.txt").write_bytes(b"\xff\xfe bad")
    with caplog.at_level(logging.WARNING):
        ds = load_folder(str(tmp_path))
    assert [os.path.basename(r.path) for r in ds.images] == ["good.png"]
    skipped = {os.path.basename(p): reason for p, reason in ds.skipped}
    assert set(skipped) == {"corrupt.png", "trunc.jpg", "badcap.png"}
    for name in skipped:
        assert name in caplog.text


def _toml(tmp_path, text):
    p = tmp_path / "ds.toml"
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(p)


def test_toml_precedence(tmp_path):
    _img(tmp_path / "data" / "a" / "1.png")
    _img(tmp_path / "data" / "b" / "2.png")
    p = _toml(tmp_path, """
        [general]
        flip_aug = true
        shuffle_caption = true
        keep_tokens = 1
        caption_extension = "caption"
        [[datasets]]
        resolution = [768, 512]
        batch_size = 2
        keep_tokens = 2
          [[datasets.subsets]]
          image_dir = "data/a"
          flip_aug = false
          num_repeats = 7
          [[datasets.subsets]]
          image_dir = "data/b"
        """)
    ds = load_toml(p, defaults={"max_bucket_reso": 2048, "train_batch_size": 8, "class_tokens": "tok",
                                "caption_dropout_rate": 0.25, "flip_aug": None})
    a, b = ds.subsets
    assert a.image_dir == str(tmp_path / "data" / "a")  # relative to the TOML's folder
    assert a.flip_aug is False and b.flip_aug is True  # explicit false in subset beats true in general
    assert a.num_repeats == 7 and b.num_repeats == 1
    assert a.caption.keep_tokens == 2 and a.caption.shuffle_caption
    assert a.caption_extension == ".caption"
    assert a.class_tokens == "tok" and a.caption.caption_dropout_rate == 0.25  # node defaults fill gaps only
    g = ds.groups[0]
    assert g.resolution == (768, 512) and g.batch_size == 2  # TOML beats node default 8
    assert g.max_bucket_reso == 2048 and g.min_bucket_reso == 256 and g.enable_bucket
    assert ds.source == p and [r.caption for r in ds.images] == ["tok", "tok"]


def test_toml_repeats_not_from_folder_name(tmp_path):
    _img(tmp_path / "10_sks dog" / "a.png")
    p = _toml(tmp_path, """
        [[datasets]]
        resolution = 512
          [[datasets.subsets]]
          image_dir = "10_sks dog"
        """)
    ds = load_toml(p)
    assert ds.subsets[0].num_repeats == 1 and ds.subsets[0].class_tokens is None
    assert ds.images[0].caption == ""
    assert ds.groups[0].resolution == (512, 512)


def test_toml_unknown_key(tmp_path):
    _img(tmp_path / "a" / "1.png")
    p = _toml(tmp_path, """
        [[datasets]]
          [[datasets.subsets]]
          image_dir = "a"
          shufle_caption = true
        """)
    with pytest.raises(ValueError) as e:
        load_toml(p)
    msg = str(e.value)
    assert "shufle_caption" in msg and "[[datasets.subsets]]" in msg and p in msg and "shuffle_caption" in msg


@pytest.mark.parametrize("section,line", [
    ("subset", "resolution = 512"), ("subset", "batch_size = 2"), ("general", 'image_dir = "a"'),
    ("dataset", "is_reg = true"),
])
def test_toml_misplaced_key(tmp_path, section, line):
    _img(tmp_path / "a" / "1.png")
    general = line if section == "general" else ""
    dataset = line if section == "dataset" else ""
    subset = line if section == "subset" else ""
    p = tmp_path / "ds.toml"
    p.write_text(f'[general]\n{general}\n[[datasets]]\n{dataset}\n[[datasets.subsets]]\nimage_dir = "a"\n{subset}\n')
    with pytest.raises(ValueError, match="not allowed"):
        load_toml(str(p))


def test_toml_ignored_and_bad_values(tmp_path, caplog):
    _img(tmp_path / "a" / "1.png")
    p = _toml(tmp_path, """
        [general]
        face_crop_aug_range = [1.0, 2.0]
        color_aug = true
        [[datasets]]
          [[datasets.subsets]]
          image_dir = "a"
          random_crop = false
        """)
    with caplog.at_level(logging.WARNING):
        ds = load_toml(p)
    assert "face_crop_aug_range" in caplog.text and "color_aug" not in caplog.text  # implemented now
    assert ds.subsets[0].color_aug and not ds.subsets[0].random_crop
    p2 = _toml(tmp_path, """
        [[datasets]]
        batch_size = "2"
          [[datasets.subsets]]
          image_dir = "a"
        """)
    with pytest.raises(ValueError, match="batch_size"):
        load_toml(p2)
    p3 = _toml(tmp_path, """
        [[datasets]]
          [[datasets.subsets]]
          image_dir = "missing"
        """)
    with pytest.raises(ValueError, match="missing"):
        load_toml(p3)


def test_reg_balancing_and_groups(tmp_path):
    for i in range(3):
        _img(tmp_path / "train" / f"{i}.png")
    for i in range(10):
        _img(tmp_path / "reg" / f"{i}.png")
    _img(tmp_path / "other" / "x.png", size=(64, 64))
    p = _toml(tmp_path, """
        [[datasets]]
        resolution = 512
          [[datasets.subsets]]
          image_dir = "train"
          num_repeats = 5
          [[datasets.subsets]]
          image_dir = "reg"
          is_reg = true
        [[datasets]]
        resolution = 256
        min_bucket_reso = 128
          [[datasets.subsets]]
          image_dir = "other"
        """)
    ds = load_toml(p)
    assert len(ds.groups) == 2 and ds.groups[1].resolution == (256, 256)
    assert ds.num_train_images == 16 and ds.num_reg_images == 10
    rep = ds.sample_repeats()
    reg = [rep[i] for i, r in enumerate(ds.images) if ds.subsets[r.subset_index].is_reg]
    assert reg == [2] * 5 + [1] * 5  # 15 training samples: one pass over 10 reg images, then +1 round-robin
    assert ds.dataset_dirs() == {"train": {"n_repeats": 5, "img_count": 3}, "other": {"n_repeats": 1, "img_count": 1}}
    assert ds.dataset_dirs(reg=True) == {"reg": {"n_repeats": 1, "img_count": 10}}
    assert ds.images[-1].group_index == 1
    ds2 = ds.with_group_params(batch_size=4)
    assert [g.batch_size for g in ds2.groups] == [4, 4] and ds.groups[0].batch_size == 1


def test_load_dataset_dispatch(tmp_path):
    _img(tmp_path / "1_a" / "x.png")
    assert isinstance(load_dataset(str(tmp_path)), LoraDataset)
    p = _toml(tmp_path, '[[datasets]]\n[[datasets.subsets]]\nimage_dir = "1_a"\n')
    assert load_dataset(p, defaults={"resolution": 640}).groups[0].resolution == (640, 640)


def _manual(train, reg_count, reg_repeats=1):
    """A dataset without files: ``train`` training samples (one image) and ``reg_count`` reg images."""
    subsets = [SubsetConfig(image_dir="/t", num_repeats=train), SubsetConfig(image_dir="/r", num_repeats=reg_repeats,
                                                                             is_reg=True)]
    images = [ImageRecord("/t/0.png", "", 8, 8, "0", 0, 0)]
    images += [ImageRecord(f"/r/{i}.png", "", 8, 8, str(i), 1, 0) for i in range(reg_count)]
    return LoraDataset(groups=[GroupConfig()], subsets=subsets, images=images)


@pytest.mark.parametrize("train,reg,reg_repeats,expected", [
    (200, 50, 1, [4] * 50),
    (50, 100, 1, [1] * 50 + [0] * 50),
    (45, 10, 2, [5] * 5 + [4] * 5),
])
def test_reg_balancing_kohya_examples(train, reg, reg_repeats, expected):
    rep = _manual(train, reg, reg_repeats).sample_repeats()
    assert rep[0] == train and rep[1:] == expected
