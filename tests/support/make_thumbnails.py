"""Render each example workflow in the real ComfyUI frontend and save `<Name>.jpg` beside it.

Usage: python tests/support/make_thumbnails.py   (needs Debian chromium, playwright, a ComfyUI checkout)."""
from __future__ import annotations

import io
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [HERE, os.path.join(ROOT, "tests", "browser")]


def main() -> None:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    import comfy_env
    from comfy_server import ComfyServer
    from conftest import CHROMIUM_ARGS, chromium_path
    from workflows_index import EXAMPLES

    server = ComfyServer.start(comfy_env.find_comfyui())
    try:
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
            page = b.new_page(viewport={"width": 1600, "height": 900})
            page.goto(server.url)
            page.wait_for_function("() => window.app && window.app.graph && window.app.extensionManager",
                                   timeout=120_000)
            for ex in EXAMPLES:
                path = os.path.join(ROOT, "example_workflows", ex["ui"])
                with open(path, encoding="utf-8") as f:
                    wf = json.load(f)
                # the template browser opens by itself on a first start: close it
                page.evaluate("() => window.app.extensionManager.setting.set('Comfy.TutorialCompleted', true)")
                page.wait_for_timeout(2000)
                for sel in (".p-dialog-close-button", "button[aria-label='Close']"):
                    for btn in page.locator(sel).all():
                        if btn.is_visible():
                            btn.click()
                page.keyboard.press("Escape")
                page.evaluate("""async (wf) => {
                    await window.app.loadGraphData(wf);
                    const c = window.app.canvas, nodes = window.app.graph._nodes;
                    let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
                    for (const n of nodes) {
                        x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
                        x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
                    }
                    const W = c.canvas.width / (window.devicePixelRatio || 1), H = c.canvas.height / (window.devicePixelRatio || 1);
                    const s = Math.min(W / (x1 - x0 + 80), H / (y1 - y0 + 80));
                    c.ds.scale = s;
                    c.ds.offset = [-x0 + 40 + (W / s - (x1 - x0 + 80)) / 2, -y0 + 40 + (H / s - (y1 - y0 + 80)) / 2];
                    c.setDirty(true, true);
                }""", wf)
                page.wait_for_timeout(1500)
                # the canvas pixels only (no dialogs or side panels on top)
                data_url = page.evaluate("() => window.app.canvas.canvas.toDataURL('image/png')")
                import base64

                png = base64.b64decode(data_url.split(",", 1)[1])
                img = Image.open(io.BytesIO(png)).convert("RGB")
                img.thumbnail((800, 450))
                out = os.path.splitext(path)[0] + ".jpg"
                img.save(out, "JPEG", quality=85)
                print("wrote", out)
            b.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
