"""Start ComfyUI inside this process for the headless commands, then hand over to the command.

This file is run before the pack can be imported (the pack is a ComfyUI custom node, imported by ComfyUI's own
loader), so it uses nothing of the pack. It finds ComfyUI (``--comfyui``, else ``COMFYUI_PATH``, else the ComfyUI
whose ``custom_nodes`` folder holds this pack, else ``~/comfy/ComfyUI``), applies ComfyUI's own command-line
options (``--comfyui_args "--lowvram ..."``), joins the process group of ``accelerate launch`` (each rank on its own
GPU, or gloo on the CPU), imports ComfyUI's nodes, loads this pack through ComfyUI's ``load_custom_node`` and runs
``<pack>.headless.<command>.main(argv, comfy)``."""
from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import shlex
import sys

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_comfyui(explicit: str | None = None) -> str | None:
    candidates = [explicit] if explicit else []
    if os.environ.get("COMFYUI_PATH"):
        candidates.append(os.environ["COMFYUI_PATH"])
    parent = os.path.dirname(PACK_ROOT)
    if os.path.basename(parent) == "custom_nodes":
        candidates.append(os.path.dirname(parent))
    candidates.append(os.path.expanduser("~/comfy/ComfyUI"))
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "comfy", "model_patcher.py")) and \
                os.path.isfile(os.path.join(c, "execution.py")):
            return os.path.abspath(c)
    return None


def _boot_options(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--comfyui", default=None)
    p.add_argument("--comfyui_args", default="")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--load_custom_nodes", action="store_true")
    return p.parse_known_args(argv)


class Comfy:
    """What the commands get: ComfyUI's folder, this pack's module name, and the boot options."""

    def __init__(self, root: str, package: str, options: argparse.Namespace, rank: int, world_size: int):
        self.root = root
        self.package = package
        self.options = options
        self.rank = rank
        self.world_size = world_size

    def module(self, name: str):
        """A module of this pack as ComfyUI loaded it (``name`` like ``trainer.distributed``)."""
        return importlib.import_module(f"{self.package}.{name}")


def _world() -> tuple[int, int, int]:
    return (int(os.environ.get("RANK", "0") or 0), int(os.environ.get("WORLD_SIZE", "1") or 1),
            int(os.environ.get("LOCAL_RANK", "0") or 0))


def _apply_paths(root: str, args) -> None:
    """The folders ComfyUI's main.py sets up from its flags and extra_model_paths.yaml, so that the headless
    commands see the same models and write to the same output folder as the user's ComfyUI."""
    import itertools

    import folder_paths
    import utils.extra_config

    default = os.path.join(root, "extra_model_paths.yaml")
    if os.path.isfile(default):
        utils.extra_config.load_extra_path_config(default)
    for path in itertools.chain(*(args.extra_model_paths_config or [])):
        utils.extra_config.load_extra_path_config(path)
    if args.output_directory:
        folder_paths.set_output_directory(os.path.abspath(args.output_directory))
    if args.input_directory:
        folder_paths.set_input_directory(os.path.abspath(args.input_directory))
    if args.user_directory:
        folder_paths.set_user_directory(os.path.abspath(args.user_directory))
    if args.temp_directory:
        folder_paths.set_temp_directory(os.path.join(os.path.abspath(args.temp_directory), "temp"))
    os.makedirs(folder_paths.get_temp_directory(), exist_ok=True)


def boot(argv: list[str]) -> tuple[Comfy, list[str]]:
    opts, rest = _boot_options(argv)
    root = find_comfyui(opts.comfyui)
    if root is None:
        raise SystemExit("error: no ComfyUI found: pass --comfyui /path/to/ComfyUI or set COMFYUI_PATH (searched "
                         "COMFYUI_PATH, the ComfyUI whose custom_nodes holds this pack, ~/comfy/ComfyUI)")
    rank, world, local_rank = _world()
    if rank > 0:  # one process talks: the others only warn
        os.environ.setdefault("TQDM_DISABLE", "1")
    if root not in sys.path:
        sys.path.insert(0, root)
    import torch

    cpu = opts.cpu or not torch.cuda.is_available()
    if world > 1 and not cpu:
        torch.cuda.set_device(local_rank)  # before ComfyUI asks torch for its device
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import utils.extra_config  # noqa: F401  (must precede `import nodes`, as in ComfyUI's main.py)
    from comfy.cli_args import args, parser

    given = parser.parse_args(shlex.split(opts.comfyui_args))
    for k, v in vars(given).items():
        setattr(args, k, v)
    from comfy.cli_args import PerformanceFeature  # what cli_args does after its own parse_args

    args.fast = set() if given.fast is None else set(PerformanceFeature) if given.fast == [] else set(given.fast)
    if args.force_fp16:
        args.fp16_unet = True
    if cpu:
        args.cpu = True
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s", force=True)
    _apply_paths(root, args)
    import comfy.model_management  # noqa: F401
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=opts.load_custom_nodes, init_api_nodes=False))
    package = PACK_ROOT.replace(".", "_x_")
    if package not in sys.modules:
        already = [m for m in list(sys.modules.values())
                   if os.path.abspath(getattr(m, "__file__", "") or "") == os.path.join(PACK_ROOT, "__init__.py")]
        if already:
            package = already[0].__name__
        elif not asyncio.run(nodes.load_custom_node(PACK_ROOT)):
            raise SystemExit(f"error: ComfyUI could not load the LoRA Loop pack at {PACK_ROOT} (see the log above)")
    comfy_obj = Comfy(root, package, opts, rank, world)
    comfy_obj.module("trainer.distributed").init_from_environment(cpu=cpu)
    return comfy_obj, rest


def main(command: str, argv: list[str]) -> int:
    comfy_obj, rest = boot(argv)
    try:
        code = int(comfy_obj.module(f"headless.{command}").main(rest, comfy_obj) or 0)
    finally:
        comfy_obj.module("trainer.distributed").shutdown()
    if comfy_obj.world_size > 1:
        # several processes: leave without the interpreter's teardown, where gloo's / NCCL's threads can end the
        # process in std::terminate after the group is gone and turn a finished run into a failed one
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
