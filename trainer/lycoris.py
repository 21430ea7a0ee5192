"""LyCORIS adapters beside kohya's LoRA: LoHa, LoKr and DoRA, in the file format ComfyUI and A1111 load.

Each module follows ``LoRAModule``'s contract (``trainer/lora.py``): it keeps only the *shapes* of the module it
adapts, ``delta(x)`` is its additive output in the bypass (``org(x) + delta(x)``), and its file keys are those of
the LyCORIS modules (``lycoris/modules/loha.py``, ``lokr.py``, ``locon.py``), read by ComfyUI's
``comfy/weight_adapter/loha.py``, ``lokr.py`` and ``lora.py``:

* **LoHa** ``hada_w1_a`` (out, r), ``hada_w1_b`` (r, in*k*k), ``hada_w2_a``, ``hada_w2_b``, ``alpha``:
  ``dW = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / r``, reshaped to the weight. LyCORIS' initialisation (w1_b and
  w2_b normal std 1, w1_a normal std 0.1, w2_a zeros: the network starts as the base model).
* **LoKr** ``lokr_w1`` (or ``lokr_w1_a`` @ ``lokr_w1_b``), ``lokr_w2`` (or ``lokr_w2_a`` @ ``lokr_w2_b``),
  ``alpha``: ``dW = kron(w1, w2) * scale``; the out and in sizes split by LyCORIS' ``factorization`` (``factor``,
  -1 = as square as possible); w2 is decomposed with rank r when ``r < max(w2 shape) / 2`` (else full, LyCORIS'
  rule), w1 when ``decompose_both`` and the same test holds; ``scale = alpha / r`` when a part is decomposed, else 1
  (ComfyUI's rule; LyCORIS then writes alpha = r). LyCORIS' initialisation (w2 or w2_b zeros).
* **DoRA** (LyCORIS ``algo=lora`` with ``dora_wd``): a kohya LoRA plus ``dora_scale``, the magnitude of each input
  column: ``W' = (W + dW) * dora_scale / ||W + dW||``, the norm over each input column (LyCORIS
  ``wd_on_output=False``: the decomposition ComfyUI's ``weight_decompose`` and A1111 rebuild exactly; LyCORIS'
  default output-row norm is not reproduced by ComfyUI 0.8's loader, which takes that norm of the base weight).
  A per-input-column factor of the weight is a factor on the input, so the bypass is
  ``org(x * c) + delta(x * c)`` with ``c = dora_scale / ||W + dW||``: the base layer runs as it is (cast,
  quantized, streamed). The norm needs the base weight, read through a ``weight_reader(module, like)`` the
  network is given (the ComfyUI adapter's reads ComfyUI's cast and quantized layers); ``||W + s B A||^2`` is
  expanded as ``||W||^2 + 2 s <B^T W, A> + s^2 A^T (B^T B) A`` so only ``B^T W`` (rank x in) is formed, and its
  backward reads the weight again instead of keeping it.

The weight products come from the ``lycoris-lora`` library (``lycoris.functional``: LoHa's memory-saving
Hadamard product, LoKr's Kronecker rebuild, the factorization), imported only when a LoHa or LoKr network is built;
on its plain torch path, so a run is the same on every machine.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import NETWORK_ALGOS as ALGOS
from .lora import LoRAModule, OrgSpec, _alpha_value, copy_file_tensors

LOHA_SUFFIXES = (".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b")
LOKR_SUFFIXES = (".lokr_w1", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2", ".lokr_w2_a", ".lokr_w2_b")
DORA_SUFFIX = ".dora_scale"
INSTALL_HINT = "pip install lycoris-lora"

WeightReader = Callable[[nn.Module, Optional[torch.Tensor]], torch.Tensor]


@functools.cache
def _functional():
    try:
        from lycoris.functional import general, loha, lokr
    except ImportError as e:
        raise ImportError(f"LoHa and LoKr use the lycoris-lora library, which is not installed: {INSTALL_HINT} "
                          f"(into ComfyUI's Python), then restart ComfyUI ({e})") from e
    return general, loha, lokr


def plain_weight(module: nn.Module, like: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The default weight reader: the module's own ``weight`` (plain torch layers)."""
    return module.weight


def _op(spec: OrgSpec, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if spec.kind == "linear":
        return F.linear(x, w)
    return F.conv2d(x, w, None, spec.stride, spec.padding, spec.dilation)


def _flat_in(spec: OrgSpec) -> int:
    """The input size of the weight flattened to 2-D: in * kh * kw."""
    return spec.in_dim * math.prod(spec.kernel_size) if spec.kind == "conv" else spec.in_dim


class _DeltaModule(nn.Module):
    """What LoHa and LoKr share: shapes, alpha, multiplier, module dropout, the bypass ``op(x, dW)``."""

    suffixes: tuple[str, ...] = ()
    algo = ""

    def __init__(self, name: str, spec: OrgSpec, rank: int, multiplier: float, module_dropout: Optional[float]):
        super().__init__()
        if int(rank) <= 0:
            raise ValueError(f"{self.algo} rank must be a positive integer, got {rank!r} for {name}")
        self.lora_name = name
        self.spec = spec
        self.lora_dim = int(rank)
        self.multiplier = float(multiplier)
        self.dropout = None
        self.rank_dropout = None
        self.module_dropout = module_dropout

    def _set_alpha(self, alpha_f: float) -> None:
        if "alpha" in self._buffers:
            with torch.no_grad():
                self.alpha.fill_(alpha_f)
        else:
            self.register_buffer("alpha", torch.tensor(alpha_f, dtype=torch.float32))

    @property
    def alpha_value(self) -> float:
        return float(self.alpha.detach().float().item())

    @property
    def lora_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def delta_weight(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def norm_delta(self) -> torch.Tensor:
        """The weight delta ``scale_weight_norms`` bounds (multiplier left out)."""
        return self.delta_weight()

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        if self.module_dropout and self.training and torch.rand(()) < self.module_dropout:
            return torch.zeros((), dtype=x.dtype, device=x.device)
        w = self.delta_weight()
        if self.multiplier != 1.0:
            w = w * self.multiplier
        return _op(self.spec, x.to(w.dtype), w).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - alias
        return self.delta(x)

    def merged_delta_weight(self, dtype: Optional[torch.dtype] = torch.float32) -> torch.Tensor:
        with torch.no_grad():
            w = self.delta_weight().float() * self.multiplier
        return w if dtype is None else w.to(dtype)

    # the file and the optimizer
    def file_tensors(self) -> dict[str, torch.Tensor]:
        out = {suf: getattr(self, suf[1:]).detach() for suf in self.suffixes if hasattr(self, suf[1:])}
        out[".alpha"] = self.alpha.detach().to(torch.float32).reshape(())
        return out

    def load_file_tensors(self, d, source: str) -> None:
        copy_file_tensors(self, d, source)
        if ".alpha" in d:
            self.set_alpha(d[".alpha"])

    def plus_params(self) -> list[nn.Parameter]:
        return []  # LyCORIS' LoRA+ acts on lora_up weights only

    def plain_params(self) -> list[nn.Parameter]:
        return list(self.parameters())


class LoHaModule(_DeltaModule):
    """LyCORIS LoHa (Hadamard product of two low-rank products); see the module docstring."""

    suffixes = LOHA_SUFFIXES
    algo = "loha"

    def __init__(self, name: str, spec: OrgSpec, rank: int, alpha=None, *, multiplier: float = 1.0,
                 module_dropout: Optional[float] = None, generator: Optional[torch.Generator] = None,
                 dtype: torch.dtype = torch.float32, device=None, **_unused) -> None:
        super().__init__(name, spec, rank, multiplier, module_dropout)
        out_dim, in_dim = spec.out_dim, _flat_in(spec)
        r = self.lora_dim
        self.hada_w1_a = nn.Parameter(torch.empty(out_dim, r))
        self.hada_w1_b = nn.Parameter(torch.empty(r, in_dim))
        self.hada_w2_a = nn.Parameter(torch.empty(out_dim, r))
        self.hada_w2_b = nn.Parameter(torch.empty(r, in_dim))
        with torch.no_grad():
            nn.init.normal_(self.hada_w1_b, std=1.0, generator=generator)
            nn.init.normal_(self.hada_w1_a, std=0.1, generator=generator)
            nn.init.normal_(self.hada_w2_b, std=1.0, generator=generator)
            nn.init.zeros_(self.hada_w2_a)
        self.set_alpha(alpha)
        if dtype != torch.float32 or device is not None:
            self.to(device=device, dtype=dtype)

    def set_alpha(self, alpha) -> None:
        a = _alpha_value(alpha, self.lora_dim)
        self._set_alpha(a)
        self.scale = a / self.lora_dim

    def delta_weight(self) -> torch.Tensor:
        """``(w1_a @ w1_b) * (w2_a @ w2_b) * alpha / r`` shaped like the weight (``lycoris.functional.loha``)."""
        _, loha, _ = _functional()
        gamma = torch.tensor(self.scale, dtype=self.hada_w1_a.dtype, device=self.hada_w1_a.device)
        w = loha.diff_weight(self.hada_w1_b, self.hada_w1_a, self.hada_w2_b, self.hada_w2_a, None, None,
                             gamma=gamma, backend="torch")
        return w.reshape(self.spec.weight_shape)

    def scale_delta_(self, ratio: torch.Tensor) -> None:
        root = ratio ** 0.5
        self.hada_w1_a.mul_(root.to(self.hada_w1_a.dtype))
        self.hada_w2_a.mul_(root.to(self.hada_w2_a.dtype))

    def extra_repr(self) -> str:
        return f"{self.lora_name}: LoHa {self.spec.kind} rank={self.lora_dim} alpha={self.alpha_value:g}"


class LoKrModule(_DeltaModule):
    """LyCORIS LoKr (Kronecker product of a small and a larger, optionally low-rank, matrix)."""

    suffixes = LOKR_SUFFIXES
    algo = "lokr"

    def __init__(self, name: str, spec: OrgSpec, rank: int, alpha=None, *, multiplier: float = 1.0,
                 module_dropout: Optional[float] = None, generator: Optional[torch.Generator] = None,
                 factor: int = -1, decompose_both: bool = False, shapes: Optional[dict] = None,
                 dtype: torch.dtype = torch.float32, device=None, **_unused) -> None:
        """``shapes`` (suffix -> shape, from a file) builds exactly those tensors instead of LyCORIS' rule."""
        super().__init__(name, spec, rank, multiplier, module_dropout)
        r = self.lora_dim
        k = math.prod(spec.kernel_size) if spec.kind == "conv" else 1
        if shapes is None:
            general, _, _ = _functional()
            in_m, in_n = general.factorization(spec.in_dim, int(factor))
            out_l, out_k = general.factorization(spec.out_dim, int(factor))
            shapes = {}
            if decompose_both and r < max(out_l, in_m) / 2:
                shapes.update({".lokr_w1_a": (out_l, r), ".lokr_w1_b": (r, in_m)})
            else:
                shapes[".lokr_w1"] = (out_l, in_m)
            if r < max(out_k, in_n) / 2:
                shapes.update({".lokr_w2_a": (out_k, r), ".lokr_w2_b": (r, in_n * k)})
            else:
                shapes[".lokr_w2"] = (out_k, in_n, *spec.kernel_size) if spec.kind == "conv" else (out_k, in_n)
        unknown = sorted(set(shapes) - set(LOKR_SUFFIXES))
        if unknown or (".lokr_w1" in shapes) == (".lokr_w1_a" in shapes) or \
                (".lokr_w2" in shapes) == (".lokr_w2_a" in shapes):
            raise ValueError(f"{name}: a LoKr module needs lokr_w1 or lokr_w1_a/_b, and lokr_w2 or lokr_w2_a/_b "
                             f"(got {sorted(shapes)}; Tucker-decomposed lokr_t2 is not supported)")
        for suf, shape in shapes.items():
            setattr(self, suf[1:], nn.Parameter(torch.empty(*shape)))
        self.decomposed = ".lokr_w1_a" in shapes or ".lokr_w2_a" in shapes
        if self.decomposed:
            self.lora_dim = int(shapes[".lokr_w2_a"][1] if ".lokr_w2_a" in shapes else shapes[".lokr_w1_a"][1])
        with torch.no_grad():  # LyCORIS LokrModule's initialisation
            if hasattr(self, "lokr_w2"):
                nn.init.zeros_(self.lokr_w2)
            else:
                nn.init.kaiming_uniform_(self.lokr_w2_a, a=math.sqrt(5), generator=generator)
                nn.init.zeros_(self.lokr_w2_b)
            if hasattr(self, "lokr_w1"):
                nn.init.kaiming_uniform_(self.lokr_w1, a=math.sqrt(5), generator=generator)
            else:
                nn.init.kaiming_uniform_(self.lokr_w1_a, a=math.sqrt(5), generator=generator)
                nn.init.kaiming_uniform_(self.lokr_w1_b, a=math.sqrt(5), generator=generator)
        self.set_alpha(alpha)
        if dtype != torch.float32 or device is not None:
            self.to(device=device, dtype=dtype)

    def set_alpha(self, alpha) -> None:
        if not self.decomposed:  # both parts full: scale 1 (ComfyUI), LyCORIS writes alpha = rank
            self._set_alpha(float(self.lora_dim))
            self.scale = 1.0
            return
        a = _alpha_value(alpha, self.lora_dim)
        self._set_alpha(a)
        self.scale = a / self.lora_dim

    def _part(self, n: str):
        return getattr(self, n, None)

    def delta_weight(self) -> torch.Tensor:
        """``kron(w1, w2) * scale`` shaped like the weight (``lycoris.functional.lokr``)."""
        _, _, lokr = _functional()
        w = lokr.kron_weight(self._part("lokr_w1"), self._part("lokr_w1_a"), self._part("lokr_w1_b"),
                             self._part("lokr_w2"), self._part("lokr_w2_a"), self._part("lokr_w2_b"), None,
                             scale=self.scale, backend="torch")
        return w.reshape(self.spec.weight_shape)

    def scale_delta_(self, ratio: torch.Tensor) -> None:
        root = ratio ** 0.5
        for n in (("lokr_w1",) if hasattr(self, "lokr_w1") else ("lokr_w1_a",)) + \
                 (("lokr_w2",) if hasattr(self, "lokr_w2") else ("lokr_w2_a",)):
            p = getattr(self, n)
            p.mul_(root.to(p.dtype))

    def extra_repr(self) -> str:
        parts = ", ".join(f"{n[1:]}={tuple(getattr(self, n[1:]).shape)}" for n in LOKR_SUFFIXES
                          if hasattr(self, n[1:]))
        return f"{self.lora_name}: LoKr {self.spec.kind} rank={self.lora_dim} scale={self.scale:g} ({parts})"


# ------------------------------------------------------------------------------------------ DoRA
class _BaseProduct(torch.autograd.Function):
    """``B^T W`` (rank x in x k) and ``||W||^2`` per input column, for a frozen base weight ``W`` that ``read()``
    gives: backward reads it again (``dB = W dG^T``), so no copy of it stays alive between forward and backward."""

    @staticmethod
    def forward(ctx, up, read):
        w = read()
        w3 = w.reshape(w.shape[0], w.shape[1], -1).to(up.dtype)
        g = torch.einsum("or,oik->rik", up, w3)
        col2 = w3.pow(2).sum(dim=(0, 2))
        ctx.read = read
        ctx.mark_non_differentiable(col2)
        return g, col2

    @staticmethod
    def backward(ctx, dg, _dcol2):
        w = ctx.read()
        w3 = w.reshape(w.shape[0], w.shape[1], -1).to(dg.dtype)
        return torch.einsum("rik,oik->or", dg, w3), None


class DoRAModule(LoRAModule):
    """kohya LoRA + LyCORIS' input-axis weight decomposition (``dora_scale``); see the module docstring."""

    suffixes = (DORA_SUFFIX,)
    algo = "dora"

    def __init__(self, name: str, spec: OrgSpec, rank: int, alpha=None, *, multiplier: float = 1.0,
                 dropout=None, rank_dropout=None, module_dropout: Optional[float] = None,
                 generator: Optional[torch.Generator] = None, base_weight: Optional[torch.Tensor] = None,
                 dtype: torch.dtype = torch.float32, device=None) -> None:
        if dropout or rank_dropout:
            raise ValueError(f"{name}: DoRA takes no network_dropout / rank_dropout (LyCORIS ignores them with "
                             "dora_wd); clear them or use module_dropout")
        super().__init__(name, spec, rank, alpha, multiplier=multiplier, module_dropout=module_dropout,
                         generator=generator)
        shape = (1, spec.in_dim, 1, 1) if spec.kind == "conv" else (1, spec.in_dim)
        self.dora_scale = nn.Parameter(torch.ones(shape))
        if base_weight is not None and base_weight.device.type != "meta":
            with torch.no_grad():
                w = base_weight.detach().float()
                self.dora_scale.copy_(w.transpose(0, 1).reshape(spec.in_dim, -1).norm(dim=1).reshape(shape))
        if dtype != torch.float32 or device is not None:
            self.to(device=device, dtype=dtype)

    def _up_down(self):
        up = self.lora_up.weight.reshape(self.spec.out_dim, self.lora_dim)
        down = self.lora_down.weight.reshape(self.lora_dim, self.spec.in_dim, -1)
        return up, down

    def column_factor(self, read: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``c = dora_scale / ||W + s B A||`` per input column (shape (in,)), differentiable in B, A, dora_scale."""
        up, down = self._up_down()
        s = self.scale
        no_autocast = contextlib.nullcontext() if up.device.type == "meta" else \
            torch.autocast(device_type=up.device.type, enabled=False)
        with no_autocast:  # the norms in the LoRA's float32, never in an autocast bf16
            g, col2 = _BaseProduct.apply(up, read)
            cross = (down * g).sum(dim=(0, 2))
            quad = torch.einsum("rik,rs,sik->i", down, up.t() @ up, down)
            norm = (col2 + 2 * s * cross + s * s * quad).clamp_min(0).sqrt() + torch.finfo(torch.float32).eps
            return self.dora_scale.reshape(-1) / norm

    def adapted(self, org_forward, x: torch.Tensor, args, kwargs, read: Callable[[], torch.Tensor]):
        """The module's output with DoRA: ``org(x * c) + s B A (x * c)``; multiplier m blends with the base output
        like ComfyUI's strength (``W + m (W' - W)``)."""
        if self.module_dropout and self.training and torch.rand(()) < self.module_dropout:
            return org_forward(x, *args, **kwargs)
        c = self.column_factor(read)
        c = c.reshape(1, -1, 1, 1) if self.spec.kind == "conv" else c
        xc = x * c.to(x.dtype)
        multiplier, self.multiplier = self.multiplier, 1.0
        try:
            y = org_forward(xc, *args, **kwargs) + LoRAModule.delta(self, xc)
        finally:
            self.multiplier = multiplier
        if multiplier != 1.0:
            base = org_forward(x, *args, **kwargs)
            y = base + multiplier * (y - base)
        return y

    def merged_weight(self, base_weight: torch.Tensor) -> torch.Tensor:
        """The dense adapted weight ``W'`` at multiplier 1 (ComfyUI's ``weight_decompose`` formula), for checks."""
        with torch.no_grad():
            up, down = self._up_down()
            delta = (up @ down.reshape(self.lora_dim, -1)).reshape(self.spec.weight_shape) * self.scale
            w = base_weight.float() + delta.float()
            norm = w.transpose(0, 1).reshape(self.spec.in_dim, -1).norm(dim=1) + torch.finfo(torch.float32).eps
            shape = (1, -1) + (1,) * (w.dim() - 2)
            return w * (self.dora_scale.reshape(-1).float() / norm).reshape(shape)

    def plain_params(self) -> list[nn.Parameter]:
        return super().plain_params() + [self.dora_scale]

    def file_tensors(self) -> dict[str, torch.Tensor]:
        out = super().file_tensors()
        out[DORA_SUFFIX] = self.dora_scale.detach()
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + " DoRA"


def kind_of_keys(suffixes) -> str:
    """The adapter a module's file suffixes describe: ``lora``, ``dora``, ``loha`` or ``lokr`` ('' if none)."""
    s = set(suffixes)
    if s & set(LOHA_SUFFIXES):
        return "loha"
    if s & set(LOKR_SUFFIXES):
        return "lokr"
    if ".lora_down.weight" in s or ".lora_up.weight" in s:
        return "dora" if DORA_SUFFIX in s else "lora"
    return ""
