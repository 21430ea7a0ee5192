"""Assemble the pieces a run needs from configs: the objective and the LoRA network."""
from __future__ import annotations

import logging

from .config import NetworkConfig, TrainConfig
from .network import COMFY_TE_PREFIX, TE_ROOT, UNET_ROOT, LoRANetwork, NetworkSpec, Target, split_kohya_key
from .lycoris import kind_of_keys, plain_weight
from .network_options import (adapter_args, dropouts, is_sdxl_family, module_ranks, structure_network_args,
                              uses_block_dims)
from .objectives import DiscreteObjective, FlowObjective, check_weighting

log = logging.getLogger(__name__)


def build_objective(spec, cfg: TrainConfig, family):
    """``spec`` is the adapter's ObjectiveSpec (what the model's own model_sampling says); ``family`` decides
    what ``timestep_sampling=model`` means for a flow model. The loss-weight options are checked against the
    model's prediction here, before anything loads (sd-scripts' rules)."""
    check_weighting(spec.prediction, cfg.scale_v_pred_loss_like_noise_pred, cfg.v_pred_like_loss)
    if spec.kind == "discrete":
        return DiscreteObjective(spec.sigmas, spec.prediction, cfg.min_timestep, cfg.max_timestep,
                                 zero_terminal_snr=cfg.zero_terminal_snr)
    if cfg.zero_terminal_snr:
        log.warning("zero_terminal_snr ignored: it rescales a discrete (SD1/SD2/SDXL) noise schedule, and this is a "
                    "flow-matching model (sd-scripts' flow trainers ignore it too)")
    sampling, shift = cfg.timestep_sampling, cfg.discrete_flow_shift
    if sampling == "model":
        sampling, shift = family.model_timestep_sampling(spec.shift)
    return FlowObjective(sampling, cfg.sigmoid_scale, 0.0, shift)


def network_targets(family, unet_root, unet_config: dict, te_root, cfg: NetworkConfig) -> list[Target]:
    targets: list[Target] = []
    if cfg.train_unet:
        conv = cfg.conv_dim > 0 or bool(cfg.conv_block_dims.strip())  # kohya: conv_block_dims adds the 3x3 convs
        targets += family.unet_targets(unet_root, unet_config, conv=conv, options=cfg)
    if cfg.train_text_encoder or cfg.train_t5:
        if te_root is None:
            raise ValueError("training the text encoder needs the CLIP input of Inject LoRA to be connected")
        targets += family.text_encoder_targets(te_root, options=cfg)
    if not targets:
        raise ValueError("nothing to train: enable train_unet and/or train_text_encoder")
    return targets


def _spec(family, targets: list[Target], rank, alpha, conv_rank, conv_alpha, options: dict | None = None,
          dropout: float | None = None) -> NetworkSpec:
    has_conv = any(t.kind == "conv3x3" for t in targets)
    return NetworkSpec(family=family.name, rank=rank, alpha=alpha, conv_rank=conv_rank if has_conv else None,
                       conv_alpha=conv_alpha if has_conv else None,
                       args=tuple({**family.network_args(targets), **(options or {})}.items()), dropout=dropout)


def _load_weights(net: LoRANetwork, sd: dict, source: str) -> None:
    """kohya ``network_weights`` without ``dim_from_weights`` (``load_weights``: ``load_state_dict(strict=False)``):
    the file's down/up weights go into the modules of the same name, the others keep their fresh weights and file
    modules this network lacks are ignored. The alphas stay the network's (sd-scripts trains with the network's
    alpha but writes the file's)."""
    weights = {k: v for k, v in sd.items() if not k.endswith(".alpha")}
    loaded = [n for n in net.names if all(f"{n}{suf}" in weights for suf in net.lora(n).file_tensors()
                                          if suf != ".alpha")]
    if not loaded:
        raise ValueError(f"{source}: none of its modules is in this network (another model type, or other "
                         "targets?); turn dim_from_weights on to take the file's modules")
    try:
        net.load_kohya_state_dict(weights, strict=False, source=source)
    except ValueError as e:
        raise ValueError(f"{e}. The file's ranks differ from the settings': turn dim_from_weights on to take "
                         "the file's ranks, or set the same ranks") from None
    other_alpha = [n for n in loaded if f"{n}.alpha" in sd and float(sd[f"{n}.alpha"].float().item())
                   != net.lora(n).alpha_value]
    log.info("%s: weights loaded into %d of %d modules (dim_from_weights off)", source, len(loaded), len(net))
    if other_alpha:
        log.warning("%s: %d modules have another alpha in the file (e.g. %s); the settings' alphas are kept",
                    source, len(other_alpha), other_alpha[0])


def _check_header(net: LoRANetwork, metadata: dict | None, source: str) -> None:
    """Warn when the init file's own header disagrees with its tensors: the new file follows the tensors."""
    import json

    raw = (metadata or {}).get("ss_network_args")
    try:
        claimed = {str(k): str(v) for k, v in json.loads(raw).items()} if raw else {}
    except (ValueError, AttributeError):
        log.warning("%s: ss_network_args is not a JSON object (%r); ignored", source, raw)
        return
    real = net.spec.network_args

    def same(a, b) -> bool:  # "1" and "1.0" are the same alpha
        try:
            return a == b or (a is not None and b is not None and float(a) == float(b))
        except ValueError:
            return str(a).lower() == str(b).lower()

    keys = ("conv_dim", "conv_alpha", "train_blocks", "train_t5xxl")
    diff = {k: (claimed.get(k), real.get(k)) for k in keys if not same(claimed.get(k), real.get(k))}
    for k in ("ss_network_dim", "ss_network_alpha"):
        want = {"ss_network_dim": net.spec.rank, "ss_network_alpha": net.spec.alpha}[k]
        if k in (metadata or {}) and want is not None:
            try:
                if float(metadata[k]) != float(want):
                    diff[k] = (metadata[k], want)
            except ValueError:
                diff[k] = (metadata[k], want)
    if diff:
        log.warning("%s: its header disagrees with its tensors (%s); the new file's header follows the tensors",
                    source, ", ".join(f"{k}: header {a!r}, tensors {b!r}" for k, (a, b) in diff.items()))


def build_network(family, unet_root, unet_config: dict, te_root, cfg: NetworkConfig,
                  init_state: dict | None = None, init_source: str = "",
                  init_metadata: dict | None = None, weight_reader=plain_weight) -> LoRANetwork:
    """A fresh LoRA network on the family's kohya targets, or one loaded from a kohya file.

    The network's spec (what the file header will say) always follows the modules it really has: from a
    file, the file's ranks, alphas and module set (its own ``ss_network_args`` claims are checked against
    them); fresh, the config's. The network options (docs/training.md "Network options"): the dropouts act only
    while training; block dims (SD1/SD2/SDXL) give per-module ranks and alphas, a rank of 0 leaves a module out.
    ``cfg.dim_from_weights`` off: the config's network with the file's weights loaded where the names match
    (kohya ``network_weights`` without ``dim_from_weights``). ``cfg.algo`` / ``dora_wd`` pick LoRA, LoHa, LoKr or
    DoRA (``trainer/lycoris.py``; a file's modules keep the kind its keys say); ``weight_reader`` reads the base
    weights DoRA's magnitudes start from."""
    blocks = uses_block_dims(cfg)
    is_sdxl = is_sdxl_family(family.name, family.display_name,
                             "block_dims / block_alphas / conv_block_dims / conv_block_alphas") if blocks else False
    drop = dropouts(cfg)
    options = structure_network_args(cfg)
    if any(drop.values()):
        log.info("LoRA dropouts while training: neuron %s, rank %s, module %s", drop["dropout"],
                 drop["rank_dropout"], drop["module_dropout"])
    if cfg.conv_dim > 0 and not family.supports_conv:
        raise ValueError(f"conv_dim={cfg.conv_dim}: {family.display_name} has no 3x3 conv targets (LoRA-C3Lier is "
                         "for the SD1/SD2/SDXL U-Net and the generic family's models); set conv_dim to 0")
    roots = {UNET_ROOT: unet_root}
    if te_root is not None:
        roots[TE_ROOT] = te_root
    if init_state is not None and cfg.dim_from_weights:
        if blocks:
            raise ValueError("block_dims / block_alphas / conv_block_dims / conv_block_alphas with init_lora: the "
                             "file gives every rank and alpha (dim_from_weights); turn dim_from_weights off to load "
                             "the file into a network of these block dims, or clear them")
        has_conv = any(k.endswith(".lora_down.weight") and v.ndim == 4 and v.shape[-1] > 1
                       for k, v in init_state.items()) or \
            (family.supports_conv and kind_of_keys(split_kohya_key(k)[1] for k in init_state) in ("loha", "lokr"))
        file_cfg = NetworkConfig(network_dim=cfg.network_dim, network_alpha=cfg.network_alpha,
                                 conv_dim=1 if has_conv else 0, conv_alpha=cfg.conv_alpha,
                                 train_unet=any(k.startswith("lora_unet_") for k in init_state),
                                 train_text_encoder=any(k.startswith(("lora_te", COMFY_TE_PREFIX))
                                                        for k in init_state),
                                 train_t5=family.t5_prefix is not None
                                 and any(k.startswith(family.t5_prefix + "_") for k in init_state),
                                 train_blocks="all", seed=cfg.seed)
        targets = network_targets(family, unet_root, unet_config, te_root, file_cfg)
        by_name: dict[str, set] = {}
        for k in init_state:
            name, suf = split_kohya_key(k)
            by_name.setdefault(name, set()).add(suf)
        in_file = set(by_name)
        kinds = [kind_of_keys(by_name[t.name]) for t in targets if t.name in in_file]
        options = {k: v for k, v in options.items() if k not in ("factor", "decompose_both")}  # the file's shapes
        args = {**family.network_args([t for t in targets if t.name in in_file]), **adapter_args(kinds), **options}
        net = LoRANetwork.from_kohya_state_dict(init_state, targets, roots, family=family.name,
                                                args=tuple(args.items()), strict=True,
                                                source=init_source or "init file", **drop)
        _check_header(net, init_metadata, init_source or "init file")
        return net
    targets = network_targets(family, unet_root, unet_config, te_root, cfg)
    ranks = module_ranks(targets, is_sdxl, cfg) if blocks else {}
    kept = [t for t in targets if ranks.get(t.name, (1, None))[0] != 0]
    if not kept:
        raise ValueError("block_dims / conv_block_dims are 0 for every block: no module is left to train")
    options = {**adapter_args(["dora" if cfg.dora_wd else cfg.algo]), **options}
    spec = _spec(family, kept, cfg.network_dim, cfg.network_alpha, cfg.conv_dim or None,
                 cfg.conv_alpha if cfg.conv_dim else None, options, drop["dropout"])
    net = LoRANetwork.create(targets, roots, spec, seed=cfg.seed, ranks=ranks, algo=cfg.algo, dora=cfg.dora_wd,
                             factor=cfg.factor, decompose_both=cfg.decompose_both, weight_reader=weight_reader, **drop)
    if init_state is not None:
        _load_weights(net, init_state, init_source or "init file")
    return net
