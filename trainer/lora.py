"""One kohya-style LoRA adapter (sd-scripts ``networks/lora.py`` ``LoRAModule`` semantics).

``y = org(x) + up(down(x)) * multiplier * alpha / rank``. The module keeps only the *shapes* of the
module it adapts (never a reference to it), so it works for modules on the meta device, for
ComfyUI's casting ops (subclasses of ``nn.Linear``/``nn.Conv2d``) and over quantized weights.
Its ``state_dict()`` keys are exactly ``lora_down.weight``, ``lora_up.weight`` and ``alpha``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class OrgSpec:
    """What a LoRA needs to know about the module it adapts (shapes and conv geometry only)."""

    kind: str  # "linear" | "conv"
    in_dim: int
    out_dim: int
    kernel_size: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] | str = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.kind == "linear":
            return (self.out_dim, self.in_dim)
        return (self.out_dim, self.in_dim, *self.kernel_size)

    @property
    def is_conv3x3(self) -> bool:
        """True for a conv whose kernel is not 1x1 (kohya's CONV2D_3X3 group, conv rank)."""
        return self.kind == "conv" and tuple(self.kernel_size) != (1, 1)

    @staticmethod
    def of(org: nn.Module) -> "OrgSpec":
        if isinstance(org, nn.Linear):
            return OrgSpec("linear", int(org.in_features), int(org.out_features))
        if isinstance(org, nn.Conv2d):
            if org.groups != 1:
                raise ValueError(f"LoRA does not support grouped convolutions (groups={org.groups}) in {org!r}")
            return OrgSpec("conv", int(org.in_channels), int(org.out_channels), tuple(org.kernel_size),
                           tuple(org.stride), org.padding if isinstance(org.padding, str) else tuple(org.padding),
                           tuple(org.dilation))
        raise TypeError(f"LoRA supports nn.Linear and nn.Conv2d (and subclasses), not {type(org).__name__}")


def _alpha_value(alpha, rank: int) -> float:
    """kohya: alpha None or 0 -> rank; tensor alpha -> float first (bf16 safety)."""
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.detach().float().item()
    if alpha is None or alpha == 0:
        return float(rank)
    return float(alpha)


def copy_file_tensors(m: nn.Module, d, source: str) -> None:
    """Copy file tensors by suffix into the module's parameters: ``.lora_down.weight`` -> ``m.lora_down.weight``,
    ``.hada_w1_a`` -> ``m.hada_w1_a`` ...; ``.alpha`` is left to the caller (it is a constant, not a parameter)."""
    with torch.no_grad():
        for suf, v in d.items():
            if suf == ".alpha":
                continue
            p = getattr(m, suf[1:].replace(".weight", ""), None)
            if isinstance(p, nn.Module):
                p = p.weight
            if p is None:
                raise ValueError(f"{source}: {m.lora_name}{suf}: this {type(m).__name__} has no such tensor")
            if tuple(v.shape) != tuple(p.shape):
                raise ValueError(f"{source}: {m.lora_name}{suf} has shape {tuple(v.shape)}, the model needs "
                                 f"{tuple(p.shape)}")
            p.copy_(v.to(device=p.device, dtype=p.dtype))


class LoRAModule(nn.Module):
    """kohya ``LoRAModule``: down (kaiming uniform), up (zeros), constant ``alpha`` buffer.

    Parameters are fp32 by default. ``delta(x)`` gives the additive output; the network installs
    ``org_forward(x) + delta(x)`` as the module's forward.
    """

    def __init__(self, name: str, spec: OrgSpec, rank: int, alpha=None, *, multiplier: float = 1.0,
                 dropout: Optional[float] = None, rank_dropout: Optional[float] = None,
                 module_dropout: Optional[float] = None, generator: Optional[torch.Generator] = None,
                 dtype: torch.dtype = torch.float32, device=None) -> None:
        super().__init__()
        if int(rank) <= 0:
            raise ValueError(f"LoRA rank must be a positive integer, got {rank!r} for {name}")
        self.lora_name = name
        self.spec = spec
        self.lora_dim = int(rank)
        if spec.kind == "conv":
            self.lora_down = nn.Conv2d(spec.in_dim, self.lora_dim, spec.kernel_size, spec.stride, spec.padding,
                                       spec.dilation, bias=False, device="cpu", dtype=torch.float32)
            self.lora_up = nn.Conv2d(self.lora_dim, spec.out_dim, (1, 1), (1, 1), bias=False,
                                     device="cpu", dtype=torch.float32)
        else:
            self.lora_down = nn.Linear(spec.in_dim, self.lora_dim, bias=False, device="cpu", dtype=torch.float32)
            self.lora_up = nn.Linear(self.lora_dim, spec.out_dim, bias=False, device="cpu", dtype=torch.float32)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5), generator=generator)
            nn.init.zeros_(self.lora_up.weight)
        alpha_f = _alpha_value(alpha, self.lora_dim)
        self.scale = alpha_f / self.lora_dim
        self.register_buffer("alpha", torch.tensor(alpha_f, dtype=torch.float32))
        self.multiplier = float(multiplier)
        self.dropout = dropout
        self.rank_dropout = rank_dropout
        self.module_dropout = module_dropout
        if dtype != torch.float32 or device is not None:
            self.to(device=device, dtype=dtype)

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_module(cls, name: str, org: nn.Module, rank: int, alpha=None,
                   generator: Optional[torch.Generator] = None, **kwargs) -> "LoRAModule":
        """Build a LoRA for ``org`` (``nn.Linear``/``nn.Conv2d`` or subclass; meta weights are fine)."""
        return cls(name, OrgSpec.of(org), rank, alpha, generator=generator, **kwargs)

    # ------------------------------------------------------------------ values
    @property
    def alpha_value(self) -> float:
        return float(self.alpha.detach().float().item())

    def set_alpha(self, alpha) -> None:
        """Replace the (constant) alpha and the derived scale; alpha None/0 -> rank."""
        a = _alpha_value(alpha, self.lora_dim)
        with torch.no_grad():
            self.alpha.fill_(a)
        self.scale = a / self.lora_dim

    @property
    def lora_dtype(self) -> torch.dtype:
        return self.lora_down.weight.dtype

    # ------------------------------------------------------------------ forward
    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """``up(down(x)) * multiplier * scale``, with kohya's dropouts while training (``self.training``): module
        dropout (the whole delta is 0 with probability ``module_dropout``, one draw per call), neuron dropout on the
        down output (``F.dropout``: zeros with probability ``dropout``, the rest times 1/(1-p)) and rank dropout (a
        whole rank per sample is 0 with probability ``rank_dropout``, the scale times 1/(1-p)). They draw from
        torch's global generators, as sd-scripts', which gradient checkpointing replays in the recomputation."""
        if self.module_dropout and self.training and torch.rand(()) < self.module_dropout:
            return torch.zeros((), dtype=x.dtype, device=x.device)
        lx = self.lora_down(x.to(self.lora_down.weight.dtype))
        if self.dropout and self.training:
            lx = F.dropout(lx, p=self.dropout)
        scale = self.scale
        if self.rank_dropout and self.training:
            mask = torch.rand((lx.size(0), self.lora_dim), device=lx.device) > self.rank_dropout
            if self.spec.kind == "conv" and lx.dim() == 4:
                mask = mask[:, :, None, None]
            elif lx.dim() > 2:  # tokens (kohya: 3-dim text-encoder inputs), or any other leading dims
                mask = mask.view(lx.size(0), *([1] * (lx.dim() - 2)), self.lora_dim)
            lx = lx * mask.to(lx.dtype)
            scale = self.scale * (1.0 / (1.0 - self.rank_dropout))  # kohya's expression: as if the rank shrank
        factor = self.multiplier * scale
        if factor != 1.0:
            lx = lx * factor  # scale the rank-sized activation, not the (larger) output
        return self.lora_up(lx).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - alias
        return self.delta(x)

    # ------------------------------------------------------------------ merge
    def merged_delta_weight(self, dtype: Optional[torch.dtype] = torch.float32) -> torch.Tensor:
        """The dense weight delta equal to this LoRA (kohya merge formulas), shaped like org.weight."""
        down = self.lora_down.weight.detach().float()
        up = self.lora_up.weight.detach().float()
        if self.spec.kind == "linear":
            w = up @ down
        elif tuple(down.shape[2:]) == (1, 1):
            w = (up.squeeze(3).squeeze(2) @ down.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3)
        else:
            w = F.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
        w = w * (self.multiplier * self.scale)
        return w if dtype is None else w.to(dtype)

    # ------------------------------------------------------------------ file, optimizer, max norm
    def file_tensors(self) -> dict[str, torch.Tensor]:
        """The module's tensors by file-key suffix (``.lora_down.weight``, ``.lora_up.weight``, ``.alpha``)."""
        return {".lora_down.weight": self.lora_down.weight.detach(), ".lora_up.weight": self.lora_up.weight.detach(),
                ".alpha": self.alpha.detach().to(torch.float32).reshape(())}

    def load_file_tensors(self, d, source: str) -> None:
        """Copy the file's tensors (by suffix, as :meth:`file_tensors` names them) into this module; ``.alpha``
        sets the alpha. Shape mismatches raise, naming the key."""
        copy_file_tensors(self, d, source)
        if ".alpha" in d:
            self.set_alpha(d[".alpha"])

    def plus_params(self) -> list[nn.Parameter]:
        """The weights LoRA+ trains at the higher rate (sd-scripts: the ``lora_up`` weights)."""
        return [self.lora_up.weight]

    def plain_params(self) -> list[nn.Parameter]:
        return [self.lora_down.weight]

    def norm_delta(self) -> torch.Tensor:
        """The weight delta ``scale_weight_norms`` bounds: ``up @ down * alpha / rank`` (multiplier left out)."""
        down, up = self.lora_down.weight, self.lora_up.weight
        if down.dim() == 2:
            updown = up @ down
        elif tuple(down.shape[2:]) == (1, 1):
            updown = (up.squeeze(3).squeeze(2) @ down.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3)
        else:
            updown = F.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
        return updown * (self.alpha.to(updown.dtype) / self.lora_dim)

    def scale_delta_(self, ratio: torch.Tensor) -> None:
        """Scale the weight delta by ``ratio`` (up and down each by its square root, as sd-scripts)."""
        sqrt_ratio = ratio ** 0.5
        self.lora_up.weight.mul_(sqrt_ratio.to(self.lora_up.weight.dtype))
        self.lora_down.weight.mul_(sqrt_ratio.to(self.lora_down.weight.dtype))

    def extra_repr(self) -> str:
        return f"{self.lora_name}: {self.spec.kind} rank={self.lora_dim} alpha={self.alpha_value:g}"
