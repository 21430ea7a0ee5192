"""The ``Family`` strategy: what differs between SD1/SD2/SDXL/SD3/FLUX for LoRA training.

Modules are selected the way sd-scripts selects them: by the *class name* of a parent module
(``SpatialTransformer``, ``ResBlock``, ``DoubleStreamBlock``, ``CLIPAttention`` ...) and then every
``nn.Linear`` / ``nn.Conv2d`` below it. ComfyUI's casting ops subclass ``nn.Linear``/``nn.Conv2d``,
so ``isinstance`` works without importing ComfyUI.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Optional, Sequence

from torch import nn

from ..network import COMFY_TE_PREFIX, TE_ROOT, UNET_ROOT, Target

def opt(options: Any, name: str, default: Any) -> Any:
    """Read ``name`` from an options object or mapping (``None`` -> default)."""
    if options is None:
        return default
    if isinstance(options, dict):
        return options.get(name, default)
    return getattr(options, name, default)


def module_kind(m: nn.Module) -> Optional[str]:
    """``linear`` / ``conv`` (1x1) / ``conv3x3`` (any other kernel) or None for non-LoRA-able modules."""
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, nn.Conv2d):
        return "conv" if tuple(m.kernel_size) == (1, 1) else "conv3x3"
    return None


def collect_targets(root: nn.Module, parent_classes: Iterable[str], *, root_key: str,
                    name_of: Callable[[str], Optional[str]], conv3x3: bool = False, is_text_encoder: bool = False,
                    path_prefix: str = "") -> list[Target]:
    """kohya ``create_modules``: for every module whose class name is in ``parent_classes``, every
    Linear / 1x1 Conv2d below it (and 3x3 convs when ``conv3x3``) becomes a Target named
    ``name_of(path)`` (None skips it). ``path`` is relative to ``root``; ``path_prefix`` is prepended
    to the Target path (for roots nested inside the install root)."""
    classes = set(parent_classes)
    seen: set[str] = set()
    out: list[Target] = []
    for ppath, parent in root.named_modules():
        if type(parent).__name__ not in classes:
            continue
        for cpath, child in parent.named_modules():
            if not cpath:
                continue
            full = f"{ppath}.{cpath}" if ppath else cpath
            if full in seen:
                continue
            kind = module_kind(child)
            if kind is None or (kind == "conv3x3" and not conv3x3):
                continue
            name = name_of(full)
            if name is None:
                continue
            seen.add(full)
            out.append(Target(name, root_key, path_prefix + full, kind, is_text_encoder))
    return out


def kohya_name(prefix: str, path: str) -> str:
    return f"{prefix}_{path.replace('.', '_')}"


# --------------------------------------------------------------------------- text encoders
CLIP_PARENTS = ("CLIPAttention", "CLIPMLP")
T5_PARENTS = ("T5Attention", "T5DenseGatedActDense", "T5DenseActDense")
_LAYER_RE = re.compile(r"encoder\.layers\.(\d+)\.")
LLM_PARENTS = ("Attention", "MLP")  # comfy/text_encoders/llama.py: Llama, Mistral, Qwen, Gemma


def clip_layers_in_use(encoder: nn.Module) -> Optional[int]:
    """Layers a ComfyUI ``SDClipModel`` uses by default (``layer="hidden"``, ``layer_idx=-2`` -> n-1; a list of
    layers, FLUX.2's Mistral ``[10, 20, 30]`` -> 30); None when it uses all of them."""
    layer, idx = None, None
    default = getattr(encoder, "options_default", None)
    if isinstance(default, tuple) and len(default) >= 2:
        layer, idx = default[0], default[1]
    n = getattr(encoder, "num_layers", None)
    if layer == "hidden" and isinstance(idx, int) and isinstance(n, int):
        return (n + idx + 1) if idx < 0 else idx + 1
    if isinstance(layer, (list, tuple)) and layer and all(isinstance(i, int) for i in layer):
        # comfy/text_encoders/llama.py: a list of layers takes each one's input (n: the final output)
        return max(layer) if not isinstance(n, int) or max(layer) < n else None
    return None


def clip_targets(clip_model: nn.Module, attr: str, prefix: str, max_layers: Optional[int] = None) -> list[Target]:
    """CLIP attention q/k/v/out_proj + MLP fc1/fc2 of ``clip_model.<attr>.transformer`` named
    ``<prefix>_text_model_encoder_layers_<i>_<module>`` (the names ComfyUI's model_lora_keys_clip maps)."""
    enc = getattr(clip_model, attr, None)
    if enc is None or getattr(enc, "transformer", None) is None:
        return []

    def name_of(path: str) -> Optional[str]:
        if max_layers is not None:
            m = _LAYER_RE.search(path)
            if m and int(m.group(1)) >= max_layers:
                return None
        return kohya_name(prefix, path)

    return collect_targets(enc.transformer, CLIP_PARENTS, root_key=TE_ROOT, name_of=name_of,
                           is_text_encoder=True, path_prefix=f"{attr}.transformer.")


def t5_targets(clip_model: nn.Module, attr: str = "t5xxl", prefix: str = "lora_te3") -> list[Target]:
    """T5 SelfAttention q/k/v/o + DenseReluDense wi_0/wi_1/wo (kohya ``train_t5xxl``)."""
    enc = getattr(clip_model, attr, None)
    if enc is None or getattr(enc, "transformer", None) is None:
        return []
    return collect_targets(enc.transformer, T5_PARENTS, root_key=TE_ROOT, name_of=lambda p: kohya_name(prefix, p),
                           is_text_encoder=True, path_prefix=f"{attr}.transformer.")


def llm_targets(clip_model: nn.Module, attr: str) -> list[Target]:
    """An LLM text encoder's attention ``q/k/v/o_proj`` and MLP ``gate/up/down_proj`` in the layers it uses
    (``clip_model.<attr>.transformer.model.layers``; a vision tower is left alone), named
    ``text_encoders.<path>``: ComfyUI's generic text-encoder key, the only one ``comfy/lora.py``
    ``model_lora_keys_clip`` maps for these encoders (kohya has no names for them)."""
    enc = getattr(clip_model, attr, None)
    layers = getattr(getattr(getattr(enc, "transformer", None), "model", None), "layers", None)
    if layers is None:
        return []
    in_use = clip_layers_in_use(enc)
    base = f"{attr}.transformer.model.layers."

    def name_of(path: str) -> Optional[str]:
        if in_use is not None and int(path.split(".", 1)[0]) >= in_use:
            return None
        return f"{COMFY_TE_PREFIX}{base}{path}"

    return collect_targets(layers, LLM_PARENTS, root_key=TE_ROOT, name_of=name_of, is_text_encoder=True,
                           path_prefix=base)


def comfy_t5_targets(clip_model: nn.Module, attr: str) -> list[Target]:
    """A T5-family encoder that kohya does not name (UMT5, byT5): the ``t5_targets`` modules named
    ``text_encoders.<path>``."""
    enc = getattr(clip_model, attr, None)
    if enc is None or getattr(enc, "transformer", None) is None:
        return []
    base = f"{attr}.transformer."
    return collect_targets(enc.transformer, T5_PARENTS, root_key=TE_ROOT, is_text_encoder=True, path_prefix=base,
                           name_of=lambda p: f"{COMFY_TE_PREFIX}{base}{p}")


# --------------------------------------------------------------------------- the strategy
class Family:
    """One model family. Subclasses set the class attributes and implement ``unet_targets``."""

    name: str = ""
    display_name: str = ""
    config_classes: tuple[str, ...] = ()       # ComfyUI supported_models class names
    network_module: str = "networks.lora"      # ss_network_module
    supports_conv: bool = False                # C3Lier (conv_dim) supported
    te_prefixes: tuple[str, ...] = ()          # text-encoder name prefixes, kohya LR-list order
    default_objective: str = "eps"             # "eps" | "v" | "flow"
    modelspec_implementation: str = "diffusers"
    latent_channels: int = 4
    t5_prefix: Optional[str] = None            # kohya prefix of the T5-XXL ``train_t5`` trains (``lora_te3``)

    def __repr__(self) -> str:
        return f"<Family {self.name}>"

    # ---- targets
    def unet_targets(self, root: nn.Module, unet_config: dict, conv: bool = False, options: Any = None) -> list[Target]:
        raise NotImplementedError

    def text_encoder_targets(self, clip_model: nn.Module, options: Any = None) -> list[Target]:
        raise NotImplementedError

    def network_args(self, targets: Sequence[Target]) -> dict[str, str]:
        """Structural sd-scripts network args that describe ``targets`` (beyond conv_dim/conv_alpha, which
        the network derives from its modules): derived from the modules, so the header never disagrees
        with the tensors. ``train_t5xxl`` when T5 (``lora_te3``) modules are present."""
        return {"train_t5xxl": "True"} if any(t.prefix == "lora_te3" for t in targets) else {}

    # ---- metadata
    def base_model_version(self, unet_config: Optional[dict] = None, objective: Optional[str] = None,
                           config_class_names: Optional[list[str]] = None) -> str:
        raise NotImplementedError

    def modelspec_architecture(self, unet_config: Optional[dict] = None, objective: Optional[str] = None,
                               config_class_names: Optional[list[str]] = None) -> str:
        """Base architecture id (without ``/lora``)."""
        raise NotImplementedError

    def lora_architecture(self, unet_config: Optional[dict] = None, objective: Optional[str] = None,
                          config_class_names: Optional[list[str]] = None) -> str:
        return self.modelspec_architecture(unet_config, objective, config_class_names) + "/lora"

    def default_resolution(self, objective: Optional[str] = None) -> tuple[int, int]:
        return (512, 512)

    def prediction_type(self, objective: Optional[str] = None) -> Optional[str]:
        """modelspec.prediction_type: ``epsilon`` / ``v`` (None: omitted, FLUX)."""
        return "v" if (objective or self.default_objective) == "v" else "epsilon"

    def is_v2(self) -> bool:
        return False

    # ---- training inputs
    def latent_downscale(self, unet_config: Optional[dict] = None) -> int:
        """Pixels per latent pixel of the family's VAE (for planning before anything is encoded)."""
        return 8

    def refuse(self, unet_config: Optional[dict], latent_channels: int) -> Optional[str]:
        """Why this model of the family cannot train here (an input it needs that we do not give), or None."""
        return None

    def takes_guidance(self, unet_config: Optional[dict] = None) -> bool:
        """Whether the model has a distilled-guidance input that training feeds ``guidance_scale`` to."""
        return bool((unet_config or {}).get("guidance_embed"))

    def model_timestep_sampling(self, shift: float) -> tuple[str, float]:
        """``timestep_sampling=model`` for a flow model whose model_sampling has ``shift``: (sampling, shift)."""
        return "shift", shift
