"""Bucket Images' inputs act like sd-scripts' command-line arguments: values a dataset TOML sets
([general] or [[datasets]]) win, the node fills the rest; for plain folders the node sets everything."""
import numpy as np
from PIL import Image

from trainer.dataset import load_folder, load_toml

NODE = dict(resolution=(512, 512), batch_size=2, enable_bucket=True, min_bucket_reso=256, max_bucket_reso=1024,
            bucket_reso_steps=64, bucket_no_upscale=False)


def _images(folder, n=2):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((64, 64, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")


def test_toml_values_win_and_node_fills_the_rest(tmp_path):
    _images(tmp_path / "a")
    _images(tmp_path / "b")
    (tmp_path / "ds.toml").write_text(
        "[general]\nbucket_no_upscale = true\n\n"
        "[[datasets]]\nresolution = [768, 640]\n  [[datasets.subsets]]\n  image_dir = 'a'\n\n"
        "[[datasets]]\nbatch_size = 4\nenable_bucket = false\n  [[datasets.subsets]]\n  image_dir = 'b'\n")
    ds = load_toml(str(tmp_path / "ds.toml")).with_node_group_settings(NODE)
    g0, g1 = ds.groups
    assert g0.resolution == (768, 640) and g0.batch_size == 2 and g0.bucket_no_upscale is True
    assert g1.resolution == (512, 512) and g1.batch_size == 4 and g1.enable_bucket is False
    assert g1.bucket_no_upscale is True  # from [general]
    assert g0.max_bucket_reso == 1024 and g1.min_bucket_reso == 256


def test_folder_takes_every_node_value(tmp_path):
    _images(tmp_path / "imgs")
    ds = load_folder(str(tmp_path / "imgs")).with_node_group_settings(dict(NODE, resolution=(1024, 1024)))
    (g,) = ds.groups
    assert g.resolution == (1024, 1024) and g.batch_size == 2
