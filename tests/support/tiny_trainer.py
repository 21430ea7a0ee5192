"""A tiny plain-torch trainer setup (no ComfyUI) shared by the trainer-tier tests: a denoiser in ComfyUI's
convention, the model protocol the loop needs, a deterministic text encoder, a three-image encoded dataset
and a LoRA network on the denoiser (Linear, Linear and a 3x3 conv, so C3Lier paths run too)."""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from PIL import Image
from torch import nn

from trainer.buckets import plan_buckets
from trainer.dataset import load_folder
from trainer.encoded import EncodedDataset, LatentCache, encode_dataset
from trainer.network import UNET_ROOT, LoRANetwork, NetworkSpec, Target


class TinyDenoiser(nn.Module):
    """EPS model in ComfyUI's convention: denoise(x_t, sigma) returns x0 = x_t - sigma * eps_hat."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv_in = nn.Conv2d(4, 16, 3, padding=1)
        self.proj = nn.Linear(16, 16)
        self.ctx = nn.Linear(8, 16)
        self.conv_out = nn.Conv2d(16, 4, 1)
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        self.requires_grad_(False)

    def forward(self, x, sigma, ctx):
        h = self.conv_in(x / torch.sqrt(sigma[:, None, None, None] ** 2 + 1))
        h = h + self.ctx(ctx)[:, :, None, None]
        h = self.proj(torch.tanh(h).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.conv_out(torch.tanh(h))


class TinyModel:
    """The model protocol of trainer.loop (what adapter.ComfyTrainModel provides in ComfyUI)."""

    device = torch.device("cpu")

    def __init__(self):
        self.net = TinyDenoiser()

    def process_latent_in(self, raw):
        return raw * 0.5

    def batch_conds(self, conds, latent_shape, sizes):
        return {"ctx": torch.stack(conds)}

    def denoise(self, x_t, sigma, conds):
        return x_t - sigma[:, None, None, None] * self.net(x_t, sigma, conds["ctx"])

    def autocast(self):
        return contextlib.nullcontext()


def text_encoder(captions):
    """Deterministic 8-dim 'text conditioning' per caption."""
    out = []
    for c in captions:
        g = torch.Generator().manual_seed(sum(map(ord, c)))
        out.append(torch.randn(8, generator=g))
    return out


def encoded_dataset(folder) -> EncodedDataset:
    """Three 64x64 captioned images in ``folder``, bucketed at 64 px, 'VAE'-encoded to 4x8x8 latents."""
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"caption {i}")
    ds = load_folder(str(folder))
    ds = ds.with_group_params(resolution=(64, 64), min_bucket_reso=64, max_bucket_reso=128)
    plan = plan_buckets(ds)
    # "VAE": average-pool to 8x8 and a fixed linear map to 4 channels
    w = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))

    def encode(px):
        x = px.permute(0, 3, 1, 2)
        x = nn.functional.avg_pool2d(x, 8)
        return torch.einsum("bchw,oc->bohw", x, w)

    enc = encode_dataset(ds, plan, vae_id="test", encode_pixels=encode, cache_dir=None, cache=LatentCache())
    captions = sorted({r.caption for r in ds.images})
    enc.text_conds = dict(zip(captions, text_encoder(captions)))
    return enc


def network(model: TinyModel, seed=0, rank=4) -> LoRANetwork:
    targets = [Target("lora_unet_proj", UNET_ROOT, "proj", "linear"), Target("lora_unet_ctx", UNET_ROOT, "ctx", "linear"),
               Target("lora_unet_conv_in", UNET_ROOT, "conv_in", "conv3x3")]
    spec = NetworkSpec(family="sd1", rank=rank, alpha=rank, conv_rank=rank, conv_alpha=rank)
    return LoRANetwork.create(targets, {UNET_ROOT: model.net}, spec, seed=seed)


def installed(model: TinyModel) -> LoRANetwork:
    """A fresh network installed on ``model`` with trainable LoRA weights."""
    net = network(model)
    net.install({UNET_ROOT: model.net})
    for p in net.parameters():
        p.requires_grad_(True)
    return net
