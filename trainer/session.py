"""One training run on ComfyUI objects: clone, inject, load, train, hand back the trained clone.

This is the glue between the node and the plain-torch loop; everything that touches ComfyUI goes
through ``comfy_adapter``."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from . import comfy_adapter as ca
from .assemble import build_objective
from .config import TrainConfig
from .encoded import EncodedDataset
from .loop import Trainer, TrainResult

log = logging.getLogger(__name__)


@dataclass
class SessionResult:
    model: Any              # ModelPatcher clone with the trained LoRA injected
    clip: Any               # CLIP clone with the text-encoder LoRA (or the input CLIP)
    network: Any            # the trained LoRANetwork (a copy; the input network is untouched)
    losses: list[float]
    lrs: list[float]
    loop: TrainResult | None = None
    info: dict = field(default_factory=dict)


def _text_encoder(clip):
    if clip is None:
        return None

    def encode(captions: list[str]) -> list:
        return [ca.encode_caption(clip, c) for c in captions]

    return encode


def train(*, model, clip, network, data: EncodedDataset, cfg: TrainConfig, progress=None) -> SessionResult:
    if not isinstance(data, EncodedDataset):
        raise TypeError("Train LoRA needs the dataset from Encode Dataset (latents), got "
                        f"{type(data).__name__}; connect Load Dataset -> Bucket Images -> Encode Dataset")
    family = ca.detect_family(model)
    if network.family and network.family != family.name:
        raise ValueError(f"the LoRA network was built for {network.family} but the MODEL is {family.name}; "
                         "connect the same MODEL to Inject LoRA and Train LoRA")
    net = network.copy()                       # the cached input network keeps its weights
    mp = ca.install_network(model, net)
    train_te = bool(net.text_encoder_names)
    clip_t = ca.install_text_encoder_network(clip, net) if clip is not None else None
    if train_te and clip_t is None:
        raise ValueError("the network trains the text encoder: connect the CLIP from Inject LoRA to Train LoRA")
    spec = ca.objective_spec(mp)
    objective = build_objective(spec, cfg, family.name)
    guidance = cfg.guidance_scale if family.name == "flux" else None
    if cfg.gradient_checkpointing and family.name == "flux":
        log.warning("gradient checkpointing is not applied to FLUX blocks (they update their residual stream in "
                    "place, which checkpoint recomputation cannot replay); training runs without it")
    started = time.time()
    with torch.inference_mode(False), torch.enable_grad():
        ca.load_for_training(mp)
        if train_te:
            ca.load_clip_for_training(clip_t)
        for p in net.parameters():
            p.requires_grad_(True)
        tmodel = ca.ComfyTrainModel(mp, cfg.mixed_precision, guidance=guidance)
        trainer = Trainer(model=tmodel, network=net, data=data, cfg=cfg, objective=objective,
                          text_encoder=_text_encoder(clip_t if clip_t is not None else clip),
                          size_conditioning=family.name == "sdxl")
        status = "error"
        try:
            root = ca.diffusion_root(mp)
            te_root = clip_t.cond_stage_model if train_te else torch.nn.Module()
            with ca.differentiable_kernels(), ca.protect_inplace_residuals(root), \
                    ca.protect_inplace_residuals(te_root), \
                    ca.gradient_checkpointing(root, cfg.gradient_checkpointing and family.name != "flux"):
                result = trainer.run(on_step=progress.on_step if progress else None,
                                     should_stop=progress.should_stop if progress else None)
            status = "cancelled" if result.stopped_early else "done"
        except BaseException as e:
            status = "cancelled" if type(e).__name__ == "InterruptProcessingException" else "error"
            raise
        finally:
            for p in net.parameters():
                p.requires_grad_(False)
                p.grad = None
            net.eval()
            if progress:
                progress.finish(status)
    if result.stopped_early:
        import comfy.model_management

        comfy.model_management.throw_exception_if_processing_interrupted()
    net.training_info = {
        "started_at": started, "finished_at": time.time(), "steps": result.steps_done,
        "epoch": result.position.epoch, "config": cfg, "optimizer_repr": trainer.optimizer_repr,
        "family": family.name, "prediction": spec.prediction, "objective": type(objective).__name__,
        "dataset": data, "unet_config": ca.unet_config(model), "config_class_names": ca.model_config_names(model),
    }
    return SessionResult(model=mp, clip=clip_t if clip_t is not None else clip, network=net,
                         losses=result.losses, lrs=result.lrs, loop=result)
