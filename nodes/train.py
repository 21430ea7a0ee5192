"""Train LoRA node: parse inputs -> trainer.session.train -> outputs."""
from __future__ import annotations

from ..trainer.config import TrainConfig, help_of
from ..trainer.optim import SCHEDULES, available_optimizers

from ._api import CATEGORY, LoraDataset, LoraNetwork, io
from .progress import NodeProgress


def _t(name: str) -> str:
    return help_of(TrainConfig, name)


D = TrainConfig()
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
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The input MODEL with the trained LoRA applied "
                                                              "(bypass, exactly as trained): connect to KSampler."),
                io.Clip.Output(display_name="clip", tooltip="The CLIP with the trained text-encoder LoRA applied "
                                                            "(the input CLIP when the text encoder was not trained)."),
                LoraNetwork.Output(display_name="network", tooltip="The trained LORA_NETWORK: connect to Save LoRA."),
                io.LossMap.Output(display_name="loss", tooltip="Loss per step ({'loss': [...]}, core's LOSS_MAP; "
                                                               "connects to Plot Loss Graph)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, network, dataset, steps, learning_rate, optimizer, lr_scheduler, lr_warmup_steps,
                gradient_accumulation_steps, seed, clip=None, text_encoder_lr=D.text_encoder_lr,
                max_grad_norm=D.max_grad_norm, noise_offset=0.0, min_snr_gamma=0.0, min_timestep=0,
                max_timestep=1000, timestep_sampling="model", sigmoid_scale=1.0, discrete_flow_shift=3.0,
                guidance_scale=1.0, gradient_checkpointing=False, mixed_precision="auto",
                loss_type="l2") -> io.NodeOutput:
        from ..trainer.session import train

        cfg = TrainConfig(max_train_steps=steps, learning_rate=learning_rate, text_encoder_lr=text_encoder_lr,
                          optimizer_type=optimizer, lr_scheduler=lr_scheduler, lr_warmup_steps=lr_warmup_steps,
                          gradient_accumulation_steps=gradient_accumulation_steps, max_grad_norm=max_grad_norm,
                          noise_offset=noise_offset, min_snr_gamma=min_snr_gamma, min_timestep=min_timestep,
                          max_timestep=max_timestep, timestep_sampling=timestep_sampling,
                          sigmoid_scale=sigmoid_scale, discrete_flow_shift=discrete_flow_shift,
                          guidance_scale=guidance_scale, seed=seed, gradient_checkpointing=gradient_checkpointing,
                          mixed_precision=mixed_precision, loss_type=loss_type)
        progress = NodeProgress(cls.hidden.unique_id, steps)
        result = train(model=model, clip=clip, network=network, data=dataset, cfg=cfg, progress=progress)
        return io.NodeOutput(result.model, result.clip, result.network, {"loss": list(result.losses)},
                             ui=progress.final_ui())
