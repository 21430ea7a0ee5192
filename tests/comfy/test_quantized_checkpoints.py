"""Training on ComfyUI 0.8's quantized checkpoints, loaded by ComfyUI's own UNETLoader with its quant ops.

A tiny SD3-architecture diffusion model (``tiny_models.build("sd3")``, which ComfyUI's detection takes for SD3) is
written four ways, its joint blocks' Linear weights quantized, the rest in fp32, as converters leave embedders and
the final layer:

* ``scaled_fp8``: the older form, fp8 (e4m3fn) weights with ``<layer>.scale_weight`` and a ``scaled_fp8`` marker
  key, which ``comfy/utils.py`` ``convert_old_quants`` turns into the per-layer form while loading;
* ``comfy_quant``: fp8 weights with ``<layer>.weight_scale`` and a ``<layer>.comfy_quant`` JSON entry;
* ``metadata``: fp8 weights with ``<layer>.weight_scale``, the layers listed in the ``_quantization_metadata``
  header;
* ``nvfp4``: NVFP4 (packed 4-bit values, fp8 block scales, a float32 scale) in the per-layer form.

ComfyUI loads each through ``comfy/ops.py`` ``mixed_precision_ops``: the quantized layers are
``MixedPrecisionOps.Linear`` (not ``nn.Linear`` subclasses) with ``QuantizedTensor`` weights; on CPU they dequantize
and multiply in fp32, on GPUs with fp8 (NVFP4) matmuls they quantize the input and multiply quantized tensors.

* The graph (UNETLoader -> Inject LoRA -> Train LoRA -> Save LoRA, with a memory plan) trains every Linear of the
  blocks; the loss falls on a paired comparison (the same draws before and after), and the file reloads onto the
  same quantized model through core's LoraLoader with zero "lora key not loaded". LoraLoader merges the LoRA into
  the weight and quantizes it again (``set_weight``: a new scale, for fp8 with stochastic rounding), so its
  prediction differs from the trained MODEL's (the stored weight dequantized, plus the fp32 LoRA) by that rounding:
  measured 6.5e-3 relative for the fp8 forms (2e-2 asserted) and 2.3e-2 for NVFP4 (6e-2 asserted), where the LoRA
  moved the prediction by 0.65.
* One training step keeps no inference tensor and no dequantized weight for backward (every tensor autograd saves
  is inspected), and its LoRA gradients equal those of autograd through the layers' own dequantize-and-multiply
  path, also with the layers set up as on a GPU with fp8 matmuls, whose quantized matmul has no gradient for the
  input. Afterwards the weights are inference tensors again, as ComfyUI's nodes need them; the memory plan counts
  them as stored (fp8 + scales).
* The full-checkpoint form (CheckpointLoaderSimple's ``load_checkpoint_guess_config``) loads with the same ops and
  trains.
"""
from __future__ import annotations

import copy
import json
import os

import pytest
import torch

import comfy_env
import graphs
from comfy_fixtures import comfy  # noqa: F401

FORMATS = ("scaled_fp8", "comfy_quant", "metadata", "nvfp4")
STEPS, EVAL = 8, 4
# LoraLoader's path quantizes the merged weight again: measured 6.5e-3 (fp8), 2.3e-2 (NVFP4)
RELOAD_TOL = {"nvfp4": 6e-2}
_SD: dict = {}


def _diffusion_state_dict() -> dict[str, torch.Tensor]:
    import tiny_models

    if not _SD:
        mp, _, _ = tiny_models.build("sd3", 0)
        with torch.inference_mode(False):
            _SD.update({k: v.detach().clone().contiguous() for k, v in mp.model.diffusion_model.state_dict().items()})
    return _SD


def _quantized_layer_names(sd: dict) -> list[str]:
    return sorted(k[:-len(".weight")] for k, v in sd.items()
                  if k.startswith("joint_blocks.") and k.endswith(".weight") and v.ndim == 2)


def _write(fmt: str, prefix: str = "") -> str:
    """The tiny SD3 in ``fmt`` (see the module docstring) in ComfyUI's diffusion_models folder; its file name."""
    import folder_paths
    from safetensors.torch import save_file

    sd = _diffusion_state_dict()
    quantized = set(_quantized_layer_names(sd))
    out, layers = {}, {}
    for k, v in sd.items():
        layer = k[:-len(".weight")]
        if layer not in quantized or not k.endswith(".weight"):
            out[prefix + k] = v
            continue
        if fmt == "nvfp4":  # packed 4-bit values, fp8 scales per block of 16, one float32 scale
            from comfy.quant_ops import TensorCoreNVFP4Layout

            out[prefix + k], params = TensorCoreNVFP4Layout.quantize(v.float())
            out[f"{prefix}{layer}.weight_scale"] = params.block_scale
            out[f"{prefix}{layer}.weight_scale_2"] = params.scale.reshape(())
            out[f"{prefix}{layer}.comfy_quant"] = torch.tensor(list(json.dumps({"format": "nvfp4"}).encode()),
                                                               dtype=torch.uint8)
            continue
        scale = (v.abs().max().float() / torch.finfo(torch.float8_e4m3fn).max).reshape(())
        out[prefix + k] = (v.float() / scale).to(torch.float8_e4m3fn)
        if fmt == "scaled_fp8":
            out[f"{prefix}{layer}.scale_weight"] = scale
            out[f"{prefix}{layer}.scale_input"] = torch.ones(())  # dropped by ComfyUI when 1
        else:
            out[f"{prefix}{layer}.weight_scale"] = scale
            layers[prefix + layer] = {"format": "float8_e4m3fn"}
            if fmt == "comfy_quant":
                out[f"{prefix}{layer}.comfy_quant"] = torch.tensor(list(json.dumps(layers[prefix + layer]).encode()),
                                                                   dtype=torch.uint8)
    if fmt == "scaled_fp8":
        out[prefix + "scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    meta = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})} \
        if fmt == "metadata" else None
    folder = folder_paths.get_folder_paths("diffusion_models")[0]
    os.makedirs(folder, exist_ok=True)
    name = f"tiny_sd3_{fmt}{'_ckpt' if prefix else ''}.safetensors"
    save_file(out, os.path.join(folder, name), metadata=meta)
    return name


def _load(name: str, fp8_matmuls: bool = False):
    """UNETLoader's MODEL for ``name`` (under inference mode, as ComfyUI runs loader nodes). ``fp8_matmuls``: as
    ComfyUI sets the layers up on a device with fp8 matmuls (``supports_fp8_compute``: Ada, Hopper and newer)."""
    import comfy.model_management as mm
    import nodes

    org = mm.supports_fp8_compute
    if fp8_matmuls:
        mm.supports_fp8_compute = lambda *a, **k: True
    try:
        with torch.inference_mode():
            (mp,) = nodes.UNETLoader().load_unet(name, "default")
    finally:
        mm.supports_fp8_compute = org
    return mp


def _quantized_layers(mp) -> dict[str, torch.nn.Module]:
    from comfy.quant_ops import QuantizedTensor

    return {n: m for n, m in mp.model.diffusion_model.named_modules()
            if isinstance(m.__dict__.get("_parameters", {}).get("weight"), QuantizedTensor)}


def _assert_quant_ops(mp, fmt: str = "comfy_quant") -> dict[str, torch.nn.Module]:
    layers = _quantized_layers(mp)
    assert type(mp.model.model_config).__name__ == "SD3", type(mp.model.model_config)
    assert sorted(layers) == _quantized_layer_names(_diffusion_state_dict())
    for m in layers.values():
        assert "MixedPrecisionOps.Linear" in type(m).__qualname__, type(m).__qualname__
        assert m.weight._qdata.dtype == (torch.uint8 if fmt == "nvfp4" else torch.float8_e4m3fn)
    return layers


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _graph(unet_name: str, dataset: str, save_name: str) -> dict:
    """The FLUX example graph (UNETLoader + separate text encoders and VAE) on the quantized file, with the tiny SD3's
    text encoders and VAE, small sizes, and without its sampling part."""
    p = copy.deepcopy(graphs.load_api("train_then_generate_flux.api.json"))
    for k in [k for k, v in p.items() if v["class_type"] in ("CLIPTextEncode", "FluxGuidance", "ConditioningZeroOut",
                                                             "EmptySD3LatentImage", "KSampler", "VAEDecode",
                                                             "SaveImage")]:
        del p[k]
    unet, te, vae = graphs.one(p, "UNETLoader"), graphs.one(p, "DualCLIPLoader"), graphs.one(p, "VAELoader")
    p[unet]["inputs"]["unet_name"] = unet_name
    p[te] = {"class_type": "LoraLoopTest_TinyModel", "inputs": {"family": "sd3", "seed": 0}}
    del p[vae]
    for node in p.values():
        for name, val in node["inputs"].items():
            if val == [te, 0]:
                node["inputs"][name] = [te, 1]
            elif val == [vae, 0]:
                node["inputs"][name] = [te, 2]
    p[graphs.one(p, "LoraLoop_LoadDataset")]["inputs"]["path"] = dataset
    p[graphs.one(p, "LoraLoop_BucketImages")]["inputs"].update(resolution=64, min_bucket_reso=64, max_bucket_reso=128,
                                                               bucket_reso_steps=64)
    p[graphs.one(p, "LoraLoop_InjectLoRA")]["inputs"].update(network_dim=8, network_alpha=8.0)
    train = graphs.one(p, "LoraLoop_TrainLoRA")
    p[train]["inputs"].update(steps=STEPS, learning_rate=1e-2, seed=0)
    graphs.train_options(p, train, min_timestep=500, max_timestep=500)
    p[graphs.one(p, "LoraLoop_SaveLoRA")]["inputs"].update(filename=save_name, save_dtype="fp32")
    return p


@pytest.mark.parametrize("fmt", FORMATS)
def test_quantized_checkpoint_trains_through_the_graph_and_reloads(comfy, fmt):
    name = _write(fmt)
    _assert_quant_ops(_load(name), fmt)
    ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", f"quant_{fmt}"), n=2)
    p = _graph(name, ds, f"quant_{fmt}")
    train, unet, te = graphs.one(p, "LoraLoop_TrainLoRA"), graphs.one(p, "UNETLoader"), "2"
    save = graphs.one(p, "LoraLoop_SaveLoRA")
    graphs.add_paired_eval(p, train, EVAL)
    log = comfy["log"]
    n = len(log.records)
    ex, _ = comfy_env.run_prompt(p, f"quant-{fmt}")
    assert [r for r in log.records[n:] if r.startswith("LoRA Loop: memory plan for")], "no memory plan was made"
    out = ex.history_result["outputs"]
    before, after = out[train]["lora_loop_chart"][0]["loss"][:EVAL], out["eval"]["lora_loop_chart"][0]["loss"]
    assert all(torch.isfinite(torch.tensor(before + after))), (before, after)
    assert sum(after) < 0.9 * sum(before), (before, after)

    # the saved file on the same quantized MODEL through core's LoraLoader, against the trained MODEL
    lora = graphs.saved_lora(ex, p, save)
    q = {k: p[k] for k in (unet, te)}
    q["ll"] = {"class_type": "LoraLoader", "inputs": {"model": [unet, 0], "clip": [te, 1], "lora_name": lora,
                                                      "strength_model": 1.0, "strength_clip": 1.0}}
    q.update({k: v for k, v in p.items() if k not in q})
    graphs.add_predict_branch(q, [train, 0], [train, 1], f"quant_{fmt}_trained", "t", sigma=0.5)
    graphs.add_predict_branch(q, ["ll", 0], ["ll", 1], f"quant_{fmt}_loaded", "l", sigma=0.5)
    graphs.add_predict_branch(q, [unet, 0], [te, 1], f"quant_{fmt}_base", "b", sigma=0.5)
    n = len(log.records)
    comfy_env.run_prompt(q, f"quant-{fmt}-reload", executor=ex)
    assert [r for r in log.records[n:] if "lora key not loaded" in r] == []
    from lora_loop_testing_pack import RESULTS

    trained, loaded, base = (RESULTS[f"quant_{fmt}_{k}"] for k in ("trained", "loaded", "base"))
    effect, diff = _rel(trained, base), _rel(loaded, trained)
    print(f"{fmt}: LoRA effect {effect:.2e}, LoraLoader vs trained {diff:.2e}")
    assert diff <= RELOAD_TOL.get(fmt, 2e-2), (diff, effect)
    assert diff < 0.2 * effect, (diff, effect)


def _saved_during(fn):
    """Run ``fn`` recording every tensor autograd saves for backward."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


@pytest.mark.parametrize("fp8_matmuls", [False, True], ids=["cpu_ops", "fp8_matmul_ops"])
def test_a_step_keeps_no_dequantized_weight_and_gets_exact_gradients(comfy, fp8_matmuls):
    from trainer import adapter as ca
    from trainer.assemble import build_network
    from trainer.config import NetworkConfig
    from trainer.network import UNET_ROOT

    mp = _load(_write("comfy_quant"), fp8_matmuls)
    layers = _assert_quant_ops(mp)
    assert {m._full_precision_mm for m in layers.values()} == {not fp8_matmuls}
    with torch.inference_mode(False):
        ca.load_for_training(mp)       # ComfyUI's loader, run outside inference mode: it re-wraps the weights
        assert all(m.weight.is_inference() for m in layers.values())
        root = ca.diffusion_root(mp)
        net = build_network(ca.detect_family(mp), root, ca.unet_config(mp), None,
                            NetworkConfig(network_dim=4, network_alpha=4, seed=1))
        targeted = {t.path for t in net.targets}
        assert set(layers) <= targeted, sorted(set(layers) - targeted)[:5]
        plans = ca.plan_training(mp, net, batch=1, width=64, height=64, compute_dtype=None, optimizer_state_bytes=8)
        g = torch.Generator().manual_seed(3)
        for lora in net.loras():                        # non-zero ups: every LoRA gets a gradient
            torch.nn.init.normal_(lora.lora_up.weight, std=0.1, generator=g)
        x = torch.randn(1, 16, 8, 8, generator=g)
        ctx = torch.randn(1, 154, 4096, generator=g)
        y = torch.randn(1, 80, generator=g)

        def step(training: bool):
            for p in net.parameters():
                p.grad = None
            ctxm = ca.recast_in_backward(root) if training else _own_cast_path(layers)
            with torch.enable_grad(), ctxm:
                out, saved = _saved_during(lambda: mp.model.apply_model(x, torch.tensor([0.5]), c_crossattn=ctx,
                                                                        y=y))
                out.float().pow(2).mean().backward()
                root.to(torch.device("cpu"))            # moved while training, as sampling a preview may
            return saved, {k: p.grad.clone() for k, p in net.named_parameters()}

        net.install({UNET_ROOT: root})
        for p in net.parameters():
            p.requires_grad_(True)
        try:
            saved_ref, grads_ref = step(training=False)
            saved, grads = step(training=True)
        finally:
            net.remove()

    # nothing saved for backward is an inference tensor or a weight-shaped tensor of a quantized layer
    weight_shapes = {tuple(m.weight.shape) for m in layers.values()}
    params = {p.data_ptr() for p in mp.model.parameters()}
    kept = [t for t in saved if tuple(t.shape) in weight_shapes and t.data_ptr() not in params]
    assert kept == [], [tuple(t.shape) for t in kept]
    assert not any(t.is_inference() for t in saved)
    # the check sees them: ComfyUI's own cast path differentiated by autograd saves the dequantized weights it
    # multiplied with (of the layers whose input needs a gradient)
    assert [t for t in saved_ref if tuple(t.shape) in weight_shapes and t.data_ptr() not in params]
    for k in grads_ref:
        assert torch.allclose(grads[k], grads_ref[k], rtol=1e-4, atol=1e-7), \
            (k, float((grads[k] - grads_ref[k]).abs().max()))
    assert all(float(g.abs().max()) > 0 for g in grads.values())

    # after training the weights are inference tensors again: ComfyUI's nodes (LoraLoader's key map) can read them
    assert all(m.weight.is_inference() for m in layers.values())
    with torch.inference_mode():
        assert f"{next(iter(layers))}.weight" in mp.model.diffusion_model.state_dict()

    # the memory plan counts the weights as stored: fp8 and a float32 scale per quantized layer
    fp32_bytes = sum(v.numel() * 4 for v in _diffusion_state_dict().values())
    fp8_saving = sum(m.weight.numel() * 3 - 4 for m in layers.values())
    resident = next(p for p in plans if p.mode == "resident")
    assert resident.estimate.weights == fp32_bytes - fp8_saving


def _own_cast_path(layers):
    """The reference: every quantized layer through its own ``forward_comfy_cast_weights`` (dequantize, then
    multiply), with a weight function so that ComfyUI's ``cast_bias_weight`` dequantizes even where the logical
    dtype already matches, and autograd saving whatever that forward uses."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        saved = {m: (m.__dict__.get("_full_precision_mm"), m.__dict__.get("weight_function")) for m in layers.values()}
        for m in layers.values():
            m._full_precision_mm = True
            m.weight_function = [lambda w: w]
        try:
            yield
        finally:
            for m, (fp, wf) in saved.items():
                m._full_precision_mm = fp
                if wf is None:
                    del m.weight_function
                else:
                    m.weight_function = wf

    return ctx()


def test_a_scaled_fp8_checkpoint_file_loads_with_the_quant_ops_and_its_model_trains(comfy):
    """The full-checkpoint form (``model.diffusion_model.`` keys, as CheckpointLoaderSimple reads them through
    ``comfy.sd.load_checkpoint_guess_config``): the same quant ops, and a short run trains every quantized layer."""
    import folder_paths
    import tempfile

    import comfy.sd
    import synthetic
    from trainer import adapter as ca
    from trainer.assemble import build_network
    from trainer.config import NetworkConfig, TrainConfig
    from trainer.session import train

    name = _write("scaled_fp8", prefix="model.diffusion_model.")
    path = os.path.join(folder_paths.get_folder_paths("diffusion_models")[0], name)
    with torch.inference_mode():
        mp = comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=False)[0]
    layers = _assert_quant_ops(mp)
    net = build_network(ca.detect_family(mp), ca.diffusion_root(mp), ca.unet_config(mp), None,
                        NetworkConfig(network_dim=4, network_alpha=4))
    data = synthetic.encoded_dataset(mp.model.model_config, 64, tempfile.mkdtemp(prefix="quant_ckpt_"), n=1)
    with torch.inference_mode():
        result = train(model=mp, clip=None, network=net, data=data,
                       cfg=TrainConfig(max_train_steps=2, learning_rate=1e-2, min_timestep=500, max_timestep=500))
    sd = result.network.kohya_state_dict(torch.float32)
    ups = {k[:-len(".lora_up.weight")]: v for k, v in sd.items() if k.endswith(".lora_up.weight")}
    names = {t.path: t.name for t in net.targets}
    assert all(float(ups[names[n]].abs().max()) > 0 for n in layers), "a quantized layer's LoRA did not train"
