"""kohya's enable_wildcard and token warm-up (trainer/captions.py), against hand-worked expectations."""
from __future__ import annotations

import random

from trainer.captions import CaptionOptions, is_deterministic, process_caption, read_caption, warmup_steps


def test_wildcards_pick_one_choice_each_use_and_keep_escaped_braces():
    opts = CaptionOptions(enable_wildcard=True)
    seen = {process_caption("a {red|blue|green} car, {{literal}}", opts, random.Random(i), 1) for i in range(40)}
    assert seen == {"a red car, {literal}", "a blue car, {literal}", "a green car, {literal}"}
    # off: the braces stay as written
    assert process_caption("a {red|blue} car", CaptionOptions(), random.Random(0), 1) == "a {red|blue} car"
    assert not is_deterministic(opts) and is_deterministic(CaptionOptions())


def test_a_multi_line_caption_uses_one_line_per_use(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "a.txt").write_text("first line\n\nsecond {x|y}\n", encoding="utf-8")
    assert read_caption(str(tmp_path / "a.png"), ".txt") == "first line"
    text = read_caption(str(tmp_path / "a.png"), ".txt", all_lines=True)
    assert text == "first line\nsecond {x|y}"
    opts = CaptionOptions(enable_wildcard=True)
    seen = {process_caption(text, opts, random.Random(i), 1) for i in range(40)}
    assert seen == {"first line", "second x", "second y"}


def test_token_warmup_grows_the_tags_linearly_like_kohya():
    """kohya: until step W, floor(step * (n - min) / W) + min of the flexible tags (after keep_tokens)."""
    opts = CaptionOptions(token_warmup_min=1, token_warmup_step=4, keep_tokens=1)
    caption = "sks, a, b, c, d"
    got = [process_caption(caption, opts, random.Random(0), 1, step=s, total_steps=10) for s in range(6)]
    # flexible tags: a b c d (n = 4); step 0: 1, step 1: floor(3/4)+1 = 1, step 2: floor(6/4)+1 = 2, step 3: 3, then all
    assert got == ["sks, a", "sks, a", "sks, a, b", "sks, a, b, c", "sks, a, b, c, d", "sks, a, b, c, d"]
    assert warmup_steps(CaptionOptions(token_warmup_step=0.25), 100) == 25  # a fraction of the training steps
    assert warmup_steps(CaptionOptions(token_warmup_step=30), 100) == 30
