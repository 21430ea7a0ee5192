"""Fixtures for the browser tier: a real ComfyUI server (main.py --cpu) serving this pack's web/,
and headless Debian Chromium driven by the Python playwright package (never `playwright install`).

Every test that uses the server runs once per frontend (test ids ``[fe-<version>]``):

* the frontend this Python has installed (the comfyui-frontend-package ComfyUI's requirements pin),
  always;
* each extra frontend folder: the entries of ``LORA_LOOP_FRONTEND_DIRS`` (os.pathsep-separated) or,
  when that variable is unset, every folder under ``~/comfy/frontends/`` (set it empty for the
  installed frontend only). A folder is a
  ``pip install --no-deps --target <folder> comfyui-frontend-package==<version>`` install (or that
  install's ``comfyui_frontend_package/static`` folder); the server serves its static folder through
  ``main.py --front-end-root`` and the test id takes the version from the folder's package metadata.
  A configured folder that holds no such install gives skipped tests naming the install command.

Skips with a clear message when Chromium, playwright or a ComfyUI checkout is missing."""
from __future__ import annotations

import glob
import importlib.metadata
import os
import re
import shutil
import sys
from dataclasses import dataclass

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.append(HERE)

import comfy_env  # noqa: E402  (tests/support, added to sys.path by tests/conftest.py)
from comfy_server import ComfyServer  # noqa: E402

CHROMIUM_ENV = "LORA_LOOP_CHROMIUM"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"]
OUR_PATH = "/extensions/lora_loop/"
FRONTEND_DIRS_ENV = "LORA_LOOP_FRONTEND_DIRS"
DEFAULT_FRONTENDS = os.path.expanduser("~/comfy/frontends")
FRONTEND_DIST = "comfyui-frontend-package"


@dataclass(frozen=True)
class Frontend:
    version: str
    static: str | None  # None: the frontend installed in this Python (ComfyUI's default web root)

    @property
    def id(self) -> str:
        return f"fe-{self.version}"


def _frontend_in(folder: str) -> Frontend | None:
    """The frontend a pip --target folder (or its comfyui_frontend_package/static folder) holds."""
    folder = os.path.abspath(os.path.expanduser(folder))
    if os.path.basename(folder) == "static" and os.path.basename(os.path.dirname(folder)) == "comfyui_frontend_package":
        folder = os.path.dirname(os.path.dirname(folder))
    static = os.path.join(folder, "comfyui_frontend_package", "static")
    if not os.path.isfile(os.path.join(static, "index.html")):
        return None
    for dist in importlib.metadata.distributions(path=[folder]):
        if dist.metadata["Name"].lower().replace("_", "-") == FRONTEND_DIST:
            return Frontend(dist.version, static)
    return None


def frontend_params() -> list:
    try:
        pinned = importlib.metadata.version(FRONTEND_DIST)
    except importlib.metadata.PackageNotFoundError:
        pinned = "installed"
    params = [pytest.param(Frontend(pinned, None), id=Frontend(pinned, None).id)]
    env = os.environ.get(FRONTEND_DIRS_ENV)
    if env is None:
        folders = sorted(glob.glob(os.path.join(DEFAULT_FRONTENDS, "*", "")))
    else:
        folders = [f for f in env.split(os.pathsep) if f.strip()]
    seen = {pinned}
    for folder in folders:
        fe = _frontend_in(folder)
        if fe is None:
            name = os.path.basename(os.path.normpath(folder))
            wanted = name if re.fullmatch(r"\d+\.\d+\.\d+", name) else "<version>"
            params.append(pytest.param(None, id=f"fe-missing-{name}", marks=pytest.mark.skip(
                reason=f"no comfyui-frontend-package install in {folder}: run `python -m pip install --no-deps "
                       f"--target {folder} comfyui-frontend-package=={wanted}`, or drop it from "
                       f"{FRONTEND_DIRS_ENV if env is not None else DEFAULT_FRONTENDS}")))
        elif fe.version not in seen:
            seen.add(fe.version)
            params.append(pytest.param(fe, id=fe.id))
    return params


def chromium_path() -> str | None:
    env = os.environ.get(CHROMIUM_ENV)
    if env:
        return env if os.path.isfile(env) else None
    for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or ""):
        if p and os.path.isfile(p):
            return p
    return None


@pytest.fixture(scope="session")
def chromium_executable():
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium binary: install Debian's package (`apt-get update && apt-get install -y chromium`) "
                    f"or set {CHROMIUM_ENV} to a Chromium executable")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the Python `playwright` package is missing: `pip install playwright` "
                    "(do NOT run `playwright install`; the tests use the system Chromium)")
    return path


@pytest.fixture(scope="session", params=frontend_params())
def frontend(request) -> Frontend:
    return request.param


@pytest.fixture(scope="session")
def comfy_server(chromium_executable, frontend):
    root = comfy_env.find_comfyui()
    if root is None:
        pytest.skip(comfy_env.SKIP_REASON)
    server = ComfyServer.start(root, front_end_root=frontend.static)
    server.frontend = frontend
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(chromium_executable):
    """Module-scoped on purpose: playwright's sync API keeps an asyncio loop running in the main
    thread while it is open, which breaks asyncio.run() in later (non-browser) test modules."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_executable, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class PageProblems:
    """Console errors and uncaught page errors seen by one page."""

    def __init__(self):
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []

    def ours(self) -> list[str]:
        """Problems that mention this pack's files or event/extension names."""
        keys = (OUR_PATH, "lora_loop", "lora-loop", "loss_chart")
        return [m for m in self.console_errors + self.page_errors if any(k in m for k in keys)]


@pytest.fixture
def comfy_page(browser, comfy_server):
    """A fresh browser context on the ComfyUI page, after the app and its extensions are ready."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    problems = PageProblems()

    def on_console(msg):
        if msg.type == "error":
            loc = msg.location or {}
            problems.console_errors.append(f"{msg.text} @ {loc.get('url', '')}:{loc.get('lineNumber', '')}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: problems.page_errors.append(f"{exc.name}: {exc.message}\n{exc.stack}"))
    page.goto(comfy_server.url, wait_until="domcontentloaded")
    page.wait_for_function("() => window.app && window.app.extensionManager && window.app.graph "
                           "&& Array.isArray(window.app.extensions) && window.app.extensions.length > 0",
                           timeout=120_000)
    served = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ ?? null")
    assert served == comfy_server.frontend.version, \
        f"the page runs frontend {served}, the test asked for {comfy_server.frontend.version}"
    page.problems = problems
    yield page
    context.close()
