"""Measure one real training step's peak memory on CPU, next to what the memory planner estimated for it.

Run as a script in a fresh process (so the kernel's high-water mark of its resident memory, ``VmHWM``, is this step's):

    python tests/support/peak_step.py <family> <memory mode> <resolution>

It boots ComfyUI (CPU), builds a mid-size model of the family's real architecture through
``comfy.supported_models`` (random weights, fp32, made under inference mode like a loader node), a dataset of
two random latents with text conds of the family's shapes, and runs ``trainer.session.train`` for one step: the
planner (meta device), ComfyUI's loader, the loop, the optimizer. It prints one JSON line: the plan's estimate
and ``measured`` = the peak resident memory through the step (``VmHWM``, read right after its optimizer update; the
resumable state copied after the run is host memory, not the device's) minus the resident memory before the
model was built. glibc's mmap
threshold is pinned low (``MALLOC_MMAP_THRESHOLD_``, set by the caller) so freed tensors leave the process.
(``ru_maxrss`` would not do: a child inherits its parent's, e.g. a large pytest process's.)"""
from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.append(os.path.dirname(os.path.dirname(HERE)))
sys.path.append(HERE)

# mid-size configs of the real architectures (same block layout as the full models, narrower / fewer blocks)
MID = {
    "sd15": dict(cls="SD15", res_default=256, config={
        'use_checkpoint': False, 'image_size': 32, 'out_channels': 4, 'use_spatial_transformer': True,
        'legacy': False, 'adm_in_channels': None, 'in_channels': 4, 'model_channels': 192,
        'num_res_blocks': [2, 2, 2, 2], 'transformer_depth': [1, 1, 1, 1, 1, 1, 0, 0], 'channel_mult': [1, 2, 4, 4],
        'transformer_depth_middle': 1, 'use_linear_in_transformer': False, 'context_dim': 768, 'num_heads': 8,
        'transformer_depth_output': [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], 'use_temporal_attention': False,
        'use_temporal_resblock': False}),
    "flux": dict(cls="Flux", res_default=256, config={
        'image_model': 'flux', 'in_channels': 16, 'out_channels': 16, 'vec_in_dim': 768, 'context_in_dim': 4096,
        'hidden_size': 1024, 'mlp_ratio': 4.0, 'num_heads': 8, 'depth': 2, 'depth_single_blocks': 4,
        'axes_dim': [16, 56, 56], 'theta': 10000, 'patch_size': 2, 'qkv_bias': True, 'guidance_embed': True,
        'txt_ids_dims': []}),
    "sd3": dict(cls="SD3", res_default=256, config={
        'in_channels': 16, 'patch_size': 2, 'out_channels': 16, 'depth': 12, 'input_size': None,
        'adm_in_channels': 2048, 'num_patches': 64 * 64, 'pos_embed_max_size': 64, 'pos_embed_scaling_factor': None,
        'context_embedder_config': {'target': 'torch.nn.Linear', 'params': {'in_features': 4096,
                                                                             'out_features': 64 * 12}},
        'x_block_self_attn_layers': []}),
}


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(family: str, mode: str, res: int) -> dict:
    import comfy_env

    comfy_env.boot()
    import torch

    import tempfile

    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models as sm
    import synthetic
    import tiny_models
    from trainer import adapter as ca
    from trainer.assemble import build_network
    from trainer.config import NetworkConfig, TrainConfig
    from trainer.session import train

    spec = MID[family]
    base_rss = rss()
    with torch.inference_mode():
        mc = getattr(sm, spec["cls"])(dict(spec["config"]))
        mc.set_inference_dtype(torch.float32, None)
        model = mc.get_model({}, device=torch.device("cpu"))
        tiny_models.init_module(model.diffusion_model, 0)
        mp = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                              offload_device=mm.unet_offload_device())
    fam = ca.detect_family(mp)
    net = build_network(fam, model.diffusion_model, mc.unet_config, None, NetworkConfig(network_dim=16,
                                                                                          network_alpha=16))

    enc = synthetic.encoded_dataset(mc, res, tempfile.mkdtemp())
    progress = synthetic.step_notes()
    captured = {}
    real_plan = ca.plan_training

    def plan_training(*a, **k):
        plans = real_plan(*a, **k)
        captured["plans"] = plans
        return plans

    ca.plan_training = plan_training
    cfg = TrainConfig(max_train_steps=1, memory_mode=mode, mixed_precision="no")
    train(model=mp, clip=None, network=net, data=enc, cfg=cfg, progress=progress)
    peak = progress.peaks[0]  # the high-water mark through the step (the state captured after it is host memory)
    chosen = next(n for n in progress.notes if n.startswith("memory: "))
    plans = {p.mode: p for p in captured["plans"] if p.mode != "streamed"}
    est = plans[mode].estimate
    return {"family": family, "mode": mode, "res": res, "measured": peak - base_rss, "estimate": est.total,
            "weights": est.weights, "network": est.network, "activations": est.activations,
            "workspace": est.workspace, "note": chosen}


if __name__ == "__main__":
    fam, mode = sys.argv[1], sys.argv[2]
    res = int(sys.argv[3]) if len(sys.argv) > 3 else MID[fam]["res_default"]
    print("PEAK " + json.dumps(main(fam, mode, res)))
