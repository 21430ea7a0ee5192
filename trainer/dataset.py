"""The LORA_DATASET value: image records plus kohya-compatible dataset/subset configuration.

Two ways in, both producing a :class:`LoraDataset`:

* :func:`load_folder`: a folder in kohya's DreamBooth layout (``10_sks dog/`` subfolders), or the
  image folder itself.
* :func:`load_toml`: a kohya dataset TOML (``[general]``, ``[[datasets]]``, ``[[datasets.subsets]]``).

Deviations from sd-scripts' defaults (documented for users):

* ``caption_extension`` defaults to ``.txt`` (kohya: ``.caption``).
* ``enable_bucket`` defaults to True (kohya: False).
* ``resolution`` defaults to 512x512 when nothing sets it (kohya asserts).
* Only DreamBooth-style subsets (``image_dir`` + caption files) are supported: ``metadata_file``
  (fine-tuning) and ``conditioning_data_dir`` (ControlNet) subsets are rejected.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .captions import CAPTION_OPTION_NAMES, CaptionError, CaptionOptions, normalize_extension, read_caption
from .options import option
from .images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, file_sha256, is_image_file, verify_image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubsetConfig:
    """One image folder (kohya ``[[datasets.subsets]]``)."""

    image_dir: str = option(help="Folder holding the images and their caption files.")
    num_repeats: int = option(1, "How many times each image is used per epoch.", min=1, max=10000)
    caption_extension: str = option(".txt", "Extension of the caption file next to each image (kohya's default is "
                                            "'.caption').")
    class_tokens: str | None = option(None, "Caption used for images that have no caption file.")
    flip_aug: bool = option(False, "Randomly flip images horizontally (50%).")
    color_aug: bool = option(False, "Colour augmentation (kohya color_aug): a third of the time a small hue shift or "
                                    "sd-scripts' gamma change. Encode Dataset encodes augment_variants versions of "
                                    "each image once; each epoch uses one of them.")
    random_crop: bool = option(False, "Cut the bucket at a random place of the resized image instead of its centre "
                                      "(kohya random_crop), from augment_variants versions encoded once.")
    is_reg: bool = option(False, "Regularisation (prior preservation) images.")
    caption: CaptionOptions = option(help="Caption processing.", default_factory=CaptionOptions)
    group_index: int = option(0, "Index of the dataset group this subset belongs to.")
    alpha_mask: bool = option(False, "Use each image's transparency as its loss mask: transparent pixels do not "
                                     "train, half-transparent ones at half weight (kohya alpha_mask; applies "
                                     "without masked_loss). Images without transparency train everywhere.")
    conditioning_data_dir: str | None = option(None, "Folder of mask images, one per training image with the same "
                                                     "file name (any image extension): white trains, black is "
                                                     "ignored, grey in between (the red channel; kohya "
                                                     "conditioning_data_dir). Used with masked_loss.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "caption_extension", normalize_extension(self.caption_extension))
        if self.num_repeats < 1:
            raise ValueError(f"num_repeats must be >= 1 for {self.image_dir}, got {self.num_repeats}")


@dataclass(frozen=True)
class GroupConfig:
    """Resolution, batch and bucket settings shared by subsets (kohya ``[[datasets]]``)."""

    resolution: tuple[int, int] = option((512, 512), "Training resolution (width, height); buckets keep roughly "
                                                     "this area. 512 for SD1.x, 768 for SD2-v, 1024 for "
                                                     "SDXL/SD3/FLUX.", min=64, max=8192, step=64)
    batch_size: int = option(1, "Images per batch (a batch never mixes buckets).", min=1, max=256)
    enable_bucket: bool = option(True, "Group images into aspect-ratio buckets instead of centre-cropping all to "
                                       "`resolution` (kohya's default is False).")
    min_bucket_reso: int = option(256, "Smallest bucket side.", min=64, max=8192, step=64)
    max_bucket_reso: int = option(1024, "Largest bucket side (use 2048 for equal-area SDXL/FLUX buckets).",
                                  min=64, max=8192, step=64)
    bucket_reso_steps: int = option(64, "Bucket sides are multiples of this.", min=8, max=256, step=8)
    bucket_no_upscale: bool = option(False, "Never upscale: buckets follow each image's size (min/max bucket reso "
                                            "are ignored).")

    def __post_init__(self) -> None:
        res = self.resolution
        if isinstance(res, int) and not isinstance(res, bool):
            res = (res, res)
        res = tuple(res)
        if len(res) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in res):
            raise ValueError(f"resolution must be a positive int or [width, height], got {self.resolution!r}")
        object.__setattr__(self, "resolution", (int(res[0]), int(res[1])))
        for name in ("batch_size", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")


@dataclass
class ImageRecord:
    path: str
    caption: str
    width: int
    height: int
    sha256: str
    subset_index: int
    group_index: int
    mask_path: str | None = None  # its mask image (the subset's conditioning_data_dir), None without


@dataclass
class LoraDataset:
    groups: list[GroupConfig]
    subsets: list[SubsetConfig]
    images: list[ImageRecord]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""
    #: per group, the group keys (resolution, batch_size, bucket settings) its dataset TOML set itself
    #: ([general] or its [[datasets]] table); empty for folders. Node values never override these.
    explicit_group_keys: list[frozenset[str]] = field(default_factory=list)
    #: the bucket plan of these groups (Bucket Images sets it; None until then)
    plan: Any = None

    def __repr__(self) -> str:  # ComfyUI prints node inputs in error reports: keep it short
        return (f"LoraDataset({len(self.images)} images, {len(self.subsets)} subsets, {len(self.groups)} groups, "
                f"{len(self.skipped)} skipped, source={self.source!r})")

    # ---- counts -----------------------------------------------------------------------------
    def subset_image_counts(self) -> list[int]:
        counts = [0] * len(self.subsets)
        for rec in self.images:
            counts[rec.subset_index] += 1
        return counts

    @property
    def uncaptioned(self) -> int:
        """Images that train with an empty caption (no caption file, no class tokens)."""
        return sum(1 for r in self.images if not r.caption)

    @property
    def num_train_images(self) -> int:
        """Non-regularisation images times their repeats (kohya ``ss_num_train_images``)."""
        return sum(self.subsets[r.subset_index].num_repeats for r in self.images if not self.subsets[r.subset_index].is_reg)

    @property
    def num_reg_images(self) -> int:
        """Regularisation images times their repeats, before balancing (kohya ``ss_num_reg_images``)."""
        return sum(self.subsets[r.subset_index].num_repeats for r in self.images if self.subsets[r.subset_index].is_reg)

    def sample_repeats(self) -> list[int]:
        """How often each image (parallel to ``images``) is used per epoch.

        Training images: their subset's ``num_repeats``. Regularisation images are balanced per
        group exactly like kohya: registered in order until they match the group's training
        samples, then given +1 repeat round-robin; reg images beyond that count get 0."""
        out = [0] * len(self.images)
        for g in range(len(self.groups)):
            idx = [i for i, r in enumerate(self.images) if r.group_index == g]
            train_n = 0
            reg: list[int] = []
            for i in idx:
                sub = self.subsets[self.images[i].subset_index]
                if sub.is_reg:
                    reg.append(i)
                else:
                    out[i] = sub.num_repeats
                    train_n += sub.num_repeats
            if not reg:
                continue
            n = 0
            first = True
            while n < train_n:
                for i in reg:
                    if first:
                        out[i] = self.subsets[self.images[i].subset_index].num_repeats
                        n += out[i]
                    else:
                        out[i] += 1
                        n += 1
                    if n >= train_n:
                        break
                first = False
            if n < sum(self.subsets[self.images[i].subset_index].num_repeats for i in reg):
                logger.warning("group %d: more regularisation images than training samples; some are not used", g)
        return out

    # ---- kohya metadata helpers ---------------------------------------------------------------
    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """kohya ``ss_tag_frequency``: {image_dir basename: {lower-case tag: count}} over raw captions
        (reg subsets included). A folder used by several groups is counted once (first group)."""
        result: dict[str, dict[str, int]] = {}
        for g in range(len(self.groups)):
            per_group: dict[str, dict[str, int]] = {}
            for si, sub in enumerate(self.subsets):
                if sub.group_index != g:
                    continue
                freq = per_group.setdefault(os.path.basename(os.path.normpath(sub.image_dir)), {})
                for rec in self.images:
                    if rec.subset_index != si:
                        continue
                    for tag in rec.caption.split(","):
                        tag = tag.strip()
                        if tag:
                            tag = tag.lower()
                            freq[tag] = freq.get(tag, 0) + 1
            for name, freq in per_group.items():
                result.setdefault(name, freq)
        return result

    def dataset_dirs(self, reg: bool = False) -> dict[str, dict[str, int]]:
        """kohya ``ss_dataset_dirs`` (``reg=True``: ``ss_reg_dataset_dirs``):
        {dir basename: {"n_repeats", "img_count"}}; a repeated name gets a " (2)" suffix."""
        counts = self.subset_image_counts()
        out: dict[str, dict[str, int]] = {}
        for si, sub in enumerate(self.subsets):
            if sub.is_reg != reg:
                continue
            base = os.path.basename(os.path.normpath(sub.image_dir))
            name, i = base, 2
            while name in out:
                name = f"{base} ({i})"
                i += 1
            out[name] = {"n_repeats": sub.num_repeats, "img_count": counts[si]}
        return out

    # ---- changing settings ---------------------------------------------------------------------
    def with_groups(self, groups: list[GroupConfig]) -> "LoraDataset":
        if len(groups) != len(self.groups):
            raise ValueError(f"expected {len(self.groups)} group configs, got {len(groups)}")
        return dataclasses.replace(self, groups=list(groups), plan=None)

    def with_group_params(self, **changes: Any) -> "LoraDataset":
        """Same dataset with ``changes`` (GroupConfig fields) applied to every group."""
        return self.with_groups([dataclasses.replace(g, **changes) for g in self.groups])

    def with_node_group_settings(self, values: Mapping[str, Any]) -> "LoraDataset":
        """Apply node-level group settings with kohya precedence: values the dataset TOML sets win; the
        node's values fill the rest (they play the role of sd-scripts' command-line arguments)."""
        explicit = self.explicit_group_keys or [frozenset()] * len(self.groups)
        return self.with_groups([dataclasses.replace(g, **{k: v for k, v in values.items() if k not in ex})
                                 for g, ex in zip(self.groups, explicit)])


# ================================================================================================
# scanning
# ================================================================================================
def _list_images(image_dir: str) -> list[str]:
    names = sorted(os.listdir(image_dir))
    return [os.path.join(image_dir, n) for n in names if is_image_file(n) and os.path.isfile(os.path.join(image_dir, n))]


def _mask_images(sub: SubsetConfig) -> dict[str, str]:
    """The mask images of a subset by file stem (its ``conditioning_data_dir``); {} without one."""
    if not sub.conditioning_data_dir:
        return {}
    folder = sub.conditioning_data_dir
    if not os.path.isdir(folder):
        raise ValueError(f"conditioning_data_dir {folder} (the mask images of {sub.image_dir}) is not a folder")
    out: dict[str, str] = {}
    for path in _list_images(folder):
        out.setdefault(os.path.splitext(os.path.basename(path))[0], os.path.abspath(path))
    return out


def _scan_subset(
    sub: SubsetConfig, subset_index: int, images: list[ImageRecord], skipped: list[tuple[str, str]], max_pixels: int
) -> int:
    found = 0
    uncaptioned = 0
    masks = _mask_images(sub)
    no_mask: list[str] = []
    for path in _list_images(sub.image_dir):
        path = os.path.abspath(path)
        try:
            w, h = verify_image(path, max_pixels)
            digest = file_sha256(path)
            cap = read_caption(path, sub.caption_extension, all_lines=sub.caption.enable_wildcard)
        except ImageError as e:
            logger.warning("skipping %s", e)
            skipped.append((path, e.reason))
            continue
        except CaptionError as e:
            logger.warning("skipping image %s: %s", path, e)
            skipped.append((path, str(e)))
            continue
        except OSError as e:
            logger.warning("skipping %s: %s", path, e)
            skipped.append((path, str(e)))
            continue
        if cap is None:
            cap = sub.class_tokens if sub.class_tokens is not None else ""
            uncaptioned += not cap
        mask = masks.get(os.path.splitext(os.path.basename(path))[0])
        if sub.conditioning_data_dir and mask is None:
            no_mask.append(os.path.basename(path))
        images.append(ImageRecord(path, cap, w, h, digest, subset_index, sub.group_index, mask))
        found += 1
    if no_mask:
        raise ValueError(f"{len(no_mask)} images of {sub.image_dir} have no mask image in conditioning_data_dir "
                         f"{sub.conditioning_data_dir} (e.g. {no_mask[0]}): give each image a mask of the same file "
                         "name (white = train, black = ignore), or clear conditioning_data_dir")
    logger.info("%s: %d images (x%d repeats)", sub.image_dir, found, sub.num_repeats)
    if uncaptioned:
        logger.warning("%d of %d images in %s have no caption file ('<image name>%s') and the folder sets no class "
                       "tokens: they train with an empty caption. Add caption files, set class_tokens, or name the "
                       "folder '<repeats>_<class tokens>' (e.g. '10_sks dog').", uncaptioned, found, sub.image_dir,
                       sub.caption_extension)
    return found


def _scan(
    groups: list[GroupConfig], subsets: list[SubsetConfig], source: str, max_pixels: int
) -> LoraDataset:
    images: list[ImageRecord] = []
    skipped: list[tuple[str, str]] = []
    for si, sub in enumerate(subsets):
        _scan_subset(sub, si, images, skipped, max_pixels)
    return LoraDataset(groups=groups, subsets=subsets, images=images, skipped=skipped, source=source)


_EXT_TEXT = ", ".join(IMAGE_EXTENSIONS)


def parse_dreambooth_folder_name(name: str) -> tuple[int, str] | None:
    """kohya folder convention: ``"10_sks dog"`` -> ``(10, "sks dog")``; everything after the first
    ``_`` is the class token text. Returns None when the name has no integer prefix."""
    tokens = name.split("_")
    try:
        repeats = int(tokens[0])
    except ValueError:
        return None
    return repeats, "_".join(tokens[1:])


def load_folder(
    path: str,
    *,
    caption_extension: str = ".txt",
    num_repeats: int = 1,
    class_tokens: str | None = None,
    caption: CaptionOptions = CaptionOptions(),
    flip_aug: bool = False,
    group: GroupConfig = GroupConfig(),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    alpha_mask: bool = False,
    conditioning_data_dir: str | None = None,
    color_aug: bool = False,
    random_crop: bool = False,
) -> LoraDataset:
    """Load a kohya DreamBooth-style folder (see the module doc). One group, one or more subsets; the masks
    (``alpha_mask``, ``conditioning_data_dir``: one mask folder for every subset) as :class:`SubsetConfig`'s."""
    path = _absolute(path, "dataset folder")
    if not os.path.isdir(path):
        raise ValueError(f"dataset folder not found: {path}")
    try:
        normalize_extension(caption_extension)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    subsets: list[SubsetConfig] = []

    def make(image_dir: str, repeats: int, tokens: str | None) -> SubsetConfig:
        return SubsetConfig(image_dir=image_dir, num_repeats=repeats, caption_extension=caption_extension,
                            class_tokens=tokens, flip_aug=flip_aug, caption=caption, group_index=0,
                            alpha_mask=alpha_mask, color_aug=color_aug, random_crop=random_crop,
                            conditioning_data_dir=_absolute(conditioning_data_dir, "conditioning_data_dir")
                            if conditioning_data_dir else None)

    if _list_images(path):
        repeats, tokens = num_repeats, class_tokens
        parsed = parse_dreambooth_folder_name(os.path.basename(path))
        if parsed is not None and parsed[0] >= 1:
            repeats, tokens = parsed
            logger.info("%s holds images and is named like a kohya subset: using num_repeats=%d, class_tokens=%r "
                        "from its name", path, repeats, tokens)
        subsets.append(make(path, repeats, tokens))

    for name in sorted(os.listdir(path)):
        sub_path = os.path.join(path, name)
        if not os.path.isdir(sub_path) or name.startswith("."):
            continue
        parsed = parse_dreambooth_folder_name(name)
        if parsed is None:
            logger.warning("ignoring subfolder %s: its name does not start with '<repeats>_' (e.g. '10_sks dog')",
                           sub_path)
            continue
        if parsed[0] < 1:
            logger.warning("ignoring subfolder %s: repeats %d is less than 1", sub_path, parsed[0])
            continue
        subsets.append(make(sub_path, parsed[0], parsed[1]))

    ds = _scan([group], subsets, path, max_pixels)
    if not ds.images:
        extra = f" ({len(ds.skipped)} unreadable image files were skipped, see the log)" if ds.skipped else ""
        raise ValueError(
            f"no usable images found in {path}{extra}. Expected either images directly in this folder, or "
            f"subfolders named '<repeats>_<class tokens>' (e.g. '10_sks dog') holding images. "
            f"Image extensions: {_EXT_TEXT}; captions are '<image name>{normalize_extension(caption_extension)}'."
        )
    return ds


# ================================================================================================
# kohya dataset TOML
# ================================================================================================
_BOOL, _INT, _FLOAT, _STR, _RES = "bool", "int", "float", "str", "resolution"

#: TOML integers are 64-bit (the spec asks parsers to reject others; tomllib does not)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

# key -> (type, levels). Levels: g = [general], d = [[datasets]], s = [[datasets.subsets]].
_GD, _GDS, _S = "gd", "gds", "s"
SUPPORTED_KEYS: dict[str, tuple[str, str]] = {
    "resolution": (_RES, _GD),
    "batch_size": (_INT, _GD),
    "enable_bucket": (_BOOL, _GD),
    "min_bucket_reso": (_INT, _GD),
    "max_bucket_reso": (_INT, _GD),
    "bucket_reso_steps": (_INT, _GD),
    "bucket_no_upscale": (_BOOL, _GD),
    "image_dir": (_STR, _S),
    "is_reg": (_BOOL, _S),
    "num_repeats": (_INT, _GDS),
    "caption_extension": (_STR, _GDS),
    "class_tokens": (_STR, _GDS),
    "flip_aug": (_BOOL, _GDS),
    "color_aug": (_BOOL, _GDS),
    "random_crop": (_BOOL, _GDS),
    "alpha_mask": (_BOOL, _GDS),
    "conditioning_data_dir": (_STR, _S),
    "shuffle_caption": (_BOOL, _GDS),
    "keep_tokens": (_INT, _GDS),
    "keep_tokens_separator": (_STR, _GDS),
    "caption_separator": (_STR, _GDS),
    "secondary_separator": (_STR, _GDS),
    "caption_prefix": (_STR, _GDS),
    "caption_suffix": (_STR, _GDS),
    "caption_dropout_rate": (_FLOAT, _GDS),
    "caption_dropout_every_n_epochs": (_INT, _GDS),
    "caption_tag_dropout_rate": (_FLOAT, _GDS),
    "enable_wildcard": (_BOOL, _GDS),
    "token_warmup_min": (_INT, _GDS),
    "token_warmup_step": (_FLOAT, _GDS),
}

#: kohya keys accepted (with their kohya placement) but not implemented: a warning when set.
IGNORED_KEYS: dict[str, tuple[str, str]] = {
    "face_crop_aug_range": ("any", _GDS),
    "custom_attributes": ("any", _GDS),
    "resize_interpolation": ("any", _GDS),
    "cache_info": ("bool", _GDS),
    "network_multiplier": ("any", _GD),
    "validation_seed": ("any", _GD),
    "validation_split": ("any", _GD),
}

def _toml_module():
    """``tomllib`` (Python 3.11+), else the ``tomli`` backport (ComfyUI still runs on Python 3.10)."""
    try:
        import tomllib

        return tomllib
    except ModuleNotFoundError:
        try:
            import tomli

            return tomli
        except ModuleNotFoundError:
            raise ValueError("reading a dataset TOML on Python < 3.11 needs the 'tomli' package: run "
                             "`python -m pip install tomli` in ComfyUI's Python environment") from None


_LEVEL_NAMES = {"g": "[general]", "d": "[[datasets]]", "s": "[[datasets.subsets]]"}
_ARGPARSE_ALIASES = {"train_batch_size": "batch_size", "dataset_repeats": "num_repeats"}
_GROUP_KEYS = ("resolution", "batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
               "bucket_reso_steps", "bucket_no_upscale")
_SUBSET_KEYS = ("num_repeats", "caption_extension", "class_tokens", "flip_aug", "is_reg", "alpha_mask", "color_aug",
                "random_crop")


def _allowed_at(level: str) -> list[str]:
    return sorted(k for k, (_, lv) in {**SUPPORTED_KEYS, **IGNORED_KEYS}.items() if level in lv)


def _show(value: Any, limit: int = 200) -> str:
    """``repr(value)`` for messages, shortened; never raises (an integer of more than 4300 digits cannot be
    printed by Python)."""
    try:
        text = repr(value)
    except ValueError:
        text = f"<{type(value).__name__} holding an integer too large to print>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _absolute(path: Any, what: str) -> str:
    """``path`` with ~ expanded, made absolute; a ValueError naming it when it cannot be a path (NUL byte)."""
    try:
        return os.path.abspath(os.path.expanduser(str(path)))
    except ValueError as e:
        raise ValueError(f"{what} {_show(str(path))} is not a usable path ({e}); check the path") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_type(key: str, kind: str, value: Any, where: str) -> Any:
    def bad(expected: str) -> ValueError:
        return ValueError(f"{where}: '{key}' must be {expected}, got {_show(value)}")

    too_big = "a number that fits in 64 bits (TOML's integer range)"
    if kind == _BOOL:
        if not isinstance(value, bool):
            raise bad("true or false")
    elif kind == _INT:
        if not _is_int(value):
            raise bad("an integer")
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise bad(too_big)
    elif kind == _FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        if _is_int(value) and not _INT64_MIN <= value <= _INT64_MAX:
            raise bad(too_big)
        value = float(value)
    elif kind == _STR:
        if not isinstance(value, str):
            raise bad("a string")
    elif kind == _RES:
        if _is_int(value):
            value = (value, value)
        elif isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) for v in value):
            value = (value[0], value[1])
        else:
            raise bad("an integer or [width, height]")
        if not all(_INT64_MIN <= v <= _INT64_MAX for v in value):
            raise bad(too_big)
    return value


def _validate_table(table: Mapping[str, Any], level: str, where: str, toml_path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if level == "d" and key == "subsets":
            continue
        if key == "metadata_file":
            raise ValueError(
                f"{toml_path}: {where} uses '{key}': fine-tuning (metadata_file) subsets are not supported; use "
                "image_dir with caption files next to the images")
        spec = SUPPORTED_KEYS.get(key) or IGNORED_KEYS.get(key)
        if spec is None:
            raise ValueError(
                f"{toml_path}: unknown key '{key}' in {where}. Allowed keys there: {', '.join(_allowed_at(level))}")
        kind, levels = spec
        if level not in levels:
            places = " and ".join(_LEVEL_NAMES[c] for c in levels)
            raise ValueError(f"{toml_path}: '{key}' is not allowed in {where}; kohya allows it only in {places}")
        if key in IGNORED_KEYS:
            if value not in (False, None, 0, "", [], {}):
                logger.warning("%s: '%s' in %s is a kohya option LoRA Loop does not implement; it is ignored",
                               toml_path, key, where)
            continue
        out[key] = _check_type(key, kind, value, f"{toml_path} {where}")
    return out


def _normalize_defaults(defaults: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (defaults or {}).items():
        key = _ARGPARSE_ALIASES.get(key, key)
        if key not in SUPPORTED_KEYS:
            raise ValueError(f"unknown dataset default '{key}'; allowed: {', '.join(sorted(SUPPORTED_KEYS))}")
        if value is None:
            continue
        if key == "image_dir" or key == "is_reg":
            continue
        out[key] = _check_type(key, SUPPORTED_KEYS[key][0], value, "dataset defaults")
    return out


def _first(key: str, layers: Iterable[Mapping[str, Any]]) -> Any:
    for layer in layers:
        v = layer.get(key)
        if v is not None:
            return v
    return None


def _build(cls: type, names: Iterable[str], layers: list[Mapping[str, Any]], **extra: Any) -> Any:
    kwargs = {}
    for name in names:
        v = _first(name, layers)
        if v is not None:
            kwargs[name] = v
    return cls(**kwargs, **extra)


@dataclass
class DatasetToml:
    """A validated kohya dataset TOML, before any image is read."""

    path: str
    groups: list[GroupConfig]
    subsets: list[SubsetConfig]
    explicit_group_keys: list[frozenset[str]]


def read_dataset_toml(path: str, *, defaults: Mapping[str, Any] | None = None) -> DatasetToml:
    """Parse and validate a kohya dataset TOML (the one place that reads it). Each value comes from the first
    level that sets it: subset -> dataset -> [general] -> ``defaults`` (the node inputs, kohya's command-line
    level) -> the dataclass default. ``defaults`` uses TOML key names (``train_batch_size`` and
    ``dataset_repeats`` are accepted as aliases). Every problem is a ValueError naming the file and key."""
    path = _absolute(path, "dataset TOML")
    toml = _toml_module()
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ValueError(f"dataset TOML not found: {path}") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read the dataset TOML: {e.strerror or e}") from None
    except ValueError as e:  # an embedded NUL byte
        raise ValueError(f"dataset TOML {_show(path)} is not a usable path ({e}); check the path") from None
    try:
        doc = toml.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file (byte {e.start}); re-save it as UTF-8") from None
    except toml.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    except ValueError as e:  # tomllib lets int()'s digit limit through as a plain ValueError
        if "integer string conversion" in str(e):
            raise ValueError(f"{path}: not valid TOML: a number has too many digits ({e.args[0].split(':')[0]}); "
                             "TOML integers are 64-bit, use a shorter number") from None
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    except RecursionError:
        raise ValueError(f"{path}: not valid TOML: arrays or inline tables are nested too deeply; "
                         "flatten them") from None
    base_dir = os.path.dirname(path)

    for key in doc:
        if key not in ("general", "datasets"):
            raise ValueError(f"{path}: unknown top-level key '{key}'; a dataset TOML has only [general] and [[datasets]]")
    general_raw = doc.get("general", {})
    if not isinstance(general_raw, dict):
        raise ValueError(f"{path}: 'general' must be a table ([general])")
    general = _validate_table(general_raw, "g", "[general]", path)
    datasets_raw = doc.get("datasets", [])
    if not isinstance(datasets_raw, list) or not all(isinstance(d, dict) for d in datasets_raw):
        raise ValueError(f"{path}: 'datasets' must be an array of tables ([[datasets]])")
    if not datasets_raw:
        raise ValueError(f"{path}: no [[datasets]] entry; add one with at least one [[datasets.subsets]] image_dir")
    argp = _normalize_defaults(defaults)

    groups: list[GroupConfig] = []
    subsets: list[SubsetConfig] = []
    explicit: list[frozenset[str]] = []
    for gi, d_raw in enumerate(datasets_raw):
        where_d = f"[[datasets]] #{gi + 1}"
        dataset = _validate_table(d_raw, "d", where_d, path)
        layers_d = [dataset, general, argp]
        explicit.append(frozenset(k for k in _GROUP_KEYS if k in dataset or k in general))
        try:
            groups.append(_build(GroupConfig, _GROUP_KEYS, layers_d))
        except ValueError as e:
            raise ValueError(f"{path}: {where_d}: {e}") from e
        subs_raw = d_raw.get("subsets", [])
        if not isinstance(subs_raw, list) or not all(isinstance(s, dict) for s in subs_raw):
            raise ValueError(f"{path}: {where_d} 'subsets' must be an array of tables ([[datasets.subsets]])")
        if not subs_raw:
            logger.warning("%s: %s has no [[datasets.subsets]]", path, where_d)
        for sj, s_raw in enumerate(subs_raw):
            where_s = f"{where_d} [[datasets.subsets]] #{sj + 1}"
            subset = _validate_table(s_raw, "s", where_s, path)
            if "image_dir" not in subset:
                raise ValueError(f"{path}: {where_s} has no image_dir (required)")
            try:
                image_dir = os.path.expanduser(subset["image_dir"])
                if not os.path.isabs(image_dir):
                    image_dir = os.path.join(base_dir, image_dir)
                image_dir = os.path.normpath(image_dir)
                found = os.path.isdir(image_dir)
            except (ValueError, OSError) as e:  # e.g. an embedded NUL byte
                raise ValueError(f"{path}: {where_s}: image_dir {subset['image_dir']!r} is not a usable path ({e})") \
                    from None
            if not found:
                raise ValueError(f"{path}: {where_s}: image_dir not found: {image_dir}")
            layers = [subset, dataset, general, argp]
            repeats = _first("num_repeats", layers)
            if repeats is not None and repeats < 1:
                logger.warning("%s: ignoring subset %s: num_repeats %d is less than 1", path, image_dir, repeats)
                continue
            try:
                cap = _build(CaptionOptions, CAPTION_OPTION_NAMES, layers)
                masks = subset.get("conditioning_data_dir")
                if masks:
                    masks = os.path.normpath(os.path.join(base_dir, os.path.expanduser(masks)))
                    if not os.path.isdir(masks):
                        raise ValueError(f"conditioning_data_dir not found: {masks}")
                sub = _build(SubsetConfig, _SUBSET_KEYS, layers, image_dir=image_dir, caption=cap, group_index=gi,
                             conditioning_data_dir=masks or None)
            except ValueError as e:
                raise ValueError(f"{path}: {where_s}: {e}") from e
            subsets.append(sub)
    return DatasetToml(path, groups, subsets, explicit)


def load_toml(path: str, *, defaults: Mapping[str, Any] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoraDataset:
    """Load a kohya dataset TOML (:func:`read_dataset_toml`) and read its images."""
    doc = read_dataset_toml(path, defaults=defaults)
    ds = _scan(doc.groups, doc.subsets, doc.path, max_pixels)
    ds.explicit_group_keys = list(doc.explicit_group_keys)
    if not ds.images:
        extra = f" ({len(ds.skipped)} unreadable image files were skipped, see the log)" if ds.skipped else ""
        dirs = ", ".join(s.image_dir for s in doc.subsets) or "(no subsets)"
        raise ValueError(f"{doc.path}: no usable images found in {dirs}{extra}. Image extensions: {_EXT_TEXT}")
    return ds


def load_dataset(path: str, **kwargs: Any) -> LoraDataset:
    """A ``.toml`` file -> :func:`load_toml` (``defaults=`` keyword), a folder -> :func:`load_folder`."""
    if os.path.isfile(path) and str(path).lower().endswith(".toml"):
        return load_toml(path, **kwargs)
    return load_folder(path, **kwargs)
