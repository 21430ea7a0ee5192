"""Inject LoRA node: build a kohya LoRA network for the loaded MODEL (and CLIP)."""
from __future__ import annotations

import logging

from ..trainer.config import NetworkConfig
from ._api import CATEGORY, LoraNetwork, io
from .schema import values_of, widget
from .settings import BY_NAME, receiver_input

log = logging.getLogger(__name__)
NONE = "none"
MAIN = ("network_dim", "network_alpha", "conv_dim", "conv_alpha", "train_text_encoder", "seed")
MORE = ("train_unet", "train_t5", "train_blocks")
OPTIONS = BY_NAME["network_options"]  # its settings socket (dropouts, block dims, dim_from_weights)


def _lora_files() -> list[str]:
    import folder_paths

    return [NONE] + [f for f in folder_paths.get_filename_list("loras") if f.lower().endswith(".safetensors")]


class InjectLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraLoop_InjectLoRA",
            display_name="Inject LoRA (LoRA Loop)",
            category=f"{CATEGORY}/training",
            description="Create a kohya LoRA (LierLa, or C3Lier with conv_dim) on the loaded model's kohya targets and "
                        "inject it as a bypass on a clone. The input MODEL/CLIP are not modified.",
            is_experimental=True,
            inputs=[io.Model.Input("model", tooltip="The MODEL to train: SD1.x/2.x, SDXL, SD3/3.5, FLUX.1/2, "
                                                    "Qwen-Image, Z-Image, Lumina 2, Chroma, HiDream, HunyuanImage "
                                                    "2.1, Wan, or any other model ComfyUI samples (the generic "
                                                    "family).")]
            + [widget(NetworkConfig, n) for n in MAIN]
            + [io.Clip.Input("clip", optional=True, tooltip="The CLIP of the same checkpoint. Needed to train the "
                                                            "text encoder (and to load a file with text-encoder "
                                                            "keys)."),
               io.Combo.Input("init_lora", options=_lora_files(), default=NONE, optional=True,
                              tooltip="Start from an existing kohya LoRA in models/loras: its modules, ranks, alphas "
                                      "and weights are used (and written to the new file's header) instead of a "
                                      "fresh network; the rank/alpha widgets are ignored (kohya dim_from_weights; "
                                      "a Network Options node can load it into the widgets' network instead).")]
            + [widget(NetworkConfig, n, optional=True) for n in MORE]
            + [receiver_input(OPTIONS)],  # last: saved workflows keep their widget and socket order
            outputs=[
                io.Model.Output(display_name="model", tooltip="Clone of the MODEL with the (untrained) LoRA injected."),
                io.Clip.Output(display_name="clip", tooltip="Clone of the CLIP with the text-encoder LoRA injected "
                                                            "(or the input CLIP)."),
                LoraNetwork.Output(display_name="network", tooltip="The LORA_NETWORK: connect to Train LoRA."),
            ],
        )

    @classmethod
    def execute(cls, model, clip=None, init_lora=NONE, network_options=None, **widgets) -> io.NodeOutput:
        from ..trainer import adapter as ca
        from ..trainer.assemble import build_network

        values = values_of(NetworkConfig, MAIN + MORE, widgets)
        if network_options is not None:
            if getattr(network_options, "topic", None) != OPTIONS.name:
                raise TypeError(f"Inject LoRA: 'network_options' needs the output of a Network Options node, got "
                                f"{network_options!r}")
            values.update(network_options.values)
        cfg = NetworkConfig(**values)
        family = ca.detect_family(model)
        init_state, init_meta, source = None, None, ""
        if init_lora and init_lora != NONE:
            import folder_paths
            from safetensors import safe_open
            from safetensors.torch import load_file

            source = folder_paths.get_full_path_or_raise("loras", init_lora)
            init_state = load_file(source)
            with safe_open(source, framework="pt") as f:
                init_meta = f.metadata() or {}
        if cfg.dora_wd and not init_state:  # DoRA's magnitudes start from the weights the MODEL has
            ca.load_base_weights(model, clip if cfg.train_text_encoder else None)
        net = build_network(family, ca.diffusion_root(model), ca.unet_config(model),
                            clip.cond_stage_model if clip is not None else None, cfg, init_state, source, init_meta,
                            weight_reader=ca.dense_weight)
        log.info("Inject LoRA: %s, %d modules (%d U-Net, %d text encoder)", family.name, len(net),
                 len(net.unet_names), len(net.text_encoder_names))
        return io.NodeOutput(ca.install_network(model, net), ca.install_text_encoder_network(clip, net), net)
