"""Training on GGUF models loaded by the real city96/ComfyUI-GGUF pack (``UnetLoaderGGUF``), as users sample them.

An SD1.5-architecture U-Net, small enough for CPU tests but with SD1.5's widths (320 channels, 768-wide context),
so that ComfyUI's own detection takes it for SD1.5, is written with the ``gguf`` package:

* one file per storage type: Q8_0, Q4_0, Q4_K, F16 and F32. Q4_K is written block by block, because gguf-py has
  no Q4_K quantizer; its block values are valid but arbitrary;
* a mixed file as converters write it: quantized matrices, F16 and F32 ones, F32 norms and biases.

For each file the model trains through ``trainer.session.train``. The loss falls (a paired comparison on the
same draws), and the LoRA loads with zero "lora key not loaded" onto the same GGUF model through
``comfy.sd.load_lora_for_models``, LoraLoader's path, and reproduces the trained MODEL's prediction (<= 1e-5
relative; F16 tensors, which LoraLoader's path merges in fp16: <= 2e-3). Skipped when the pack (``~/comfy/packs/ComfyUI-GGUF`` or ``LORA_LOOP_PACKS``) or ``gguf`` is missing.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch

import comfy_env
from comfy_fixtures import comfy  # noqa: F401

SD15_SMALL = {'use_checkpoint': False, 'image_size': 32, 'out_channels': 4, 'use_spatial_transformer': True,
              'legacy': False, 'adm_in_channels': None, 'in_channels': 4, 'model_channels': 320,
              'num_res_blocks': [1, 1], 'transformer_depth': [1, 1], 'channel_mult': [1, 2],
              'transformer_depth_middle': 1, 'use_linear_in_transformer': False, 'context_dim': 768, 'num_heads': 8,
              'transformer_depth_output': [1, 1, 1, 1], 'use_temporal_attention': False,
              'use_temporal_resblock': False}
STEPS, EVAL = 8, 4


@pytest.fixture(scope="module")
def gguf_pack(comfy):
    state = comfy_env.boot()
    if not state.get("third_party", {}).get("ComfyUI-GGUF"):
        pytest.skip("city96/ComfyUI-GGUF is not installed where the tests look (~/comfy/packs/ComfyUI-GGUF or "
                    "LORA_LOOP_PACKS)")
    pytest.importorskip("gguf")
    import nodes

    return nodes.NODE_CLASS_MAPPINGS["UnetLoaderGGUF"]


def _state_dict() -> dict[str, torch.Tensor]:
    import comfy.supported_models as sm
    import tiny_models

    mc = sm.SD15(dict(SD15_SMALL))
    mc.set_inference_dtype(torch.float32, None)
    model = mc.get_model({}, device=torch.device("cpu"))
    tiny_models.init_module(model.diffusion_model, 0)
    return {k: v.detach().clone() for k, v in model.diffusion_model.state_dict().items()}


def _q4_k_blocks(n_blocks: int, rng) -> np.ndarray:
    """Q4_K blocks (d, dmin: fp16; 12 bytes of 6-bit scales and mins; 128 bytes of 4-bit values) that dequantize
    to zero-mean values of std about 0.05: every scale and min is 8, dmin = 7.5 d."""
    d = np.float16(0.00136)
    head = np.array([d, np.float16(7.5 * float(d))], dtype=np.float16).view(np.uint8)
    scales = np.array([8] * 8 + [0x88] * 4, dtype=np.uint8)
    qs = rng.integers(0, 256, size=(n_blocks, 128), dtype=np.uint8)
    return np.concatenate([np.tile(head, (n_blocks, 1)), np.tile(scales, (n_blocks, 1)), qs], axis=1)


def _write(path: str, sd: dict, qtype_of) -> dict[str, int]:
    import gguf

    Q = gguf.GGMLQuantizationType
    w = gguf.GGUFWriter(path=None, arch="sd1")
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    rng = np.random.default_rng(0)
    counts: dict[str, int] = {}
    for key, t in sd.items():
        data = t.float().numpy()
        q = qtype_of(key, data) if data.ndim > 1 else Q.F32
        if q in (Q.Q8_0, Q.Q4_0, Q.Q4_K):
            if data.size % 256:
                q = Q.F16                                   # as converters fall back for odd sizes
            elif data.shape[-1] % 256:                      # rows of 256 values; the shape goes in the metadata
                w.add_array(f"comfy.gguf.orig_shape.{key}", [int(s) for s in data.shape])
                data = data.reshape(-1, 256)
        raw = _q4_k_blocks(data.size // 256, rng).reshape(*data.shape[:-1], -1) if q == Q.Q4_K \
            else gguf.quants.quantize(data, q)
        w.add_tensor(key, raw, raw_dtype=q)
        counts[q.name] = counts.get(q.name, 0) + 1
    w.write_header_to_file(path=path)
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return counts


def _kinds():
    import gguf

    Q = gguf.GGMLQuantizationType
    order = (Q.Q8_0, Q.Q4_K, Q.F16, Q.Q4_0, Q.F32)

    def mixed(key, data):                                   # by turns, as a mixed converter output looks
        return order[sum(map(ord, key)) % len(order)]

    return {"Q8_0": lambda k, d: Q.Q8_0, "Q4_0": lambda k, d: Q.Q4_0, "Q4_K": lambda k, d: Q.Q4_K,
            "F16": lambda k, d: Q.F16, "F32": lambda k, d: Q.F32, "mixed": mixed}


def _predict(mp, x, ctx):
    import comfy.model_management as mm

    mm.load_models_gpu([mp])
    with torch.inference_mode():
        return mp.model.apply_model(x, torch.tensor([1.0]), c_crossattn=ctx).float()


def _train_and_reload(gguf_pack, kind: str, net_cfg, memory_mode: str = "resident"):
    """Write the ``kind`` GGUF U-Net, load it with UnetLoaderGGUF, train ``net_cfg``'s network on it, then a paired
    evaluation (same draws, lr 1e-12), and reload the trained tensors with LoraLoader's path onto the same model.
    Returns (the GGUF patcher, the trained network, losses before, losses after, predictions: trained, reloaded,
    base)."""
    import folder_paths

    import comfy.sd
    import synthetic
    from trainer import adapter as ca
    from trainer.assemble import build_network
    from trainer.config import TrainConfig
    from trainer.session import train

    folder = folder_paths.get_folder_paths("unet")[0]
    os.makedirs(folder, exist_ok=True)
    name = f"sd15_small_{kind}.gguf"
    counts = _write(os.path.join(folder, name), _state_dict(), _kinds()[kind])
    if kind == "mixed":
        assert {"Q8_0", "Q4_K", "F16", "Q4_0", "F32"} <= set(counts), counts
    with torch.inference_mode():  # as ComfyUI runs the loader node
        (mp,) = gguf_pack().load_unet(name)
    assert type(mp.model.model_config).__name__ == "SD15", type(mp.model.model_config)
    fam = ca.detect_family(mp)
    net = build_network(fam, ca.diffusion_root(mp), ca.unet_config(mp), None, net_cfg, weight_reader=ca.dense_weight)
    mc = mp.model.model_config
    data = synthetic.encoded_dataset(mc, 64, tempfile.mkdtemp(prefix=f"gguf_{kind}_"), n=1)
    cfg = TrainConfig(max_train_steps=STEPS, learning_rate=1e-2, min_timestep=500, max_timestep=500,
                      memory_mode=memory_mode)
    with torch.inference_mode():
        result = train(model=mp, clip=None, network=net, data=data, cfg=cfg)
        again = train(model=mp, clip=None, network=result.network, data=data,
                      cfg=TrainConfig(max_train_steps=EVAL, learning_rate=1e-12, min_timestep=500, max_timestep=500))
    log = comfy_env.boot()["log"]
    n = len(log.records)
    reloaded, _ = comfy.sd.load_lora_for_models(mp, None, result.network.kohya_state_dict(torch.float32), 1.0, 0.0)
    assert [r for r in log.records[n:] if "lora key not loaded" in r] == []
    g = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 768, generator=g)
    preds = _predict(result.model, x, ctx), _predict(reloaded, x, ctx), _predict(mp, x, ctx)
    return mp, result.network, result.losses[:EVAL], again.losses, preds


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_K", "F16", "F32", "mixed"])
def test_gguf_model_trains_and_the_lora_reloads_exactly(comfy, gguf_pack, kind):
    from trainer.config import NetworkConfig

    mp, _, before, after, (trained, loaded, base) = _train_and_reload(
        gguf_pack, kind, NetworkConfig(network_dim=8, network_alpha=8),
        memory_mode="checkpointed" if kind == "mixed" else "resident")
    # every weight, GGUF's own tensor class included, is a normal tensor while it trains: any layer may save it
    inference = [n for n, p in mp.model.named_parameters() if p.is_inference()]
    assert inference == [], inference[:5]
    assert any(type(p).__name__ == "GGMLTensor" for p in mp.model.parameters())
    assert all(np.isfinite(before + after)), (before, after)
    assert sum(after) < 0.95 * sum(before), (before, after)
    # the file's tensors loaded by LoraLoader's path onto the same GGUF model
    # F16 storage: LoraLoader's path merges the LoRA into the fp16 weights (fp16 rounding, about 5e-4 relative);
    # the quantized and F32 tensors get it in float32 at dequantization
    tol = 2e-3 if kind in ("F16", "mixed") else 1e-5
    assert float((loaded - trained).norm() / trained.norm()) <= tol
    assert float((trained - base).norm() / base.norm()) > 1e-4  # the LoRA changed something


@pytest.mark.parametrize("algo,kind", [("dora", "Q4_K"), ("loha", "Q8_0"), ("lokr", "Q4_0")])
def test_lycoris_adapters_train_on_quantized_gguf_weights(comfy, gguf_pack, algo, kind):
    """LoHa, LoKr and DoRA over GGUF-quantized weights: they learn and LoraLoader's path reproduces them on the same
    model. DoRA reads the dequantized base weight (ComfyUI-GGUF's own dequantization) for its magnitudes and norms:
    a file whose magnitudes came from the raw quantized blocks would not reproduce."""
    from trainer.config import NetworkConfig

    cfg = NetworkConfig(network_dim=4, network_alpha=4, algo="lora" if algo == "dora" else algo,
                        dora_wd=algo == "dora")
    _, net, before, after, (trained, loaded, base) = _train_and_reload(gguf_pack, kind, cfg)
    assert all(np.isfinite(before + after)), (before, after)
    assert sum(after) < 0.95 * sum(before), (before, after)
    assert float((loaded - trained).norm() / trained.norm()) <= 1e-5
    assert float((trained - base).norm() / base.norm()) > 1e-4
    assert {type(m).__name__ for m in net.loras()} == {{"dora": "DoRAModule", "loha": "LoHaModule",
                                                        "lokr": "LoKrModule"}[algo]}
