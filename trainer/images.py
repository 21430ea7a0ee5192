"""Image files: which ones we accept, their size after EXIF rotation, safe decoding to RGB.

Decoding rules (kohya-compatible where kohya has one):

* Orientation: the EXIF ``Orientation`` tag of the file header is applied, so a phone photo stored
  sideways is trained upright and :func:`read_image_size` reports the rotated size. Only the EXIF
  block that precedes the pixel data is read (always the case for JPEG/WebP; a PNG whose ``eXIf``
  chunk comes after the image data is treated as unrotated by both functions, so they never disagree).
  (sd-scripts ignores EXIF orientation; rotated phone photos are trained sideways there.)
* Transparency (RGBA, LA, PA, P/L/RGB with a transparent colour) is composited onto **white**.
  kohya drops the alpha channel instead, which shows whatever colour the transparent pixels happen
  to hold (often black); white is what image viewers show and what most captioners saw.
* 16-bit and 32-bit grey images are scaled to 8 bits (value / 257), never clipped; float images
  are taken as 0..1 (or 0..255 when their maximum is above 1). CMYK and other modes go through
  Pillow's ``convert("RGB")``. ICC profiles are not applied.
* Decompression bombs: an image whose header claims more than ``max_pixels`` pixels is refused
  before any pixel is decoded. Pillow's own hard limit (2 x ``Image.MAX_IMAGE_PIXELS``) still applies
  when a larger ``max_pixels`` is passed.
"""
from __future__ import annotations

import hashlib
import logging
import os
import warnings
from typing import Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError, features

logger = logging.getLogger(__name__)

#: Same as Pillow's default hard limit (2 x Image.MAX_IMAGE_PIXELS at import time of Pillow 10+).
DEFAULT_MAX_PIXELS = 178_956_970

_BASE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _optional_extensions() -> tuple[str, ...]:
    extra = []
    try:
        if features.check("avif"):
            extra.append(".avif")
    except Exception:  # pragma: no cover - features API differences
        pass
    try:
        Image.init()
        if ".jxl" in Image.registered_extensions():
            extra.append(".jxl")
    except Exception:  # pragma: no cover
        pass
    return tuple(extra)


#: Lower-case extensions accepted as training images (compare with ``is_image_file``).
IMAGE_EXTENSIONS: tuple[str, ...] = _BASE_EXTENSIONS + _optional_extensions()

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Errors Pillow raises for files it cannot identify or decode.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, Image.DecompressionBombError)


class ImageError(Exception):
    """An image file that cannot be used. ``path`` names the file, ``reason`` says why."""

    def __init__(self, path: str, reason: str, hint: str = "fix or remove the file") -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason} ({hint})")


def is_image_file(path: str, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> bool:
    """True when the file name ends with one of ``extensions`` (case-insensitive)."""
    return os.path.splitext(str(path))[1].lower() in tuple(extensions)


def file_sha256(path: str, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of the file's bytes (the content hash used in latent cache keys)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_size)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _orientation(im: Image.Image) -> int:
    raw = im.info.get("exif")
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        value = int(exif.get(0x0112, 1))
    except Exception:  # a broken EXIF block is not a broken image
        return 1
    return value if value in _TRANSPOSE else 1


def _open_checked(path: str, max_pixels: int) -> Image.Image:
    """Open (header only) and refuse bombs; the caller must close the image."""
    if not os.path.isfile(path):
        raise ImageError(path, "file not found", "check the path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise ImageError(path, f"image is too large to decode safely ({e})", "downscale or remove it") from e
    except UnidentifiedImageError as e:
        raise ImageError(path, "not a readable image (unknown or corrupt format)") from e
    except _DECODE_ERRORS as e:
        raise ImageError(path, f"cannot read image header: {e}") from e
    w, h = im.size
    if w <= 0 or h <= 0:
        im.close()
        raise ImageError(path, f"image has an empty size {w}x{h}")
    if w * h > max_pixels:
        im.close()
        raise ImageError(
            path,
            f"image claims {w}x{h} = {w * h} pixels, more than the limit {max_pixels} "
            "(possible decompression bomb)",
            "downscale the image or raise max_pixels",
        )
    return im


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    w, h = im.size
    if _orientation(im) in (5, 6, 7, 8):
        return h, w
    return w, h


def read_image_size(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) after EXIF orientation, reading only the file header."""
    im = _open_checked(path, max_pixels)
    try:
        return _oriented_size(im)
    finally:
        im.close()


def verify_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Like :func:`read_image_size`, but also reads all pixel data cheaply to catch truncated or
    corrupt files: JPEG is decoded at 1/8 scale (DCT scaling), PNG is checked chunk by chunk
    (CRC + end marker), other formats are decoded. Raises :class:`ImageError`."""
    im = _open_checked(path, max_pixels)
    try:
        size = _oriented_size(im)
        try:
            if im.format == "PNG":
                im.verify()
            else:
                if im.format == "JPEG":
                    im.draft("RGB", (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
                im.load()
        except _DECODE_ERRORS as e:
            raise ImageError(path, f"image data is corrupt or truncated: {e}") from e
        return size
    finally:
        im.close()


def _has_transparency(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if _has_transparency(im):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.float64)
        a = np.clip(a, 0, 65535) / 257.0
        return Image.fromarray(np.round(a).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        a = np.asarray(im).astype(np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0
        a = np.clip(a * scale, 0, 255)
        return Image.fromarray(np.round(a).astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB")


def _decode_upright(path: str, max_pixels: int, convert) -> Image.Image:
    """Open ``path`` (checked), decode it, ``convert(im)`` to the wanted image and apply its EXIF orientation.
    ``convert`` may return ``im`` itself; it is copied then, since the file's image is closed here."""
    im = _open_checked(path, max_pixels)
    try:
        orientation = _orientation(im)
        try:
            im.load()
            out = convert(im)
            if out is im:
                out = im.copy()
        except _DECODE_ERRORS as e:
            raise ImageError(path, f"image data is corrupt or truncated: {e}") from e
    finally:
        im.close()
    if orientation in _TRANSPOSE:
        out = out.transpose(_TRANSPOSE[orientation])
    return out


def open_rgb(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``path`` into an upright 8-bit RGB image (see the module doc for the rules).

    Raises :class:`ImageError` for missing, non-image, corrupt, truncated or oversized files."""
    return _decode_upright(path, max_pixels, _to_rgb)


def open_mask(path: str, alpha: bool, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A loss mask as an upright 8-bit ``L`` image (255 = train, 0 = ignore): the transparency of ``path``
    (``alpha``: sd-scripts ``alpha_mask``; an image without transparency is opaque everywhere), else the red channel
    of the mask image ``path`` (sd-scripts' ``conditioning_data_dir`` masks; a grey mask is its grey level).

    Raises :class:`ImageError` for missing, non-image, corrupt, truncated or oversized files."""
    def convert(im: Image.Image) -> Image.Image:
        if alpha:
            return im.convert("RGBA").getchannel("A") if _has_transparency(im) else Image.new("L", im.size, 255)
        return _to_rgb(im).getchannel("R")

    return _decode_upright(path, max_pixels, convert)
