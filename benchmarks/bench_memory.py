"""The memory planner's table for full-size models, counted on the meta device (no GPU, no weights).

    python benchmarks/bench_memory.py            # the table (markdown) for every model below
    python benchmarks/bench_memory.py --json out.json

For each model the real ComfyUI architecture is built on the meta device from its full-size ``unet_config``
(as ``comfy/model_detection.py`` reads it from the real checkpoint), a rank-16 LoRA on the family's kohya
targets is installed, and one forward + backward is counted without and with gradient checkpointing
(``trainer.adapter.memory``: bf16 compute, batch 1, attention that keeps q, k, v, out and log-sum-exp, AdamW
state). Every memory mode's estimate follows, then what ``auto`` picks on cards of common sizes (it plans with
15 % headroom). Estimates, not measurements: the CUDA context and allocator fragmentation come on top.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.append(ROOT)
sys.path.append(os.path.join(ROOT, "tests", "support"))

GB = 10 ** 9
CARDS_GB = (80, 48, 24, 16, 12, 10, 8, 6)


def models():
    import torch

    import full_size as fs

    bf16, fp8 = torch.bfloat16, torch.float8_e4m3fn
    sd35l = fs.sd3(38, (), "rms")
    return [  # label, supported_models class, unet_config, resolution, weight dtype[, text cond (tokens, width)]
        ("SD1.5", "SD15", fs.SD15, 512, bf16),
        ("SDXL", "SDXL", fs.SDXL, 1024, bf16),
        ("SD3.5-Large", "SD3", sd35l, 1024, bf16),
        ("FLUX.1-dev", "Flux", fs.FLUX_DEV, 512, bf16),
        ("FLUX.1-dev", "Flux", fs.FLUX_DEV, 1024, bf16),
        ("FLUX.1-dev fp8", "Flux", fs.FLUX_DEV, 1024, fp8),
        # the newer families: a caption of the length their text encoders give (LLMs: a short prompt)
        ("Qwen-Image fp8", "QwenImage", fs.QWEN_IMAGE, 1024, fp8, (64, 3584)),
        ("Z-Image Turbo", "ZImage", fs.Z_IMAGE_TURBO, 1024, bf16, (64, 2560)),
        ("Lumina-Image 2.0", "Lumina2", fs.LUMINA2, 1024, bf16, (64, 2304)),
        ("Chroma1-HD fp8", "Chroma", fs.CHROMA1_HD, 1024, fp8, (512, 4096)),
        ("FLUX.2-dev fp8", "Flux2", fs.FLUX2_DEV, 1024, fp8, (512, 15360)),
        ("HunyuanImage-2.1 fp8", "HunyuanImage21", fs.HUNYUAN_IMAGE21, 2048, fp8, (64, 3584)),
        ("Wan2.1-T2V-14B fp8", "WAN21_T2V", fs.WAN21_14B, 832, fp8, (512, 4096)),
        # T5 tokens, pooled CLIP-L + CLIP-G, every Llama layer's hidden states
        ("HiDream-I1 fp8", "HiDream", fs.HIDREAM_I1, 1024, fp8,
         {"cond": (128, 4096), "pooled_output": (2048,), "conditioning_llama3": (48, 128, 4096)}),
    ]


def plan_model(label, cls_name, unet_config, res, weight_dtype, cond_shape=None, rank=16):
    import torch

    import comfy.supported_models as sm
    from trainer.adapter import memory as am
    from trainer.assemble import build_network
    from trainer.config import NetworkConfig
    from trainer.families import detect_family
    from trainer.optim import optimizer_state_bytes

    compute = torch.bfloat16
    mc = getattr(sm, cls_name)(dict(unet_config))
    mc.set_inference_dtype(weight_dtype, None if weight_dtype == compute else compute)
    model = am.meta_model(mc, weight_dtype, compute)
    fam = detect_family([c.__name__ for c in type(mc).__mro__], mc.unet_config)
    net = build_network(fam, model.diffusion_model, mc.unet_config, None, NetworkConfig(network_dim=rank,
                                                                                         network_alpha=rank))
    t0 = time.perf_counter()
    cond = None
    if cond_shape:  # (tokens, width), or {"cond": (tokens, width), extra name: shape, ...}
        shapes = cond_shape if isinstance(cond_shape, dict) else {"cond": cond_shape}
        extra = {k: torch.empty((1,) + tuple(v), device="meta", dtype=compute)
                 for k, v in shapes.items() if k != "cond"}
        cond = [[torch.empty((1,) + tuple(shapes["cond"]), device="meta", dtype=compute),
                 {"pooled_output": None, **extra}]]
    plans = am.plans_for(mc, net, batch=1, width=res, height=res, weight_dtype=weight_dtype, compute_dtype=compute,
                         optimizer_state_bytes=optimizer_state_bytes("AdamW"), cond=cond)
    by_mode = {p.mode: p.estimate for p in plans if p.mode != "streamed"}
    n = sum(p.numel() for p in net.parameters())
    return dict(label=label, res=res, weight_dtype=str(weight_dtype).replace("torch.", ""), lora_params=n,
                modules=len(net), blocks=plans[0].blocks, seconds=time.perf_counter() - t0,
                factor=by_mode["resident"].activations / max(1, by_mode["checkpointed"].activations), plans=plans)


def table(results) -> str:
    from trainer.memory import choose_plan

    def g(b):
        return f"{b / GB:.1f}"

    lines = ["| model | px | weights | mode | total GB | weights GB | LoRA+opt GB | activations GB | workspace GB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        plans = r["plans"]
        n = r["blocks"]
        shown = [p for p in plans if p.mode != "streamed"]
        shown += [p for p in plans if p.mode == "streamed" and p.blocks_to_swap in (n // 2, n - max(2, n // 10))]
        for p in shown:
            mode = p.mode if p.mode != "streamed" else f"streamed, blocks_to_swap {p.blocks_to_swap}/{n}"
            e = p.estimate
            lines.append(f"| {r['label']} | {r['res']} | {r['weight_dtype']} | {mode} | **{g(e.total)}** | "
                         f"{g(e.weights)} | {g(e.network)} | {g(e.activations)} | {g(e.workspace)} |")
    lines += ["", "What `auto` picks per card (free memory = card size; 15 % headroom):", "",
              "| model | px | weights | " + " | ".join(f"{c} GB" for c in CARDS_GB) + " |",
              "|---|---|---|" + "---|" * len(CARDS_GB)]
    for r in results:
        cells = []
        for c in CARDS_GB:
            plan, fits = choose_plan(r["plans"], c * GB)
            if not fits:
                cells.append("does not fit")
            elif plan.mode == "streamed":
                cells.append(f"streamed {plan.blocks_to_swap}/{r['blocks']}")
            else:
                cells.append(plan.mode)
        lines.append(f"| {r['label']} | {r['res']} | {r['weight_dtype']} | " + " | ".join(cells) + " |")
    lines += ["", "Activation memory without / with gradient checkpointing:", "",
              "| model | px | LoRA modules | LoRA params | factor |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['label']} | {r['res']} | {r['modules']} | {r['lora_params'] / 1e6:.1f} M | "
                     f"{r['factor']:.1f}x |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()
    import comfy_env

    comfy_env.boot()
    results = [plan_model(*m) for m in models()]
    print(table(results))
    if args.json:
        out = [{k: v for k, v in r.items() if k != "plans"} | {"plans": [
            dict(mode=p.mode, blocks_to_swap=p.blocks_to_swap, total=p.estimate.total, weights=p.estimate.weights,
                 network=p.estimate.network, activations=p.estimate.activations, workspace=p.estimate.workspace)
            for p in r["plans"]]} for r in results]
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
