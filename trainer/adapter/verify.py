"""The self-check of a saved LoRA: load the file through ComfyUI's own LoRA loader (``comfy/sd.py``
``load_lora_for_models``, the code LoraLoader runs) onto the base MODEL/CLIP, and compare its prediction with
the in-memory trained network's (the bypass LoRA). Reports every key ComfyUI's loader did not map
(``comfy/lora.py`` logs them as "lora key not loaded") and the largest relative prediction difference."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .encode import encode_caption
from .inject import base_clip_of, base_of, install_network, install_text_encoder_network

PROMPT = "a photo"
SIZE = 128  # pixels: big enough for every U-Net level, cheap on a CPU


@dataclass(frozen=True)
class VerifyReport:
    unloaded: tuple[str, ...]                 # keys ComfyUI's loader did not load
    prediction_diff: float | None             # max |ours - loaded| / max |loaded| (None: no CLIP to compare with)
    text_encoder_diff: float | None = None    # same for the text-encoder output, when the TE was trained

    def describe(self) -> str:
        keys = f"{len(self.unloaded)} unloaded keys" + (f" (e.g. {self.unloaded[0]})" if self.unloaded else "")
        if self.prediction_diff is None:
            return f"verify: {keys}; connect the CLIP to compare predictions"
        te = f", text encoder {self.text_encoder_diff:.1e}" if self.text_encoder_diff is not None else ""
        return f"verify: {keys}, largest prediction difference {self.prediction_diff:.1e} (relative){te}"


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.keys: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("lora key not loaded"):
            self.keys.append(msg.split(":", 1)[-1].strip())


def _predict(patcher, cond) -> torch.Tensor:
    import comfy.model_management as mm

    from .model import ComfyTrainModel

    mm.load_models_gpu([patcher])
    tm = ComfyTrainModel(patcher, "no")
    fmt = patcher.get_model_object("latent_format")
    frames = (1,) * (getattr(fmt, "latent_dimensions", 2) - 2)  # video models: one frame
    gen = torch.Generator(device="cpu").manual_seed(0)
    x0 = torch.randn((1, fmt.latent_channels) + frames + (SIZE // 8, SIZE // 8), generator=gen)
    sigma = patcher.get_model_object("model_sampling").percent_to_sigma(0.5)
    sig = torch.full((1,), float(sigma))
    x = (x0 * max(float(sigma), 1e-3)).to(tm.device)
    conds = tm.batch_conds([cond], tuple(x.shape), [None])
    return tm.denoise(x, sig.to(tm.device), conds).detach().float().cpu()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def verify_saved_lora(model, clip, network, path: str) -> VerifyReport:
    """Load ``path`` with ComfyUI's loader on ``model``/``clip`` without our LoRA, and compare with ``network``
    installed as a bypass on the same base. ``model``/``clip`` may be Train LoRA's outputs (our LoRA is
    taken off first) or the checkpoint's own."""
    import comfy.sd
    import comfy.utils

    sd = comfy.utils.load_torch_file(path, safe_load=True)
    base = base_of(model)
    base_clip = base_clip_of(clip) if clip is not None else None
    collect = _Collect()
    root = logging.getLogger()
    root.addHandler(collect)
    try:
        loaded, loaded_clip = comfy.sd.load_lora_for_models(base, base_clip, sd, 1.0, 1.0)
    finally:
        root.removeHandler(collect)
    if base_clip is None:
        return VerifyReport(tuple(collect.keys), None)
    with torch.no_grad():
        ours = install_network(base, network)
        ours_clip = install_text_encoder_network(base_clip, network)
        cond_ours = encode_caption(ours_clip, PROMPT)
        cond_loaded = encode_caption(loaded_clip, PROMPT)
        te = _rel(cond_ours[0][0].float(), cond_loaded[0][0].float()) if network.text_encoder_names else None
        diff = _rel(_predict(ours, cond_ours), _predict(loaded, cond_loaded))
    return VerifyReport(tuple(collect.keys), diff, te)
