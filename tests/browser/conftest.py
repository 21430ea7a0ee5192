"""Fixtures for the browser tier: a real ComfyUI server (main.py --cpu) serving this pack's web/,
and headless Debian Chromium driven by the Python playwright package (never `playwright install`).

Skips with a clear message when Chromium, playwright or a ComfyUI checkout is missing."""
from __future__ import annotations

import os
import shutil
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.append(HERE)

import comfy_env  # noqa: E402  (tests/support, added to sys.path by tests/conftest.py)
from comfy_server import ComfyServer  # noqa: E402

CHROMIUM_ENV = "LORA_LOOP_CHROMIUM"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"]
OUR_PATH = "/extensions/lora_loop/"


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


@pytest.fixture(scope="session")
def comfy_server(chromium_executable):
    root = comfy_env.find_comfyui()
    if root is None:
        pytest.skip(comfy_env.SKIP_REASON)
    server = ComfyServer.start(root)
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
    page.problems = problems
    yield page
    context.close()
