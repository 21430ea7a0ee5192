"""A real ComfyUI server for the browser tier, plus helpers to queue API prompts on it.

``ComfyServer.start()`` runs ``main.py --cpu`` from the ComfyUI checkout that
``comfy_env.find_comfyui()`` finds, with every folder (output, input, temp, user, database)
in a temporary directory (optionally serving another frontend's static folder through
``--front-end-root``), and loads only this pack (symlinked as ``lora_loop``) plus the
test-only pack ``tests/support/testing_pack`` through an ``--extra-model-paths-config`` YAML
whose ``custom_nodes`` entry points at that directory (schema: ComfyUI ``utils/extra_config.py``;
same approach as ComfyUI's ``tests/execution/test_execution.py``)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTING_PACK = os.path.join(PACK_ROOT, "tests", "support", "testing_pack")
PACK_LINK_NAME = "lora_loop"  # served at /extensions/lora_loop/...
EXTRA_NODES_ENV = "LORA_LOOP_TEST_EXTRA_NODES"  # os.pathsep-separated extra custom-node dirs


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, data: dict | None = None, timeout: float = 30.0):
    """GET (data None) or POST JSON; returns the decoded JSON body. Raises with the server's
    error text on HTTP errors."""
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read().decode() or "null")
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{req.get_method()} {url} -> HTTP {e.code}: {e.read().decode(errors='replace')[:4000]}") from e


@dataclass
class ComfyServer:
    root: str
    tmp: str
    port: int
    proc: subprocess.Popen | None = None
    log_path: str = ""
    object_info: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, root: str, startup_timeout: float = 180.0, front_end_root: str | None = None) -> "ComfyServer":
        """``front_end_root``: a frontend's static folder to serve (``main.py --front-end-root``) instead
        of the comfyui-frontend-package installed in this Python."""
        tmp = tempfile.mkdtemp(prefix="lora_loop_browser_")
        for sub in ("out", "in", "temp", "user", "custom_nodes"):
            os.makedirs(os.path.join(tmp, sub), exist_ok=True)
        nodes_dir = os.path.join(tmp, "custom_nodes")
        os.symlink(PACK_ROOT, os.path.join(nodes_dir, PACK_LINK_NAME))
        if os.path.isdir(TESTING_PACK):
            os.symlink(TESTING_PACK, os.path.join(nodes_dir, "testing_pack"))
        for extra in filter(None, os.environ.get(EXTRA_NODES_ENV, "").split(os.pathsep)):
            os.symlink(os.path.abspath(extra), os.path.join(nodes_dir, os.path.basename(os.path.normpath(extra))))
        yaml_path = os.path.join(tmp, "extra_model_paths.yaml")
        with open(yaml_path, "w", encoding="utf-8") as f:
            # A JSON object is valid YAML; custom_nodes is resolved against base_path.
            json.dump({"lora_loop_tests": {"base_path": tmp, "custom_nodes": "custom_nodes"}}, f)
        port = free_port()
        server = cls(root=root, tmp=tmp, port=port, log_path=os.path.join(tmp, "server.log"))
        cmd = [sys.executable, os.path.join(root, "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--output-directory", os.path.join(tmp, "out"), "--input-directory", os.path.join(tmp, "in"),
               "--temp-directory", os.path.join(tmp, "temp"), "--user-directory", os.path.join(tmp, "user"),
               "--database-url", "sqlite:///" + os.path.join(tmp, "user", "comfyui.db"),
               "--extra-model-paths-config", yaml_path, "--disable-auto-launch", "--disable-api-nodes"]
        if front_end_root is not None:
            cmd += ["--front-end-root", front_end_root]
        logf = open(server.log_path, "w", encoding="utf-8")
        env = dict(os.environ)
        # testing_pack imports helpers from tests/support; through the symlink its own
        # path-relative lookup cannot find them, so put tests/support on the server's path.
        support = os.path.join(PACK_ROOT, "tests", "support")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), support]))
        server.proc = subprocess.Popen(cmd, cwd=root, stdout=logf, stderr=subprocess.STDOUT, env=env)
        logf.close()
        deadline = time.monotonic() + startup_timeout
        while True:
            if server.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {server.proc.returncode} during startup:\n{server.log_tail()}")
            try:
                server.object_info = http_json(server.url + "/object_info", timeout=10)
                return server
            except (OSError, RuntimeError):
                pass
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"ComfyUI did not answer /object_info within {startup_timeout:.0f}s:\n{server.log_tail()}")
            time.sleep(0.5)

    def log_tail(self, chars: int = 6000) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()[-chars:]
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        self.proc = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def has_node(self, node_id: str) -> bool:
        return node_id in self.object_info

    # ---- prompts ---------------------------------------------------------------------------------
    def queue_prompt(self, prompt: dict, client_id: str) -> str:
        """POST an API-format prompt; returns its prompt_id. Validation errors raise with the
        server's node_errors text."""
        res = http_json(self.url + "/prompt", {"prompt": prompt, "client_id": client_id})
        return res["prompt_id"]

    def wait_history(self, prompt_id: str, timeout: float = 600.0) -> dict:
        """Poll /history/<id> until the prompt finished (success or error); returns its entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hist = http_json(f"{self.url}/history/{prompt_id}")
            entry = hist.get(prompt_id) if hist else None
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"].get("completed") or entry["status"].get("status_str") == "error"):
                return entry
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout:.0f}s:\n{self.log_tail()}")

    def run_prompt_ws(self, prompt: dict, timeout: float = 600.0) -> "PromptRun":
        """Queue ``prompt`` under a fresh client id and follow it over the websocket until
        ``execution_success`` / ``execution_error`` / ``execution_interrupted``. Returns every JSON
        message received (including ``lora_loop.progress``) and the history entry.

        Runs its own event loop in a worker thread, so it also works while playwright's sync API
        (which keeps a loop running in the main thread) is active."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, self._run_prompt_ws(prompt, timeout)).result()

    async def _run_prompt_ws(self, prompt: dict, timeout: float) -> "PromptRun":
        import aiohttp

        client_id = uuid.uuid4().hex
        messages: list[dict] = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}") as ws:
                async with session.post(self.url + "/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
                    body = await r.text()
                    if r.status != 200:
                        raise RuntimeError(f"POST /prompt -> HTTP {r.status}: {body[:4000]}")
                    prompt_id = json.loads(body)["prompt_id"]
                end = None
                deadline = time.monotonic() + timeout
                while end is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout:.0f}s:\n{self.log_tail()}")
                    msg = await ws.receive(timeout=left)
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        data = json.loads(msg.data)
                        messages.append(data)
                        d = data.get("data") or {}
                        if data.get("type") in ("execution_success", "execution_error", "execution_interrupted") \
                                and d.get("prompt_id") == prompt_id:
                            end = data["type"]
                    elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        raise RuntimeError(f"websocket closed before prompt {prompt_id} finished:\n{self.log_tail()}")
                    # binary frames (previews) are ignored
        history = self.wait_history(prompt_id, timeout=30)
        return PromptRun(prompt_id=prompt_id, client_id=client_id, end=end, messages=messages, history=history)


@dataclass
class PromptRun:
    prompt_id: str
    client_id: str
    end: str  # "execution_success" | "execution_error" | "execution_interrupted"
    messages: list
    history: dict

    def events(self, type_: str) -> list[dict]:
        return [m["data"] for m in self.messages if m.get("type") == type_]
