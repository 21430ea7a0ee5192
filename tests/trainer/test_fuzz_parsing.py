"""Property tests (hypothesis) for caption files, caption processing, dataset TOMLs and dataset folders.

The contract under test: whatever the user's files hold, parsing either succeeds or fails with a
message naming the file (and, where one key is at fault, the key) -- never with a traceback from
deep inside the parser (UnicodeDecodeError, TypeError, OverflowError, RecursionError, ...).

Runs are reproducible (``derandomize=True``, no example database) and have no deadline, so a slow
shared CI machine does not turn into flaky failures. Every example gets its own folder under
``tmp_path_factory`` (session-scoped, so no function-scoped-fixture health check), removed afterwards.
"""
from __future__ import annotations

import contextlib
import datetime
import io
import math
import os
import random
import shutil
from collections import Counter

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the backport the pack itself falls back to
    tomllib = pytest.importorskip("tomli")

from trainer.captions import (CAPTION_OPTION_NAMES, CaptionError, CaptionOptions, caption_path, is_deterministic,
                              normalize_extension, process_caption, read_caption)
from trainer.dataset import (IGNORED_KEYS, SUPPORTED_KEYS, DatasetToml, GroupConfig, LoraDataset, SubsetConfig,
                             load_folder, load_toml, parse_dreambooth_folder_name, read_dataset_toml)
from trainer.images import is_image_file

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.large_base_example],
)


@contextlib.contextmanager
def fresh_dir(factory, name="fuzz"):
    """A new empty folder for one hypothesis example, removed afterwards."""
    d = factory.mktemp(name)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ================================================================================================
# caption files
# ================================================================================================
# byte pieces that stress decoding and line splitting: BOMs, NULs, every str.splitlines() separator,
# truncated / invalid UTF-8, UTF-16 BOMs, whitespace
_CAPTION_PIECES = [
    b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\x00", b"\r", b"\n", b"\r\n", b"\n\r", b" ", b"\t", b"\x0b", b"\x0c",
    b"\x1c", b"\x1d", b"\x1e", b"\x85", "\x85".encode(), "\u2028".encode(), "\u2029".encode(), b"\xc3", b"\xe9",
    b"\xed\xa0\x80", b"\xf4\x90\x80\x80", "caf\u00e9".encode(), "\u6f22\u5b57".encode(), "\U0001F600".encode(),
    b"sks dog", b", ", b"tag", b"|||",
]
_LINE_BREAKS = ["\r", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
caption_bytes = st.one_of(
    st.binary(max_size=64),
    st.lists(st.one_of(st.sampled_from(_LINE_BREAKS + [" ", "\t", "\ufeff", "\x00", "tag", ", "]),
                       st.text(max_size=4)), max_size=10).map("".join).map(str.encode),  # always valid UTF-8
    st.lists(st.one_of(st.sampled_from(_CAPTION_PIECES), st.binary(max_size=4), st.text(max_size=6).map(str.encode)),
             max_size=16).map(b"".join),
    st.tuples(st.integers(1, 200_000), st.sampled_from([b"", b"\n", b"\r\nsecond", b"\xff"])).map(
        lambda t: b"x" * t[0] + t[1]),  # huge first line
)


def kohya_first_line(data: bytes):
    """What sd-scripts reads (``open(p, "rt", encoding="utf-8").readlines()[0].strip()``, universal newlines),
    with LoRA Loop's documented deviations: a BOM is dropped, a whitespace-only file gives None.
    Returns ``CaptionError`` (the class) when the bytes are not UTF-8."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return CaptionError
    if not text.strip():
        return None
    return io.StringIO(text, newline=None).readline().strip()


@settings(FUZZ, max_examples=120)
@given(data=st.one_of(st.none(), st.just("dir"), caption_bytes),
       stem=st.sampled_from(["a", "sks dog", "caf\u00e9 \u6f22", "x.y", "-1_x", "\U0001F600"]),
       extension=st.sampled_from([".txt", "txt", ".caption", "caption", " .txt "]))
@example(data=b"a\x0cb\nc", stem="a", extension=".txt")  # \x0c ends a line for str.splitlines(), not for kohya
@example(data="first\u2028rest".encode(), stem="a", extension=".txt")
@example(data=b"\xef\xbb\xbf\xef\xbb\xbfa", stem="a", extension=".txt")
def test_read_caption_bytes(tmp_path_factory, data, stem, extension):
    with fresh_dir(tmp_path_factory, "cap") as d:
        image = str(d / f"{stem}.png")
        cap = caption_path(image, extension)
        if data == "dir":
            os.mkdir(cap)  # a folder named like the caption file is no caption file
        elif data is not None:
            with open(cap, "wb") as f:
                f.write(data)
        expected = None if data in (None, "dir") else kohya_first_line(data)
        try:
            got = read_caption(image, extension)
        except CaptionError as e:
            assert expected is CaptionError, f"unexpected CaptionError {e}"
            assert e.path == cap and cap in str(e) and "UTF-8" in str(e)
        else:
            assert expected is not CaptionError, f"invalid UTF-8 accepted: {got!r}"
            assert got == expected
            assert got is None or (isinstance(got, str) and got == got.strip() and "\n" not in got and "\r" not in got)


# ================================================================================================
# caption processing
# ================================================================================================
_TEXT_PIECES = [",", ", ", " ,", " ", "|||", "||", ";;;", ";", "\n", "\r\n", "::", "tag", "sks dog", "\u3001",
                "\x00", "\t", "and"]
caption_text = st.lists(st.one_of(st.text(max_size=6), st.sampled_from(_TEXT_PIECES)), max_size=14).map("".join)
_SEPARATORS = [",", ", ", ";", "|", "::", " ", "\n", "||", "and", "\t", "\u3001", "tag"]
optional_text = st.one_of(st.none(), st.just(""), st.sampled_from(["pre", "a, b", "|||", "x\ny", ";;;"]),
                          st.text(max_size=5))
rates = st.one_of(st.sampled_from([0.0, 1.0, 0, 1, 0.5]), st.floats(0.0, 1.0))


@st.composite
def caption_option_values(draw):
    return dict(
        shuffle_caption=draw(st.booleans()),
        keep_tokens=draw(st.one_of(st.integers(0, 5), st.integers(0, 255))),
        keep_tokens_separator=draw(st.one_of(st.sampled_from(["", "|||", "|", ",", "::", ";;;"]), st.text(max_size=3))),
        caption_separator=draw(st.one_of(st.sampled_from(_SEPARATORS), st.text(min_size=1, max_size=3))),
        secondary_separator=draw(st.one_of(st.none(), st.sampled_from(["", ";;;", ";", ",", "|||"]),
                                           st.text(max_size=3))),
        caption_prefix=draw(optional_text),
        caption_suffix=draw(optional_text),
        caption_dropout_rate=draw(st.one_of(st.just(0.0), rates)),
        caption_dropout_every_n_epochs=draw(st.one_of(st.just(0), st.integers(0, 5), st.integers(0, 100_000))),
        caption_tag_dropout_rate=draw(st.one_of(st.just(0.0), rates)),
    )


def unprocessed(text: str, o: CaptionOptions) -> str:
    """kohya's result when nothing shuffles or drops: prefix/suffix joined with a space, first line
    (split on '\\n' only), secondary separator replaced. keep_tokens / keep_tokens_separator have no effect."""
    if o.caption_prefix:
        text = o.caption_prefix + " " + text
    if o.caption_suffix:
        text = text + " " + o.caption_suffix
    text = text.split("\n")[0]
    if o.secondary_separator:
        text = text.replace(o.secondary_separator, o.caption_separator)
    return text


@settings(FUZZ, max_examples=200)
@given(text=caption_text, values=caption_option_values(), seed=st.integers(0, 2**32), epoch=st.integers(0, 12))
def test_process_caption_arbitrary(text, values, seed, epoch):
    opts = CaptionOptions(**values)  # every in-range value is accepted
    rng = random.Random(seed)
    out = process_caption(text, opts, rng, epoch)
    assert isinstance(out, str)
    rng2 = random.Random(seed)
    assert process_caption(text, opts, rng2, epoch) == out  # same seed, same caption ...
    assert rng.getstate() == rng2.getstate()  # ... and the same random numbers consumed

    every_n = opts.caption_dropout_every_n_epochs
    if opts.caption_dropout_rate >= 1 or (every_n > 0 and epoch % every_n == 0):
        assert out == ""
    if is_deterministic(opts):
        assert out == unprocessed(text, opts)
        assert rng.getstate() == random.Random(seed).getstate()  # no randomness used
    elif not opts.shuffle_caption and opts.caption_tag_dropout_rate == 0:
        assert out in ("", unprocessed(text, opts))  # only whole-caption dropout is random


# tags without any separator character, so the ", "-joined output splits back unambiguously
_TAG = st.text(st.sampled_from("abcxyz0 -\u00e9\u6f22"), min_size=1, max_size=6).map(str.strip).filter(bool)


@settings(FUZZ, max_examples=150)
@given(fixed=st.lists(_TAG, max_size=3), flex=st.lists(_TAG, max_size=6), suffix=st.lists(_TAG, max_size=2),
       sep=st.sampled_from([",", ", ", ";", "; ", "/", "::", " |"]), kts=st.sampled_from(["|||", "##", "@@"]),
       use_kts=st.booleans(), keep_tokens=st.integers(0, 8), shuffle=st.booleans(),
       tag_rate=st.sampled_from([0.0, 0.0, 0.3, 1.0]), pad=st.sampled_from(["", " ", "  "]), seed=st.integers(0, 2**16))
def test_process_caption_tags_as_multiset(fixed, flex, suffix, sep, kts, use_kts, keep_tokens, shuffle, tag_rate, pad,
                                          seed):
    """Shuffling only reorders the non-kept tags; tag dropout only removes non-kept tags; kept tags (the first
    keep_tokens, or the parts before/after keep_tokens_separator) stay in place."""
    assume(shuffle or tag_rate > 0)
    join = (pad + sep + pad).join
    if use_kts:
        caption = join(fixed) + f" {kts} " + join(flex) + (f" {kts} " + join(suffix) if suffix else "")
        head, middle, tail = fixed, flex, suffix
    else:
        tags = fixed + flex + suffix
        assume(tags)
        caption = pad + join(tags) + pad
        head, middle, tail = tags[:keep_tokens], tags[keep_tokens:], []
    opts = CaptionOptions(shuffle_caption=shuffle, caption_tag_dropout_rate=tag_rate, keep_tokens=keep_tokens,
                          keep_tokens_separator=kts, caption_separator=sep.strip() or sep)
    out = process_caption(caption, opts, random.Random(seed), epoch=1)
    toks = out.split(", ") if out else []
    assert toks[:len(head)] == head
    if tail:
        assert toks[-len(tail):] == tail
    rest = toks[len(head):len(toks) - len(tail)]
    if tag_rate == 0:
        assert Counter(rest) == Counter(middle)
        if not shuffle:
            assert rest == middle
    else:
        assert not (Counter(rest) - Counter(middle))  # a sub-multiset
        if tag_rate >= 1:
            assert rest == []


_INVALID_OPTIONS = st.one_of(
    st.tuples(st.just("keep_tokens"), st.one_of(st.integers(max_value=-1), st.integers(min_value=256),
                                                st.sampled_from([1.5, "3", None, [1]]))),
    st.tuples(st.sampled_from(["caption_dropout_rate", "caption_tag_dropout_rate"]),
              st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.000001), st.just(math.nan),
                        st.sampled_from([2, -1, "0.5", None, [0.1]]))),
    st.tuples(st.just("caption_dropout_every_n_epochs"),
              st.one_of(st.integers(max_value=-1), st.integers(min_value=100_001), st.sampled_from([1.5, "2", None]))),
    st.tuples(st.just("caption_separator"), st.sampled_from(["", None, 1, [","]])),
    st.tuples(st.just("keep_tokens_separator"), st.sampled_from([1, [","]])),
    st.tuples(st.sampled_from(["secondary_separator", "caption_prefix", "caption_suffix"]), st.sampled_from([1, [","]])),
)


@settings(FUZZ, max_examples=80)
@given(values=caption_option_values(), bad=_INVALID_OPTIONS)
@example(values={}, bad=("caption_dropout_rate", math.nan))
@example(values={}, bad=("keep_tokens", 1.5))
def test_invalid_caption_options_name_the_option(values, bad):
    name, value = bad
    with pytest.raises(ValueError) as e:
        CaptionOptions(**{**values, name: value})
    assert name in str(e.value)


# ================================================================================================
# dataset TOML
# ================================================================================================
def toml_string(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, _HugeHex):
        return "0x" + "f" * 5000
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def _lines(table: dict, skip=()) -> list[str]:
    return [f"{toml_string(k)} = {toml_value(v)}" for k, v in table.items() if k not in skip]


def to_toml(doc: dict, headers: bool) -> str:
    """Serialise ``doc``; ``headers`` uses [general] / [[datasets]] / [[datasets.subsets]] where the shapes allow."""
    if not headers:
        return "\n".join(_lines(doc)) + "\n"
    general, datasets = doc.get("general"), doc.get("datasets")
    head_general = isinstance(general, dict)
    head_datasets = isinstance(datasets, list) and bool(datasets) and all(isinstance(d, dict) for d in datasets)
    out = _lines(doc, skip=(["general"] if head_general else []) + (["datasets"] if head_datasets else []))
    if head_general:
        out += ["[general]"] + _lines(general)
    if head_datasets:
        for d in datasets:
            subs = d.get("subsets")
            head_subs = isinstance(subs, list) and bool(subs) and all(isinstance(s, dict) for s in subs)
            out += ["[[datasets]]"] + _lines(d, skip=["subsets"] if head_subs else [])
            if head_subs:
                for s in subs:
                    out += ["  [[datasets.subsets]]"] + ["  " + line for line in _lines(s)]
    return "\n".join(out) + "\n"


KNOWN_KEYS = {**SUPPORTED_KEYS, **IGNORED_KEYS}
LEVEL_KEYS = {lv: sorted(k for k, (_, levels) in KNOWN_KEYS.items() if lv in levels) for lv in "gds"}
ALL_NAMES = sorted(KNOWN_KEYS) + ["metadata_file", "conditioning_data_dir", "subsets", "general", "datasets"]
EXISTING_DIRS = ["img", "10_sks dog", "nested/dir", "caf\u00e9 \u6f22"]
IMAGE_DIRS = st.one_of(
    st.sampled_from(EXISTING_DIRS), st.just("@ABS@"),
    st.sampled_from(["missing", "", ".", "..", "img/", "./img", "img/../img", "~", "~/lora_loop_missing_dir",
                     "~nosuchuser_lora_loop/x", "a\x00b", "img\x00", "~\x00", "~a\x00b", "/nonexistent/abs", "ds.toml",
                     "img/a.png", "\\img", "x" * 5000]),
    st.text(max_size=10),
)

class _HugeHex:
    """Written as the TOML integer 0xfff... (5000 digits): tomllib parses it, but Python cannot print the result
    in decimal (more than 4300 digits). A stand-in, because hypothesis itself prints the values it draws."""

    def __repr__(self) -> str:
        return "HUGE_HEX"


HUGE_HEX = _HugeHex()
toml_scalars = st.one_of(
    st.text(max_size=10), st.integers(-5, 300), st.integers(), st.sampled_from([2**63, -2**63 - 1, 10**400, HUGE_HEX]),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.sampled_from([datetime.date(2024, 1, 2), datetime.time(7, 32), datetime.datetime(1979, 5, 27, 7, 32),
                     datetime.datetime(1979, 5, 27, 0, 32, tzinfo=datetime.timezone.utc)]),
)
toml_values = st.recursive(toml_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c,
                                                                                            max_size=3), max_leaves=6)


def plausible_value(key: str):
    """Values of (mostly) the right type, near and beyond the valid range."""
    kind = KNOWN_KEYS.get(key, ("any", ""))[0]
    if key == "image_dir":
        return IMAGE_DIRS
    if kind == "bool":
        return st.booleans()
    if kind == "int":
        return st.one_of(st.integers(-3, 300), st.sampled_from([0, 1, 64, 256, 100_000, 100_001, 2**63, 10**30,
                                                                 HUGE_HEX]))
    if kind == "float":
        return st.one_of(st.floats(-0.5, 1.5), st.sampled_from([0, 1, 2, math.nan, math.inf, -math.inf, 10**400,
                                                                 HUGE_HEX]))
    if kind == "str":
        return st.one_of(st.sampled_from(["", ".txt", "txt", ",", "|||", " "]), st.text(max_size=8))
    if kind == "resolution":
        return st.one_of(st.integers(-2, 2048), st.lists(st.one_of(st.integers(-2, 2048), st.just(2**64)),
                                                         min_size=1, max_size=3))
    return toml_values


@st.composite
def toml_table(draw, level: str):
    keys = draw(st.lists(st.one_of(st.sampled_from(LEVEL_KEYS[level]), st.sampled_from(LEVEL_KEYS[level]),
                                   st.sampled_from(LEVEL_KEYS[level]), st.sampled_from(ALL_NAMES),
                                   st.text(max_size=8)), max_size=5, unique=True))
    table = {}
    for k in keys:
        table[k] = draw(st.one_of(plausible_value(k), plausible_value(k), plausible_value(k), toml_values))
    if level == "s" and draw(st.integers(0, 9)) > 0:
        table["image_dir"] = draw(IMAGE_DIRS)
    if level == "d" and draw(st.integers(0, 9)) > 0:
        table["subsets"] = draw(st.lists(toml_table("s"), max_size=3))
    return table


@st.composite
def toml_documents(draw):
    doc = {}
    if draw(st.booleans()):
        doc["general"] = draw(st.one_of(toml_table("g"), toml_table("g"), toml_values))
    if draw(st.integers(0, 9)) > 0:
        doc["datasets"] = draw(st.one_of(st.lists(toml_table("d"), max_size=3), st.lists(toml_table("d"), max_size=3),
                                         toml_values))
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.text(max_size=8))] = draw(toml_values)
    return doc


def make_tree(d) -> str:
    for name in EXISTING_DIRS:
        os.makedirs(d / name, exist_ok=True)
    Image.new("RGB", (16, 16), (1, 2, 3)).save(d / "img" / "a.png")
    return str(d / "img")


def check_toml(path: str, expect_keys=()):
    """read_dataset_toml(path): a DatasetToml, or a ValueError naming the file (and ``expect_keys``)."""
    try:
        res = read_dataset_toml(path)
    except ValueError as e:
        msg = str(e)
        assert path in msg, msg
        for key in expect_keys:
            assert key in msg, f"{key!r} not named in: {msg}"
        return None
    assert not expect_keys, f"expected an error naming {expect_keys}"
    assert isinstance(res, DatasetToml)
    assert all(isinstance(g, GroupConfig) for g in res.groups)
    assert all(isinstance(s, SubsetConfig) and os.path.isdir(s.image_dir) for s in res.subsets)
    try:  # and the image scan on top of it: a dataset, or "no usable images" naming the file
        ds = load_toml(path)
    except ValueError as e:
        assert path in str(e)
    else:
        assert isinstance(ds, LoraDataset) and ds.images
    return res


@settings(FUZZ, max_examples=150)
@given(doc=toml_documents(), headers=st.booleans())
@example(doc={"datasets": [{"subsets": [{"image_dir": "img", "caption_dropout_rate": 10**400}]}]}, headers=True)
@example(doc={"datasets": [{"subsets": [{"image_dir": "img", "caption_tag_dropout_rate": math.nan}]}]}, headers=True)
@example(doc={"general": {"keep_tokens": 10**30}, "datasets": [{"subsets": [{"image_dir": "a\x00b"}]}]}, headers=True)
def test_toml_structured(tmp_path_factory, doc, headers):
    with fresh_dir(tmp_path_factory, "toml") as d:
        abs_img = make_tree(d)
        text = to_toml(doc, headers).replace("@ABS@", abs_img)
        tomllib.loads(text)  # the serialiser itself must write valid TOML
        p = d / "ds.toml"
        p.write_text(text, encoding="utf-8")
        check_toml(str(p))


_TOML_FRAGMENTS = [
    "[general]", "[[datasets]]", "[[datasets.subsets]]", "[datasets]", "[datasets.subsets]", "[general.x]",
    'image_dir = "img"', "image_dir = 'missing'", 'image_dir = "a\\u0000b"', "resolution = 512", "resolution = [512]",
    "resolution = [512, 768]", "batch_size = 0", "keep_tokens = -1", "caption_dropout_rate = nan",
    "caption_dropout_rate = " + "9" * 400, "num_repeats = 0", "shuffle_caption = 1", "caption_separator = ''",
    "subsets = 3", "general = 1", "datasets = {}", "datasets = [1]", "x = " + "1" * 5000, "y = 0x" + "f" * 5000,
    "z = " + "[" * 3000 + "]" * 3000, "w = " + "{a=" * 1500 + "1" + "}" * 1500, "t = 1979-05-27T07:32:00Z",
    "a.b.c = 1", '"quoted key" = 1', "= 1", "key =", "\ufeff", "\x00", "\r", "\x7f", "\"", "'''", "#comment",
    "metadata_file = 'm.json'", "color_aug = true", "alpha_mask = true", "[[datasets.subsets.x]]",
]


_VALID_LINES = [f for f in _TOML_FRAGMENTS if f.strip() and not f.startswith(("=", "key =", "\ufeff", "\x00", "\r",
                                                                                "\x7f", "\"", "'''"))]


@settings(FUZZ, max_examples=100)
@given(raw=st.one_of(
    st.binary(max_size=80),
    st.lists(st.sampled_from(_VALID_LINES), max_size=8, unique=True).map("\n".join).map(str.encode),
    st.lists(st.one_of(st.sampled_from(_TOML_FRAGMENTS), st.text(max_size=10)), max_size=12).map("\n".join).map(
        str.encode),
    st.tuples(st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff\xfe"]),
              st.lists(st.sampled_from(_TOML_FRAGMENTS), max_size=12).map("\n".join).map(str.encode)).map(b"".join),
))
@example(raw=b"x = " + b"1" * 5000)  # int() digit limit: a plain ValueError from tomllib, not a TOMLDecodeError
@example(raw=b"z = " + b"[" * 3000 + b"]" * 3000)  # nesting: RecursionError inside tomllib
@example(raw=b"[[datasets]]\ncaption_dropout_rate = 1" + b"0" * 400 + b"\n[[datasets.subsets]]\nimage_dir = 'img'")
def test_toml_random_text(tmp_path_factory, raw):
    with fresh_dir(tmp_path_factory, "rawtoml") as d:
        make_tree(d)
        p = d / "ds.toml"
        p.write_bytes(raw)
        check_toml(str(p))


@st.composite
def valid_tables(draw, level: str):
    """A table of valid values for (some of) the keys allowed at ``level``."""
    valid = {
        "resolution": st.one_of(st.integers(64, 2048), st.lists(st.integers(64, 2048), min_size=2, max_size=2)),
        "batch_size": st.integers(1, 8), "min_bucket_reso": st.integers(64, 512),
        "max_bucket_reso": st.integers(512, 2048), "bucket_reso_steps": st.sampled_from([8, 32, 64]),
        "num_repeats": st.integers(1, 20), "caption_extension": st.sampled_from([".txt", "caption", ".cap"]),
        "class_tokens": st.text(max_size=8), "keep_tokens": st.integers(0, 255),
        "keep_tokens_separator": st.text(max_size=3), "caption_separator": st.text(min_size=1, max_size=3),
        "secondary_separator": st.text(max_size=3), "caption_prefix": st.text(max_size=5),
        "caption_suffix": st.text(max_size=5), "caption_dropout_rate": rates, "caption_tag_dropout_rate": rates,
        "caption_dropout_every_n_epochs": st.integers(0, 100_000), "token_warmup_min": st.integers(0, 255),
        "token_warmup_step": st.one_of(st.integers(0, 10_000), st.floats(0.0, 0.99)),
        "conditioning_data_dir": st.sampled_from(EXISTING_DIRS),
    }
    keys = draw(st.lists(st.sampled_from(LEVEL_KEYS[level]), max_size=6, unique=True))
    table = {}
    for k in keys:
        if k == "image_dir":
            continue
        if k in IGNORED_KEYS:
            table[k] = draw(toml_values)
        elif KNOWN_KEYS[k][0] == "bool":
            table[k] = draw(st.booleans())
        else:
            table[k] = draw(valid[k])
    if level == "s":
        table["image_dir"] = draw(st.sampled_from(EXISTING_DIRS + ["@ABS@", "img/", "./nested/../img"]))
    return table


@st.composite
def valid_documents(draw):
    doc = {}
    if draw(st.booleans()):
        doc["general"] = draw(valid_tables("g"))
    doc["datasets"] = [dict(draw(valid_tables("d")), subsets=draw(st.lists(valid_tables("s"), min_size=1, max_size=2)))
                       for _ in range(draw(st.integers(1, 2)))]
    return doc


def _first(key, layers, default):
    for layer in layers:
        if key in layer:
            return layer[key]
    return default


@settings(FUZZ, max_examples=60)
@given(doc=valid_documents(), headers=st.booleans())
def test_toml_valid_documents_and_precedence(tmp_path_factory, doc, headers):
    """Valid documents load, and every value comes from the first level that sets it (subset -> dataset ->
    [general] -> default), exactly as before the fuzzing fixes."""
    with fresh_dir(tmp_path_factory, "validtoml") as d:
        abs_img = make_tree(d)
        p = d / "ds.toml"
        p.write_text(to_toml(doc, headers).replace("@ABS@", abs_img), encoding="utf-8")
        res = read_dataset_toml(str(p))
        general = doc.get("general", {})
        assert len(res.groups) == len(doc["datasets"])
        subs = [(gi, ds, s) for gi, ds in enumerate(doc["datasets"]) for s in ds["subsets"]]
        assert len(res.subsets) == len(subs)
        for gi, ds in enumerate(doc["datasets"]):
            g = res.groups[gi]
            for key in ("batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
                        "bucket_no_upscale"):
                assert getattr(g, key) == _first(key, [ds, general], getattr(GroupConfig(), key))
            reso = _first("resolution", [ds, general], (512, 512))
            assert g.resolution == ((reso, reso) if isinstance(reso, int) else tuple(reso))
            assert res.explicit_group_keys[gi] == frozenset(k for k in GroupConfig.__dataclass_fields__
                                                            if k in ds or k in general)
        for sub, (gi, ds, s) in zip(res.subsets, subs):
            layers = [s, ds, general]
            assert sub.group_index == gi
            assert sub.image_dir == os.path.normpath(os.path.join(d, s["image_dir"].replace("@ABS@", abs_img)))
            for key in CAPTION_OPTION_NAMES:
                assert getattr(sub.caption, key) == _first(key, layers, getattr(CaptionOptions(), key)), key
            for key in ("num_repeats", "class_tokens", "flip_aug", "is_reg", "alpha_mask"):
                assert getattr(sub, key) == _first(key, layers, getattr(SubsetConfig(image_dir="x"), key)), key
            masks = s.get("conditioning_data_dir")  # a subset key, relative to the TOML's folder
            assert sub.conditioning_data_dir == (os.path.normpath(os.path.join(d, masks)) if masks else None)
            assert sub.caption_extension == normalize_extension(_first("caption_extension", layers, ".txt"))


# one fault in an otherwise valid document: the message must name the file and the key
_RANGE_FAULTS = {
    "keep_tokens": [-1, 256, 10**30, HUGE_HEX],
    "caption_dropout_rate": [-0.01, 1.01, 2, math.nan, math.inf, -math.inf, 10**400, -(10**400)],
    "caption_tag_dropout_rate": [-1, 1.5, math.nan, 10**400, HUGE_HEX],
    "caption_dropout_every_n_epochs": [-1, 100_001],
    "caption_separator": [""],
    "caption_extension": ["", "   "],
    "batch_size": [0, -3, 2**63],
    "min_bucket_reso": [0],
    "max_bucket_reso": [-1],
    "bucket_reso_steps": [0],
    "resolution": [0, -5, [0, 512], [512], [1, 2, 3], [512, -1], [], [HUGE_HEX, 512], 2**64],
}
_WRONG_TYPE = {
    "bool": [1, 0, "true", 1.0, [True]],
    "int": ["2", 2.0, True, [1], {"a": 1}, datetime.date(2024, 1, 1)],
    "float": ["0.5", True, [0.1], {}],
    "str": [1, True, ["a"], {"a": "b"}, 0.5, HUGE_HEX],
    "resolution": ["512", 512.0, True, [512.0, 512], [True, 512], {"w": 512}],
}
_GROUP_KEYS = frozenset(GroupConfig.__dataclass_fields__)


def _short_id(x) -> str:
    text = repr(x)
    return text if len(text) <= 20 else text[:17] + "..."


@st.composite
def faulty_documents(draw):
    """(doc, key that must be named in the error)."""
    doc = draw(valid_documents())
    doc.setdefault("general", {})
    datasets = doc["datasets"]
    di = draw(st.integers(0, len(datasets) - 1))
    si = draw(st.integers(0, len(datasets[di]["subsets"]) - 1))
    level = draw(st.sampled_from("gds"))
    table = {"g": doc["general"], "d": datasets[di], "s": datasets[di]["subsets"][si]}[level]
    fault = draw(st.sampled_from(["unknown", "misplaced", "type", "range", "image_dir", "structure", "unsupported"]))
    if fault == "unknown":
        key = draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in ALL_NAMES))
        table[key] = draw(toml_values)
    elif fault == "misplaced":
        key = draw(st.sampled_from(sorted(k for k, (_, lv) in KNOWN_KEYS.items() if level not in lv)))
        table[key] = draw(plausible_value(key))
    elif fault == "type":
        key = draw(st.sampled_from(sorted(k for k, (_, lv) in SUPPORTED_KEYS.items() if level in lv)))
        table[key] = draw(st.sampled_from(_WRONG_TYPE[SUPPORTED_KEYS[key][0]]))
    elif fault == "range":
        key = draw(st.sampled_from(sorted(k for k in _RANGE_FAULTS if level in SUPPORTED_KEYS[k][1])))
        table[key] = draw(st.sampled_from(_RANGE_FAULTS[key]))
        # more specific levels that set the key would shadow the bad value
        inner = {"g": [ds for ds in datasets] + [s for ds in datasets for s in ds["subsets"]],
                 "d": datasets[di]["subsets"], "s": []}[level]
        for t in inner:
            t.pop(key, None)
    elif fault == "image_dir":
        key = "image_dir"
        sub = datasets[di]["subsets"][si]
        choice = draw(st.sampled_from(["drop", "missing", "nul", "file", "type"]))
        if choice == "drop":
            del sub["image_dir"]
        else:
            sub["image_dir"] = {"missing": "no such dir", "nul": "img\x00x", "file": "img/a.png", "type": 5}[choice]
    elif fault == "structure":
        key = draw(st.sampled_from(["general", "datasets", "subsets", "top"]))
        if key == "general":
            doc["general"] = draw(st.sampled_from([1, "x", [1], True, [{}]]))
        elif key == "datasets":
            doc["datasets"] = draw(st.sampled_from([1, "x", {"subsets": []}, [{}, 2], [[]], True]))
        elif key == "subsets":
            datasets[di]["subsets"] = draw(st.sampled_from([1, "x", {"image_dir": "img"}, [{"image_dir": "img"}, 2]]))
        else:
            key = draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in ("general", "datasets")))
            doc[key] = draw(toml_values)
    else:
        key = draw(st.sampled_from(["metadata_file", "conditioning_data_dir"]))
        table[key] = "x"
    return doc, key


@settings(FUZZ, max_examples=150)
@given(case=faulty_documents(), headers=st.booleans())
@example(case=({"datasets": [{"subsets": [{"image_dir": "img", "caption_dropout_rate": 10**400}]}]},
               "caption_dropout_rate"), headers=False)
@example(case=({"general": {"caption_tag_dropout_rate": math.nan}, "datasets": [{"subsets": [{"image_dir": "img"}]}]},
               "caption_tag_dropout_rate"), headers=True)
def test_toml_single_fault_names_file_and_key(tmp_path_factory, case, headers):
    doc, key = case
    with fresh_dir(tmp_path_factory, "faulttoml") as d:
        abs_img = make_tree(d)
        p = d / "ds.toml"
        p.write_text(to_toml(doc, headers).replace("@ABS@", abs_img), encoding="utf-8")
        check_toml(str(p), expect_keys=[key])


def _inject_range_fault(doc: dict, level: str, di: int, si: int, key: str, value) -> None:
    """Set ``key = value`` at ``level`` and remove the key from more specific levels, which would shadow it."""
    datasets = doc["datasets"]
    if level == "g":
        doc.setdefault("general", {})[key] = value
        inner = datasets + [s for ds in datasets for s in ds["subsets"]]
    elif level == "d":
        datasets[di][key] = value
        inner = datasets[di]["subsets"]
    else:
        datasets[di]["subsets"][si][key] = value
        inner = []
    for t in inner:
        t.pop(key, None)


@pytest.mark.parametrize("key,value", [(k, v) for k, vs in _RANGE_FAULTS.items() for v in vs],
                         ids=lambda x: _short_id(x))
@settings(FUZZ, max_examples=3)
@given(doc=valid_documents(), where=st.tuples(st.sampled_from("gds"), st.integers(0, 1), st.integers(0, 1)),
       headers=st.booleans())
def test_toml_each_range_fault_names_file_and_key(tmp_path_factory, key, value, doc, where, headers):
    level, di, si = where
    levels = SUPPORTED_KEYS[key][1]
    level = level if level in levels else levels[0]
    di = min(di, len(doc["datasets"]) - 1)
    si = min(si, len(doc["datasets"][di]["subsets"]) - 1)
    _inject_range_fault(doc, level, di, si, key, value)
    with fresh_dir(tmp_path_factory, "rangetoml") as d:
        abs_img = make_tree(d)
        p = d / "ds.toml"
        p.write_text(to_toml(doc, headers).replace("@ABS@", abs_img), encoding="utf-8")
        check_toml(str(p), expect_keys=[key])


@settings(FUZZ, max_examples=30)
@given(name=st.one_of(st.sampled_from(["ds.toml", "a\x00b.toml", "img", "missing.toml", "x" * 300 + ".toml",
                                       "img/a.png", "\udcff.toml", "~nosuchuser\x00/x.toml"]),
                      st.text(max_size=12)))
def test_toml_odd_paths(tmp_path_factory, name):
    with fresh_dir(tmp_path_factory, "tomlpath") as d:
        make_tree(d)
        (d / "ds.toml").write_text('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "img"\n', encoding="utf-8")
        path = name if name.startswith("~") else os.path.join(str(d), name)
        _loads_or_names_the_path(read_dataset_toml, path, DatasetToml)


def _loads_or_names_the_path(load, path: str, result_type: type) -> None:
    """``load(path)`` returns a ``result_type`` or raises a ValueError whose message names the path."""
    try:
        res = load(path)
    except ValueError as e:
        assert any(c in str(e) for c in _path_spellings(path)), str(e)
    else:
        assert isinstance(res, result_type)


def _path_spellings(path: str) -> list[str]:
    """How an error may name ``path``: as given, absolute, or absolute with ~ expanded."""
    out = [path, os.path.abspath(path)]
    with contextlib.suppress(ValueError):
        out.append(os.path.abspath(os.path.expanduser(path)))
    return out + [repr(p) for p in out]


# ================================================================================================
# dataset folders
# ================================================================================================
def _image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 99, 199)).save(buf, format=fmt)
    return buf.getvalue()


VALID_IMAGE = {ext: _image_bytes(fmt) for ext, fmt in
               [(".png", "PNG"), (".jpg", "JPEG"), (".jpeg", "JPEG"), (".webp", "WEBP"), (".bmp", "BMP")]}
ODD_FOLDER_NAMES = [
    "_", "__", "0_x", "-1_x", "10_", "1_", "10_sks dog", "3_ohwx_woman", "\u0663_arabic digit", "+5_plus", " 7_space",
    "1_" + "y" * 250, "x" * 255, "99999999999999999999_huge", "1_caf\u00e9 \u6f22 \U0001F600", ".10_hidden",
    "5_dir.png", "nan_x", "1e3_x", "0x10_x", "2__double", "1_a_b_c", "\u00b2_superscript", "-0_x", "00_x",
    os.fsdecode(b"4_\xff\xfe"),
]
folder_names = st.one_of(
    st.sampled_from(ODD_FOLDER_NAMES),
    st.text(st.characters(exclude_characters="/\x00", exclude_categories=("Cs",)), min_size=1, max_size=20)
    .filter(lambda n: n not in (".", "..") and len(n.encode()) <= 255),
)
_STEMS = ["a", "b", "sks dog", "caf\u00e9", "\U0001F600", "x" * 200, ".hidden", os.fsdecode(b"\xff"), "a.b", " "]
image_entries = st.tuples(
    st.sampled_from(_STEMS),
    st.sampled_from([".png", ".PNG", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".txt", ""]),
    st.sampled_from(["valid", "valid", "valid", "garbage", "empty", "truncated", "dir"]),
    st.one_of(st.none(), st.none(), caption_bytes.filter(lambda b: len(b) < 5000)),
)


def _write_entry(folder: str, stem: str, ext: str, kind: str, caption: bytes | None) -> bool:
    path = os.path.join(folder, stem + ext)
    if os.path.lexists(path):
        return False
    if kind == "dir":
        os.mkdir(path)
    else:
        data = VALID_IMAGE.get(ext.lower(), VALID_IMAGE[".png"])
        data = {"valid": data, "garbage": b"not an image \x00\xff", "empty": b"", "truncated": data[:20]}[kind]
        with open(path, "wb") as f:
            f.write(data)
    cap = os.path.join(folder, stem + ".txt")
    if caption is not None and not os.path.lexists(cap):
        with open(cap, "wb") as f:
            f.write(caption)
    return True


def _usable_image(path: str, valid: set[str], cap_ext: str) -> bool:
    if not (is_image_file(path) and os.path.isfile(path) and path in valid):
        return False
    cap = os.path.splitext(path)[0] + cap_ext
    if not os.path.isfile(cap):
        return True
    with open(cap, "rb") as f:
        data = f.read()
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return False
    return True


@settings(FUZZ, max_examples=60)
@given(root_name=folder_names, root_files=st.lists(image_entries, max_size=3),
       subfolders=st.lists(st.tuples(folder_names, st.lists(image_entries, max_size=3)), max_size=4),
       ext=st.sampled_from([".txt", ".txt", ".txt", "txt", ".png", "", "  "]))
def test_load_folder_odd_names_and_files(tmp_path_factory, root_name, root_files, subfolders, ext):
    with fresh_dir(tmp_path_factory, "folder") as d:
        root = os.path.join(str(d), root_name)
        os.mkdir(root)
        valid: set[str] = set()

        def fill(folder, entries):
            for stem, ext, kind, caption in entries:
                if _write_entry(folder, stem, ext, kind, caption) and kind == "valid" and ext.lower() in VALID_IMAGE:
                    valid.add(os.path.abspath(os.path.join(folder, stem + ext)))

        fill(root, root_files)
        for name, entries in subfolders:
            sub = os.path.join(root, name)
            if not os.path.lexists(sub):
                os.mkdir(sub)
            if os.path.isdir(sub):
                fill(sub, entries)

        # which images must load: root's own images, and those of non-hidden '<repeats >= 1>_...' subfolders
        folders = [root] + [os.path.join(root, n) for n in sorted(os.listdir(root))
                            if os.path.isdir(os.path.join(root, n)) and not n.startswith(".")
                            and (parse_dreambooth_folder_name(n) or (0,))[0] >= 1]
        expected = sorted(p for f in folders for p in (os.path.abspath(os.path.join(f, n)) for n in os.listdir(f))
                          if ext.strip() and _usable_image(p, valid, normalize_extension(ext)))
        try:
            ds = load_folder(root, caption_extension=ext)
        except ValueError as e:
            assert os.path.abspath(root) in str(e)
            assert not expected, f"images {expected} not loaded: {e}"
            if not ext.strip():
                assert "caption_extension" in str(e)
        else:
            assert isinstance(ds, LoraDataset)
            assert sorted(r.path for r in ds.images) == expected
            assert all(isinstance(r.caption, str) for r in ds.images)
            assert all(os.path.abspath(root) in p for p, _ in ds.skipped)
            for sub in ds.subsets:
                assert sub.num_repeats >= 1


@settings(FUZZ, max_examples=20)
@given(name=st.sampled_from(["missing", "a\x00b", "img/a.png", "", "~nosuchuser_lora_loop", "~a\x00b", "x" * 300,
                             "img", "10_sks dog"]))
def test_load_folder_odd_paths(tmp_path_factory, name):
    with fresh_dir(tmp_path_factory, "folderpath") as d:
        make_tree(d)
        path = name if name.startswith("~") else os.path.join(str(d), name)
        _loads_or_names_the_path(load_folder, path, LoraDataset)
