"""The generic family's module choice on plain torch models shaped like ComfyUI's DiTs."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from trainer.families import detect_family
from trainer.families.blocks import describe_block_lists, find_block_lists, linears_outside
from trainer.families.generic import FAMILY as GENERIC, model_id


class Attention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.attn = Attention(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.conv = nn.Conv2d(d, d, 3)


class MLPEmbedder(nn.Module):  # Chroma's approximator layers: no attention, not a transformer block
    def __init__(self, d):
        super().__init__()
        self.in_layer = nn.Linear(d, d)
        self.out_layer = nn.Linear(d, d)


class Refiner(nn.Module):  # a sub-model with its own block list (HunyuanImage's token refiner)
    def __init__(self, d):
        super().__init__()
        self.blocks = nn.ModuleList([Block(d)])


class DiT(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.x_embedder = nn.Linear(d, d)
        self.approximator = nn.ModuleList([MLPEmbedder(d) for _ in range(2)])
        self.txt_in = Refiner(d)
        self.double_blocks = nn.ModuleList([Block(d) for _ in range(2)])
        self.single_blocks = nn.ModuleList([Block(d) for _ in range(3)])
        self.final_layer = nn.Linear(d, d)


def test_block_lists_are_found_by_structure():
    root = DiT()
    paths = [p for p, _ in find_block_lists(root)]
    assert paths == ["txt_in.blocks", "double_blocks", "single_blocks"]
    described = {b.path: b for b in describe_block_lists(root)}
    assert described["single_blocks"].blocks == 3 and described["single_blocks"].linears == 12
    assert described["double_blocks"].classes == ("Block",)
    outside = linears_outside(root, paths)
    assert "x_embedder" in outside and "final_layer" in outside and "approximator.0.in_layer" in outside


def test_generic_targets_the_linears_inside_the_blocks(caplog):
    root = DiT()
    with caplog.at_level(logging.INFO, logger="trainer.families.generic"):
        targets = GENERIC.unet_targets(root, {})
    names = {t.name for t in targets}
    assert len(targets) == 6 * 4  # 6 blocks x (qkv, proj, mlp.0, mlp.2)
    assert "lora_unet_double_blocks_0_attn_qkv" in names and "lora_unet_single_blocks_2_mlp_2" in names
    assert "lora_unet_txt_in_blocks_0_attn_proj" in names
    assert not any("embedder" in n or "final" in n or "approximator" in n for n in names)
    for t in targets:
        assert isinstance(root.get_submodule(t.path), nn.Linear)
    # the log names the lists it chose and what stays frozen
    text = caplog.text
    assert "double_blocks (2 x Block, 8 Linear)" in text and "stay frozen" in text and "x_embedder" in text


def test_generic_convs_only_for_c3lier():
    root = DiT()
    plain = GENERIC.unet_targets(root, {})
    c3 = GENERIC.unet_targets(root, {}, conv=True)
    assert {t.kind for t in plain} == {"linear"}
    assert sum(t.kind == "conv3x3" for t in c3) == 6


def test_generic_refuses_a_model_without_blocks():
    with pytest.raises(ValueError, match="no transformer blocks"):
        GENERIC.unet_targets(nn.Sequential(nn.Linear(4, 4)), {})


def test_generic_metadata_names_the_model_class():
    names = ["CosmosT2IPredict2", "BASE", "object"]
    assert detect_family(names) is GENERIC
    assert GENERIC.base_model_version(None, "flow", names) == "cosmost2ipredict2"
    assert GENERIC.lora_architecture(None, "flow", names) == "cosmost2ipredict2/lora"
    assert model_id("WAN21_T2V") == "wan21-t2v" and model_id("PixArtSigma") == "pixartsigma"
    assert GENERIC.prediction_type("flow") is None and GENERIC.prediction_type("v") == "v"


def test_generic_refuses_text_encoder_training():
    with pytest.raises(ValueError, match="set train_text_encoder"):
        GENERIC.text_encoder_targets(nn.Module(), {"train_text_encoder": True})
    with pytest.raises(ValueError, match="set train_t5"):
        GENERIC.text_encoder_targets(nn.Module(), {"train_t5": True})


def test_trained_like_a_block():
    """The block list finder and checkpointing agree: generic blocks are recomputed in backward."""
    from trainer.adapter.autograd import checkpoint_blocks

    root = DiT()
    blocks = checkpoint_blocks(root)
    assert len(blocks) == 6 and all(type(b).__name__ == "Block" for b in blocks)
    assert torch.nn.Module in type(blocks[0]).__mro__


@pytest.mark.parametrize("family,model_shift,expected", [
    ("flux", 1.15, ("flux_shift", 1.15)), ("flux", 1.0, ("shift", 1.0)), ("sd3", 3.0, ("shift", 3.0)),
    ("qwen_image", 1.15, ("shift", 2.2)), ("z_image", 3.0, ("shift", 2.0)), ("lumina2", 6.0, ("flux_shift", 6.0)),
    ("flux2", 2.02, ("flux2_shift", 2.02)), ("chroma", 1.15, ("sigmoid", 1.15)), ("hidream", 1.0, ("shift", 3.0)),
    ("hunyuan_image", 5.0, ("shift", 5.0)), ("wan", 8.0, ("shift", 3.0)), ("generic", 1.73, ("shift", 1.73))])
def test_timestep_sampling_model_follows_the_family_trainers(family, model_shift, expected):
    """timestep_sampling=model: what each family's own trainers document (docs/families.md)."""
    from trainer.families import get_family

    assert get_family(family).model_timestep_sampling(model_shift) == expected


def test_flux2_shift_counts_one_token_per_latent_pixel():
    from trainer.objectives import FlowObjective, flux_shift_mu

    assert flux_shift_mu(64, 64, patch=1) == pytest.approx(1.15)  # 4096 tokens
    assert flux_shift_mu(128, 128) == pytest.approx(1.15)         # FLUX.1: 2x2 patches
    gen = torch.Generator().manual_seed(0)
    one = FlowObjective("flux2_shift").sample_sigmas(4096, gen, latent_hw=(64, 64))
    gen = torch.Generator().manual_seed(0)
    two = FlowObjective("flux_shift").sample_sigmas(4096, gen, latent_hw=(128, 128))
    assert torch.equal(one, two)
    gen = torch.Generator().manual_seed(0)
    small = FlowObjective("flux2_shift").sample_sigmas(4096, gen, latent_hw=(16, 16))
    assert small.mean() < one.mean()  # fewer tokens, less shift towards noise
