"""Masked loss through the real graph (Load Dataset's alpha_mask and conditioning_data_dir, Noise & Loss'
masked_loss): a black mask trains nothing, an opaque alpha mask is the plain loss, a partial one changes what is
learned, and masked_loss without masks stops with the fix."""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

import comfy_env
import graphs
from comfy_fixtures import comfy  # noqa: F401

WORKFLOW = "train_then_generate_sd15.api.json"


def _images(folder: str, alpha_right: int, n: int = 2) -> str:
    """``n`` RGBA pattern images, opaque on the left half, alpha ``alpha_right`` on the right, with captions."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        a = np.zeros((64, 64, 4), dtype=np.uint8)
        a[..., :3] = rng.integers(0, 255, size=(64, 64, 3))
        a[..., 3] = 255
        a[:, 32:, 3] = alpha_right
        Image.fromarray(a, "RGBA").save(os.path.join(folder, f"img_{i}.png"))
        with open(os.path.join(folder, f"img_{i}.txt"), "w", encoding="utf-8") as f:
            f.write(f"sks pattern {i}")
    return folder


def _train(comfy, dataset: str, name: str, executor=None, masked_loss: bool = False, **dataset_inputs):
    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=dataset, steps=3, lr=1e-2,
                                save_name=name)
    p[graphs.one(p, "LoraLoop_LoadDataset")]["inputs"].update(dataset_inputs)
    if masked_loss:
        graphs.train_options(p, masked_loss=True)
    ex, _ = comfy_env.run_prompt(p, name, executor=executor)
    losses = ex.history_result["outputs"][graphs.one(p, "LoraLoop_TrainLoRA")]["lora_loop_chart"][0]["loss"]
    with safe_open(os.path.join(comfy["tmp"], "models", "loras", graphs.saved_lora(ex, p)), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    return ex, losses, sd


def test_alpha_masks_weight_the_loss(comfy):
    opaque = _images(os.path.join(comfy["tmp"], "in", "mask_opaque"), 255)
    ex, plain_losses, plain = _train(comfy, opaque, "mask_plain")
    _, masked_losses, masked = _train(comfy, opaque, "mask_opaque", executor=ex, alpha_mask=True)
    # every pixel opaque: the masked loss is the plain loss
    torch.testing.assert_close(torch.tensor(masked_losses), torch.tensor(plain_losses), rtol=1e-5, atol=0)
    for k in plain:
        torch.testing.assert_close(masked[k], plain[k], rtol=1e-4, atol=1e-6)
    half = _images(os.path.join(comfy["tmp"], "in", "mask_half"), 0)
    _, unmasked_losses, unmasked = _train(comfy, half, "mask_half_off", executor=ex)
    _, half_losses, half_masked = _train(comfy, half, "mask_half_on", executor=ex, alpha_mask=True)
    assert half_losses != unmasked_losses
    assert max(float((half_masked[k] - unmasked[k]).abs().max()) for k in unmasked if "lora_up" in k) > 1e-4


def test_a_black_mask_folder_trains_nothing_and_needs_masked_loss(comfy):
    data = graphs.make_dataset(os.path.join(comfy["tmp"], "in", "mask_folder"), n=2)
    masks = os.path.join(comfy["tmp"], "in", "mask_folder_masks")
    os.makedirs(masks, exist_ok=True)
    for i in range(2):
        Image.new("L", (64, 64), 0).save(os.path.join(masks, f"img_{i:02d}.png"))
    ex, losses, sd = _train(comfy, data, "mask_black", masked_loss=True, conditioning_data_dir=masks)
    assert losses == [0.0, 0.0, 0.0]
    ups = [v for k, v in sd.items() if k.endswith("lora_up.weight")]
    assert ups and all(float(v.abs().max()) == 0.0 for v in ups)  # no gradient reached the LoRA
    _, losses, sd = _train(comfy, data, "mask_black_unused", executor=ex, conditioning_data_dir=masks)
    assert min(losses) > 0 and any(float(v.abs().max()) > 0 for k, v in sd.items() if k.endswith("lora_up.weight"))

    p = graphs.tiny_train_graph(graphs.load_api(WORKFLOW), family="sd15", dataset=data, steps=1,
                                save_name="mask_none")
    graphs.train_options(p, masked_loss=True)
    comfy_env.execute(p, "mask-none", executor=ex)
    errors = [d for e, d in ex.status_messages if e == "execution_error"]
    assert errors and "masked_loss: the dataset has no masks" in errors[0]["exception_message"], errors
