"""Finding the transformer blocks of a diffusion model by its structure, for models no family names.

A *block list* is an ``nn.ModuleList`` whose children are blocks: modules (not bare layers) that hold Linear
layers and an attention layer. Lists are taken where they are first met walking down from the root, never inside
another block list: ``double_blocks`` + ``single_blocks`` (FLUX.2, Chroma), ``transformer_blocks`` (Qwen-Image),
``noise_refiner`` + ``context_refiner`` + ``layers`` (Lumina 2, Z-Image), ``blocks`` (Wan, PixArt, HunyuanDiT),
``double_layers`` + ``single_layers`` (AuraFlow). Plain torch: nothing here imports ComfyUI.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

# attention layers by attribute or class name; FLUX-style single-stream blocks hold a fused qkv Linear and only
# show their attention by its query/key norm (``QKNorm``)
_ATTENTION = re.compile(r"attn|attention|qk_?norm|q_norm|k_norm", re.IGNORECASE)


@dataclass(frozen=True)
class BlockList:
    """One list of blocks: its dotted path under the root, the block class names, blocks and Linear layers."""
    path: str
    classes: tuple[str, ...]
    blocks: int
    linears: int

    def describe(self) -> str:
        return f"{self.path} ({self.blocks} x {'/'.join(self.classes)}, {self.linears} Linear)"


def _linears(module: nn.Module) -> int:
    return sum(1 for m in module.modules() if isinstance(m, nn.Linear))


def has_attention(module: nn.Module) -> bool:
    """A submodule whose attribute or class name says attention (``attn``, ``self_attn``, ``Attention``, a query/key
    norm ``QKNorm`` ...)."""
    for name, m in module.named_modules():
        if not name:
            continue
        if _ATTENTION.search(name.rsplit(".", 1)[-1]) or _ATTENTION.search(type(m).__name__):
            return True
    return False


def is_block_list(module: nn.Module) -> bool:
    children = list(module.children()) if isinstance(module, nn.ModuleList) else []
    if not children:
        return False
    for child in children:
        if isinstance(child, (nn.Linear, nn.Conv2d)) or not _linears(child) or not has_attention(child):
            return False
    return True


def find_block_lists(root: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Every block list under ``root`` in module order, as (dotted path, list); none inside another."""
    found: list[tuple[str, nn.ModuleList]] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if is_block_list(child):
                found.append((path, child))
            else:
                walk(child, path + ".")

    walk(root, "")
    return found


def describe_block_lists(root: nn.Module) -> list[BlockList]:
    out = []
    for path, lst in find_block_lists(root):
        classes = tuple(dict.fromkeys(type(b).__name__ for b in lst))
        out.append(BlockList(path, classes, len(lst), sum(_linears(b) for b in lst)))
    return out


def linears_outside(root: nn.Module, inside: list[str]) -> list[str]:
    """Paths of the Linear layers of ``root`` that lie outside the dotted paths ``inside``."""
    def within(p: str) -> bool:
        return any(p == q or p.startswith(q + ".") for q in inside)

    return [p for p, m in root.named_modules() if isinstance(m, nn.Linear) and not within(p)]
