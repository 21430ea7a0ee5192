"""GPU benchmark: s/step and peak device memory of Train LoRA per memory mode, and sampling speed after training.

    python benchmarks/bench_gpu.py                    # CUDA: SD1.5 512, SDXL 1024, FLUX.1-dev 1024 (fp8 base)
    python benchmarks/bench_gpu.py --models flux --modes checkpointed,streamed
    python benchmarks/bench_gpu.py --smoke            # tiny models on CPU: checks that the script runs
    python benchmarks/bench_gpu.py --device cpu --models sd15 --res 256 --modes resident   # full size, fp32 CPU

For each model a full-size random-init model of the real architecture is built through
``comfy.supported_models`` (weights initialised on the device, then handed to ComfyUI on its offload device like
a loader's), with a rank-16 LoRA on sd-scripts' default targets. Two random images at the model's resolution,
with text conds of the family's shapes, make the dataset. ``trainer.session.train`` runs 1 warm-up + ``--steps``
timed steps per memory mode: bf16 autocast, batch 1, AdamW. ``streamed`` keeps half the blocks off the device
(``blocks_to_swap``). Per mode the table has s/step (mean of the timed steps), ``torch.cuda.max_memory_allocated``
and the planner's estimate for the same plan. Then the sampling speed: a no-grad ``apply_model`` of the trained
MODEL (its LoRA merged into the weights, as LoraLoader does) against the base MODEL, interleaved, ``--sampling-reps``
each.

Random weights: speed and memory do not depend on the values, loss values mean nothing. Budget: under 8 minutes on
one H100/H200-class GPU for the default set.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.append(ROOT)
sys.path.append(os.path.join(ROOT, "tests", "support"))

GIB = 1024 ** 3
MODES = ("resident", "checkpointed", "streamed")


def specs(smoke: bool):
    import torch

    if smoke:  # the tiny test models, 64 px, on CPU
        return {"sd15": ("sd15", None, 64, torch.float32), "sdxl": ("sdxl", None, 64, torch.float32),
                "flux": ("flux", None, 64, torch.float32)}
    import full_size as fs

    return {"sd15": ("SD15", fs.SD15, 512, torch.bfloat16), "sdxl": ("SDXL", fs.SDXL, 1024, torch.bfloat16),
            "flux": ("Flux", fs.FLUX_DEV, 1024, torch.float8_e4m3fn)}


def build(cls_name, unet_config, weight_dtype, device):
    """A full-size random-init model, initialised on ``device`` (fast) and handed over on ComfyUI's offload
    device, wrapped in a ModelPatcher as a loader node would."""
    import torch

    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models as sm

    compute = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.inference_mode():
        mc = getattr(sm, cls_name)(dict(unet_config))
        mc.set_inference_dtype(weight_dtype, None if weight_dtype == compute else compute)
        model = mc.get_model({}, device=device)
        g = torch.Generator(device=device).manual_seed(0)
        for name, p in model.diffusion_model.named_parameters():
            fan_in = p.shape[1] if p.ndim > 1 else 1
            for d in p.shape[2:]:
                fan_in *= d
            std = (1.0 / fan_in) ** 0.5 if p.ndim > 1 else 0.02
            val = torch.randn(p.shape, generator=g, device=device, dtype=torch.float32) * std
            if p.ndim == 1 and ("norm" in name or name.endswith("scale")):
                val = torch.ones_like(val)
            p.copy_(val.to(p.dtype))
        model.to(mm.unet_offload_device())
        mp = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=mm.unet_offload_device())
    return mc, mp


def tiny(family):
    import tiny_models

    mp, _, _ = tiny_models.build(family, 0)
    return mp.model.model_config, mp


def network(mp, rank=16):
    from trainer import adapter as ca
    from trainer.assemble import build_network
    from trainer.config import NetworkConfig

    fam = ca.detect_family(mp)
    return build_network(fam, ca.diffusion_root(mp), ca.unet_config(mp), None,
                         NetworkConfig(network_dim=rank, network_alpha=rank))


def run_mode(mp, mc, res, mode, steps, device):
    import torch

    import synthetic
    from trainer import adapter as ca
    from trainer.config import TrainConfig
    from trainer.session import train

    net = network(mp)
    enc = synthetic.encoded_dataset(mc, res, tempfile.mkdtemp(prefix="lora_loop_gpu_"))
    progress = synthetic.step_notes()
    blocks = len(ca.checkpoint_blocks(ca.diffusion_root(mp)))
    cfg = TrainConfig(max_train_steps=1 + steps, memory_mode=mode, mixed_precision="auto",
                      blocks_to_swap=max(1, blocks // 2) if mode == "streamed" else 0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    result = train(model=mp, clip=None, network=net, data=enc, cfg=cfg, progress=progress)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    times = [b - a for a, b in zip(progress.stamps, progress.stamps[1:])][1:]
    note = next((n for n in progress.notes if n.startswith("memory: ")), "")
    return {"mode": mode, "s_per_step": sum(times) / len(times), "steps": times, "peak": peak, "plan": note,
            "losses": result.losses}, result.model


def sampling_speed(base, trained, mc, res, reps, device):
    """No-grad apply_model of the trained MODEL (Train LoRA's output) vs the base MODEL, interleaved: each round
    loads one, runs an untimed call (a sampler's later steps reuse what the first one set up), then a timed one."""
    import torch

    import comfy.model_management as mm
    from trainer.adapter.memory import example_conds, latent_shape

    conds = example_conds(mc, 1, device=device, dtype=torch.float32)
    x = torch.randn(latent_shape(mc, 1, res, res), device=device)
    sigma = torch.ones(1, device=device)
    t = {"base": [], "trained": []}
    with torch.inference_mode():
        for _ in range(reps + 1):
            for name, mp in (("base", base), ("trained", trained)):
                mm.load_models_gpu([mp])
                mp.model.apply_model(x, sigma, **conds)  # untimed: the first call after a load touches new weights
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                mp.model.apply_model(x, sigma, **conds)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t[name].append(time.perf_counter() - t0)
    base_s, trained_s = (sum(v[1:]) / reps for v in (t["base"], t["trained"]))  # first round: warm-up
    return {"base_s": base_s, "trained_s": trained_s, "speed_vs_base": base_s / trained_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="sd15,sdxl,flux")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--sampling-reps", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="tiny models on CPU (checks the script, no numbers)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu: full-size models in fp32 on the CPU")
    ap.add_argument("--res", type=int, help="resolution instead of each model's own")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    import comfy_env

    comfy_env.boot()
    import torch

    device = torch.device("cpu") if args.smoke else torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA GPU (use --smoke to check the script on CPU)")
    table = specs(args.smoke)
    results = []
    for key in args.models.split(","):
        cls_name, unet_config, res, wd = table[key]
        res = args.res or res
        wd = torch.float32 if device.type == "cpu" else wd
        mc, mp = tiny(cls_name) if args.smoke else build(cls_name, unet_config, wd, device)
        rows, trained = [], None
        for mode in args.modes.split(","):
            try:
                row, trained = run_mode(mp, mc, res, mode, args.steps, device)
            except Exception as e:  # an out-of-memory plan is a result too
                row = {"mode": mode, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            rows.append(row)
            print(json.dumps({"model": key, **{k: v for k, v in row.items() if k != "losses"}}), flush=True)
        speed = sampling_speed(mp, trained, mc, res, args.sampling_reps, device) if trained is not None else None
        results.append({"model": key, "res": res, "weights": str(wd).replace("torch.", ""), "rows": rows,
                        "sampling": speed})
        del mp, trained
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("\n| model | px | weights | mode | s/step | max allocated GiB | planner |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        for row in r["rows"]:
            if "error" in row:
                print(f"| {r['model']} | {r['res']} | {r['weights']} | {row['mode']} | - | - | {row['error']} |")
                continue
            peak = f"{row['peak'] / GIB:.2f}" if row["peak"] is not None else "-"
            print(f"| {r['model']} | {r['res']} | {r['weights']} | {row['mode']} | {row['s_per_step']:.3f} | {peak} "
                  f"| {row['plan'].split(': ', 2)[-1].split(' (')[0]} |")
    for r in results:
        if r["sampling"]:
            s = r["sampling"]
            print(f"sampling {r['model']}: trained MODEL {s['trained_s'] * 1000:.1f} ms vs base "
                  f"{s['base_s'] * 1000:.1f} ms per forward = {s['speed_vs_base']:.3f}x base speed")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
