"""Train a LoRA from the command line with sd-scripts' arguments, through ComfyUI, in this process.

    accelerate launch --num_cpu_threads_per_process 1 /path/to/lora-loop/headless/train_network.py \\
        --pretrained_model_name_or_path=model.safetensors --dataset_config=my_dataset.toml \\
        --output_dir=./output --output_name=my_lora --network_module=networks.lora \\
        --network_dim=16 --network_alpha=8 --learning_rate=1e-4 --max_train_epochs=10

(plain ``python headless/train_network.py ...`` works too). It takes the LoRA arguments of sd-scripts'
train_network.py, sdxl_train_network.py, flux_train_network.py and sd3_train_network.py (the model family is
detected by ComfyUI), ``--config_file`` and ``--dataset_config``, builds the graph Load Dataset -> Bucket Images
-> Encode Dataset -> Inject LoRA -> Train LoRA -> Save LoRA on ComfyUI's own loaders and runs it through
ComfyUI's executor: the same trainer and the same file as in the graph. Options of this front: ``--comfyui PATH``,
``--comfyui_args "..."`` (ComfyUI's own flags, e.g. "--lowvram"), ``--cpu``, ``--load_custom_nodes``.
See docs/headless.md."""
from __future__ import annotations

import glob
import logging
import os
import sys
import time

log = logging.getLogger(__name__)


def _preview_saver(folder: str, output_name: str, train_id: str):
    """Writes each preview image Train LoRA reports to ``folder`` with sd-scripts' sample names."""
    counts: dict[int, int] = {}

    def save(node_id: str, value: int, total: int, preview) -> None:
        if node_id != train_id or not isinstance(preview, tuple) or len(preview) < 2:
            return
        image = preview[1]
        index = counts.get(value, 0)
        counts[value] = index + 1
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{output_name}_{value:06d}_{index:02d}_{time.strftime('%Y%m%d%H%M%S')}.png")
        image.save(path)
        log.info("sample: %s", path)

    return save


def _load_gguf_pack(comfy) -> None:
    """UnetLoaderGGUF comes from city96/ComfyUI-GGUF: load it from ComfyUI's custom_nodes when it is not loaded."""
    import asyncio

    import nodes

    if "UnetLoaderGGUF" in nodes.NODE_CLASS_MAPPINGS:
        return
    for folder in glob.glob(os.path.join(comfy.root, "custom_nodes", "*")):
        if os.path.isfile(os.path.join(folder, "nodes.py")) and "gguf" in os.path.basename(folder).lower():
            asyncio.run(nodes.load_custom_node(folder))
            if "UnetLoaderGGUF" in nodes.NODE_CLASS_MAPPINGS:
                return
    raise SystemExit("error: a .gguf model needs city96/ComfyUI-GGUF in ComfyUI's custom_nodes folder "
                     "(git clone https://github.com/city96/ComfyUI-GGUF there; pip install gguf)")


def main(argv: list[str], comfy) -> int:
    from . import kohya_cli, runtime

    try:
        parsed = kohya_cli.parse(argv)
    except kohya_cli.CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    main_rank = comfy.rank == 0
    if main_rank:
        for line in kohya_cli.info_lines(parsed):  # arguments that change nothing here, the seed drawn, ...
            log.info("LoRA Loop: %s", line)
    te = parsed.loader.text_encoders
    if parsed.loader.model == "gguf" or (te is not None and "GGUF" in te[0]):
        _load_gguf_pack(comfy)  # before graph(): its folder kinds must exist when the files are registered
    try:
        prompt = kohya_cli.graph(parsed, runtime.register)
    except (kohya_cli.CliError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out_dir = runtime.output_folder_for_loras(parsed.output_dir)  # after graph(): the first loras folder
    name = parsed.output_name
    if main_rank:
        log.info("LoRA Loop: training %s into %s (%d process%s)", name, out_dir, comfy.world_size,
                 "es" if comfy.world_size > 1 else "")
    saver = _preview_saver(os.path.join(out_dir, "sample"), name, "train") if main_rank else None
    result = runtime.run(prompt, on_preview=saver, what="training after the current step")
    if not main_rank:
        return 0 if result.success else (130 if result.interrupted else 1)
    for text in result.outputs.get("save", {}).get("text", []) or []:
        print(f"LoRA Loop: {text}")
    if result.interrupted:
        ckpts = sorted(glob.glob(os.path.join(out_dir, f"{name}_checkpoints", "*.safetensors")), key=os.path.getmtime)
        where = f" The last completed step is saved: {ckpts[-1]} (resume with --resume {ckpts[-1]})." if ckpts else ""
        print(f"LoRA Loop: stopped by Ctrl-C.{where}")
        return 130
    if not result.success:
        print(f"error: {result.error or 'training failed (see the log above)'}", file=sys.stderr)
        return 1
    print(f"LoRA Loop: done in {result.seconds:.0f} s; files: " + ", ".join(runtime.output_files(result.outputs)))
    return 0


if __name__ == "__main__":
    HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]  # our file names must not shadow ComfyUI's
    import importlib.util

    spec = importlib.util.spec_from_file_location("lora_loop_comfy_boot", os.path.join(HERE, "comfy_boot.py"))
    boot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(boot)
    sys.exit(boot.main("train_network", sys.argv[1:]))
