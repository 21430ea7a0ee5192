"""Caption files and kohya's caption processing order."""
import logging
import random

import pytest

from trainer.captions import CaptionError, CaptionOptions, is_deterministic, process_caption, read_caption


def test_read_caption_first_line_bom_and_extension(tmp_path):
    img = tmp_path / "a.png"
    (tmp_path / "a.txt").write_bytes("\ufefffirst line, tag\nsecond\n".encode("utf-8"))
    assert read_caption(str(img), ".txt") == "first line, tag"
    (tmp_path / "a.caption").write_text("  other  \n", encoding="utf-8")
    assert read_caption(str(img), "caption") == "other"
    assert read_caption(str(tmp_path / "b.png"), ".txt") is None


def test_empty_caption_warns(tmp_path, caplog):
    (tmp_path / "e.txt").write_text(" \n\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert read_caption(str(tmp_path / "e.jpg"), ".txt") is None
    assert "e.txt" in caplog.text


def test_non_utf8_caption_error(tmp_path):
    (tmp_path / "x.txt").write_bytes(b"caf\xe9 latin-1")
    with pytest.raises(CaptionError, match="x.txt") as e:
        read_caption(str(tmp_path / "x.png"), ".txt")
    assert "UTF-8" in e.value.reason


def test_prefix_suffix_and_plain():
    opts = CaptionOptions(caption_prefix="pre", caption_suffix="post")
    assert process_caption("a, b", opts, random.Random(0)) == "pre a, b post"
    assert process_caption("a,b\nsecond", CaptionOptions(), random.Random(0)) == "a,b"


def test_keep_tokens_shuffle_deterministic():
    cap = "sks, dog, red, ball, grass, sky, tree"
    opts = CaptionOptions(shuffle_caption=True, keep_tokens=2)
    outs = set()
    for seed in range(20):
        out = process_caption(cap, opts, random.Random(seed))
        toks = out.split(", ")
        assert toks[:2] == ["sks", "dog"] and sorted(toks[2:]) == sorted(["red", "ball", "grass", "sky", "tree"])
        assert out == process_caption(cap, opts, random.Random(seed))
        outs.add(out)
    assert len(outs) > 1


def test_keep_tokens_separator_fixed_suffix():
    cap = "sks dog ||| red, ball, grass ||| best quality"
    opts = CaptionOptions(shuffle_caption=True, keep_tokens_separator="|||", keep_tokens=5)
    for seed in range(10):
        toks = process_caption(cap, opts, random.Random(seed)).split(", ")
        assert toks[0] == "sks dog" and toks[-1] == "best quality"
        assert sorted(toks[1:-1]) == ["ball", "grass", "red"]


def test_dropout_rate_one_and_every_n():
    assert process_caption("a, b", CaptionOptions(caption_dropout_rate=1.0), random.Random(0)) == ""
    opts = CaptionOptions(caption_dropout_every_n_epochs=2)
    assert process_caption("a, b", opts, random.Random(0), epoch=2) == ""
    assert process_caption("a, b", opts, random.Random(0), epoch=3) == "a, b"


def test_tag_dropout():
    cap = ", ".join(f"t{i}" for i in range(200))
    out = process_caption(cap, CaptionOptions(caption_tag_dropout_rate=0.5, keep_tokens=1), random.Random(1))
    toks = out.split(", ")
    assert toks[0] == "t0" and 40 < len(toks) < 160
    assert process_caption("a, b", CaptionOptions(caption_tag_dropout_rate=1.0), random.Random(0)) == ""
    assert process_caption("a, b", CaptionOptions(caption_tag_dropout_rate=1.0, keep_tokens=1),
                           random.Random(0)) == "a"


def test_secondary_separator():
    opts = CaptionOptions(secondary_separator=";;;")
    assert process_caption("a;;;b, c", opts, random.Random(0)) == "a,b, c"
    opts = CaptionOptions(secondary_separator=";;;", shuffle_caption=True)
    out = process_caption("x;;;y, z", opts, random.Random(3))
    assert sorted(out.split(", ")) == ["x,y", "z"]  # grouped tags move together


def test_is_deterministic():
    assert is_deterministic(CaptionOptions())
    assert is_deterministic(CaptionOptions(keep_tokens=2, caption_prefix="p"))
    assert not is_deterministic(CaptionOptions(shuffle_caption=True))
    assert not is_deterministic(CaptionOptions(caption_dropout_rate=0.1))
    assert not is_deterministic(CaptionOptions(caption_dropout_every_n_epochs=3))
    assert not is_deterministic(CaptionOptions(caption_tag_dropout_rate=0.1))


def test_option_validation():
    with pytest.raises(ValueError, match="caption_dropout_rate"):
        CaptionOptions(caption_dropout_rate=1.5)
    assert CaptionOptions.__dataclass_fields__["shuffle_caption"].metadata["help"]
