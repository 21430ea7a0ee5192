"""The whole loop in one command, with nothing downloaded: ``python headless/demo.py``.

It writes a small SD1.5 checkpoint built in code (headless/tiny_checkpoint.py: SD1.5's real CLIP-L and VAE, a
shallow U-Net, random weights) and a dataset of eight captioned images it draws itself, trains a LoRA on them with
the sd-scripts command line of headless/train_network.py (the same trainer as the graph), loads the saved file
through ComfyUI's own LoraLoader (counting "lora key not loaded" warnings), samples the same seed with and without
it, and writes a before/after grid into ComfyUI's output folder. About a minute on a 2-core CPU. The model is
random, so the images are noise-like: the demo shows every part working, not what a real checkpoint learns."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

log = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 70), "yellow": (230, 200, 40)}


def write_dataset(folder: str, size: int = 64) -> str:
    """Eight images of coloured shapes on a light background, each with a caption .txt."""
    from PIL import Image, ImageDraw

    os.makedirs(folder, exist_ok=True)
    for i in range(8):
        shape, (colour, rgb) = SHAPES[i % 4], list(COLOURS.items())[(i // 2) % 4]
        im = Image.new("RGB", (size, size), (235, 232, 225))
        d = ImageDraw.Draw(im)
        m = size // 5
        box = (m, m, size - m, size - m)
        if shape == "circle":
            d.ellipse(box, fill=rgb)
        elif shape == "square":
            d.rectangle(box, fill=rgb)
        elif shape == "triangle":
            d.polygon([(size // 2, m), (size - m, size - m), (m, size - m)], fill=rgb)
        else:
            d.rectangle((size // 2 - m // 2, m, size // 2 + m // 2, size - m), fill=rgb)
            d.rectangle((m, size // 2 - m // 2, size - m, size // 2 + m // 2), fill=rgb)
        im.save(os.path.join(folder, f"{i:02d}_{colour}_{shape}.png"))
        with open(os.path.join(folder, f"{i:02d}_{colour}_{shape}.txt"), "w", encoding="utf-8") as f:
            f.write(f"llp {colour} {shape}, flat shape")
    return folder


def _sample_graph(ckpt: str, lora: str, prompt: str, size: int, seed: int, steps: int, prefix: str) -> dict:
    def branch(model, clip, tag):
        return {
            f"{tag}_pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": prompt}},
            f"{tag}_neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": ""}},
            f"{tag}_sample": {"class_type": "KSampler", "inputs": {
                "model": model, "positive": [f"{tag}_pos", 0], "negative": [f"{tag}_neg", 0],
                "latent_image": ["latent", 0], "seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": "euler",
                "scheduler": "normal", "denoise": 1.0}},
            f"{tag}_decode": {"class_type": "VAEDecode", "inputs": {"samples": [f"{tag}_sample", 0], "vae": ["ckpt", 2]}},
            f"{tag}_save": {"class_type": "SaveImage", "inputs": {"images": [f"{tag}_decode", 0],
                                                                 "filename_prefix": f"{prefix}/{tag}"}},
        }

    g = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
         "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
         "lora": {"class_type": "LoraLoader", "inputs": {"model": ["ckpt", 0], "clip": ["ckpt", 1], "lora_name": lora,
                                                         "strength_model": 1.0, "strength_clip": 1.0}}}
    g.update(branch(["ckpt", 0], ["ckpt", 1], "before"))
    g.update(branch(["lora", 0], ["lora", 1], "after"))
    return g


class _KeyWarnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record):
        if "lora key not loaded" in record.getMessage():
            self.count += 1


def main(argv: list[str], comfy) -> int:
    import folder_paths
    from PIL import Image

    from . import runtime, tiny_checkpoint, train_network

    p = argparse.ArgumentParser(prog="demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=120, help="training steps (default 120)")
    p.add_argument("--size", type=int, default=64, help="image size in pixels (default 64)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    out = os.path.join(folder_paths.get_output_directory(), "lora_loop_demo")
    work = os.path.join(folder_paths.get_temp_directory(), "lora_loop_demo")
    print(f"[1/4] writing a small SD1.5 checkpoint built in code and a dataset of 8 images into {work}", flush=True)
    ckpt = tiny_checkpoint.write_sd15(os.path.join(work, "lora_loop_tiny_sd15.safetensors"))
    data = write_dataset(os.path.join(work, "dataset"), args.size)
    print(f"[2/4] training {args.steps} steps with sd-scripts' arguments (headless/train_network.py)", flush=True)
    train_args = ["--pretrained_model_name_or_path", ckpt, "--train_data_dir", data, "--output_dir", out,
                  "--output_name", "lora_loop_demo", "--network_module", "networks.lora", "--network_dim", "8",
                  "--network_alpha", "8", "--learning_rate", "1e-3", "--max_train_steps", str(args.steps),
                  "--resolution", str(args.size), "--caption_extension", ".txt", "--train_batch_size", "2",
                  "--network_train_unet_only", "--seed", str(args.seed), "--save_precision", "fp16"]
    prompts = os.path.join(work, "prompts.txt")
    with open(prompts, "w", encoding="utf-8") as f:  # sd-scripts' sample-prompt format
        f.write(f"llp red circle, flat shape --w {args.size} --h {args.size} --s 12 --l 5 --d {args.seed}\n")
    train_args += ["--sample_prompts", prompts, "--sample_every_n_steps", str(max(1, args.steps // 3))]
    code = train_network.main(train_args, comfy)
    if code:
        return code
    lora_file = os.path.join(out, "lora_loop_demo.safetensors")
    print("[3/4] loading the LoRA through ComfyUI's LoraLoader and sampling the same seed without and with it",
          flush=True)
    lora = runtime.register("loras", lora_file)
    warnings = _KeyWarnings()
    logging.getLogger().addHandler(warnings)
    try:
        result = runtime.run(_sample_graph(runtime.register("checkpoints", ckpt), lora, "llp red circle, flat shape",
                                           args.size, args.seed, 12, "lora_loop_demo"), what="sampling")
    finally:
        logging.getLogger().removeHandler(warnings)
    if not result.success:
        print(f"error: {result.error}", file=sys.stderr)
        return 1
    files = runtime.output_files(result.outputs)
    before = next(f for f in files if os.path.basename(f).startswith("before"))
    after = next(f for f in files if os.path.basename(f).startswith("after"))
    a, b = Image.open(before).convert("RGB"), Image.open(after).convert("RGB")
    scale = max(1, 256 // args.size)
    a, b = (im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in (a, b))
    grid = Image.new("RGB", (a.width * 2 + 8, a.height), (255, 255, 255))
    grid.paste(a, (0, 0))
    grid.paste(b, (a.width + 8, 0))
    grid_path = os.path.join(out, "before_after.png")
    grid.save(grid_path)
    import numpy as np

    diff = float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean())
    print(f"[4/4] wrote {grid_path} (left: base model, right: with the LoRA; mean pixel change {diff:.1f}/255)")
    print(f"LoRA Loop demo: done in {time.perf_counter() - t0:.0f} s. LoRA: {lora_file}; "
          f"'lora key not loaded' warnings: {warnings.count}; samples during training: {os.path.join(out, 'sample')}")
    return 0 if warnings.count == 0 else 1


if __name__ == "__main__":
    HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]  # our file names must not shadow ComfyUI's
    import importlib.util

    spec = importlib.util.spec_from_file_location("lora_loop_comfy_boot", os.path.join(HERE, "comfy_boot.py"))
    boot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(boot)
    sys.exit(boot.main("demo", sys.argv[1:]))
