"""Speed/memory benchmark on a full-size SD1.5 U-Net (run by hand, not in CI).

Measures, in one run, on the same random-init SD1.5-architecture U-Net (fp32, CPU, 256 px = a 32x32x4
latent, batch 1) and the same latent and text cond:

* ``forward``: a no-grad forward, ``BaseModel.apply_model(x, sigma, c_crossattn=cond)``;
* ``ours``: LoRA Loop's training step - ``trainer.assemble.build_network`` (what Inject LoRA does: SD1
  LierLa targets, rank 16, alpha 16), ``adapter.install_network`` and ``trainer.session.train``
  (what Train LoRA does: ``load_for_training``, ``ComfyTrainModel``, ``Trainer``), gradient checkpointing
  off, default TrainConfig otherwise (AdamW, max_grad_norm 1.0, fp32 on CPU);
* ``builtin``: ComfyUI's own ``TrainLoraNode`` (comfy_extras/nodes_train.py) with rank 16, fp32
  training and LoRA dtype, batch 1, AdamW, MSE, LoRA algorithm, gradient checkpointing off.

Each method runs in a fresh subprocess (``--worker``), so its peak memory is its own: peak RSS is the
kernel's high-water mark ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of that process (ComfyUI boot,
model build and training together); the RSS after the model is built and a psutil-sampled peak during
the timed steps are recorded too. Every method warms up (default 1 step), then times N steps (default 3)
from per-step timestamps (``Trainer`` ``on_step`` for ours, ComfyUI's global progress-bar hook for the
built-in node, wall clock around each call for the forward).

    python benchmarks/bench_sd15.py                 # all three, N=3, writes benchmarks/results/<ts>.json
    python benchmarks/bench_sd15.py --steps 5 --only ours,forward
    python benchmarks/bench_sd15.py --only ours --profile   # + torch.profiler table of one step
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time

log = logging.getLogger("bench_sd15")

HERE = os.path.dirname(os.path.abspath(__file__))
PACK_ROOT = os.path.dirname(HERE)
RESULTS_DIR = os.path.join(HERE, "results")
METHODS = ("forward", "ours", "builtin")
LABELS = {
    "forward": "no-grad forward (apply_model)",
    "ours": "LoRA Loop Train LoRA (LierLa, bypass)",
    "builtin": "ComfyUI built-in Train LoRA (TrainLoraNode)",
}

# The real SD1.5 unet_config, as comfy/model_detection.py (unet_config_from_diffusers_unet, "SD15") and
# detect_unet_config give it for v1-5 checkpoints (dtype is set through set_inference_dtype).
SD15_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
RANK = 16
ALPHA = 16.0
RESOLUTION = 256
GB = 1e9


# ============================================================================ worker side (one method)

def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _maxrss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


class RssSampler:
    """Samples this process's RSS every ``interval`` s in a thread; ``peak`` is the largest seen."""

    def __init__(self, interval: float = 0.05):
        import threading

        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = _rss()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _boot_comfy() -> dict:
    sys.path.insert(0, os.path.join(PACK_ROOT, "tests", "support"))
    import comfy_env

    return comfy_env.boot()


def _init_weights(module, seed: int) -> None:
    """Random init, small normal: N(0, 1/fan_in) weights (unit gain), N(0, 0.02) biases, norms 1/0."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in module.modules():
            norm = "norm" in type(mod).__name__.lower()
            for name, p in mod.named_parameters(recurse=False):
                if norm:
                    p.fill_(0.0 if name == "bias" else 1.0)
                elif p.ndim >= 2:
                    fan_in = p[0].numel()
                    p.copy_(torch.randn(p.shape, generator=gen) * fan_in ** -0.5)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def build_sd15(seed: int = 0):
    """Full-size SD1.5 U-Net through ComfyUI's own SD15 config, fp32 on CPU, random init, built inside
    torch.inference_mode() like a loader node, wrapped in a ModelPatcher."""
    import torch
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models as sm

    with torch.inference_mode():
        mc = sm.SD15(dict(SD15_UNET_CONFIG))
        mc.set_inference_dtype(torch.float32, None)
        model = mc.get_model({}, "")
        _init_weights(model.diffusion_model, seed)
        model.eval()
        mp = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                              offload_device=mm.unet_offload_device())
    return mp


def make_inputs(seed: int = 0):
    """One raw 256x256 latent (1,4,32,32) and one text cond (1,77,768), both random."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    latent = torch.randn((1, 4, RESOLUTION // 8, RESOLUTION // 8), generator=g)
    cond = torch.randn((1, 77, 768), generator=g)
    return latent, cond


def _now() -> tuple[float, float]:
    """(wall clock, CPU time of this process summed over its threads)."""
    return time.perf_counter(), time.process_time()


def _summary(stamps: list[tuple[float, float]], warmup: int) -> dict:
    """Per-step wall and CPU times from ``stamps`` (start, then one stamp after each step)."""
    times = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])]
    cpu = [b[1] - a[1] for a, b in zip(stamps, stamps[1:])]
    timed, timed_cpu = times[warmup:], cpu[warmup:]
    return {"step_times_s": times, "step_cpu_s": cpu, "warmup": warmup, "timed_steps": len(timed),
            "s_per_step": sum(timed) / len(timed), "min_s": min(timed), "max_s": max(timed),
            "cpu_s_per_step": sum(timed_cpu) / len(timed_cpu)}


def run_forward(mp, latent, cond, steps: int, warmup: int) -> dict:
    import torch

    model = mp.model
    with torch.no_grad():
        x0 = model.process_latent_in(latent)
        sigma = model.model_sampling.sigmas[len(model.model_sampling.sigmas) // 2].reshape(1).float()
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
        xt = model.model_sampling.noise_scaling(sigma, noise, x0)
    stamps = [_now()]
    with RssSampler() as rs:
        for _ in range(warmup + steps):
            with torch.no_grad():
                out = model.apply_model(xt, sigma, c_crossattn=cond)
            stamps.append(_now())
            assert torch.isfinite(out).all()
    res = _summary(stamps, warmup)
    res["steps_peak_rss"] = rs.peak
    return res


def _encoded_dataset(latent, cond, tmp: str):
    """An EncodedDataset of one 256x256 image whose 'VAE' returns the benchmark latent."""
    import numpy as np
    import torch
    from PIL import Image

    from trainer.buckets import plan_buckets
    from trainer.dataset import GroupConfig, load_folder
    from trainer.encoded import LatentCache, encode_dataset

    folder = os.path.join(tmp, "data")
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(np.full((RESOLUTION, RESOLUTION, 3), 128, np.uint8)).save(os.path.join(folder, "0.png"))
    with open(os.path.join(folder, "0.txt"), "w") as f:
        f.write("bench")
    ds = load_folder(folder, group=GroupConfig(resolution=(RESOLUTION, RESOLUTION), batch_size=1))
    plan = plan_buckets(ds)

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        assert tuple(pixels.shape[1:3]) == (RESOLUTION, RESOLUTION), pixels.shape
        return latent.expand(pixels.shape[0], -1, -1, -1).clone()

    enc = encode_dataset(ds, plan, vae_id="bench", encode_pixels=encode, cache_dir=None, cache=LatentCache())
    enc.text_conds = {"bench": [[cond.clone(), {}]]}
    return enc


def _progress():
    """The session's Progress (what the node's NodeProgress implements), recording a timestamp per step."""
    _pack_on_path()
    from trainer.reporting import Progress

    class StepClock(Progress):
        def __init__(self):
            self.stamps: list[tuple[float, float]] = [_now()]
            self.losses: list[float] = []

        def on_step(self, info, eta=None) -> None:
            self.stamps.append(_now())
            self.losses.append(info.loss)

    return StepClock()


def _pack_on_path():
    """Make ``import trainer`` work, as tests/conftest.py does (the pack root on sys.path)."""
    if PACK_ROOT not in sys.path:
        sys.path.insert(0, PACK_ROOT)


def run_ours(mp, latent, cond, steps: int, warmup: int, profile_path: str | None = None) -> dict:
    import torch

    _pack_on_path()
    from trainer import adapter as ca
    from trainer.assemble import build_network
    from trainer.config import NetworkConfig, TrainConfig
    from trainer.session import train

    tmp = tempfile.mkdtemp(prefix="lora_loop_bench_")
    data = _encoded_dataset(latent, cond, tmp)
    total = warmup + steps
    cfg = TrainConfig(max_train_steps=total, memory_mode="resident", mixed_precision="auto")
    info: dict = {"train_config": {"optimizer": cfg.optimizer_type, "lr": cfg.learning_rate,
                                   "max_grad_norm": cfg.max_grad_norm, "memory": "resident"}}
    with torch.inference_mode():  # like ComfyUI's executor around every node
        family = ca.detect_family(mp)
        ncfg = NetworkConfig(network_dim=RANK, network_alpha=ALPHA, conv_dim=0, train_text_encoder=False)
        net = build_network(family, ca.diffusion_root(mp), ca.unet_config(mp), None, ncfg)   # = Inject LoRA
        injected = ca.install_network(mp, net)
        info.update(family=family.name, lora_modules=len(net),
                    lora_params=sum(p.numel() for p in net.parameters()))
        prog = _progress()
        prof = None
        if profile_path:
            from torch.profiler import ProfilerActivity, profile, schedule

            # skip the warm-up steps, record one step
            prof = profile(activities=[ProfilerActivity.CPU], record_shapes=False, profile_memory=True,
                           schedule=schedule(wait=0, warmup=warmup, active=1, repeat=1))
            real_on_step = prog.on_step

            def on_step(i, eta=None, _real=real_on_step):
                _real(i, eta)
                prof.step()
            prog.on_step = on_step
            prof.__enter__()
        with RssSampler() as rs:
            result = train(model=injected, clip=None, network=net, data=data, cfg=cfg, progress=prog)   # = Train LoRA
        if prof is not None:
            prof.__exit__(None, None, None)
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
            mem = prof.key_averages().table(sort_by="self_cpu_memory_usage", row_limit=25)
            with open(profile_path, "w") as f:
                f.write("# self CPU time\n" + table + "\n\n# self CPU memory\n" + mem + "\n")
    assert len(result.losses) == total and all(map(lambda v: v == v, result.losses)), result.losses
    # the first (warm-up) step runs from the start of train(), so it includes the setup
    res = _summary(prog.stamps, warmup)
    res.update(info, steps_peak_rss=rs.peak, losses=result.losses)
    return res


def run_builtin(mp, latent, cond, steps: int, warmup: int) -> dict:
    import torch
    import comfy.utils
    from comfy_extras.nodes_train import TrainLoraNode

    stamps: list[tuple[float, float]] = []

    def hook(value, total, preview=None, node_id=None):
        stamps.append(_now())

    total = warmup + steps
    comfy.utils.set_progress_bar_global_hook(hook)
    t_start = _now()
    try:
        with torch.inference_mode(), RssSampler() as rs:  # like ComfyUI's executor around every node
            out = TrainLoraNode.EXECUTE_NORMALIZED(
                model=[mp], latents=[{"samples": latent.clone()}], positive=[[[cond.clone(), {}]]],
                batch_size=[1], grad_accumulation_steps=[1], steps=[total], learning_rate=[0.0005], rank=[RANK],
                optimizer=["AdamW"], loss_function=["MSE"], seed=[0], training_dtype=["fp32"], lora_dtype=["fp32"],
                algorithm=["LoRA"], gradient_checkpointing=[False], existing_lora=["[None]"], bucket_mode=[False])
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    losses = out.result[2]["loss"]
    lora_sd = out.result[1]
    assert len(losses) == total, losses
    assert len(stamps) == total, f"expected {total} progress updates from TrainLoraNode, got {len(stamps)}"
    res = _summary([t_start] + stamps, warmup)  # the warm-up step includes the node's setup
    res.update(steps_peak_rss=rs.peak, losses=losses, trained_tensors=len(lora_sd),
               trained_params=sum(t.numel() for t in lora_sd.values()),
               train_config={"optimizer": "AdamW", "lr": 0.0005, "training_dtype": "fp32", "lora_dtype": "fp32",
                             "algorithm": "LoRA", "gradient_checkpointing": False})
    return res


def worker(method: str, steps: int, warmup: int, seed: int, result_file: str, profile_path: str | None) -> None:
    import torch

    t0 = time.perf_counter()
    _boot_comfy()
    _pack_on_path()
    boot_rss = _rss()
    mp = build_sd15(seed)
    latent, cond = make_inputs(seed)
    n_params = sum(p.numel() for p in mp.model.diffusion_model.parameters())
    model_rss = _rss()
    log.info("%s: SD1.5 U-Net built (%.0f M params) in %.1fs, RSS %.2f GB", method, n_params / 1e6,
             time.perf_counter() - t0, model_rss / GB)
    if method == "forward":
        res = run_forward(mp, latent, cond, steps, warmup)
    elif method == "ours":
        res = run_ours(mp, latent, cond, steps, warmup, profile_path)
    elif method == "builtin":
        res = run_builtin(mp, latent, cond, steps, warmup)
    else:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    res.update(method=method, peak_rss=_maxrss(), boot_rss=boot_rss, model_rss=model_rss, unet_params=n_params,
               torch=torch.__version__, torch_threads=torch.get_num_threads(),
               loadavg_end=os.getloadavg(), wall_s=time.perf_counter() - t0)
    with open(result_file, "w") as f:
        json.dump(res, f)


# ============================================================================ parent side

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _mem_total() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024 / GB
    except OSError:
        pass
    return 0.0


def run_method(method: str, args) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_file = f.name
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--seed", str(args.seed), "--result-file", result_file]
    if args.profile and method == "ours":
        cmd += ["--profile-out", args.profile_out]
    log.info("running %s (%d warm-up + %d timed steps) ...", method, args.warmup, args.steps)
    load0 = os.getloadavg()
    t = time.perf_counter()
    proc = subprocess.run(cmd, timeout=args.timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} worker failed with exit code {proc.returncode} (see its log above)")
    with open(result_file) as f:
        res = json.load(f)
    os.unlink(result_file)
    res["loadavg_start"] = load0
    log.info("%s: %.2f s/step (steps %s), peak RSS %.2f GB, %.0fs total", method, res["s_per_step"],
             ", ".join(f"{v:.2f}" for v in res["step_times_s"]), res["peak_rss"] / GB, time.perf_counter() - t)
    return res


def _fmt_ratio(v: float | None, suffix: str = "x") -> str:
    return "-" if v is None else f"{v:.2f}{suffix}"


def make_table(results: dict[str, dict]) -> str:
    fwd = results.get("forward")
    bi = results.get("builtin")
    lines = ["| method | s/step | vs forward | speed-up vs built-in | peak memory (GB) | memory vs built-in |",
             "|---|---:|---:|---:|---:|---:|"]
    for m in METHODS:
        r = results.get(m)
        if r is None:
            continue
        s = r["s_per_step"]
        vs_fwd = s / fwd["s_per_step"] if fwd else None
        speed = bi["s_per_step"] / s if bi else None
        mem = r["peak_rss"] / bi["peak_rss"] if bi else None
        lines.append(f"| {LABELS[m]} | {s:.2f} | {_fmt_ratio(vs_fwd)} | {_fmt_ratio(speed)} | "
                     f"{r['peak_rss'] / GB:.2f} | {_fmt_ratio(mem)} |")
    # CPU time (all threads of the process) is less sensitive to other load on a shared machine
    cpu = [f"{m} {results[m]['cpu_s_per_step']:.2f}" for m in METHODS if m in results]
    notes = ["", "CPU seconds per step (process time, all threads): " + ", ".join(cpu) + "."]
    if fwd and "ours" in results:
        notes.append(f"CPU-time ratio ours / forward: {results['ours']['cpu_s_per_step'] / fwd['cpu_s_per_step']:.2f}x.")
    if bi and "ours" in results:
        notes.append(f"CPU-time speed-up ours vs built-in: {bi['cpu_s_per_step'] / results['ours']['cpu_s_per_step']:.2f}x.")
    mins = [f"{m} {results[m]['min_s']:.2f}" for m in METHODS if m in results]
    notes.append("Fastest timed step (least disturbed by other load), s: " + ", ".join(mins) + ".")
    loads = [f"{m} {results[m]['loadavg_start'][0]:.1f}->{results[m]['loadavg_end'][0]:.1f}"
             for m in METHODS if m in results and "loadavg_start" in results[m]]
    notes.append("1-min load average at start->end of each method: " + ", ".join(loads) + ".")
    return "\n".join(lines + notes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3, help="timed steps per method (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps per method (default 1)")
    p.add_argument("--only", default=",".join(METHODS), help="comma-separated subset of forward,ours,builtin")
    p.add_argument("--seed", type=int, default=0, help="seed of the U-Net init, latent and cond")
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per method (default 1800)")
    p.add_argument("--out", default=None, help="result JSON path (default benchmarks/results/<timestamp>.json)")
    p.add_argument("--profile", action="store_true",
                   help="also profile one step of ours with torch.profiler (table next to the JSON)")
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    p.add_argument("--profile-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")

    if args.worker:
        worker(args.worker, args.steps, args.warmup, args.seed, args.result_file, args.profile_out)
        return 0

    methods = [m.strip() for m in args.only.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        p.error(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or os.path.join(RESULTS_DIR, f"{stamp}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    args.profile_out = os.path.splitext(out)[0] + ".profile.txt"
    results = {m: run_method(m, args) for m in [m for m in METHODS if m in methods]}
    any_r = next(iter(results.values()))
    machine = {"cpu_count": os.cpu_count(), "cpu": _cpu_model(), "mem_total_gb": round(_mem_total(), 1),
               "torch": any_r["torch"], "torch_threads": any_r["torch_threads"], "python": platform.python_version(),
               "platform": platform.platform()}
    table = make_table(results)
    head = (f"SD1.5 U-Net (full size, random init), {RESOLUTION} px, batch 1, rank {RANK}, fp32, CPU; "
            f"{args.warmup} warm-up + {args.steps} timed steps; peak memory = peak RSS of each method's process "
            f"(getrusage ru_maxrss), GB = 1e9 bytes.\n"
            f"Machine: {machine['cpu_count']} CPUs ({machine['cpu']}), {machine['mem_total_gb']} GB RAM, "
            f"torch {machine['torch']} ({machine['torch_threads']} threads), Python {machine['python']}.")
    command = "python benchmarks/bench_sd15.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with open(out, "w") as f:
        json.dump({"timestamp": stamp, "command": command.strip(), "machine": machine, "table": table,
                   "results": results}, f, indent=1)
    sys.stdout.write(head + "\n\n" + table + "\n\nresults: " + os.path.relpath(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
