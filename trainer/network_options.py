"""sd-scripts' block-wise LoRA options (``networks/lora.py``), with its names, numbering and formulas.

The U-Net blocks of SD1.x/SD2.x and SDXL (kohya's ``get_block_index``): the index into the values of
``block_dims`` / ``block_alphas`` / ``conv_block_dims`` / ``conv_block_alphas`` and of the joined learning-rate
weights ``down_lr_weight + mid_lr_weight + up_lr_weight``.

* SD1/SD2, diffusers module names, 25 blocks (12 down, 1 mid, 12 up): ``down_blocks_i_resnets_j`` and
  ``down_blocks_i_attentions_j`` -> 1 + 3i + j, ``down_blocks_i_downsamplers_0`` -> 1 + 3i + 2; everything in
  ``mid_block`` -> 12; ``up_blocks_i_{resnets,attentions}_j`` -> 13 + 3i + j, ``up_blocks_i_upsamplers_0`` -> 13 +
  3i + 2. Block 0 (``conv_in``) has no LoRA module.
* SDXL, SGM module names, 23 blocks: ``input_blocks_n`` -> 1 + n (n = 0..8), ``middle_block_n`` -> 10 + n,
  ``output_blocks_n`` -> 13 + n; 0 (time and label embeddings) and 22 (``out``) have no LoRA module.

sd-scripts has these options only in ``networks.lora`` (the SD U-Nets); the other families refuse them. Plain
Python: nothing here imports torch or ComfyUI.
"""
from __future__ import annotations

import logging
import math
import re
from typing import Any, Mapping, Optional, Sequence

log = logging.getLogger(__name__)

NUM_OF_BLOCKS, NUM_OF_MID_BLOCKS = 12, 1            # SD1/SD2: down and up blocks each, mid
SDXL_NUM_OF_BLOCKS, SDXL_NUM_OF_MID_BLOCKS = 9, 3   # SDXL: input and output blocks each, middle
BLOCK_FAMILIES = {"sd1": False, "sd2": False, "sdxl": True}  # family name -> SDXL numbering
BLOCK_DIM_OPTIONS = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas")
LR_WEIGHT_OPTIONS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight")
LR_PRESETS = ("cosine", "sine", "linear", "reverse_linear", "zeros")
LORAPLUS_OPTIONS = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")

_RE_UPDOWN = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")


def total_blocks(is_sdxl: bool) -> int:
    """25 for SD1/SD2, 23 for SDXL (the number of values ``block_dims`` takes)."""
    return 1 + SDXL_NUM_OF_BLOCKS * 2 + SDXL_NUM_OF_MID_BLOCKS + 1 if is_sdxl else NUM_OF_BLOCKS * 2 + NUM_OF_MID_BLOCKS


def block_index(lora_name: str, is_sdxl: bool = False) -> int:
    """kohya ``get_block_index``: the block of a U-Net LoRA module by its name; -1 for a name in no block."""
    if not is_sdxl:
        m = _RE_UPDOWN.search(lora_name)
        if m:
            updown, i, kind, j = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
            idx = 3 * i + 2 if kind in ("upsamplers", "downsamplers") else 3 * i + j
            return 1 + idx if updown == "down" else NUM_OF_BLOCKS + 1 + idx
        return NUM_OF_BLOCKS if "mid_block_" in lora_name else -1
    if not lora_name.startswith("lora_unet_"):
        return -1
    name = lora_name[len("lora_unet_"):]
    if name.startswith(("time_embed_", "label_emb_")):
        return 0
    for prefix, base in (("input_blocks_", 1), ("middle_block_", 10), ("output_blocks_", 13)):
        if name.startswith(prefix):
            return base + int(name.split("_")[2])
    return 22 if name.startswith("out_") else -1


def is_sdxl_family(family_name: str, display_name: str = "", what: str = "block-wise options") -> bool:
    """Whether ``family_name`` numbers its blocks the SDXL way; ValueError for a family sd-scripts has no blocks for."""
    if family_name not in BLOCK_FAMILIES:
        raise ValueError(f"{what}: sd-scripts has block-wise ranks and learning rates only for the SD1.x/SD2.x/SDXL "
                         f"U-Net (networks.lora), not for {display_name or family_name or 'this model'}; clear them")
    return BLOCK_FAMILIES[family_name]


# ------------------------------------------------------------------------------------------ parsing
def _numbers(text: str, what: str, kind: type) -> list:
    try:
        return [kind(s) for s in str(text).split(",")]
    except ValueError:
        word = "whole numbers" if kind is int else "numbers"
        raise ValueError(f"{what} {text!r}: give comma-separated {word}") from None


def check_dims(text: str) -> str:
    """Option check of a ``block_dims`` text (the count is checked against the model when the network is built)."""
    if text.strip():
        dims = _numbers(text, "block dims", int)
        if any(d < 0 for d in dims):
            raise ValueError(f"block dims {text!r}: ranks are 0 (no module) or more")
    return text


def check_alphas(text: str) -> str:
    if text.strip():
        _numbers(text, "block alphas", float)
    return text


def _preset(text: str, n: int, what: str) -> list[float]:
    """kohya ``get_list``: ``name[+base]`` over ``n`` blocks."""
    name, _, base_text = text.partition("+")
    try:
        base = float(base_text) if base_text else 0.0
    except ValueError:
        raise ValueError(f"{what} {text!r}: the part after '+' must be a number") from None
    if name == "cosine":
        return [math.sin(math.pi * (i / (n - 1)) / 2) + base for i in reversed(range(n))]
    if name == "sine":
        return [math.sin(math.pi * (i / (n - 1)) / 2) + base for i in range(n)]
    if name == "linear":
        return [i / (n - 1) + base for i in range(n)]
    if name == "reverse_linear":
        return [i / (n - 1) + base for i in reversed(range(n))]
    if name == "zeros":
        return [0.0 + base] * n
    raise ValueError(f"{what} {text!r}: give comma-separated weights or one of {', '.join(LR_PRESETS)} (optionally "
                     "+base, e.g. sine+0.5)")


def _lr_list(text: str, n: int, what: str, presets: bool) -> list[float]:
    """kohya ``parse_block_lr_kwargs``: down/up take a preset or a comma list, mid always a comma list; an empty
    item is 0."""
    text = text.strip()
    if presets and "," not in text:
        return _preset(text, n, what)
    try:
        return [float(s) if s.strip() else 0.0 for s in text.split(",")]
    except ValueError:
        raise ValueError(f"{what} {text!r}: give comma-separated weights") from None


def check_lr_weight(text: str) -> str:
    """Option check of a ``down_lr_weight`` / ``up_lr_weight`` text."""
    if text.strip():
        _lr_list(text, NUM_OF_BLOCKS, "block lr weight", presets=True)
    return text


def check_mid_lr_weight(text: str) -> str:
    if text.strip():
        _lr_list(text, NUM_OF_MID_BLOCKS, "mid_lr_weight", presets=False)
    return text


def _fit(values: list[float], n: int, what: str) -> list[float]:
    if len(values) > n:
        log.warning("%s has %d values, the model has %d blocks: the values after the %d-th are ignored",
                    what, len(values), n, n)
        return values[:n]
    if len(values) < n:
        log.warning("%s has %d values, the model has %d blocks: the missing ones are 1", what, len(values), n)
        return values + [1.0] * (n - len(values))
    return values


def block_lr_weight(is_sdxl: bool, down: str = "", mid: str = "", up: str = "",
                    zero_threshold: float = 0.0) -> Optional[list[float]]:
    """kohya ``get_block_lr_weight``: the learning-rate weight of every block (``total_blocks`` values; SDXL's
    blocks 0 and 22 are 1), or None when no weight is given. Too long lists are cut, short ones filled with 1;
    weights not above ``zero_threshold`` become 0 (their blocks are not trained)."""
    if not (down.strip() or mid.strip() or up.strip()):
        return None
    n = SDXL_NUM_OF_BLOCKS if is_sdxl else NUM_OF_BLOCKS
    n_mid = SDXL_NUM_OF_MID_BLOCKS if is_sdxl else NUM_OF_MID_BLOCKS

    def one(text: str, size: int, what: str, presets: bool) -> list[float]:
        if not text.strip():
            return [1.0] * size
        values = _fit(_lr_list(text, size, what, presets), size, what)
        return [w if w > zero_threshold else 0 for w in values]

    weights = (one(down, n, "down_lr_weight", True) + one(mid, n_mid, "mid_lr_weight", False)
               + one(up, n, "up_lr_weight", True))
    if is_sdxl:
        weights = [1.0] + weights + [1.0]  # the embeddings and out: no LoRA modules there
    assert len(weights) == total_blocks(is_sdxl)
    return weights


def block_dims_and_alphas(is_sdxl: bool, network_dim: int, network_alpha: float, conv_dim: int, conv_alpha: float,
                          block_dims: str = "", block_alphas: str = "", conv_block_dims: str = "",
                          conv_block_alphas: str = "") -> tuple[list[int], list[float], Optional[list[int]],
                                                                Optional[list[float]]]:
    """kohya ``get_block_dims_and_alphas``: per-block (dims, alphas, conv dims, conv alphas); a list not given is
    the network-wide value, the conv lists are None without 3x3 conv modules (conv_dim 0 and no conv_block_dims)."""
    n = total_blocks(is_sdxl)

    def ints(text: str, what: str) -> list[int]:
        values = _numbers(text, what, int)
        if len(values) != n:
            raise ValueError(f"{what} has {len(values)} values; this model has {n} blocks (SD1/SD2: 25 = 12 down + 1 "
                             f"mid + 12 up, SDXL: 23 = 1 + 9 input + 3 middle + 9 output + 1)")
        if any(v < 0 for v in values):
            raise ValueError(f"{what} {text!r}: ranks are 0 (no module) or more")
        return values

    def floats(text: str, what: str) -> list[float]:
        values = _numbers(text, what, float)
        if len(values) != n:
            raise ValueError(f"{what} has {len(values)} values; this model has {n} blocks")
        return values

    dims = ints(block_dims, "block_dims") if block_dims.strip() else [int(network_dim)] * n
    alphas = floats(block_alphas, "block_alphas") if block_alphas.strip() else [float(network_alpha)] * n
    if conv_block_dims.strip():
        conv_dims: Optional[list[int]] = ints(conv_block_dims, "conv_block_dims")
        conv_alphas: Optional[list[float]] = (floats(conv_block_alphas, "conv_block_alphas")
                                              if conv_block_alphas.strip() else [float(conv_alpha)] * n)
    elif conv_dim:
        conv_dims, conv_alphas = [int(conv_dim)] * n, [float(conv_alpha)] * n
    else:
        conv_dims = conv_alphas = None
    return dims, alphas, conv_dims, conv_alphas


def uses_block_dims(cfg: Any) -> bool:
    """Any of block_dims / block_alphas / conv_block_dims / conv_block_alphas set on a NetworkConfig."""
    return any(str(getattr(cfg, k, "") or "").strip() for k in BLOCK_DIM_OPTIONS)


def module_ranks(targets: Sequence[Any], is_sdxl: bool, cfg: Any) -> dict[str, tuple[int, float]]:
    """(rank, alpha) of every U-Net target under ``cfg``'s block dims (rank 0: the block is left out), kohya
    ``create_modules`` with ``block_dims``: Linear and 1x1 conv modules take ``block_dims``, 3x3 convs
    ``conv_block_dims``. Text-encoder targets keep the network-wide rank (not listed)."""
    dims, alphas, conv_dims, conv_alphas = block_dims_and_alphas(
        is_sdxl, cfg.network_dim, cfg.network_alpha, cfg.conv_dim, cfg.conv_alpha, cfg.block_dims, cfg.block_alphas,
        cfg.conv_block_dims, cfg.conv_block_alphas)
    out: dict[str, tuple[int, float]] = {}
    for t in targets:
        if t.is_text_encoder:
            continue
        idx = block_index(t.name, is_sdxl)
        if idx < 0:  # kohya would index its lists with -1 (the last block); no target of ours is outside a block
            raise ValueError(f"LoRA module {t.name} is in no kohya U-Net block: block dims cannot place it")
        if t.kind == "conv3x3":
            out[t.name] = (conv_dims[idx], conv_alphas[idx]) if conv_dims is not None else (0, 0.0)
        else:
            out[t.name] = (dims[idx], alphas[idx])
    return out


def _text(value: float) -> str:
    """A number as a user types it into ``--network_args`` (``4``, ``0.1``): what ``ss_network_args`` holds."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


# ------------------------------------------------------------------------------------------ to the trainer
def lr_options(cfg: Any, family_name: str) -> dict[str, Any]:
    """``LoRANetwork.param_groups`` keyword arguments from a TrainConfig: the LoRA+ ratios (0 = not given) and the
    block learning-rate weights (SD1/SD2/SDXL; an error elsewhere)."""
    out: dict[str, Any] = {k: (float(getattr(cfg, k)) or None) for k in LORAPLUS_OPTIONS}
    texts = [str(getattr(cfg, k) or "") for k in LR_WEIGHT_OPTIONS]
    if any(t.strip() for t in texts):
        is_sdxl = is_sdxl_family(family_name, what="down_lr_weight / mid_lr_weight / up_lr_weight")
        out["block_lr_weight"] = block_lr_weight(is_sdxl, *texts, zero_threshold=cfg.block_lr_zero_threshold)
    return out


def training_network_args(cfg: Any) -> dict[str, str]:
    """The sd-scripts ``--network_args`` a TrainConfig stands for (LoRA+ ratios, block lr weights), as
    ``ss_network_args`` records them."""
    out: dict[str, str] = {}
    for k in LORAPLUS_OPTIONS:
        if getattr(cfg, k, 0):
            out[k] = _text(getattr(cfg, k))
    weights = {k: str(getattr(cfg, k, "") or "").strip() for k in LR_WEIGHT_OPTIONS}
    out.update({k: v for k, v in weights.items() if v})
    if any(weights.values()) and getattr(cfg, "block_lr_zero_threshold", 0):
        out["block_lr_zero_threshold"] = _text(cfg.block_lr_zero_threshold)
    return out


def structure_network_args(cfg: Any) -> dict[str, str]:
    """The sd-scripts ``--network_args`` a NetworkConfig's options stand for (rank/module dropout, block dims and
    alphas), as ``ss_network_args`` records them (``network_dropout`` is its own key, ``ss_network_dropout``)."""
    out: dict[str, str] = {}
    for k in ("rank_dropout", "module_dropout"):
        if getattr(cfg, k, 0):
            out[k] = _text(getattr(cfg, k))
    for k in BLOCK_DIM_OPTIONS:
        v = str(getattr(cfg, k, "") or "").strip()
        if v:
            out[k] = v
    algo = getattr(cfg, "algo", "lora")
    if algo == "lokr":
        out["factor"] = str(cfg.factor)
        if cfg.decompose_both:
            out["decompose_both"] = "True"
    return out


def adapter_args(kinds) -> dict[str, str]:
    """LyCORIS' ``--network_args`` for a network whose modules are of ``kinds`` (``lora``, ``dora``, ``loha``,
    ``lokr``), as ``lycoris.kohya`` files record them: none for a kohya LoRA; ``algo`` (the kind most modules have),
    with ``dora_wd`` / ``wd_on_output`` for DoRA."""
    kinds = list(kinds)
    other = [k for k in kinds if k != "lora"]
    if not other:
        return {}
    top = max(set(other), key=other.count)
    if top == "dora":
        return {"algo": "lora", "dora_wd": "True", "wd_on_output": "False"}
    return {"algo": top}


def dropouts(cfg: Any) -> Mapping[str, Optional[float]]:
    """``LoRAModule`` dropout arguments from a NetworkConfig (0 = off = sd-scripts' None)."""
    return {"dropout": cfg.network_dropout or None, "rank_dropout": cfg.rank_dropout or None,
            "module_dropout": cfg.module_dropout or None}
