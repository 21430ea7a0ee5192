"""Assemble the pieces a run needs from configs: the objective and the LoRA network."""
from __future__ import annotations

import logging


from .config import NetworkConfig, TrainConfig
from .network import LoRANetwork, Target
from .objectives import DiscreteObjective, FlowObjective

log = logging.getLogger(__name__)


def build_objective(spec, cfg: TrainConfig, family_name: str):
    """``spec`` is the adapter's ObjectiveSpec (what the model's own model_sampling says)."""
    if spec.kind == "discrete":
        return DiscreteObjective(spec.sigmas, spec.prediction, cfg.min_timestep, cfg.max_timestep)
    sampling, shift = cfg.timestep_sampling, cfg.discrete_flow_shift
    if sampling == "model":
        if family_name == "flux" and spec.shift != 1.0:
            sampling = "flux_shift"
        else:
            sampling, shift = "shift", spec.shift
    return FlowObjective(sampling, cfg.sigmoid_scale, 0.0, shift)


def network_targets(family, unet_root, unet_config: dict, te_root, cfg: NetworkConfig) -> list[Target]:
    targets: list[Target] = []
    if cfg.train_unet:
        targets += family.unet_targets(unet_root, unet_config, conv=cfg.conv_dim > 0, options=cfg)
    if cfg.train_text_encoder or cfg.train_t5:
        if te_root is None:
            raise ValueError("training the text encoder needs the CLIP input of Inject LoRA to be connected")
        targets += family.text_encoder_targets(te_root, options=cfg)
    if not targets:
        raise ValueError("nothing to train: enable train_unet and/or train_text_encoder")
    return targets


def build_network(family, unet_root, unet_config: dict, te_root, cfg: NetworkConfig,
                  init_state: dict | None = None, init_source: str = "") -> LoRANetwork:
    """A fresh LoRA network on the family's kohya targets, or one loaded from a kohya file."""
    roots = {"unet": unet_root}
    if te_root is not None:
        roots["te"] = te_root
    if init_state is not None:
        has_conv = any(k.endswith(".lora_down.weight") and v.ndim == 4 and v.shape[-1] > 1
                       for k, v in init_state.items())
        file_cfg = NetworkConfig(network_dim=cfg.network_dim, network_alpha=cfg.network_alpha,
                                 conv_dim=max(cfg.conv_dim, 1) if has_conv else 0, conv_alpha=cfg.conv_alpha,
                                 train_unet=any(k.startswith("lora_unet_") for k in init_state),
                                 train_text_encoder=any(k.startswith("lora_te") for k in init_state),
                                 train_t5=any(k.startswith("lora_te3_") for k in init_state) and family.name in ("sd3", "flux"),
                                 train_blocks="all", seed=cfg.seed)
        targets = network_targets(family, unet_root, unet_config, te_root, file_cfg)
        return LoRANetwork.from_kohya_state_dict(init_state, targets, roots, family=family.name,
                                                 network_args=cfg.network_args(), strict=True,
                                                 source=init_source or "init file")
    targets = network_targets(family, unet_root, unet_config, te_root, cfg)
    return LoRANetwork.create(targets, roots, cfg.network_dim, cfg.network_alpha,
                              conv_rank=cfg.conv_dim or None, conv_alpha=cfg.conv_alpha if cfg.conv_dim else None,
                              family=family.name, network_args=cfg.network_args(), seed=cfg.seed)


GROUP_KEYS = ("resolution", "batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
              "bucket_reso_steps", "bucket_no_upscale")


def toml_explicit_group_keys(toml_path: str) -> list[set[str]]:
    """Per [[datasets]] entry, the group keys the TOML sets itself ([general] or the dataset table)."""
    import tomllib

    with open(toml_path, "rb") as f:
        cfg = tomllib.load(f)
    general = {k for k in cfg.get("general", {}) if k in GROUP_KEYS}
    return [general | {k for k in ds if k in GROUP_KEYS} for ds in cfg.get("datasets", [])]


def apply_group_settings(dataset, values: dict):
    """Apply node-level bucket settings with kohya precedence: values the dataset TOML sets win; the
    node's values fill the rest (they play the role of sd-scripts' command-line arguments)."""
    import dataclasses
    import os

    explicit: list[set[str]] = [set() for _ in dataset.groups]
    if dataset.source and os.path.isfile(dataset.source) and dataset.source.lower().endswith(".toml"):
        keys = toml_explicit_group_keys(dataset.source)
        if len(keys) == len(dataset.groups):
            explicit = keys
    groups = [dataclasses.replace(g, **{k: v for k, v in values.items() if k not in ex})
              for g, ex in zip(dataset.groups, explicit)]
    return dataset.with_groups(groups)
