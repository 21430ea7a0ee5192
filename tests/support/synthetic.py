"""Synthetic training inputs for benchmarks and memory measurements: a dataset of random images whose "VAE" maps
them to the model's latent grid, text conds of the family's shapes, and a Progress that records each step."""
from __future__ import annotations

import os
import time

import torch


def encoded_dataset(model_config, res: int, folder: str, n: int = 2):
    """``n`` captioned random ``res`` x ``res`` images in ``folder``, bucketed at ``res``, "encoded" by average
    pooling to the latent grid and a fixed map to the latent channels; text conds of the family's shapes
    (``adapter.memory.example_conds``) per caption."""
    import numpy as np
    from PIL import Image

    from trainer.adapter.memory import example_conds
    from trainer.buckets import plan_buckets
    from trainer.dataset import load_folder
    from trainer.encoded import LatentCache, encode_dataset

    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (res, res, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i}.png"))
        with open(os.path.join(folder, f"{i}.txt"), "w") as f:
            f.write(f"caption {i}")
    ds = load_folder(folder).with_group_params(resolution=(res, res), min_bucket_reso=64, max_bucket_reso=4096)
    plan = plan_buckets(ds)
    fmt = model_config.latent_format
    down = getattr(fmt, "spacial_downscale_ratio", 8)
    w = torch.randn(fmt.latent_channels, 3, generator=torch.Generator().manual_seed(1))

    def encode(px):
        x = torch.nn.functional.avg_pool2d(px.permute(0, 3, 1, 2), down)
        return torch.einsum("bchw,oc->bohw", x, w)

    enc = encode_dataset(ds, plan, vae_id="synthetic", encode_pixels=encode, cache_dir=None, cache=LatentCache())
    shapes = example_conds(model_config, 1, device="cpu")
    cross, pooled = shapes["c_crossattn"], shapes.get("y")
    # the pooled vector of SDXL / SD3 / FLUX; SDXL's ADM input is built from it by the model's extra_conds
    pooled_dim = model_config.unet_config.get("vec_in_dim") or (pooled.shape[-1] if pooled is not None else None)
    if "num_classes" in model_config.unet_config and pooled is not None:   # SDXL: 2816 = pooled 1280 + sizes
        pooled_dim = pooled.shape[-1] - 6 * 256
    extra = {"pooled_output": torch.randn(1, pooled_dim)} if pooled_dim else {}
    g = torch.Generator().manual_seed(2)
    enc.text_conds = {r.caption: [[torch.randn(cross.shape, generator=g), dict(extra)]] for r in ds.images}
    return enc


def peak_rss() -> int:
    """This process's resident-memory high-water mark (``VmHWM``, bytes). Unlike ``getrusage``'s ``ru_maxrss``,
    which a process started by fork + exec inherits from its parent, it covers this program only."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def step_notes():
    from trainer.reporting import Progress

    class StepNotes(Progress):
        """Notes, a clock and the process's memory high-water mark right after every step."""

        def __init__(self):
            self.notes: list[str] = []
            self.stamps: list[float] = [time.perf_counter()]
            self.peaks: list[int] = []

        def note(self, text):
            self.notes.append(text)

        def on_step(self, info, eta=None):
            self.stamps.append(time.perf_counter())
            self.peaks.append(peak_rss())

    return StepNotes()
