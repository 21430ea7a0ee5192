"""The memory planner against measurements, on ComfyUI's real models.

* Estimate vs measured: a mid-size model of each family's real architecture trains one step in a fresh
  process (``tests/support/peak_step.py``: planner, ComfyUI's loader, the loop, the optimizer); the kernel's
  high-water mark of its resident memory, minus what the process held before the model was built, must be
  within 15 % of the plan's estimate (weights + LoRA + optimizer + activations + workspace).
* Checkpointing's effect, counted on the meta device for a FLUX-dev-width model (3072 wide, 24 heads, one
  double and two single blocks, 256 px, fp32): activations drop at least 3x.
* Full-size FLUX.1-dev at 1024 px: what ``auto`` picks for 16, 8 and 6 GB cards (fp8 base, bf16 compute).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from comfy_fixtures import comfy  # noqa: F401

HERE = os.path.dirname(os.path.abspath(__file__))
PEAK = os.path.join(os.path.dirname(HERE), "support", "peak_step.py")
GIB = 1024 ** 3

FLUX_WIDTH = {'image_model': 'flux', 'in_channels': 16, 'out_channels': 16, 'vec_in_dim': 768,
              'context_in_dim': 4096, 'hidden_size': 3072, 'mlp_ratio': 4.0, 'num_heads': 24, 'depth': 1,
              'depth_single_blocks': 2, 'axes_dim': [16, 56, 56], 'theta': 10000, 'patch_size': 2, 'qkv_bias': True,
              'guidance_embed': True, 'txt_ids_dims': []}
FLUX_DEV = {**FLUX_WIDTH, 'depth': 19, 'depth_single_blocks': 38}


def _peak(family: str, mode: str) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    out = subprocess.run([sys.executable, PEAK, family, mode], capture_output=True, text=True, env=env, timeout=600)
    line = [x for x in out.stdout.splitlines() if x.startswith("PEAK ")]
    assert out.returncode == 0 and line, out.stderr[-3000:]
    return json.loads(line[0][5:])


@pytest.mark.parametrize("family,mode", [("sd15", "resident"), ("sd15", "checkpointed"), ("flux", "resident"),
                                         ("flux", "checkpointed"), ("sd3", "checkpointed")])
def test_estimate_is_within_15_percent_of_the_measured_peak(comfy, family, mode):
    r = _peak(family, mode)
    assert r["note"].startswith(f"memory: {mode}: ~"), r["note"]
    ratio = r["estimate"] / r["measured"]
    assert 0.85 <= ratio <= 1.15, (f"{family} {mode}: estimate {r['estimate'] / 2**20:.0f} MiB, measured "
                                   f"{r['measured'] / 2**20:.0f} MiB", r)
    if mode == "resident":  # the activations are a real share of it, not noise around the weights
        assert r["activations"] > 0.2 * r["weights"], r


def _flux(config: dict, dtype=torch.float32):
    import comfy.supported_models as sm

    mc = sm.Flux(dict(config))
    mc.set_inference_dtype(dtype, None)
    return mc


def _network(mc, model):
    from trainer.assemble import build_network
    from trainer.config import NetworkConfig
    from trainer.families import detect_family

    fam = detect_family([c.__name__ for c in type(mc).__mro__], mc.unet_config)
    return build_network(fam, model.diffusion_model, mc.unet_config, None, NetworkConfig(network_dim=16,
                                                                                         network_alpha=16))


def test_checkpointing_cuts_flux_activations_at_least_3x(comfy):
    from trainer.adapter import memory as am

    mc = _flux(FLUX_WIDTH)
    model = am.meta_model(mc)
    net = _network(mc, model)
    steps = {ck: am.measure_step(model, net, x_shape=am.latent_shape(mc, 1, 256, 256), conds=am.example_conds(mc, 1),
                                 checkpointing=ck) for ck in (False, True)}
    assert steps[False].activations > 3 * steps[True].activations, steps
    assert steps[False].activations > 200 * 2**20, steps  # the 3-block model really saves hundreds of MiB


def test_auto_fits_full_flux_dev_on_16_8_and_6_gb_cards(comfy):
    from trainer.adapter import memory as am
    from trainer.memory import choose_plan

    mc = _flux(FLUX_DEV, torch.float8_e4m3fn)
    model = am.meta_model(mc, torch.float8_e4m3fn, torch.bfloat16)
    mem = am.model_memory(model.diffusion_model)
    assert 11 * GIB < mem.weights < 12 * GIB and len(mem.block_weights) == 57
    plans = am.plans_for(mc, _network(mc, model), batch=1, width=1024, height=1024, weight_dtype=torch.float8_e4m3fn,
                         compute_dtype=torch.bfloat16, optimizer_state_bytes=8)
    by_mode = {p.mode: p for p in plans if p.mode != "streamed"}
    assert by_mode["resident"].estimate.activations > 20 * GIB          # no checkpointing: a datacenter card
    assert by_mode["checkpointed"].estimate.total < 16 * 10**9          # the 16 GB target, nothing streamed
    plan16, fits16 = choose_plan(plans, 16 * 10**9)
    assert fits16 and plan16.mode in ("checkpointed", "streamed")
    plan8, fits8 = choose_plan(plans, 8 * 10**9)
    assert fits8 and plan8.mode == "streamed" and plan8.estimate.total <= 0.85 * 8 * 10**9
    plan6, fits6 = choose_plan(plans, 6 * 10**9)                         # the 6 GB target: most blocks streamed
    assert fits6 and plan6.mode == "streamed" and plan6.blocks_to_swap > 40
    huge, _ = choose_plan(plans, 200 * 10**9)
    assert huge.mode == "resident"                                       # never streams when everything fits


def test_a_text_encoder_lora_that_trains_along_is_in_the_estimate(comfy):  # noqa: F811
    """LoRA + gradients + optimizer state of the text encoder count like the diffusion model's."""
    import tiny_models
    from trainer.adapter import memory as am
    from trainer.assemble import build_network
    from trainer.config import NetworkConfig
    from trainer.families import get_family
    from trainer.network import TE_ROOT
    from trainer.optim import optimizer_state_bytes

    mp, clip, _ = tiny_models.build("sd15", 0)
    mc, root = mp.model.model_config, mp.model.diffusion_model

    def plans(train_te: bool):
        net = build_network(get_family("sd1"), root, mc.unet_config, clip.cond_stage_model,
                            NetworkConfig(network_dim=4, network_alpha=4, train_text_encoder=train_te))
        return net, am.plans_for(mc, net, batch=1, width=64, height=64, weight_dtype=torch.float32,
                                 compute_dtype=torch.float32, optimizer_state_bytes=optimizer_state_bytes("AdamW"),
                                 weights_root=root)

    _, unet_only = plans(False)
    net, with_te = plans(True)
    te_params = sum(p.numel() * p.element_size() for p in net.subset(TE_ROOT).parameters())
    assert te_params > 0
    # parameters + gradients + AdamW's two moments
    grown = with_te[0].estimate.network - unet_only[0].estimate.network
    assert grown >= 3 * te_params, (grown, te_params)
