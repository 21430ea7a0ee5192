"""Image decoding rules, with files made here by PIL."""
import hashlib
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from trainer.images import (IMAGE_EXTENSIONS, ImageError, file_sha256, is_image_file, open_rgb, read_image_size,
                            verify_image)


def test_extensions_case_insensitive():
    for ext in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
        assert ext in IMAGE_EXTENSIONS
        assert is_image_file("a" + ext.upper()) and is_image_file("dir/b" + ext)
    assert not is_image_file("a.txt") and not is_image_file("a.gif")


def _exif_rotated_jpeg(path, orientation=6):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 10, 20))  # left quarter blue
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, exif=exif.tobytes(), quality=95)


def test_exif_rotated_jpeg(tmp_path):
    p = tmp_path / "rot.jpg"
    _exif_rotated_jpeg(p)
    assert read_image_size(str(p)) == (20, 40)
    assert verify_image(str(p)) == (20, 40)
    im = open_rgb(str(p))
    assert im.size == (20, 40) and im.mode == "RGB"
    a = np.asarray(im).astype(int)
    # orientation 6 = rotate 90 clockwise to display: the blue left side ends up on top
    assert a[2, 10, 2] > 200 and a[2, 10, 0] < 60
    assert a[-3, 10, 0] > 200 and a[-3, 10, 2] < 60


def test_rgba_composited_on_white(tmp_path):
    p = tmp_path / "a.png"
    im = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    im.putpixel((0, 0), (255, 0, 0, 255))
    im.save(p)
    a = np.asarray(open_rgb(str(p)))
    assert tuple(a[0, 0]) == (255, 0, 0) and tuple(a[3, 3]) == (255, 255, 255)


def test_la_and_palette_transparency(tmp_path):
    p = tmp_path / "la.png"
    Image.new("LA", (3, 3), (0, 0)).save(p)
    assert tuple(np.asarray(open_rgb(str(p)))[1, 1]) == (255, 255, 255)
    p2 = tmp_path / "p.png"
    pal = Image.new("P", (3, 3), 0)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.save(p2, transparency=0)
    a = np.asarray(open_rgb(str(p2)))
    assert tuple(a[0, 0]) == (255, 255, 255) and tuple(a[1, 1]) == (0, 255, 0)


def test_cmyk_and_16bit(tmp_path):
    p = tmp_path / "c.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(p, quality=100)
    a = np.asarray(open_rgb(str(p))).astype(int)
    assert a[4, 4, 0] > 200 and a[4, 4, 1] < 50 and a[4, 4, 2] < 50
    p16 = tmp_path / "g16.png"
    arr = np.array([[0, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(p16)
    with Image.open(p16) as im16:
        assert im16.mode.startswith("I")
    out = np.asarray(open_rgb(str(p16)))
    assert out.shape == (1, 3, 3)
    assert list(out[0, :, 0]) == [0, 128, 255]  # scaled, not clipped to 255


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def test_bomb_refused_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 10)) \
        + _png_chunk(b"IEND", b"")
    p.write_bytes(data)
    assert p.stat().st_size < 200
    with pytest.raises(ImageError, match="bomb.png") as e:
        open_rgb(str(p))
    assert "pixels" in e.value.reason or "too large" in e.value.reason
    with pytest.raises(ImageError):
        read_image_size(str(p))
    # a configurable lower limit applies too
    small = tmp_path / "s.png"
    Image.new("RGB", (100, 100)).save(small)
    with pytest.raises(ImageError, match="limit 5000"):
        open_rgb(str(small), max_pixels=5000)
    assert open_rgb(str(small), max_pixels=10000).size == (100, 100)


def test_corrupt_truncated_and_missing(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image")
    with pytest.raises(ImageError, match="junk.png"):
        read_image_size(str(junk))
    good = tmp_path / "good.jpg"
    Image.effect_noise((256, 256), 60).convert("RGB").save(good, quality=90)
    raw = good.read_bytes()
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(raw[: len(raw) // 2])
    assert read_image_size(str(trunc)) == (256, 256)  # the header alone looks fine
    with pytest.raises(ImageError, match="trunc.jpg"):
        verify_image(str(trunc))
    with pytest.raises(ImageError, match="trunc.jpg"):
        open_rgb(str(trunc))
    gp = tmp_path / "good.png"
    Image.effect_noise((64, 64), 60).convert("RGB").save(gp)
    tp = tmp_path / "trunc.png"
    tp.write_bytes(gp.read_bytes()[:-40])
    with pytest.raises(ImageError, match="trunc.png"):
        verify_image(str(tp))
    with pytest.raises(ImageError, match="not found"):
        open_rgb(str(tmp_path / "nope.png"))


def test_sha256(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc" * 1000)
    assert file_sha256(str(p)) == hashlib.sha256(b"abc" * 1000).hexdigest()
