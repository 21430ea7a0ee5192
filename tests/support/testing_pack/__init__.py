"""Test-only ComfyUI node pack for LoRA Loop (V3 API). Never shipped; loaded by tests/support/comfy_env.boot().

Nodes (all ``LoraLoopTest_*``):

* ``TinyModel(family, seed) -> MODEL, CLIP, VAE``: tiny real-architecture models from ``tiny_models.build``,
  cached per ``(family, seed)`` so re-queues get the SAME objects (like a checkpoint loader served from cache).
  Its optional ``ckpt_name`` plays a checkpoint loader's file-name widget (tiny models cannot be loaded from a
  file: ComfyUI's model detection only knows full-size configs).
* ``ModelPredict(model, positive, seed, width, height, sigma) -> LATENT``: ``model.model.apply_model`` (the
  denoised x0 prediction) on fixed seeded noise, with conds prepared by ComfyUI's own sampler helpers.
* ``NoiseImages(width, height, batch_size, seed) -> IMAGE``: deterministic smooth random images (training data).
* ``SaveTensor(latent, name)`` / ``SaveConditioning(conditioning, name)``: output nodes that store their input in
  ``RESULTS[name]`` (they always re-run). Tests read it with ``from lora_loop_testing_pack import RESULTS``
  after ``comfy_env.boot()``.
* ``RecordModelInputs(model, name) -> MODEL``: a clone whose ``apply_model`` calls made with grad enabled (i.e.
  training steps) are recorded into ``RESULTS[name]`` as ``{"x_shape", "sigma", "y"}`` through an APPLY_MODEL
  wrapper in ``model_options["transformer_options"]["wrappers"]`` (always re-runs).
* ``OutOfMemoryAt(model, step) -> MODEL``: a clone whose ``step``-th training forward (grad enabled) raises
  ``torch.OutOfMemoryError`` with the CUDA allocator's wording, through the same APPLY_MODEL wrapper mechanism: a
  device running out of memory, reproducible on CPU.
* ``LoraForm(model, clip, name)``: an output node that stores in ``RESULTS[name]`` how the MODEL and CLIP carry
  LoRAs: the weight keys with patches (``model_patches`` / ``clip_patches``) and the injection keys
  (``model_injections`` / ``clip_injections``).
* ``UnsupportedModel(kind) -> MODEL``: a fresh tiny SD1.5 model whose model config class is replaced by ``kind``:
  ``FakeArch`` (a made-up ``BASE`` subclass) or ``SDXL_instructpix2pix`` (a real ComfyUI config LoRA Loop refuses).
"""
from __future__ import annotations

import os
import sys

import torch
from comfy_api.latest import ComfyExtension, io

_SUPPORT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _SUPPORT not in sys.path:
    sys.path.append(_SUPPORT)

import tiny_models  # noqa: E402  (tests/support, put on sys.path just above)

# ComfyUI registers this package under its folder path; give tests a stable import name.
sys.modules.setdefault("lora_loop_testing_pack", sys.modules[__name__])

RESULTS: dict = {}
# diffusion-model weight dtypes a test can ask for (like UNETLoader's weight_dtype); "default" = ComfyUI's choice
WEIGHT_DTYPES = {"default": None, "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2,
                 "bf16": torch.bfloat16}
_MODEL_CACHE: dict = {}

CATEGORY = "LoRA Loop/testing"


def predict(model, positive, seed: int, width: int, height: int, sigma: float) -> torch.Tensor:
    """Denoised prediction of ``model`` (a ModelPatcher, patches applied) for ``positive`` at ``sigma`` on noise
    seeded with ``seed``. Returns a CPU float32 tensor (1, C, height//8, width//8), with one frame (1, C, 1, ...)
    for video latent formats (C and the dimensions from the latent format)."""
    import comfy.model_management as mm
    import comfy.sampler_helpers
    import comfy.samplers

    mm.load_models_gpu([model])
    fmt = model.get_model_object("latent_format")
    frames = (1,) * (fmt.latent_dimensions - 2)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.randn((1, fmt.latent_channels) + frames + (height // 8, width // 8), generator=gen,
                        dtype=torch.float32)
    device = model.load_device
    x = noise.to(device) * float(sigma)
    conds = comfy.sampler_helpers.convert_cond(positive)
    conds = comfy.samplers.encode_model_conds(model.model.extra_conds, conds, x, device, "positive")
    batch = [{k: v.process_cond(batch_size=1, area=None) for k, v in c["model_conds"].items()} for c in conds[:1]]
    kwargs = comfy.samplers.cond_cat(batch)
    kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    t_opts = dict(model.model_options.get("transformer_options", {}))
    sig = torch.full((1,), float(sigma), device=device)
    out = model.model.apply_model(x, sig, transformer_options=t_opts, **kwargs)
    return out.detach().float().cpu()


class TinyModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraLoopTest_TinyModel", display_name="Tiny Model (LoRA Loop tests)", category=CATEGORY,
            inputs=[io.Combo.Input("family", options=list(tiny_models.FAMILIES), default="sd15"),
                    io.Int.Input("seed", default=0, min=0, max=2**31 - 1),
                    io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default", optional=True),
                    # a checkpoint loader's file-name widget: what Train LoRA traces for ss_sd_model_name
                    io.String.Input("ckpt_name", default="", optional=True)],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()])

    @classmethod
    def execute(cls, family, seed, weight_dtype="default", ckpt_name="") -> io.NodeOutput:
        key = (family, int(seed), weight_dtype)
        if key not in _MODEL_CACHE:
            _MODEL_CACHE[key] = tiny_models.build(family, int(seed), dtype=WEIGHT_DTYPES[weight_dtype])
        return io.NodeOutput(*_MODEL_CACHE[key])


class ModelPredict(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraLoopTest_ModelPredict", display_name="Model Predict (LoRA Loop tests)", category=CATEGORY,
            inputs=[io.Model.Input("model"), io.Conditioning.Input("positive"),
                    io.Int.Input("seed", default=0, min=0, max=2**31 - 1),
                    io.Int.Input("width", default=64, min=16, max=1024, step=16),
                    io.Int.Input("height", default=64, min=16, max=1024, step=16),
                    io.Float.Input("sigma", default=1.0, min=0.0, max=1000.0, step=0.001)],
            outputs=[io.Latent.Output()])

    @classmethod
    def execute(cls, model, positive, seed, width, height, sigma) -> io.NodeOutput:
        return io.NodeOutput({"samples": predict(model, positive, seed, width, height, sigma)})


def noise_images(width: int, height: int, batch_size: int, seed: int) -> torch.Tensor:
    """(B, H, W, 3) images in [0, 1]: seeded low-resolution noise upscaled bilinearly (smooth, VAE-friendly)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    low = torch.rand((batch_size, 3, max(1, height // 8), max(1, width // 8)), generator=gen)
    img = torch.nn.functional.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
    return img.clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous()


class NoiseImages(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraLoopTest_NoiseImages", display_name="Noise Images (LoRA Loop tests)", category=CATEGORY,
            inputs=[io.Int.Input("width", default=64, min=8, max=2048, step=8),
                    io.Int.Input("height", default=64, min=8, max=2048, step=8),
                    io.Int.Input("batch_size", default=2, min=1, max=64),
                    io.Int.Input("seed", default=0, min=0, max=2**31 - 1)],
            outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, width, height, batch_size, seed) -> io.NodeOutput:
        return io.NodeOutput(noise_images(width, height, batch_size, seed))


class SaveTensor(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraLoopTest_SaveTensor", display_name="Save Tensor (LoRA Loop tests)", category=CATEGORY,
            inputs=[io.Latent.Input("latent"), io.String.Input("name", default="out")],
            outputs=[], is_output_node=True)

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")

    @classmethod
    def execute(cls, latent, name) -> io.NodeOutput:
        RESULTS[name] = latent["samples"].detach().clone()
        return io.NodeOutput()


class SaveConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraLoopTest_SaveConditioning", display_name="Save Conditioning (LoRA Loop tests)",
            category=CATEGORY, inputs=[io.Conditioning.Input("conditioning"), io.String.Input("name", default="cond")],
            outputs=[], is_output_node=True)

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")

    @classmethod
    def execute(cls, conditioning, name) -> io.NodeOutput:
        RESULTS[name] = [[t.detach().clone(), dict(d)] for t, d in conditioning]
        return io.NodeOutput()


RECORD_KEY = "lora_loop_test_record"


class RecordModelInputs(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraLoopTest_RecordModelInputs", display_name="Record Model Inputs (LoRA Loop tests)",
            category=CATEGORY, inputs=[io.Model.Input("model"), io.String.Input("name", default="inputs")],
            outputs=[io.Model.Output()])

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")

    @classmethod
    def execute(cls, model, name) -> io.NodeOutput:
        import comfy.patcher_extension as pe

        calls: list = []
        RESULTS[name] = calls

        def record(executor, x, t, *args, **kwargs):
            if torch.is_grad_enabled():
                y = kwargs.get("y")
                calls.append({"x_shape": tuple(x.shape), "sigma": t.detach().float().cpu().clone(),
                              "y": None if y is None else y.detach().float().cpu().clone()})
            return executor(x, t, *args, **kwargs)

        m = model.clone()
        opts = m.model_options.setdefault("transformer_options", {})
        wrappers = opts.setdefault("wrappers", {})
        wrappers.setdefault(pe.WrappersMP.APPLY_MODEL, {}).setdefault(RECORD_KEY, []).append(record)
        return io.NodeOutput(m)


class OutOfMemoryAt(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraLoopTest_OutOfMemoryAt", display_name="Out Of Memory At (LoRA Loop tests)",
            category=CATEGORY, inputs=[io.Model.Input("model"), io.Int.Input("step", default=3, min=1),
                                       io.Combo.Input("during", options=["training", "sampling"], default="training",
                                                      optional=True)],
            outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, step, during="training") -> io.NodeOutput:
        """Raise CUDA's out-of-memory error at the ``step``-th model call that trains (grad on) or samples."""
        import comfy.patcher_extension as pe

        calls = {"n": 0}

        def oom(executor, x, t, *args, **kwargs):
            if torch.is_grad_enabled() == (during == "training"):
                calls["n"] += 1
                if calls["n"] == step:
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                                 "capacity of 8.00 GiB of which 1.10 GiB is free.")
            return executor(x, t, *args, **kwargs)

        m = model.clone()
        opts = m.model_options.setdefault("transformer_options", {})
        wrappers = opts.setdefault("wrappers", {})
        wrappers.setdefault(pe.WrappersMP.APPLY_MODEL, {}).setdefault("lora_loop_test_oom", []).append(oom)
        return io.NodeOutput(m)


UNSUPPORTED_KINDS = ("StableAudio", "SDXL_instructpix2pix", "WAN21_I2V")


class LoraForm(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraLoopTest_LoraForm", display_name="LoRA Form (LoRA Loop tests)", category=CATEGORY,
            inputs=[io.Model.Input("model"), io.Clip.Input("clip"), io.String.Input("name", default="form")],
            outputs=[], is_output_node=True)

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")

    @classmethod
    def execute(cls, model, clip, name) -> io.NodeOutput:
        RESULTS[name] = {"model_patches": sorted(k for k, v in model.patches.items() if v),
                         "model_injections": sorted(k for k, v in model.injections.items() if v),
                         "clip_patches": sorted(k for k, v in clip.patcher.patches.items() if v),
                         "clip_injections": sorted(k for k, v in clip.patcher.injections.items() if v)}
        return io.NodeOutput()


class UnsupportedModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraLoopTest_UnsupportedModel", display_name="Unsupported Model (LoRA Loop tests)",
            category=CATEGORY, inputs=[io.Combo.Input("kind", options=list(UNSUPPORTED_KINDS))],
            outputs=[io.Model.Output(), io.Clip.Output()])

    @classmethod
    def execute(cls, kind) -> io.NodeOutput:
        import comfy.supported_models as sm

        mp, clip, _ = tiny_models.build("sd15", 0)  # fresh objects: the cached TinyModel ones stay untouched
        mp.model.model_config.__class__ = getattr(sm, kind)
        return io.NodeOutput(mp, clip)


class LoraLoopTestingExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [TinyModel, ModelPredict, NoiseImages, SaveTensor, SaveConditioning, RecordModelInputs, LoraForm,
                OutOfMemoryAt, UnsupportedModel]


async def comfy_entrypoint() -> LoraLoopTestingExtension:
    return LoraLoopTestingExtension()
