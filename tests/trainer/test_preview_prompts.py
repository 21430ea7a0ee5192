"""sd-scripts' sample-prompt lines in the Previews prompts (trainer/previews.parse_prompt_line)."""
from __future__ import annotations

import pytest

from trainer.previews import PreviewConfig, kohya_sampler, parse_prompt_line


def test_a_line_without_options_uses_the_node_values():
    cfg = PreviewConfig(prompts="a\nb", negative="bad", seed=10)
    specs = cfg.prompt_specs()
    assert [(s.prompt, s.negative, s.seed, s.config) for s in specs] == [("a", "bad", 10, cfg), ("b", "bad", 11, cfg)]


def test_sd_scripts_options_override_per_line():
    cfg = PreviewConfig(prompts="x", negative="bad", steps=20, cfg=7.0, width=512, height=512)
    s = parse_prompt_line("a cat, sitting --n blurry, lowres --w 770 --h 1024 --d 42 --l 3.5 --s 12", cfg, 5)
    assert s.prompt == "a cat, sitting" and s.negative == "blurry, lowres" and s.seed == 42
    assert (s.config.width, s.config.height, s.config.cfg, s.config.steps) == (768, 1024, 3.5, 12)
    assert cfg.width == 512  # the node's config is unchanged


def test_unknown_options_are_ignored_and_bad_numbers_named(caplog):
    cfg = PreviewConfig(prompts="x")
    s = parse_prompt_line("a dog --g 3.5 --s 4", cfg, 0)
    assert s.prompt == "a dog" and s.config.steps == 4
    assert any("--g" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="--w needs a number"):
        parse_prompt_line("a dog --w big", cfg, 0)
    with pytest.raises(ValueError, match="steps"):
        parse_prompt_line("a dog --s 0", cfg, 0)


def test_kohya_sampler_names():
    assert kohya_sampler("euler_a") == ("euler_ancestral", None)
    assert kohya_sampler("k_euler") == ("euler", "karras")
    assert kohya_sampler("DDIM") == ("ddim", None)
    assert kohya_sampler("dpmpp_2m") == ("dpmpp_2m", None)  # a ComfyUI name passes through
