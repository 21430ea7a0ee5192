"""The headless "run any workflow" command (headless/run_workflow.py, headless/workflow.py).

UI -> API on what saved UI files hold beyond the shipped templates (those are checked against their API twins in
test_example_workflows.py): Reroute, PrimitiveNode, bypassed and muted nodes, converted widgets, the seed's
"control after generate" value, and a clear error for subgraphs, group nodes and unknown node types. ``--set``
resolution and its errors, in-process. And the SD1.5 template run as users run it, ``python
headless/run_workflow.py TEMPLATE --set ...`` in a subprocess, on a tiny SD1.5 checkpoint written once."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import comfy_env
import graphs
from comfy_fixtures import comfy, tiny_sd15  # noqa: F401

pytestmark = pytest.mark.comfy

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATE = os.path.join(PACK_ROOT, "example_workflows", "Train then generate (SD1.5).json")


class UI:
    """A small UI-format workflow built the way the frontend saves one (only what the conversion reads)."""

    def __init__(self):
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def add(self, nid: int, type_: str, widgets=(), inputs=(), mode: int = 0, title: str | None = None) -> int:
        """``inputs``: (name, type, (origin id, slot) or None[, "widget"]) in the node's input order."""
        ins = []
        for name, t, src, *widget in inputs:
            link = None
            if src is not None:
                link = len(self.links) + 1
                self.links.append([link, src[0], src[1], nid, len(ins), t])
            ins.append({"name": name, "type": t, "link": link, **({"widget": {"name": name}} if widget else {})})
        self.nodes.append({"id": nid, "type": type_, "mode": mode, "inputs": ins, "outputs": [],
                           "widgets_values": widgets if isinstance(widgets, dict) else list(widgets),
                           **({"title": title} if title else {})})
        return nid

    def workflow(self, **extra) -> dict:
        return {"nodes": self.nodes, "links": self.links, "version": 0.4, **extra}


def _txt2img(ui: UI, ksampler_mode: int = 0) -> UI:
    """Checkpoint -> Reroute -> prompts; PrimitiveNode -> seed; PrimitiveInt -> steps (a converted widget);
    KSampler (``ksampler_mode``) -> Reroute -> VAE Decode -> bypassed Invert -> Save Image; a muted Save Image."""
    ui.add(1, "CheckpointLoaderSimple", ["m.safetensors"], title="Load Checkpoint")
    ui.add(2, "Reroute", inputs=[("", "*", (1, 1))])
    ui.add(3, "CLIPTextEncode", ["a cat"], [("clip", "CLIP", (2, 0))], title="Prompt")
    ui.add(4, "CLIPTextEncode", ["blurry"], [("clip", "CLIP", (2, 0))], title="Negative prompt")
    ui.add(5, "EmptyLatentImage", [64, 64, 1])
    ui.add(6, "PrimitiveNode", [1234, "fixed"], title="seed")
    ui.add(7, "PrimitiveInt", [3, "increment"])
    ui.add(8, "KSampler", [0, "randomize", 20, 6.5, "euler", "normal", 1.0],
           [("model", "MODEL", (1, 0)), ("positive", "CONDITIONING", (3, 0)),
            ("negative", "CONDITIONING", (4, 0)), ("latent_image", "LATENT", (5, 0)),
            ("seed", "INT", (6, 0), "widget"), ("steps", "INT", (7, 0), "widget")], mode=ksampler_mode)
    ui.add(9, "Reroute", inputs=[("", "*", (8, 0))])
    ui.add(10, "VAEDecode", inputs=[("samples", "LATENT", (9, 0)), ("vae", "VAE", (1, 2))])
    ui.add(11, "ImageInvert", inputs=[("image", "IMAGE", (10, 0))], mode=4)
    ui.add(12, "SaveImage", ["out"], [("images", "IMAGE", (11, 0))])
    ui.add(13, "SaveImage", ["muted"], [("images", "IMAGE", (10, 0))], mode=2)
    ui.add(14, "MarkdownNote", ["# notes"])
    return ui


def test_virtual_bypassed_muted_and_converted_widgets(comfy):
    from headless.workflow import ui_to_api

    api = ui_to_api(_txt2img(UI()).workflow())
    assert sorted(api, key=int) == ["1", "3", "4", "5", "7", "8", "10", "12"]  # no Reroute, Primitive, bypassed,
    assert api["3"]["inputs"] == {"clip": ["1", 1], "text": "a cat"}           # muted or note node
    assert api["3"]["_meta"] == {"title": "Prompt"}
    assert api["7"]["inputs"] == {"value": 3}  # PrimitiveInt's own control value skipped
    assert api["8"]["inputs"] == {"model": ["1", 0], "positive": ["3", 0], "negative": ["4", 0],
                                  "latent_image": ["5", 0], "seed": 1234, "steps": ["7", 0], "cfg": 6.5,
                                  "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
    assert api["10"]["inputs"] == {"samples": ["8", 0], "vae": ["1", 2]}  # through a Reroute
    assert api["12"]["inputs"] == {"images": ["10", 0], "filename_prefix": "out"}  # around the bypassed Invert


def test_converted_graph_validates(comfy):
    import folder_paths

    from headless import runtime
    from headless.workflow import ui_to_api

    ckpts = os.path.join(comfy["tmp"], "models", "checkpoints")
    open(os.path.join(ckpts, "m.safetensors"), "wb").close()
    folder_paths.add_model_folder_path("checkpoints", ckpts)
    outputs, error = comfy_env.call(runtime.validate, ui_to_api(_txt2img(UI()).workflow()))
    assert error == "" and outputs == ["12"]


def test_bypass_passes_the_input_of_the_consumers_type(comfy):
    """A bypassed KSampler hands its latent_image (slot 3, the LATENT input) to VAE Decode; a bypassed node with
    no input of that type, or a muted one, leaves the consumer's input unconnected (as the frontend does)."""
    from headless.workflow import ui_to_api

    api = ui_to_api(_txt2img(UI(), ksampler_mode=4).workflow())
    assert "8" not in api and api["10"]["inputs"]["samples"] == ["5", 0]

    ui = UI()
    ui.add(1, "LoadImage", ["x.png", "image"])
    ui.add(2, "ImageToMask", ["red"], [("image", "IMAGE", (1, 0))], mode=4)  # IMAGE in, MASK out
    ui.add(3, "MaskToImage", inputs=[("mask", "MASK", (2, 0))])
    ui.add(4, "ImageInvert", inputs=[("image", "IMAGE", (1, 0))], mode=2)
    ui.add(5, "ImageInvert", inputs=[("image", "IMAGE", (4, 0))])
    ui.add(6, "ImageInvert", inputs=[("image", "IMAGE", (1, 0))], mode=4)
    ui.add(7, "ImageInvert", inputs=[("image", "IMAGE", (6, 0))], mode=4)  # a chain of bypassed nodes
    ui.add(8, "ImageInvert", inputs=[("image", "IMAGE", (7, 0))])
    api = ui_to_api(ui.workflow())
    assert api["1"]["inputs"] == {"image": "x.png"}  # LoadImage's trailing upload widget value is ignored
    assert api["3"]["inputs"] == {} and api["5"]["inputs"] == {}
    assert api["8"]["inputs"] == {"image": ["1", 0]}


def test_widget_values_by_name_and_missing_ones_take_defaults(comfy):
    from headless.workflow import ui_to_api

    ui = UI()
    ui.add(1, "EmptyLatentImage", {"width": 256, "height": 128, "batch_size": 2})
    ui.add(2, "EmptyLatentImage", [320])  # saved by an older version of the node: the rest are defaults
    api = ui_to_api(ui.workflow())
    assert api["1"]["inputs"] == {"width": 256, "height": 128, "batch_size": 2}
    assert api["2"]["inputs"] == {"width": 320, "height": 512, "batch_size": 1}


@pytest.mark.parametrize("node, extra, says", [
    ({"type": "4f1c2a9e-0000-4000-8000-000000000001"},
     {"definitions": {"subgraphs": [{"id": "4f1c2a9e-0000-4000-8000-000000000001", "name": "Upscaler"}]}},
     "subgraph 'Upscaler'"),
    ({"type": "workflow>My group"}, {"extra": {"groupNodes": {"My group": {}}}}, "group node"),
    ({"type": "SomePackNode"}, {}, "no node of this type"),
])
def test_unsupported_nodes_are_named(comfy, node, extra, says):
    from headless.workflow import WorkflowError, ui_to_api

    ui = UI()
    ui.add(1, "EmptyLatentImage", [64, 64, 1])
    ui.add(7, node["type"], title="Mine")
    with pytest.raises(WorkflowError) as e:
        ui_to_api(ui.workflow(**extra))
    assert f'node 7 "Mine" ({node["type"]})' in str(e.value) and says in str(e.value)


def test_set_by_id_title_or_unique_type(comfy):
    from headless.run_workflow import apply_set, load_workflow

    api, ui = load_workflow(TEMPLATE)
    assert ui is not None and api["6"]["class_type"] == "LoraLoop_TrainLoRA"
    assert apply_set(api, "6.steps=4") == ("6", "steps", 4)
    assert apply_set(api, "Train LoRA (LoRA Loop).learning_rate=1e-3") == ("6", "learning_rate", 0.001)
    assert apply_set(api, "KSampler.sampler_name=dpmpp_2m") == ("11", "sampler_name", "dpmpp_2m")
    assert apply_set(api, "Prompt.text=a dog, 1.5 m tall") == ("8", "text", "a dog, 1.5 m tall")
    assert apply_set(api, "3.enable_bucket=false") == ("3", "enable_bucket", False)
    assert apply_set(api, "Train LoRA (LoRA Loop).optimizer_settings=[\"2\", 0]")[2] == ["2", 0]  # optional input
    assert api["6"]["inputs"]["steps"] == 4 and api["8"]["inputs"]["text"] == "a dog, 1.5 m tall"


@pytest.mark.parametrize("item, says", [
    ("nosuch.steps=4", ["no node 'nosuch'", '6 "Train LoRA (LoRA Loop)" (LoraLoop_TrainLoRA)']),
    ("KSampler.stepz=4", ["has no input 'stepz'", "seed, steps, cfg"]),
    ("CLIPTextEncode.text=x", ["several nodes are of type 'CLIPTextEncode'", '8 "Prompt"', "use the node id"]),
    ("KSampler.steps", ["expected NODE.INPUT=VALUE"]),
])
def test_set_errors_exit_2_with_the_reason(comfy, capsys, item, says):
    from headless import run_workflow

    assert run_workflow.main([TEMPLATE, "--set", item]) == 2
    err = capsys.readouterr().err
    for s in says:
        assert s in err, err


def test_bad_workflow_file_exits_2(comfy, tmp_path, capsys):
    from headless import run_workflow

    (tmp_path / "x.json").write_text('{"nodes": 3}')
    assert run_workflow.main([str(tmp_path / "x.json")]) == 2
    assert "neither a ComfyUI workflow" in capsys.readouterr().err
    assert run_workflow.main([str(tmp_path / "missing.json")]) == 2


def test_template_runs_headless_as_a_script(comfy, tiny_sd15, tmp_path):
    from PIL import Image

    data = graphs.make_dataset(str(tmp_path / "dataset"), n=2)
    loras, out = tmp_path / "loras", tmp_path / "out"
    cmd = [sys.executable, os.path.join(PACK_ROOT, "headless", "run_workflow.py"), TEMPLATE, "--cpu",
           "--models_dir", f"checkpoints={os.path.dirname(tiny_sd15)}", "--models_dir", f"loras={loras}",
           "--output_dir", str(out),
           "--set", f"Load Checkpoint.ckpt_name={os.path.basename(tiny_sd15)}",  # by title
           "--set", f"2.path={data}",                                            # by id
           "--set", "LoraLoop_BucketImages.resolution=64", "--set", "3.min_bucket_reso=64",  # by type
           "--set", "Train LoRA (LoRA Loop).steps=2", "--set", "Inject LoRA (LoRA Loop).network_dim=4",
           "--set", "KSampler.steps=2", "--set", "10.width=64", "--set", "10.height=64"]
    env = dict(os.environ, COMFYUI_PATH=comfy["root"])
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600)
    print(f"run_workflow.py took {time.perf_counter() - t0:.1f} s")
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    printed = [line for line in run.stdout.splitlines() if os.path.isabs(line)]
    assert printed and all(os.path.isfile(p) for p in printed), run.stdout
    assert str(loras / "my_lora.safetensors") in printed
    assert 'Save LoRA (LoRA Loop)" (LoraLoop_SaveLoRA): saved my_lora.safetensors' in run.stdout
    images = [p for p in printed if p.endswith(".png")]
    assert len(images) == 1 and images[0].startswith(str(out) + os.sep)
    with Image.open(images[0]) as im:
        assert im.size == (64, 64)
        assert '"LoraLoop_TrainLoRA"' in im.info["workflow"]  # the UI workflow is embedded, as from the UI
