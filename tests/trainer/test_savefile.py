"""Tests for trainer.savefile (plain torch + safetensors)."""
import os

import pytest
import torch
from safetensors import safe_open

import trainer.savefile as savefile
from trainer.savefile import (
    atomic_save_safetensors,
    atomic_write_bytes,
    atomic_write_text,
    resolve_output_path,
)


@pytest.mark.parametrize("bad,why", [
    ("../x", "'..'"),
    ("..", "'..'"),
    ("a/b", "separator"),
    ("a\\b", "separator"),
    ("..\\x", "'..'"),
    ("/abs", "absolute"),
    ("\\abs", "absolute"),
    ("C:evil", "drive letter"),
    ("c:\\x", "drive letter"),
    ("", "empty"),
    ("   ", "empty"),
    ("bad\nname", "control"),
    ("nul\x00x", "control"),
    ("a:b", ":"),
    ("NUL", "reserved"),
    ("name.", "ends"),
    (".safetensors", "no name"),
])
def test_escapes_and_bad_names_rejected(tmp_path, bad, why):
    with pytest.raises(ValueError) as ei:
        resolve_output_path(str(tmp_path), bad)
    assert why in str(ei.value)


def test_ext_appended_once(tmp_path):
    p = resolve_output_path(str(tmp_path), "my_lora")
    assert p == os.path.join(str(tmp_path), "my_lora.safetensors")
    assert resolve_output_path(str(tmp_path), "my_lora.safetensors") == p
    assert resolve_output_path(str(tmp_path), "my_lora.SAFETENSORS").endswith("my_lora.SAFETENSORS")
    assert resolve_output_path(str(tmp_path), "v1.5 style", ext="json").endswith("v1.5 style.json")


def test_increment_sequence(tmp_path):
    names = []
    for _ in range(4):
        p = resolve_output_path(str(tmp_path), "lora")
        atomic_write_bytes(p, b"x")
        names.append(os.path.basename(p))
    assert names == ["lora.safetensors", "lora_00001.safetensors", "lora_00002.safetensors",
                     "lora_00003.safetensors"]
    # numbers continue after the highest, even after a deletion in the middle
    os.remove(tmp_path / "lora_00002.safetensors")
    assert os.path.basename(resolve_output_path(str(tmp_path), "lora")) == "lora_00004.safetensors"
    # other stems do not interfere
    (tmp_path / "lora_x_00009.safetensors").write_bytes(b"")
    assert os.path.basename(resolve_output_path(str(tmp_path), "lora")) == "lora_00004.safetensors"


def test_error_and_overwrite_modes(tmp_path):
    p = resolve_output_path(str(tmp_path), "a", if_exists="error")
    atomic_write_text(p, "one")
    with pytest.raises(FileExistsError) as ei:
        resolve_output_path(str(tmp_path), "a", if_exists="error")
    assert p in str(ei.value) and "increment" in str(ei.value)
    assert resolve_output_path(str(tmp_path), "a", if_exists="overwrite") == p
    with pytest.raises(ValueError, match="if_exists"):
        resolve_output_path(str(tmp_path), "a", if_exists="clobber")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlink_out_of_folder_rejected(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "elsewhere.safetensors"
    target.write_bytes(b"keep")
    os.symlink(target, out / "link.safetensors")
    with pytest.raises(ValueError, match="outside"):
        resolve_output_path(str(out), "link", if_exists="overwrite")
    # increment picks a fresh name instead of following the link
    assert os.path.basename(resolve_output_path(str(out), "link")) == "link_00001.safetensors"
    # a folder that is itself a symlink is fine: the check is against its realpath
    os.symlink(out, tmp_path / "alias")
    p = resolve_output_path(str(tmp_path / "alias"), "ok")
    assert os.path.basename(p) == "ok.safetensors"


def test_directory_name_rejected(tmp_path):
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(ValueError, match="folder"):
        resolve_output_path(str(tmp_path), "d", if_exists="overwrite")


def test_metadata_round_trip(tmp_path):
    base = torch.arange(12, dtype=torch.float32).view(3, 4)
    tensors = {
        "a.lora_down.weight": base.t(),          # non-contiguous
        "b.alpha": torch.tensor(8.0),
        "c": base[1],                            # view sharing storage with "a"
        "d": torch.zeros(2, dtype=torch.bfloat16),
    }
    meta = {"ss_network_dim": "16", "ss_optimizer": "torch.optim.adamw.AdamW(weight_decay=0.01)",
            "ü": "ünïcode"}
    p = atomic_save_safetensors(tensors, str(tmp_path / "m.safetensors"), meta)
    with safe_open(p, "pt") as f:
        assert f.metadata() == meta
        assert set(f.keys()) == set(tensors)
        for k, t in tensors.items():
            assert torch.equal(f.get_tensor(k), t)
    assert os.stat(p).st_mode & 0o777 == 0o644 or os.name != "posix"
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]
    with pytest.raises(TypeError, match="ss_steps"):
        atomic_save_safetensors(tensors, str(tmp_path / "n.safetensors"), {"ss_steps": 5})


def test_failed_write_leaves_target_untouched(tmp_path, monkeypatch):
    target = tmp_path / "keep.safetensors"
    atomic_save_safetensors({"w": torch.ones(2)}, str(target), {"v": "1"})
    before = target.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(savefile.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        atomic_save_safetensors({"w": torch.zeros(1000)}, str(target), {"v": "2"})
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(str(target), b"partial")
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.safetensors"]  # no temp file left
    # a bad tensor value fails before anything is written
    with pytest.raises(TypeError, match="not a torch.Tensor"):
        atomic_save_safetensors({"w": [1, 2]}, str(target))
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["keep.safetensors"]


def test_interrupt_mid_write_cleans_temp(tmp_path, monkeypatch):
    target = tmp_path / "t.txt"
    atomic_write_text(str(target), "old")
    real_write = os.write

    def half_then_interrupt(fd, data):
        real_write(fd, bytes(data[:3]))
        raise KeyboardInterrupt

    monkeypatch.setattr(savefile.os, "write", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(str(target), "new content")
    monkeypatch.undo()
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["t.txt"]


def test_writes_create_missing_folder(tmp_path):
    p = atomic_write_text(str(tmp_path / "sub" / "x.json"), "{}")
    assert open(p).read() == "{}"
