"""Run an API-format prompt through ComfyUI's own executor in this process, with console progress and Ctrl-C.

What the headless commands share: validate and execute a prompt (``execution.validate_prompt`` and
``execution.PromptExecutor``, as ComfyUI's server does), show each node's progress bar on the console (Train LoRA
prints its own step line), hand preview images to a callback, make files ComfyUI's loaders can list
(``register``), and turn the first Ctrl-C into ComfyUI's Cancel: the running node stops at its next check (Train
LoRA after the current step, saving it like Cancel), a second Ctrl-C quits at once."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)

# folder_paths kinds by the loader that reads them
KINDS = ("checkpoints", "diffusion_models", "text_encoders", "vae", "loras", "unet_gguf", "clip_gguf")


class ConsoleServer:
    """Stands in for ComfyUI's PromptServer while the executor runs without the web server: execution events are
    kept, errors and interruptions are logged."""

    client_id = None
    last_node_id = None
    last_prompt_id = None
    sockets_metadata: dict = {}

    def __init__(self):
        self.messages: list[tuple[str, Any]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))
        if event == "execution_error":
            log.error("%s (node %s, %s)", data.get("exception_message", "").strip(), data.get("node_id"),
                      data.get("node_type"))

    def send_progress_text(self, *args, **kwargs):
        pass


def register(kind: str, path: str) -> str:
    """Make ComfyUI's loaders list the file at ``path`` (its folder joins the ``kind`` folder list) and return the
    name to give the loader. ``loras``: the folder becomes the first loras folder (where Save LoRA writes)."""
    import folder_paths

    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    if kind in ("unet_gguf", "clip_gguf"):  # city96/ComfyUI-GGUF's folder kinds, when that pack is loaded
        kind = kind if kind in folder_paths.folder_names_and_paths else (
            "diffusion_models" if kind == "unet_gguf" else "text_encoders")
    folder = os.path.dirname(path)
    folder_paths.add_model_folder_path(kind, folder, is_default=True)
    return os.path.basename(path)


def output_folder_for_loras(folder: str) -> str:
    """Make ``folder`` the first loras folder: Save LoRA and the checkpoints write there."""
    import folder_paths

    folder = os.path.abspath(os.path.expanduser(folder))
    os.makedirs(folder, exist_ok=True)
    folder_paths.add_model_folder_path("loras", folder, is_default=True)
    return folder


@dataclass
class RunResult:
    success: bool
    outputs: dict = field(default_factory=dict)     # node id -> its UI output (saved files, texts, images)
    interrupted: bool = False
    error: str = ""
    seconds: float = 0.0


class _Console:
    """The global progress hook: a tqdm bar per node (Train LoRA's own step line excepted), previews to a callback,
    and ComfyUI's Cancel check as the server's hook does it."""

    def __init__(self, prompt: dict, on_preview, quiet_nodes: set[str], collective_stop: bool = False):
        self.prompt = prompt
        self.on_preview = on_preview
        self.quiet = quiet_nodes
        # several processes: Train LoRA's ranks agree on stopping between steps; one rank raising alone would leave
        # the others waiting in the next gradient all-reduce
        self.collective_stop = collective_stop
        self.bars: dict[str, Any] = {}

    def __call__(self, value, total, preview, prompt_id=None, node_id=None):
        import comfy.model_management as mm

        if preview is not None and self.on_preview is not None:
            self.on_preview(str(node_id), value, total, preview)
        if node_id is not None and str(node_id) not in self.quiet:
            bar = self.bars.get(str(node_id))
            if bar is None or bar.total != total:
                from tqdm.auto import tqdm

                if bar is not None:
                    bar.close()
                kind = self.prompt.get(str(node_id), {}).get("class_type", "")
                bar = self.bars[str(node_id)] = tqdm(total=total, desc=f"{kind} #{node_id}", leave=False,
                                                     dynamic_ncols=True, mininterval=0.5)
            bar.n = value
            bar.refresh()
        if not (self.collective_stop and str(node_id) in self.quiet):
            mm.throw_exception_if_processing_interrupted()

    def close(self):
        for bar in self.bars.values():
            bar.close()


class _CtrlC:
    """First Ctrl-C: ComfyUI's Cancel (the step in progress finishes and is saved). Second: quit now."""

    def __init__(self, what: str):
        self.what = what
        self.count = 0
        self.previous = None

    def __enter__(self):
        # SIGTERM too: accelerate's launcher (torchrun) passes Ctrl-C on to each process and soon after terminates it
        self.previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        import comfy.model_management as mm

        self.count += 1
        if self.count > 1 and signum == signal.SIGINT:
            raise KeyboardInterrupt
        print(f"\nCtrl-C: stopping {self.what} (press Ctrl-C again to quit at once)", flush=True)
        mm.interrupt_current_processing(True)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def validate(prompt: dict) -> tuple[list[str], str]:
    """(output node ids, "") when ComfyUI accepts ``prompt``; ([], its error text) otherwise."""
    import execution

    ok, error, outputs, node_errors = asyncio.run(execution.validate_prompt("headless", prompt, None))
    if ok:
        return list(outputs), ""
    lines = [f"{error.get('message', error)}: {error.get('details', '')}".strip(": ")]
    for nid, info in (node_errors or {}).items():
        for e in info.get("errors", []):
            lines.append(f"  node {nid} ({info.get('class_type')}): {e.get('message')}: {e.get('details', '')}")
    return [], "\n".join(lines)


def run(prompt: dict, *, on_preview: Callable[[str, int, int, Any], None] | None = None,
        quiet_nodes: tuple[str, ...] = (), what: str = "the run", extra_data: dict | None = None) -> RunResult:
    """Validate and execute ``prompt``; previews go to ``on_preview(node_id, value, total, preview)``."""
    import comfy.model_management as mm
    import comfy.utils as cu
    import execution

    outputs, error = validate(prompt)
    if error:
        return RunResult(False, error="the workflow does not validate:\n" + error)
    quiet = {str(n) for n in quiet_nodes} | {k for k, v in prompt.items()
                                             if v.get("class_type") == "LoraLoop_TrainLoRA"}
    from ..trainer import distributed

    console = _Console(prompt, on_preview, quiet, collective_stop=distributed.current().distributed)
    executor = execution.PromptExecutor(ConsoleServer(), cache_type=execution.CacheType.CLASSIC,
                                        cache_args={"lru": 0, "ram": 0})
    mm.interrupt_current_processing(False)
    cu.set_progress_bar_global_hook(console)
    t0 = time.perf_counter()
    try:
        with _CtrlC(what):
            executor.execute(prompt, "headless", extra_data=extra_data or {}, execute_outputs=outputs)
    finally:
        cu.set_progress_bar_global_hook(None)
        console.close()
    seconds = time.perf_counter() - t0
    result = dict(executor.history_result.get("outputs", {})) if executor.history_result else {}
    interrupted = any(event == "execution_interrupted" for event, _ in executor.status_messages)
    err = ""
    for event, data in executor.status_messages:
        if event == "execution_error":
            err = f"{data.get('node_type')} (node {data.get('node_id')}): {str(data.get('exception_message', '')).strip()}"
    mm.interrupt_current_processing(False)
    return RunResult(executor.success and not interrupted, result, interrupted, err, seconds)


def output_files(outputs: dict) -> list[str]:
    """Paths of the files a run's output nodes report (images, saved LoRAs), for printing."""
    import folder_paths

    found = []
    for out in outputs.values():
        for item in out.get("lora_loop_saved", []) or []:
            name = item.get("name") if isinstance(item, dict) else None
            if name:
                path = folder_paths.get_full_path("loras", name)
                found.append(path or name)
        for key in ("images", "gifs", "audio", "video"):
            for item in out.get(key, []) or []:
                if isinstance(item, dict) and item.get("filename"):
                    base = {"output": folder_paths.get_output_directory(),
                            "temp": folder_paths.get_temp_directory()}.get(item.get("type"), "")
                    found.append(os.path.join(base, item.get("subfolder", ""), item["filename"]))
    return found
