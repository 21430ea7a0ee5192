"""Train LoRA node: parse inputs -> trainer.session.train -> outputs.

Re-queue continuation: a module-level registry keeps, per node (unique_id), the TrainState of its last
run together with a fingerprint of every input except ``steps`` (identity of the upstream objects,
which ComfyUI's cache keeps identical while upstream is unchanged, plus all widget values). When the
node runs again with the same fingerprint and ``steps`` >= the stored step, training continues from
that state; otherwise it starts over. Only the latest state per node is kept."""
from __future__ import annotations

import logging

from ..trainer.checkpoints import CheckpointConfig
from ..trainer.continuation import ContinuationRegistry
from ..trainer.config import TrainConfig, help_of
from ..trainer.optim import SCHEDULES, available_optimizers
from ..trainer.previews import PreviewConfig

from ._api import CATEGORY, LoraDataset, LoraNetwork, TrainState, io
from .progress import NodeProgress

log = logging.getLogger(__name__)


def _t(name: str) -> str:
    return help_of(TrainConfig, name)


def _c(name: str) -> str:
    return help_of(CheckpointConfig, name)


def _p(name: str) -> str:
    return help_of(PreviewConfig, name)


def _samplers() -> tuple[list[str], list[str]]:
    try:
        from ..trainer.comfy_adapter import sampler_names

        return sampler_names()
    except Exception:  # schema built outside ComfyUI
        return ["euler"], ["normal"]


OBJECT_INPUTS = ("model", "network", "dataset", "clip", "vae", "train_state")
REGISTRY = ContinuationRegistry()


def clear_registry() -> None:
    """Forget every stored re-queue state (frees their memory)."""
    REGISTRY.clear()


D = TrainConfig()
CD = CheckpointConfig()
PD = PreviewConfig()
SAMPLERS, SCHEDULERS = _samplers()
FLOW_SAMPLINGS = ["model", "uniform", "sigmoid", "shift", "flux_shift"]


class TrainLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraLoop_TrainLoRA",
            display_name="Train LoRA",
            category=f"{CATEGORY}/training",
            description="Train the injected LoRA on the encoded dataset and output the model with the trained "
                        "LoRA applied, ready for KSampler.",
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="The MODEL from Inject LoRA (or any MODEL of the same checkpoint). "
                                                "It is never modified: training runs on a clone."),
                LoraNetwork.Input("network", tooltip="The LORA_NETWORK from Inject LoRA: targets, rank, alpha and "
                                                     "initial weights. Not modified: training works on a copy."),
                LoraDataset.Input("dataset", tooltip="The dataset from Encode Dataset (latents + captions)."),
                io.Int.Input("steps", default=D.max_train_steps, min=1, max=1_000_000, tooltip=_t("max_train_steps")),
                io.Float.Input("learning_rate", default=D.learning_rate, min=0.0, max=1.0, step=0.000001,
                               round=0.0000001, tooltip=_t("learning_rate")),
                io.Combo.Input("optimizer", options=available_optimizers(), default=D.optimizer_type,
                               tooltip=_t("optimizer_type")),
                io.Combo.Input("lr_scheduler", options=list(SCHEDULES), default=D.lr_scheduler,
                               tooltip=_t("lr_scheduler")),
                io.Int.Input("lr_warmup_steps", default=0, min=0, max=1_000_000, tooltip=_t("lr_warmup_steps")),
                io.Int.Input("gradient_accumulation_steps", default=1, min=1, max=1024,
                             tooltip=_t("gradient_accumulation_steps")),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=True, tooltip=_t("seed")),
                io.Clip.Input("clip", optional=True,
                              tooltip="CLIP from Inject LoRA. Required when the text encoder is trained or when Encode "
                                      "Dataset had no CLIP / captions change per epoch (shuffle, dropout)."),
                io.Float.Input("text_encoder_lr", default=D.text_encoder_lr, min=0.0, max=1.0, step=0.000001,
                               round=0.0000001, optional=True, tooltip=_t("text_encoder_lr")),
                io.Float.Input("max_grad_norm", default=D.max_grad_norm, min=0.0, max=1000.0, step=0.01,
                               optional=True, tooltip=_t("max_grad_norm")),
                io.Float.Input("noise_offset", default=0.0, min=0.0, max=1.0, step=0.001, optional=True,
                               tooltip=_t("noise_offset")),
                io.Float.Input("min_snr_gamma", default=0.0, min=0.0, max=100.0, step=0.1, optional=True,
                               tooltip=_t("min_snr_gamma")),
                io.Int.Input("min_timestep", default=0, min=0, max=1000, optional=True, tooltip=_t("min_timestep")),
                io.Int.Input("max_timestep", default=1000, min=0, max=1000, optional=True, tooltip=_t("max_timestep")),
                io.Combo.Input("timestep_sampling", options=FLOW_SAMPLINGS, default="model", optional=True,
                               tooltip=_t("timestep_sampling")),
                io.Float.Input("sigmoid_scale", default=1.0, min=0.01, max=10.0, step=0.01, optional=True,
                               tooltip=_t("sigmoid_scale")),
                io.Float.Input("discrete_flow_shift", default=3.0, min=0.01, max=100.0, step=0.0001, optional=True,
                               tooltip=_t("discrete_flow_shift")),
                io.Float.Input("guidance_scale", default=1.0, min=0.0, max=100.0, step=0.1, optional=True,
                               tooltip=_t("guidance_scale")),
                io.Boolean.Input("gradient_checkpointing", default=False, optional=True,
                                 tooltip=_t("gradient_checkpointing")),
                io.Combo.Input("mixed_precision", options=["auto", "no", "bf16", "fp16"], default="auto",
                               optional=True, tooltip=_t("mixed_precision")),
                io.Combo.Input("loss_type", options=["l2", "l1"], default="l2", optional=True, tooltip=_t("loss_type")),
                io.String.Input("output_name", default=CD.output_name, optional=True, tooltip=_c("output_name") +
                                " Cancel saves the last completed step here too."),
                io.Int.Input("save_every_n_steps", default=0, min=0, max=1_000_000, optional=True,
                             tooltip=_c("save_every_n_steps")),
                io.Int.Input("save_every_n_epochs", default=0, min=0, max=100_000, optional=True,
                             tooltip=_c("save_every_n_epochs")),
                io.Int.Input("save_last_n", default=0, min=0, max=100_000, optional=True, tooltip=_c("save_last_n")),
                TrainState.Input("train_state", optional=True,
                                 tooltip="A TRAIN_STATE from another Train LoRA: continue that run (LoRA weights, "
                                         "optimizer, LR schedule position, step, data position) up to 'steps'. "
                                         "The same optimizer and LoRA network are required; other changed "
                                         "settings apply from the resumed step on."),
                io.String.Input("resume_from", default="", optional=True,
                                tooltip="Path of a '-state.json' file (or its checkpoint .safetensors) from a "
                                        "<name>_checkpoints folder, absolute or relative to the loras folder: "
                                        "continue that run up to 'steps'. Empty = off. Ignored when train_state "
                                        "is connected. Only safetensors + JSON are read (no pickle)."),
                io.Vae.Input("vae", optional=True, tooltip="VAE for decoding the preview images (needed only when "
                                                           "preview_prompts is set)."),
                io.String.Input("preview_prompts", default="", multiline=True, optional=True,
                                tooltip=_p("prompts") + " Needs the VAE and CLIP inputs. Previews never change "
                                                        "the trained LoRA."),
                io.String.Input("preview_negative", default="", multiline=True, optional=True,
                                tooltip=_p("negative")),
                io.Combo.Input("preview_sampler", options=SAMPLERS, default="euler" if "euler" in SAMPLERS
                               else SAMPLERS[0], optional=True, tooltip=_p("sampler")),
                io.Combo.Input("preview_scheduler", options=SCHEDULERS, default="normal" if "normal" in SCHEDULERS
                               else SCHEDULERS[0], optional=True, tooltip=_p("scheduler")),
                io.Int.Input("preview_steps", default=PD.steps, min=1, max=1000, optional=True, tooltip=_p("steps")),
                io.Float.Input("preview_cfg", default=PD.cfg, min=0.0, max=100.0, step=0.1, optional=True,
                               tooltip=_p("cfg")),
                io.Int.Input("preview_width", default=PD.width, min=16, max=4096, step=8, optional=True,
                             tooltip=_p("width")),
                io.Int.Input("preview_height", default=PD.height, min=16, max=4096, step=8, optional=True,
                             tooltip=_p("height")),
                io.Int.Input("preview_seed", default=0, min=0, max=2**63 - 1, optional=True, tooltip=_p("seed")),
                io.Int.Input("preview_every_n_steps", default=0, min=0, max=1_000_000, optional=True,
                             tooltip=_p("every_n_steps")),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The input MODEL with the trained LoRA applied "
                                                              "(bypass, exactly as trained): connect to KSampler."),
                io.Clip.Output(display_name="clip", tooltip="The CLIP with the trained text-encoder LoRA applied "
                                                            "(the input CLIP when the text encoder was not trained)."),
                LoraNetwork.Output(display_name="network", tooltip="The trained LORA_NETWORK: connect to Save LoRA."),
                io.LossMap.Output(display_name="loss", tooltip="Loss per step ({'loss': [...]}, core's LOSS_MAP; "
                                                               "connects to Plot Loss Graph)."),
                io.Image.Output(display_name="previews",
                                tooltip="All preview images of this run, in order of step then prompt (also shown "
                                        "live on the node). Without previews: one 64x64 black image."),
                TrainState.Output(display_name="train_state",
                                  tooltip="Full resumable state after the last step (LoRA, optimizer, LR schedule, "
                                          "step, data position, seed, config): connect to another Train LoRA's "
                                          "train_state to continue training."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, network, dataset, steps, learning_rate, optimizer, lr_scheduler, lr_warmup_steps,
                gradient_accumulation_steps, seed, clip=None, text_encoder_lr=D.text_encoder_lr,
                max_grad_norm=D.max_grad_norm, noise_offset=0.0, min_snr_gamma=0.0, min_timestep=0,
                max_timestep=1000, timestep_sampling="model", sigmoid_scale=1.0, discrete_flow_shift=3.0,
                guidance_scale=1.0, gradient_checkpointing=False, mixed_precision="auto",
                loss_type="l2", output_name=CD.output_name, save_every_n_steps=0, save_every_n_epochs=0,
                save_last_n=0, train_state=None, resume_from="", vae=None, preview_prompts="",
                preview_negative="", preview_sampler=PD.sampler, preview_scheduler=PD.scheduler,
                preview_steps=PD.steps, preview_cfg=PD.cfg, preview_width=PD.width, preview_height=PD.height,
                preview_seed=0, preview_every_n_steps=0) -> io.NodeOutput:
        params = {k: v for k, v in locals().items() if k != "cls"}  # every input, for the re-queue fingerprint
        import torch

        from ..trainer.checkpoints import CheckpointWriter, load_checkpoint_state
        from ..trainer.session import train
        from .save import loras_folder

        cfg = TrainConfig(max_train_steps=steps, learning_rate=learning_rate, text_encoder_lr=text_encoder_lr,
                          optimizer_type=optimizer, lr_scheduler=lr_scheduler, lr_warmup_steps=lr_warmup_steps,
                          gradient_accumulation_steps=gradient_accumulation_steps, max_grad_norm=max_grad_norm,
                          noise_offset=noise_offset, min_snr_gamma=min_snr_gamma, min_timestep=min_timestep,
                          max_timestep=max_timestep, timestep_sampling=timestep_sampling,
                          sigmoid_scale=sigmoid_scale, discrete_flow_shift=discrete_flow_shift,
                          guidance_scale=guidance_scale, seed=seed, gradient_checkpointing=gradient_checkpointing,
                          mixed_precision=mixed_precision, loss_type=loss_type)
        ckpt = CheckpointConfig(output_name=(output_name or "").strip() or CD.output_name,
                                save_every_n_steps=save_every_n_steps, save_every_n_epochs=save_every_n_epochs,
                                save_last_n=save_last_n)
        preview = PreviewConfig(prompts=preview_prompts or "", negative=preview_negative or "",
                                sampler=preview_sampler, scheduler=preview_scheduler, steps=preview_steps,
                                cfg=preview_cfg, width=preview_width, height=preview_height, seed=preview_seed,
                                every_n_steps=preview_every_n_steps)
        folder = loras_folder()
        # explicit resume: a TRAIN_STATE input, else a state file
        resume, source = None, ""
        if train_state is not None:
            resume, source = train_state, "the train_state input"
        elif resume_from and resume_from.strip():
            resume = load_checkpoint_state(resume_from, folder)
            source = resume_from.strip()
        # re-queue continuation: same node, same inputs except a grown 'steps'
        uid = str(cls.hidden.unique_id) if cls.hidden.unique_id is not None else None
        objects = {k: params[k] for k in OBJECT_INPUTS}
        values = {k: v for k, v in params.items() if k not in OBJECT_INPUTS and k != "steps"}
        previous = REGISTRY.lookup(uid, objects, values, steps)
        if previous is not None:
            resume, source = previous, f"this node's previous run (step {previous.step})"
            log.info("Train LoRA: only 'steps' changed (%d -> %d): continuing from step %d",
                     int(previous.extra.get("max_train_steps", previous.step)), steps, previous.step)

        def keep(state) -> None:
            REGISTRY.remember(uid, objects, values, state)

        progress = NodeProgress(cls.hidden.unique_id, steps)
        writer = CheckpointWriter(folder, ckpt)
        result = train(model=model, clip=clip, network=network, data=dataset, cfg=cfg, progress=progress,
                       checkpoints=writer, resume=resume, resume_source=source or "the training state",
                       preview=preview, vae=vae, on_state=keep)
        images = result.images if result.images is not None else torch.zeros((1, 64, 64, 3))
        return io.NodeOutput(result.model, result.clip, result.network, {"loss": list(result.losses)}, images,
                             result.state, ui=progress.final_ui())
