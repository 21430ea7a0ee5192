"""Caption files and kohya's per-load caption processing (shuffle, keep tokens, dropout).

Reading (:func:`read_caption`) follows sd-scripts: ``<image stem><caption_extension>``, UTF-8, first
line only, stripped. Differences, chosen so one bad file never stops a run silently or loudly:

* a UTF-8 byte-order mark is tolerated;
* a file that is empty (or only whitespace) gives ``None`` plus a warning naming it, so the image
  falls back to ``class_tokens`` like a missing file (kohya asserts instead);
* bytes that are not UTF-8 raise :class:`CaptionError` naming the file (kohya raises too); the
  dataset scanner turns that into a skipped image with the reason, it does not guess an encoding.

Processing (:func:`process_caption`) reproduces sd-scripts' ``BaseDataset.process_caption`` (``library/train_util.py``)
with an explicit ``random.Random`` instead of the global RNG. Wildcards and token warm-up are not
implemented.
"""
from __future__ import annotations

import logging
import math
import os
import random
import re
from dataclasses import dataclass, fields

from .options import check_options, option

logger = logging.getLogger(__name__)


class CaptionError(Exception):
    """A caption file that cannot be read. ``path`` names the file, ``reason`` says why."""

    def __init__(self, path: str, reason: str, hint: str = "re-save the caption file as UTF-8") -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason} ({hint})")


def normalize_extension(extension: str) -> str:
    """``"txt"`` -> ``".txt"``; ``".caption"`` unchanged (kohya adds the dot the same way)."""
    extension = (extension or "").strip()
    if not extension:
        raise ValueError("caption_extension is empty; use e.g. '.txt' or '.caption'")
    return extension if extension.startswith(".") else "." + extension


def caption_path(image_path: str, extension: str) -> str:
    return os.path.splitext(str(image_path))[0] + normalize_extension(extension)


def read_caption(image_path: str, extension: str = ".txt", all_lines: bool = False) -> str | None:
    """The caption of ``image_path``: first line of ``<stem><extension>``, stripped (``all_lines``: every non-empty
    line, joined by newlines, as sd-scripts reads captions with ``enable_wildcard``: one is picked per use).

    Missing file -> ``None``. Empty file -> ``None`` and a warning. Not UTF-8 -> CaptionError."""
    path = caption_path(image_path, extension)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CaptionError(path, f"cannot read caption file: {e}", "check its permissions") from e
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CaptionError(path, f"caption file is not valid UTF-8 (byte {e.start})") from e
    if not text.strip():
        logger.warning("caption file is empty, using class tokens or an empty caption instead: %s", path)
        return None
    # kohya reads with open(..., "rt"): lines end at \n, \r\n or \r only (str.splitlines() would also split
    # at \f, \v, \x1c-\x1e, \x85, \u2028 and \u2029, which kohya keeps in the caption)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if all_lines:
        return "\n".join(ln.strip() for ln in lines if ln.strip())
    first = lines[0].strip()
    if not first:
        logger.warning("caption file %s starts with an empty line; like kohya only the first line is used", path)
    return first


@dataclass(frozen=True)
class CaptionOptions:
    """Caption processing options; names, defaults and meaning as sd-scripts."""

    shuffle_caption: bool = option(False, "Shuffle the comma-separated tags of each caption every time it is used "
                                          "(after keep_tokens).")
    keep_tokens: int = option(0, "Keep the first N tags in place when shuffling or dropping tags.", min=0, max=255)
    keep_tokens_separator: str = option("", "If set and present in a caption, the part before it stays fixed "
                                            "(instead of keep_tokens); a second occurrence marks a fixed suffix: "
                                            "'fixed ||| shuffled ||| fixed suffix'.")
    caption_separator: str = option(",", "Separator between tags.")
    secondary_separator: str | None = option(None, "Separator that groups tags that move together; replaced by "
                                                   "caption_separator after shuffling. Empty = off.")
    caption_prefix: str | None = option(None, "Text put before every caption (joined with a space). Empty = off.")
    caption_suffix: str | None = option(None, "Text put after every caption (joined with a space). Empty = off.")
    caption_dropout_rate: float = option(0.0, "Probability of training an image with an empty caption.",
                                         min=0.0, max=1.0, step=0.01)
    caption_dropout_every_n_epochs: int = option(0, "Use empty captions for every image in every N-th epoch (0: "
                                                    "never).", min=0, max=100_000)
    caption_tag_dropout_rate: float = option(0.0, "Probability of dropping each (non-kept) tag.", min=0.0, max=1.0,
                                             step=0.01)
    enable_wildcard: bool = option(False, "Wildcards (kohya enable_wildcard): '{red|blue} car' picks one choice "
                                          "each time the caption is used ('{{' and '}}' are literal braces), and a "
                                          "caption file with several lines uses one line at random.")
    token_warmup_min: int = option(1, "Token warm-up: how many (non-kept) tags the first step uses (kohya "
                                      "token_warmup_min).", min=0, max=255)
    token_warmup_step: float = option(0.0, "Token warm-up: until this step the number of tags grows linearly from "
                                           "token_warmup_min to all of them; below 1 it is a fraction of the "
                                           "training steps (kohya token_warmup_step). 0 = off.",
                                      min=0.0, max=1_000_000.0, step=1.0)

    def __post_init__(self) -> None:
        check_options(self)
        if not self.caption_separator:
            raise ValueError("caption_separator must not be empty; use e.g. ','")


CAPTION_OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(CaptionOptions))


def is_deterministic(opts: CaptionOptions) -> bool:
    """True when a caption always processes to the same text (so text conds may be cached)."""
    return not (
        opts.shuffle_caption
        or opts.enable_wildcard
        or opts.token_warmup_step > 0
        or opts.caption_dropout_rate > 0
        or opts.caption_dropout_every_n_epochs > 0
        or opts.caption_tag_dropout_rate > 0
    )


def _split_tokens(part: str, sep: str) -> list[str]:
    return [t.strip() for t in part.split(sep) if t.strip()]


def _wildcards(caption: str, rng: random.Random) -> str:
    """kohya enable_wildcard: one line of a multi-line caption, then each '{a|b|c}' replaced by one choice
    ('{{' / '}}' stay literal braces)."""
    if "\n" in caption:
        caption = rng.choice(caption.split("\n"))
    open_, close = "\u2985", "\u2986"
    while open_ in caption or close in caption:
        open_, close = open_ + "\u2985", close + "\u2986"
    caption = caption.replace("{{", open_).replace("}}", close)
    caption = re.sub(r"\{([^}]+)\}", lambda m: rng.choice(m.group(1).split("|")), caption)
    return caption.replace(open_, "{").replace(close, "}")


def warmup_steps(opts: CaptionOptions, total_steps: int) -> int:
    """token_warmup_step in steps (a value below 1 is a fraction of the training steps, as kohya)."""
    w = opts.token_warmup_step
    return math.floor(w * total_steps) if w < 1 else int(w)


def process_caption(caption: str, opts: CaptionOptions, rng: random.Random, epoch: int = 0, step: int = 0,
                    total_steps: int = 0) -> str:
    """Apply prefix/suffix, dropout, wildcards, keep_tokens split, token warm-up, shuffle, tag dropout, secondary
    separator.

    ``epoch`` counts from 1 like kohya's ``current_epoch`` (``caption_dropout_every_n_epochs=n``
    drops when ``epoch % n == 0``; epoch 0 would always drop, so pass 1-based epochs). ``step`` is the
    optimizer step the caption is used in (0-based) and ``total_steps`` the run's steps (token warm-up).
    The only randomness comes from ``rng``; calls are made in kohya's order."""
    if opts.caption_prefix:
        caption = opts.caption_prefix + " " + caption
    if opts.caption_suffix:
        caption = caption + " " + opts.caption_suffix

    dropped = opts.caption_dropout_rate > 0 and rng.random() < opts.caption_dropout_rate
    dropped = dropped or (
        opts.caption_dropout_every_n_epochs > 0 and epoch % opts.caption_dropout_every_n_epochs == 0
    )
    if dropped:
        return ""

    caption = _wildcards(caption, rng) if opts.enable_wildcard else caption.split("\n")[0]
    sep = opts.caption_separator
    warmup = warmup_steps(opts, total_steps) if opts.token_warmup_step > 0 else 0
    if opts.shuffle_caption or warmup > 0 or opts.caption_tag_dropout_rate > 0:
        fixed: list[str] = []
        flex: list[str] = []
        fixed_suffix: list[str] = []
        kts = opts.keep_tokens_separator
        if kts and kts in caption:
            fixed_part, flex_part = caption.split(kts, 1)
            if kts in flex_part:
                flex_part, suffix_part = flex_part.split(kts, 1)
                fixed_suffix = _split_tokens(suffix_part, sep)
            fixed = _split_tokens(fixed_part, sep)
            flex = _split_tokens(flex_part, sep)
        else:
            tokens = [t.strip() for t in caption.strip().split(sep)]
            flex = tokens[:]
            if opts.keep_tokens > 0:
                fixed = flex[: opts.keep_tokens]
                flex = tokens[opts.keep_tokens:]
        if warmup and step < warmup:
            flex = flex[:math.floor(step * ((len(flex) - opts.token_warmup_min) / warmup)) + opts.token_warmup_min]
        if opts.shuffle_caption:
            rng.shuffle(flex)
        if opts.caption_tag_dropout_rate > 0:
            flex = [t for t in flex if rng.random() >= opts.caption_tag_dropout_rate]
        caption = ", ".join(fixed + flex + fixed_suffix)

    if opts.secondary_separator:
        caption = caption.replace(opts.secondary_separator, sep)
    return caption
