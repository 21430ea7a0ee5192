"""Find and boot a real ComfyUI for the ComfyUI-backed test tiers (no mocks).

Search order: ``COMFYUI_PATH``; the ComfyUI whose ``custom_nodes/`` holds this
pack; ``~/comfy/ComfyUI``. ``boot()`` imports ComfyUI once per process in CPU mode with all
model/output folders redirected to a temporary directory, and loads this pack (plus the
test-only pack under ``tests/support/testing_pack``) through ComfyUI's own loader."""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTING_PACK = os.path.join(PACK_ROOT, "tests", "support", "testing_pack")


def find_comfyui() -> str | None:
    candidates = []
    env = os.environ.get("COMFYUI_PATH")
    if env:
        candidates.append(env)
    parent = os.path.dirname(PACK_ROOT)
    if os.path.basename(parent) == "custom_nodes":
        candidates.append(os.path.dirname(parent))
    candidates.append(os.path.expanduser("~/comfy/ComfyUI"))
    for c in candidates:
        if os.path.isfile(os.path.join(c, "comfy", "model_patcher.py")) and os.path.isfile(os.path.join(c, "execution.py")):
            return os.path.abspath(c)
    return None


# Third-party packs some tests load through ComfyUI as users install them (never committed: fetched into a folder
# outside the repo). LORA_LOOP_PACKS (os.pathsep-separated folders) or ~/comfy/packs/<name>.
THIRD_PARTY = ("ComfyUI-GGUF",)


def third_party_packs() -> dict[str, str]:
    """name -> folder of the third-party packs found (see THIRD_PARTY)."""
    roots = [p for p in os.environ.get("LORA_LOOP_PACKS", "").split(os.pathsep) if p]
    roots.append(os.path.expanduser("~/comfy/packs"))
    found = {}
    for name in THIRD_PARTY:
        for root in roots:
            path = root if os.path.basename(os.path.normpath(root)) == name else os.path.join(root, name)
            if os.path.isfile(os.path.join(path, "__init__.py")):
                found[name] = path
                break
    return found


SKIP_REASON = ("no ComfyUI checkout found: set COMFYUI_PATH to a ComfyUI >= 0.8.0 folder with its "
               "requirements installed (searched COMFYUI_PATH, the ComfyUI holding this pack, ~/comfy/ComfyUI)")

_STATE: dict = {}


def call(fn, *args, **kwargs):
    """Run ``fn`` here, or in a worker thread when this thread already runs an event loop (e.g. after the
    Playwright sync API was used in the same pytest session): ComfyUI calls asyncio.run internally."""
    try:
        asyncio.get_running_loop()
        loop_running = True
    except RuntimeError:
        loop_running = False
    if not loop_running:  # called outside the except block: errors in fn get no misleading context
        return fn(*args, **kwargs)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def run_async(coro_fn, *args):
    return call(lambda: asyncio.run(coro_fn(*args)))


class LogCapture(logging.Handler):
    """Collects log records (e.g. ComfyUI's 'lora key not loaded' warnings)."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record):
        self.records.append(record.getMessage())

    def matching(self, text: str) -> list[str]:
        return [r for r in self.records if text in r]


def pack_module(suffix: str):
    """The pack's module ending in ``suffix`` (e.g. ``.trainer.savefile``) as ComfyUI loaded it: ComfyUI names a
    custom-node package after its folder path, with ``_x_`` for each dot (``nodes.py`` ``load_custom_node``). The
    pack's other copies in ``sys.modules`` (the trainer tests' top-level ``trainer``, ``pack_import``'s package)
    are not it."""
    import sys

    return sys.modules[PACK_ROOT.replace(".", "_x_") + suffix]


def boot(load_pack: bool | None = None) -> dict:
    """Import ComfyUI (CPU mode) and load the pack. Idempotent; returns a dict of handles.

    ``load_pack=False`` (or env ``LORA_LOOP_TEST_SKIP_PACK=1`` when ``load_pack`` is None) loads only the
    test-only pack, for working on tests while the main pack does not import yet. Default: load both."""
    if load_pack is None:
        load_pack = os.environ.get("LORA_LOOP_TEST_SKIP_PACK", "") not in ("1", "true", "yes")
    if _STATE:
        return _STATE
    root = find_comfyui()
    if root is None:
        raise RuntimeError(SKIP_REASON)
    if root not in sys.path:
        sys.path.insert(0, root)
    import utils.extra_config  # noqa: F401  (must precede `import nodes`, as in ComfyUI's main.py)
    from comfy.cli_args import args

    args.cpu = True
    import folder_paths

    tmp = tempfile.mkdtemp(prefix="lora_loop_comfy_")
    for sub in ("out", "temp", "in", "models/loras", "models/checkpoints", "user"):
        os.makedirs(os.path.join(tmp, sub), exist_ok=True)
    folder_paths.set_output_directory(os.path.join(tmp, "out"))
    folder_paths.set_temp_directory(os.path.join(tmp, "temp"))
    folder_paths.set_input_directory(os.path.join(tmp, "in"))
    folder_paths.set_user_directory(os.path.join(tmp, "user")) if hasattr(folder_paths, "set_user_directory") else None
    # Our LoRAs must land in a folder that core's LoraLoader lists; make it the first "loras" path.
    folder_paths.folder_names_and_paths["loras"] = ([os.path.join(tmp, "models", "loras")],
                                                    folder_paths.folder_names_and_paths["loras"][1])
    import comfy.model_management  # noqa: F401
    import nodes
    import execution  # noqa: F401

    run_async(nodes.init_extra_nodes, False, False)
    if load_pack:
        ok = run_async(nodes.load_custom_node, PACK_ROOT)
        if not ok:
            raise RuntimeError("ComfyUI failed to load the LoRA Loop pack (see the log above); set "
                               "LORA_LOOP_TEST_SKIP_PACK=1 to run the tests that need only the test-only pack")
    if os.path.isdir(TESTING_PACK):
        if not run_async(nodes.load_custom_node, TESTING_PACK):
            raise RuntimeError("ComfyUI failed to load the test-only pack tests/support/testing_pack")
    third_party = {}
    for name, path in third_party_packs().items():
        third_party[name] = bool(run_async(nodes.load_custom_node, path))
        if not third_party[name]:
            logging.warning("third-party pack %s at %s failed to load: its tests will be skipped", name, path)
    capture = LogCapture()
    logging.getLogger().addHandler(capture)
    logging.getLogger().setLevel(logging.INFO)
    _STATE.update(root=root, tmp=tmp, log=capture, pack_loaded=load_pack, third_party=third_party)
    return _STATE


class DummyServer:
    """Stands in for PromptServer when running PromptExecutor without the web server."""

    client_id = None
    last_node_id = None
    last_prompt_id = None
    sockets_metadata: dict = {}

    def __init__(self):
        self.msgs: list = []

    def send_sync(self, event, data, sid=None):
        self.msgs.append((event, data))

    def send_progress_text(self, *a, **k):
        pass


def new_executor():
    """A PromptExecutor with an empty node cache (a fresh ComfyUI session as far as caching goes)."""
    boot()
    import execution

    return execution.PromptExecutor(DummyServer(), cache_type=execution.CacheType.CLASSIC,
                                    cache_args={"lru": 0, "ram": 0})


def execute(prompt: dict, prompt_id: str = "p1", executor=None):
    """Validate (must pass) and execute ``prompt`` without requiring success; returns the executor."""
    boot()
    import execution

    valid = run_async(execution.validate_prompt, prompt_id, prompt, None)
    assert valid[0], f"prompt invalid: {valid[1]} {valid[3]}"
    executor = executor or new_executor()
    call(executor.execute, prompt, prompt_id, extra_data={}, execute_outputs=valid[2])
    return executor


def run_prompt(prompt: dict, prompt_id: str = "p1", executor=None):
    """Validate and execute an API-format prompt with ComfyUI's real executor.

    Returns ``(executor, server)``. Raises AssertionError with ComfyUI's own error text on failure."""
    executor = execute(prompt, prompt_id, executor)
    assert executor.success, f"execution failed: {executor.status_messages}"
    return executor, executor.server


def execute_watching(prompt: dict, prompt_id: str, total: int, executor=None, cancel_at: int | None = None):
    """Execute ``prompt`` (success not required) recording the values of the progress bar with ``total``
    steps (Train LoRA's); with ``cancel_at``, press Cancel (interrupt_current_processing) when that bar
    reaches it. Like ComfyUI's server, every progress update raises once Cancel was pressed. Returns
    ``(executor, values seen)``."""
    boot()
    import comfy.model_management as mm
    import comfy.utils as cu

    seen: list[int] = []

    def hook(value, bar_total, preview, prompt_id=None, node_id=None):
        mm.throw_exception_if_processing_interrupted()  # as ComfyUI's server hook does (main.py hijack_progress)
        if bar_total == total:
            seen.append(value)
            if value == cancel_at:
                mm.interrupt_current_processing(True)

    cu.set_progress_bar_global_hook(hook)
    try:
        return execute(prompt, prompt_id, executor), seen
    finally:
        cu.set_progress_bar_global_hook(None)


if __name__ == "__main__":  # used by .ci/run: print the ComfyUI folder the tests will use (or nothing)
    print(find_comfyui() or "")
