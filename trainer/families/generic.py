"""The generic family: any diffusion model ComfyUI loads that no named family claims.

Targets: every Linear (and, with ``conv_dim``, every Conv2d) inside the model's transformer blocks, found by
structure (``blocks.find_block_lists``: lists of modules that hold Linear layers and an attention layer).
Layers outside the blocks (embedders, final layers, norms, time and text projections) stay frozen, as every
kohya-style trainer leaves them. Names are ``lora_unet_<module path>``, which ComfyUI's
``comfy/lora.py`` ``model_lora_keys_unet`` maps for every model. The objective comes from the model's own
``model_sampling``; conds from its own ``extra_conds``. Its text encoder is not trained; named families list
theirs (``text_encoders``).

Named families subclass this and narrow the block classes (``block_classes``) or drop layers
(``exclude``), and give the names, metadata and defaults their own trainers use.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Optional, Sequence

from torch import nn

from ..network import UNET_ROOT, Target
from .base import Family, clip_targets, collect_targets, comfy_t5_targets, kohya_name, llm_targets, opt, t5_targets
from .blocks import describe_block_lists, find_block_lists, linears_outside

log = logging.getLogger(__name__)


def model_id(name: str) -> str:
    """A ComfyUI config class name as a metadata id: ``CosmosT2IPredict2`` -> ``cosmost2ipredict2``,
    ``WAN21_T2V`` -> ``wan21-t2v``."""
    return name.lower().replace("_", "-")


def _submodule(root: nn.Module, path: str) -> Optional[nn.Module]:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def _order(root: nn.Module) -> dict[str, int]:
    return {p: i for i, (p, _) in enumerate(root.named_modules())}


class GenericFamily(Family):
    name = "generic"
    display_name = "any other model ComfyUI loads (generic)"
    network_module = "networks.lora"
    supports_conv = True
    default_objective = "flow"
    modelspec_implementation = "https://github.com/comfyanonymous/ComfyUI"
    #: what a named family narrows: the block lists to train by path (None: every list found), a pattern of
    #: layer paths (relative to their block) that stay frozen, and modules outside the blocks that train too
    block_lists: Optional[tuple[str, ...]] = None
    exclude: Optional[re.Pattern] = None
    also: tuple[str, ...] = ()
    #: the text encoders ``train_text_encoder`` trains, as (attribute of ComfyUI's text-encoder model, kind):
    #: ``llm`` (``llm_targets``), ``umt5`` (``comfy_t5_targets``), ``clip_l`` / ``clip_g`` (kohya ``lora_te1`` /
    #: ``lora_te2``); ``t5``: the T5-XXL ``train_t5`` trains, with its kohya prefix
    text_encoders: tuple[tuple[str, str], ...] = ()
    t5: Optional[tuple[str, str]] = None
    #: what the family's own trainer writes and uses: ``ss_base_model_version`` and ``modelspec.architecture``
    #: (None: the lowercased ComfyUI class), ``timestep_sampling=model`` as (sampling, fixed shift; None: the
    #: model's own shift), the recommended resolution, the VAE's downscale, and whether the model gets
    #: ``guidance_scale`` (None: when its config has a guidance embedding)
    base_version: Optional[str] = None
    architecture: Optional[str] = None
    flow_sampling: tuple[str, Optional[float]] = ("shift", None)
    resolution: tuple[int, int] = (1024, 1024)
    downscale: int = 8
    guidance: Optional[bool] = None

    def unet_targets(self, root: nn.Module, unet_config: dict, conv: bool = False, options: Any = None) -> list[Target]:
        lists = find_block_lists(root)
        if self.block_lists is not None:
            lists = [(p, lst) for p, lst in lists if p in self.block_lists]
        if not lists:
            raise ValueError(f"{type(root).__name__} has no transformer blocks this trainer can find"
                             f"{' (' + ', '.join(self.block_lists) + ')' if self.block_lists else ''}: lists of "
                             "modules with Linear and attention layers; it cannot be trained with LoRA Loop")
        classes = tuple(dict.fromkeys(type(b).__name__ for _, lst in lists for b in lst))
        out: list[Target] = []
        excluded = 0
        for path in self.also:
            module = _submodule(root, path)
            if module is not None:
                out += collect_targets(module, (type(module).__name__,), root_key=UNET_ROOT,
                                       name_of=lambda p, path=path: kohya_name("lora_unet", f"{path}.{p}"),
                                       conv3x3=conv, path_prefix=f"{path}.")
        for path, lst in lists:
            def name_of(p: str, path=path) -> Optional[str]:
                nonlocal excluded
                if self.exclude is not None and self.exclude.search(p):
                    excluded += 1
                    return None
                return kohya_name("lora_unet", f"{path}.{p}")

            out += collect_targets(lst, classes, root_key=UNET_ROOT, name_of=name_of, conv3x3=conv,
                                   path_prefix=f"{path}.")
        order = _order(root)
        out.sort(key=lambda t: order.get(t.path, 0))
        self.log_choice(root, out, excluded)
        return out

    def log_choice(self, root: nn.Module, targets: Sequence[Target], excluded: int) -> None:
        """Which modules a run adapts and why: the block lists found, what stays frozen."""
        found = describe_block_lists(root)
        outside = linears_outside(root, [b.path for b in found])
        log.info("LoRA Loop: %s: %d modules in the blocks of %s%s; %d Linear outside the blocks stay frozen%s",
                 self.display_name, len(targets), "; ".join(b.describe() for b in found),
                 f" ({excluded} left out by the family's rule)" if excluded else "", len(outside),
                 f" ({', '.join(outside[:6])}{', ...' if len(outside) > 6 else ''})" if outside else "")

    def text_encoder_targets(self, clip_model: nn.Module, options: Any = None) -> list[Target]:
        out: list[Target] = []
        if opt(options, "train_text_encoder", False):
            for attr, kind in self.text_encoders:
                if kind == "llm":
                    out += llm_targets(clip_model, attr)
                elif kind == "umt5":
                    out += comfy_t5_targets(clip_model, attr)
                else:
                    out += clip_targets(clip_model, attr, {"clip_l": "lora_te1", "clip_g": "lora_te2"}[kind])
        if opt(options, "train_t5", False) and self.t5 is not None:
            out += t5_targets(clip_model, *self.t5)
        if not out:
            t5_only = opt(options, "train_t5", False) and not opt(options, "train_text_encoder", False)
            which = "train_t5" if t5_only else "train_text_encoder"
            names = ", ".join(a for a, _ in self.text_encoders) or "none"
            raise ValueError(f"{self.display_name}: no text-encoder layers to train in this CLIP (trainable "
                             f"encoders of this family: {names}); set {which} (and train_t5) to false on "
                             "Inject LoRA, or connect the family's own text encoder")
        return out

    def base_model_version(self, unet_config: Optional[dict] = None, objective: Optional[str] = None,
                           config_class_names: Optional[list[str]] = None) -> str:
        if self.base_version:
            return self.base_version
        names = list(config_class_names or [])
        return model_id(names[0]) if names else self.name

    def modelspec_architecture(self, unet_config=None, objective=None, config_class_names=None) -> str:
        return self.architecture or self.base_model_version(unet_config, objective, config_class_names)

    def default_resolution(self, objective: Optional[str] = None) -> tuple[int, int]:
        return self.resolution

    def latent_downscale(self, unet_config: Optional[dict] = None) -> int:
        return self.downscale

    def takes_guidance(self, unet_config: Optional[dict] = None) -> bool:
        return super().takes_guidance(unet_config) if self.guidance is None else self.guidance

    def model_timestep_sampling(self, shift: float) -> tuple[str, float]:
        sampling, fixed = self.flow_sampling
        return sampling, shift if fixed is None else fixed

    def prediction_type(self, objective: Optional[str] = None) -> Optional[str]:
        if objective == "flow":
            return None
        return super().prediction_type(objective)


FAMILY = GenericFamily()
