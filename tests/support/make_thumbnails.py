"""Make the template cards' thumbnails (`<Name>.jpg` beside each example workflow): the template's title and what
it does, in type a person can read at card size, over Train LoRA as it looks after a real run (the template run on
the tiny test model in the real frontend: chart, status, preview). Also the README's screenshot
(docs/images/watch-training.jpg): the watch template mid-training on a 1366x768 screen.

Usage: python tests/support/make_thumbnails.py [API twin name ...]   (only those examples when named; needs Debian
chromium, playwright, a ComfyUI checkout)."""
from __future__ import annotations

import base64
import html
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [HERE, os.path.join(ROOT, "tests", "browser")]
RUN_JS = os.path.join(ROOT, "tests", "browser", "js", "run_template_tiny.js")
SIZE = 640  # square: the templates dialog shows cards as squares in both frontends
README_SHOT = os.path.join(ROOT, "docs", "images", "watch-training.jpg")
README_SHOT_OF = "train_watch_generate_sd15.api.json"

CARD = """<html><body style="margin:0;background:#1e1e1e;font-family:'DejaVu Sans',Arial,sans-serif;color:#eee">
<div style="width:{s}px;height:{s}px;display:flex;flex-direction:column;box-sizing:border-box;padding:28px">
 <div style="font-size:46px;font-weight:700;line-height:1.1">{title}</div>
 <div style="font-size:34px;color:#7ab8ff;font-weight:700;margin:6px 0 14px">{model}</div>
 {lines}
 <div style="flex:1;min-height:0;margin-top:16px;border-radius:10px;overflow:hidden;background:#2b2b2b">
  <img src="data:image/png;base64,{img}" style="width:100%;height:100%;object-fit:cover;object-position:top">
 </div>
</div></body></html>"""
LINE = '<div style="font-size:27px;line-height:1.35;color:#ccc">\u2022 {}</div>'


def main() -> None:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    import comfy_env
    import graphs
    from comfy_server import ComfyServer
    from conftest import CHROMIUM_ARGS, chromium_path
    from test_new_user_browser import close_dialogs
    from workflows_index import EXAMPLES

    server = ComfyServer.start(comfy_env.find_comfyui())
    graphs.make_dataset(os.path.join(server.tmp, "in", "my_dataset"), n=3)
    run = open(RUN_JS, encoding="utf-8").read()
    try:
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
            page = b.new_page(viewport={"width": 1366, "height": 768})
            page.goto(server.url)
            page.wait_for_function("() => window.app && window.app.graph && window.app.extensions.length > 0",
                                   timeout=120_000)
            close_dialogs(page)
            wanted = set(sys.argv[1:])
            for i, ex in enumerate(EXAMPLES):
                if wanted and ex["api"] not in wanted:
                    continue
                path = os.path.join(ROOT, "example_workflows", ex["ui"])
                with open(path, encoding="utf-8") as f:
                    wf = json.load(f)
                # its own seed: the same settings would continue the previous run (the re-queue rule), not train
                page.evaluate(run, [wf, {"steps": 40, "learning_rate": 2e-3, "seed": i, "family": ex["card"]["family"]}])
                if ex["api"] == README_SHOT_OF:
                    page.wait_for_function("() => { const g = window.__geometry(); return g.previews > 0 && "
                                           "g.status === 'training' && g.step >= 24; }", timeout=600_000)
                    os.makedirs(os.path.dirname(README_SHOT), exist_ok=True)
                    page.screenshot(path=README_SHOT + ".png")
                    Image.open(README_SHOT + ".png").convert("RGB").save(README_SHOT, "JPEG", quality=82)
                    os.remove(README_SHOT + ".png")
                    print("wrote", README_SHOT)
                page.wait_for_function("() => window.__done", timeout=600_000)
                page.wait_for_timeout(1500)
                geo = page.evaluate("() => window.__geometry()")
                x0, _, x1, y1 = geo["node"]
                y0 = geo["chart"][1] - 8  # the chart, the status line and the preview under it
                png = page.screenshot(clip={"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0})
                card = b.new_page(viewport={"width": SIZE, "height": SIZE})
                c = ex["card"]
                card.set_content(CARD.format(s=SIZE, title=html.escape(c["title"]), model=html.escape(c["model"]),
                                             lines="".join(LINE.format(html.escape(x)) for x in c["lines"]),
                                             img=base64.b64encode(png).decode()))
                out = os.path.splitext(path)[0] + ".jpg"
                card.screenshot(path=out + ".png")
                card.close()
                Image.open(out + ".png").convert("RGB").save(out, "JPEG", quality=88)
                os.remove(out + ".png")
                print("wrote", out)
            b.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
