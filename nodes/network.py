"""Inject LoRA node: build a kohya LoRA network for the loaded MODEL (and CLIP)."""
from __future__ import annotations

import logging

from ..trainer.config import NetworkConfig, help_of
from ._api import CATEGORY, LoraNetwork, io

log = logging.getLogger(__name__)
NONE = "none"


def _n(name: str) -> str:
    return help_of(NetworkConfig, name)


def _lora_files() -> list[str]:
    import folder_paths

    return [NONE] + [f for f in folder_paths.get_filename_list("loras") if f.lower().endswith(".safetensors")]


class InjectLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        d = NetworkConfig()
        return io.Schema(
            node_id="LoraLoop_InjectLoRA",
            display_name="Inject LoRA",
            category=f"{CATEGORY}/training",
            description="Create a kohya LoRA (LierLa, or C3Lier with conv_dim) on the loaded model's kohya targets and "
                        "inject it as a bypass on a clone. The input MODEL/CLIP are not modified.",
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="The MODEL to train (SD1.x, SD2.x, SDXL, SD3/3.5 or FLUX.1)."),
                io.Int.Input("network_dim", default=d.network_dim, min=1, max=1024, tooltip=_n("network_dim")),
                io.Float.Input("network_alpha", default=d.network_alpha, min=0.0, max=1024.0, step=0.5,
                               tooltip=_n("network_alpha")),
                io.Int.Input("conv_dim", default=0, min=0, max=1024, tooltip=_n("conv_dim")),
                io.Float.Input("conv_alpha", default=1.0, min=0.0, max=1024.0, step=0.5, tooltip=_n("conv_alpha")),
                io.Boolean.Input("train_text_encoder", default=False, tooltip=_n("train_text_encoder")),
                io.Int.Input("init_seed", default=0, min=0, max=2**63 - 1, tooltip=_n("seed")),
                io.Clip.Input("clip", optional=True, tooltip="The CLIP of the same checkpoint. Needed to train the "
                                                             "text encoder (and to load a file with lora_te keys)."),
                io.Combo.Input("init_lora", options=_lora_files(), default=NONE, optional=True,
                               tooltip="Start from an existing kohya LoRA in models/loras (its rank/alpha and module "
                                       "set are used) instead of a fresh one."),
                io.Boolean.Input("train_unet", default=True, optional=True, tooltip=_n("train_unet")),
                io.Boolean.Input("train_t5", default=False, optional=True, tooltip=_n("train_t5")),
                io.Combo.Input("train_blocks", options=["all", "single", "double"], default="all", optional=True,
                               tooltip=_n("train_blocks")),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="Clone of the MODEL with the (untrained) LoRA injected."),
                io.Clip.Output(display_name="clip", tooltip="Clone of the CLIP with the text-encoder LoRA injected "
                                                            "(or the input CLIP)."),
                LoraNetwork.Output(display_name="network", tooltip="The LORA_NETWORK: connect to Train LoRA."),
            ],
        )

    @classmethod
    def execute(cls, model, network_dim, network_alpha, conv_dim, conv_alpha, train_text_encoder, init_seed, clip=None,
                init_lora=NONE, train_unet=True, train_t5=False, train_blocks="all") -> io.NodeOutput:
        from ..trainer import comfy_adapter as ca
        from ..trainer.assemble import build_network

        cfg = NetworkConfig(network_dim=network_dim, network_alpha=network_alpha, conv_dim=conv_dim,
                            conv_alpha=conv_alpha, train_unet=train_unet, train_text_encoder=train_text_encoder,
                            train_t5=train_t5, train_blocks=train_blocks, seed=init_seed)
        family = ca.detect_family(model)
        init_state, source = None, ""
        if init_lora and init_lora != NONE:
            import folder_paths
            from safetensors.torch import load_file

            source = folder_paths.get_full_path_or_raise("loras", init_lora)
            init_state = load_file(source)
        net = build_network(family, ca.diffusion_root(model), ca.unet_config(model),
                            clip.cond_stage_model if clip is not None else None, cfg, init_state, source)
        log.info("Inject LoRA: %s, %d modules (%d U-Net, %d text encoder)", family.name, len(net),
                 len(net.unet_names), len(net.text_encoder_names))
        return io.NodeOutput(ca.install_network(model, net), ca.install_text_encoder_network(clip, net), net)
