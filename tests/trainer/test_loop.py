"""The training loop on a tiny plain-torch denoiser (no ComfyUI): loss falls, runs are bit-identical,
gradients reach only LoRA weights, NaN stops training with the last good weights kept."""
from __future__ import annotations


import pytest
import torch
from torch import nn

from trainer.buckets import plan_buckets
from trainer.config import TrainConfig
from trainer.dataset import load_folder
from trainer.encoded import LatentCache, encode_dataset
from trainer.loop import Trainer, TrainingDiverged
from trainer.network import LoRANetwork, Target
from trainer.objectives import DiscreteObjective, ddpm_sigmas


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
        import contextlib

        return contextlib.nullcontext()


def _text(captions):
    out = []
    for c in captions:
        g = torch.Generator().manual_seed(sum(map(ord, c)))
        out.append(torch.randn(8, generator=g))
    return out


@pytest.fixture()
def data(tmp_path):
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"caption {i}")
    ds = load_folder(str(tmp_path))
    ds = ds.with_group_params(resolution=(64, 64), min_bucket_reso=64, max_bucket_reso=128)
    plan = plan_buckets(ds)
    # "VAE": average-pool to 8x8 and a fixed linear map to 4 channels
    w = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))

    def encode(px):
        x = px.permute(0, 3, 1, 2)
        x = nn.functional.avg_pool2d(x, 8)
        return torch.einsum("bchw,oc->bohw", x, w)

    enc = encode_dataset(ds, plan, vae_id="test", encode_pixels=encode, cache_dir=None, cache=LatentCache())
    enc.text_conds = dict(zip(sorted({r.caption for r in ds.images}),
                              _text(sorted({r.caption for r in ds.images}))))
    return enc


def _network(model: TinyModel, seed=0, rank=4):
    targets = [Target("lora_unet_proj", "unet", "proj", "linear"), Target("lora_unet_ctx", "unet", "ctx", "linear"),
               Target("lora_unet_conv_in", "unet", "conv_in", "conv3x3")]
    return LoRANetwork.create(targets, {"unet": model.net}, rank, rank, conv_rank=rank, conv_alpha=rank, seed=seed)


def _installed(model: TinyModel):
    """A fresh network installed on ``model`` with trainable LoRA weights."""
    net = _network(model)
    net.install({"unet": model.net})
    for p in net.parameters():
        p.requires_grad_(True)
    return net


def _run(data, steps=30, seed=0, lr=3e-3, **kw):
    model = TinyModel()
    net = _installed(model)
    cfg = TrainConfig(max_train_steps=steps, learning_rate=lr, seed=seed, **kw)
    obj = DiscreteObjective(ddpm_sigmas(), "eps")
    tr = Trainer(model=model, network=net, data=data, cfg=cfg, objective=obj, text_encoder=_text)
    res = tr.run()
    net.remove()
    return net, res, model


def test_loss_falls(data):
    # a fixed batch and fixed noise level make the loss comparable step to step
    _, res, _ = _run(data, steps=60, lr=1e-2, min_timestep=500, max_timestep=501)
    first, last = sum(res.losses[:5]) / 5, sum(res.losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)


def test_same_seed_is_bit_identical_and_base_untouched(data):
    net1, res1, m1 = _run(data, steps=5, seed=3)
    net2, res2, m2 = _run(data, steps=5, seed=3)
    sd1, sd2 = net1.kohya_state_dict(), net2.kohya_state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert res1.losses == res2.losses
    base = TinyDenoiser()
    assert all(torch.equal(a, b) for a, b in zip(base.state_dict().values(), m1.net.state_dict().values()))
    _, res3, _ = _run(data, steps=5, seed=4)
    assert res3.losses != res1.losses


def test_nan_stops_with_last_good_weights(data):
    model = TinyModel()
    net = _installed(model)
    cfg = TrainConfig(max_train_steps=5, learning_rate=1e-3)
    obj = DiscreteObjective(ddpm_sigmas(), "eps")
    tr = Trainer(model=model, network=net, data=data, cfg=cfg, objective=obj, text_encoder=_text)
    calls = {"n": 0}
    real = model.denoise

    def flaky(x_t, sigma, conds):
        calls["n"] += 1
        out = real(x_t, sigma, conds)
        return out * float("nan") if calls["n"] == 3 else out

    model.denoise = flaky
    snapshot = {}

    def on_step(info):
        snapshot.clear()
        snapshot.update({k: v.clone() for k, v in net.kohya_state_dict().items()})

    with pytest.raises(TrainingDiverged) as e:
        tr.run(on_step=on_step)
    assert e.value.step == 3
    now = net.kohya_state_dict()
    assert all(torch.equal(now[k], snapshot[k]) for k in now)


def test_should_stop_ends_within_one_step(data):
    model = TinyModel()
    net = _installed(model)
    cfg = TrainConfig(max_train_steps=50, learning_rate=1e-3)
    tr = Trainer(model=model, network=net, data=data, cfg=cfg, objective=DiscreteObjective(ddpm_sigmas(), "eps"),
                 text_encoder=_text)
    steps = []
    res = tr.run(on_step=lambda i: steps.append(i.step), should_stop=lambda: len(steps) >= 2)
    assert res.stopped_early and res.steps_done == 2


def test_fp16_autocast_uses_loss_scaling(data):
    """fp16 mixed precision (GPU in practice; CPU autocast here) goes through a GradScaler and still learns."""
    class Fp16Model(TinyModel):
        autocast_dtype = torch.float16

        def autocast(self):
            return torch.autocast("cpu", dtype=torch.float16)

    model = Fp16Model()
    net = _installed(model)
    before = {k: v.clone() for k, v in net.kohya_state_dict().items()}
    tr = Trainer(model=model, network=net, data=data, cfg=TrainConfig(max_train_steps=3, learning_rate=1e-3),
                 objective=DiscreteObjective(ddpm_sigmas(), "eps"), text_encoder=_text)
    assert tr.scaler is not None and tr.scaler.is_enabled()
    res = tr.run()
    net.remove()
    assert all(torch.isfinite(torch.tensor(res.losses)))
    after = net.kohya_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("lora_up.weight"))
    assert all(v.dtype == torch.float32 for k, v in after.items() if k.endswith(".weight"))
