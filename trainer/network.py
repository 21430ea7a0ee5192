"""A kohya-format LoRA network: an ordered set of ``LoRAModule``s keyed by kohya name.

The network is installed on the base modules as a *forward override* of each target module's
instance attribute ``forward`` (``org(x) + lora.delta(x)``); the base modules' parameters and
state_dict keys never change and the LoRA parameters are never registered into the base tree.
``network.state_dict()`` keys are kohya keys (``<name>.lora_down.weight``, ``.lora_up.weight``,
``.alpha``), the same as ``kohya_state_dict()``, except that ComfyUI's dotted ``text_encoders.<path>`` names
register with ``:`` for ``.`` (``module_key``); ``kohya_state_dict()`` always gives the file's keys.
"""
from __future__ import annotations

import copy as _copy
import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .lora import LoRAModule, OrgSpec
from .lycoris import (ALGOS, DORA_SUFFIX, LOHA_SUFFIXES, LOKR_SUFFIXES, DoRAModule, LoHaModule, LoKrModule,
                      kind_of_keys, plain_weight)

log = logging.getLogger(__name__)

KINDS = ("linear", "conv", "conv3x3")
UNET_ROOT = "unet"   # the diffusion model (U-Net / transformer) a network installs on
TE_ROOT = "te"       # the text-encoder model (ComfyUI's CLIP.cond_stage_model)
LORA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")
SUFFIXES = LORA_SUFFIXES + (DORA_SUFFIX,) + LOHA_SUFFIXES + LOKR_SUFFIXES  # every file-key suffix a module has
_PREFIX_RE = re.compile(r"^(lora_unet|lora_te\d*)_")
COMFY_TE_PREFIX = "text_encoders."  # ComfyUI's generic text-encoder LoRA key prefix


@dataclass(frozen=True)
class Target:
    """One module to adapt.

    name: kohya module name (``lora_unet_...`` / ``lora_te1_...``), no dots; or, for text encoders kohya has no
        names for (LLMs, UMT5), ComfyUI's generic ``text_encoders.<module path>`` (``comfy/lora.py``
        ``model_lora_keys_clip``), the one dotted form.
    root: key of the root module the trainer installs on (``UNET_ROOT`` or ``TE_ROOT``).
    path: dotted module path under that root (``root.get_submodule(path)``).
    kind: ``"linear"`` (nn.Linear), ``"conv"`` (1x1 conv, linear rank) or ``"conv3x3"`` (conv rank).
    """

    name: str
    root: str
    path: str
    kind: str
    is_text_encoder: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Target {self.name}: kind must be one of {KINDS}, got {self.kind!r}")
        if "." in self.name and not self.name.startswith(COMFY_TE_PREFIX):
            raise ValueError(f"Target name {self.name!r} must not contain dots (kohya names use '_')")

    @property
    def prefix(self) -> str:
        """``lora_unet``, ``lora_te``, ``lora_te1``, ``lora_te2``, ``lora_te3`` or ``text_encoders.<encoder>``."""
        if self.name.startswith(COMFY_TE_PREFIX):
            return COMFY_TE_PREFIX + self.name[len(COMFY_TE_PREFIX):].split(".", 1)[0]
        m = _PREFIX_RE.match(self.name)
        return m.group(1) if m else self.name.split("_")[0]


def split_kohya_key(key: str) -> tuple[str, str]:
    """``'lora_unet_x.lora_up.weight'`` -> ``('lora_unet_x', '.lora_up.weight')``; unknown suffix -> ``(key, '')``."""
    for suf in SUFFIXES:
        if key.endswith(suf):
            return key[: -len(suf)], suf
    return key, ""


class LoadReport(dict):
    """Result of ``load_kohya_state_dict``: ``missing``, ``unexpected`` key lists."""

    @property
    def missing(self) -> list[str]:
        return self["missing"]

    @property
    def unexpected(self) -> list[str]:
        return self["unexpected"]


def resolve(roots: Mapping[str, nn.Module], target: Target) -> nn.Module:
    """The module ``target`` names under ``roots``."""
    if target.root not in roots:
        raise KeyError(f"LoRA target {target.name} needs root {target.root!r}, but only "
                       f"{sorted(roots)} were given")
    try:
        return roots[target.root].get_submodule(target.path)
    except AttributeError as e:
        raise KeyError(f"LoRA target {target.name}: no module {target.path!r} under root {target.root!r} "
                       f"(is this network made for another model?)") from e


def _check_kind(target: Target, spec: OrgSpec) -> None:
    want = "linear" if target.kind == "linear" else "conv"
    if spec.kind != want:
        raise TypeError(f"LoRA target {target.name} ({target.path}) is declared {target.kind!r} but the "
                        f"module is a {spec.kind}")


@dataclass(frozen=True)
class NetworkSpec:
    """The settings of a LoRA network, in one place: what the saver writes (``ss_network_dim``,
    ``ss_network_alpha``, ``ss_network_args``), what a resume must agree with, what copies carry.

    ``rank``/``alpha`` are those of Linear and 1x1-conv modules, ``conv_rank``/``conv_alpha`` those of 3x3
    convs (kohya C3Lier; None without conv modules). ``args`` are the network args beyond the conv ones: the
    structural ones derived from the modules the network really has (e.g. ``train_blocks``, ``train_t5xxl``) and
    the network options it was built with (``rank_dropout``, ``block_dims`` ...). ``dropout`` is kohya's
    ``network_dropout`` (``ss_network_dropout``; None = off)."""

    family: str = ""
    rank: Optional[int] = None
    alpha: Optional[float] = None
    conv_rank: Optional[int] = None
    conv_alpha: Optional[float] = None
    args: tuple[tuple[str, str], ...] = ()
    dropout: Optional[float] = None

    def __post_init__(self) -> None:
        if (self.conv_rank is None) != (self.conv_alpha is None):
            raise ValueError(f"conv_rank and conv_alpha go together, got {self.conv_rank} / {self.conv_alpha}")
        object.__setattr__(self, "args", tuple((str(k), str(v)) for k, v in self.args))

    @property
    def network_args(self) -> dict[str, str]:
        """sd-scripts ``--network_args`` as the file header records them (``ss_network_args``)."""
        out: dict[str, str] = {}
        if self.conv_rank:
            out["conv_dim"] = str(self.conv_rank)
            out["conv_alpha"] = str(self.conv_alpha)
        out.update(dict(self.args))
        return out


def module_key(name: str) -> str:
    """The key a LoRA module is registered under: its file name, with ``:`` for the dots of ComfyUI's
    ``text_encoders.<path>`` names (torch module names cannot hold dots)."""
    return name.replace(".", ":")


class LoRANetwork(nn.Module):
    """Ordered collection of ``LoRAModule``s with their ``Target``s and the ``NetworkSpec`` they were built with."""

    def __init__(self, targets: Sequence[Target], loras: Mapping[str, LoRAModule], spec: NetworkSpec) -> None:
        super().__init__()
        self._targets: dict[str, Target] = {}
        for t in targets:
            if t.name not in loras:
                continue
            if t.name in self._targets:
                raise ValueError(f"duplicate LoRA target name {t.name}")
            self._targets[t.name] = t
            self.add_module(module_key(t.name), loras[t.name])
        extra = sorted(set(loras) - set(self._targets))
        if extra:
            raise ValueError(f"LoRA modules without a target: {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        self.spec = spec
        self.record = None  # the TrainingRecord of the run that trained it (set by the session, read by the saver)
        self._installed: list[tuple[nn.Module, Any, Any]] = []  # (module, previous instance forward or _MISSING, ours)
        self.train(False)  # dropouts act only while the trainer has it in train mode (sampling never)

    @property
    def family(self) -> str:
        return self.spec.family

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, targets: Sequence[Target], roots: Mapping[str, nn.Module], spec: NetworkSpec, *,
               multiplier: float = 1.0, dropout: Optional[float] = None, rank_dropout: Optional[float] = None,
               module_dropout: Optional[float] = None, seed: Optional[int] = None,
               generator: Optional[torch.Generator] = None,
               ranks: Optional[Mapping[str, tuple[int, float]]] = None, algo: str = "lora", dora: bool = False,
               factor: int = -1, decompose_both: bool = False,
               weight_reader=plain_weight) -> "LoRANetwork":
        """Fresh network for ``targets`` (shapes read from the modules under ``roots``; meta is fine).

        ``conv3x3`` targets use ``spec.conv_rank``/``conv_alpha`` (kohya C3Lier); everything else uses
        ``spec.rank``/``alpha``; ``ranks`` (kohya block dims) gives (rank, alpha) per target name instead, rank 0
        leaving the target out. Weights are drawn in target order from ``generator`` (or a CPU generator
        seeded with ``seed``) for reproducibility. ``algo`` (``lora``, ``loha``, ``lokr``; LyCORIS' names) picks the
        adapter; ``dora`` adds LyCORIS' weight decomposition to LoRA, its magnitudes read from the base weights
        through ``weight_reader`` (``trainer/lycoris.py``); ``factor`` / ``decompose_both`` shape LoKr.
        """
        if algo not in ALGOS:
            raise ValueError(f"algo {algo!r}: one of {', '.join(ALGOS)}")
        if dora and algo != "lora":
            raise ValueError(f"dora_wd with algo={algo}: LoRA Loop's DoRA decomposes a LoRA (algo=lora) only")
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        ranks = dict(ranks or {})
        targets = [t for t in targets if ranks.get(t.name, (1, None))[0] != 0]
        needs_conv = [t.name for t in targets if t.kind == "conv3x3" and t.name not in ranks]
        if needs_conv and not spec.conv_rank:
            raise ValueError(f"{len(needs_conv)} conv3x3 targets (e.g. {needs_conv[0]}) need conv_rank "
                             "(kohya conv_dim); build LierLa targets (conv=False) or set conv_rank")
        if spec.conv_rank and not any(t.kind == "conv3x3" for t in targets):
            raise ValueError(f"conv_rank {spec.conv_rank} is set but none of the {len(targets)} targets is a 3x3 "
                             "conv: the file header would claim conv modules the network does not have")
        loras: dict[str, LoRAModule] = {}
        with torch.inference_mode(False):
            for t in targets:
                lora_spec = OrgSpec.of(resolve(roots, t))
                _check_kind(t, lora_spec)
                r, a = (spec.conv_rank, spec.conv_alpha) if t.kind == "conv3x3" else (spec.rank, spec.alpha)
                r, a = ranks.get(t.name, (r, a))
                org = resolve(roots, t)
                loras[t.name] = _new_module("dora" if dora else algo, t.name, lora_spec, r, a,
                                            multiplier=multiplier, dropout=dropout, rank_dropout=rank_dropout,
                                            module_dropout=module_dropout, generator=generator, factor=factor,
                                            decompose_both=decompose_both,
                                            base_weight=(lambda o=org: weight_reader(o, None)) if dora else None)
        return cls(targets, loras, spec)

    @classmethod
    def from_kohya_state_dict(cls, sd: Mapping[str, torch.Tensor], targets: Sequence[Target],
                              roots: Mapping[str, nn.Module], *, family: str = "",
                              args: Sequence[tuple[str, str]] = (), multiplier: float = 1.0,
                              strict: bool = True, source: str = "state dict", dropout: Optional[float] = None,
                              rank_dropout: Optional[float] = None,
                              module_dropout: Optional[float] = None) -> "LoRANetwork":
        """Create modules from a kohya file: rank from ``lora_down.shape[0]``, alpha from ``*.alpha``
        (missing alpha -> rank, "old LoRA"). Only targets present in the file get a module; the spec's
        ranks and alphas are the file's (most common per kind). Keys that match no target raise
        (``strict``) or are logged and ignored. ``args``: network args (see NetworkSpec); the dropouts are
        the modules' training dropouts (``dropout`` also goes to the spec)."""
        by_name: dict[str, dict[str, torch.Tensor]] = {}
        unexpected: list[str] = []
        tmap = {t.name: t for t in targets}
        for key, value in sd.items():
            name, suf = split_kohya_key(key)
            if not suf or name not in tmap:
                unexpected.append(key)
                continue
            by_name.setdefault(name, {})[suf] = value
        no_down = sorted(n for n, d in by_name.items() if not _complete(d))
        if no_down:
            raise ValueError(f"{source}: incomplete modules (a LoRA needs lora_down.weight and lora_up.weight, a LoHa "
                             f"all four hada_w*, a LoKr lokr_w1 or lokr_w1_a/_b and lokr_w2 or lokr_w2_a/_b): "
                             f"{no_down[:10]}")
        if unexpected:
            msg = (f"{source}: {len(unexpected)} keys match no target of this model "
                   f"(family {family or '?'}): {sorted(unexpected)[:10]}")
            if strict:
                raise ValueError(msg + " - is the file made for another model type?")
            log.warning(msg)
        if not by_name:
            raise ValueError(f"{source}: no LoRA module of this model found in the file")
        loras: dict[str, LoRAModule] = {}
        ranks, alphas, conv_ranks, conv_alphas = Counter(), Counter(), Counter(), Counter()
        with torch.inference_mode(False):
            for t in targets:
                if t.name not in by_name:
                    continue
                d = by_name[t.name]
                lora_spec = OrgSpec.of(resolve(roots, t))
                _check_kind(t, lora_spec)
                kind = kind_of_keys(d)
                r = _file_rank(kind, d)
                alpha = d.get(".alpha")
                a = float(alpha.float().item()) if alpha is not None else float(r)
                m = _new_module(kind, t.name, lora_spec, r, a, multiplier=multiplier, dropout=dropout,
                                rank_dropout=rank_dropout, module_dropout=module_dropout,
                                shapes={k: tuple(v.shape) for k, v in d.items() if k in LOKR_SUFFIXES})
                m.load_file_tensors(d, source)
                loras[t.name] = m
                (conv_ranks if t.kind == "conv3x3" else ranks)[r] += 1
                (conv_alphas if t.kind == "conv3x3" else alphas)[a] += 1
        top = lambda c: c.most_common(1)[0][0] if c else None  # noqa: E731
        spec = NetworkSpec(family=family, rank=top(ranks), alpha=top(alphas), conv_rank=top(conv_ranks),
                           conv_alpha=top(conv_alphas), args=tuple(args), dropout=dropout)
        return cls(targets, loras, spec)

    def subset(self, root: str) -> "LoRANetwork":
        """A view holding only the targets under ``root`` (the same LoRA modules and weights, same spec)."""
        return self.select([t.name for t in self.targets if t.root == root])

    def select(self, names: Iterable[str]) -> "LoRANetwork":
        """A view holding only the targets named in ``names`` (the same LoRA modules and weights, same spec)."""
        keep = set(names)
        targets = [t for t in self.targets if t.name in keep]
        return LoRANetwork(targets, {t.name: self.lora(t.name) for t in targets}, self.spec)

    # ------------------------------------------------------------------ access
    @property
    def targets(self) -> list[Target]:
        return list(self._targets.values())

    @property
    def names(self) -> list[str]:
        return list(self._targets)

    def lora(self, name: str) -> LoRAModule:
        return self._modules[module_key(name)]  # type: ignore[return-value]

    def loras(self) -> list[LoRAModule]:
        return [self._modules[module_key(n)] for n in self._targets]  # type: ignore[misc]

    def items(self) -> list[tuple[Target, LoRAModule]]:
        return [(t, self._modules[module_key(n)]) for n, t in self._targets.items()]  # type: ignore[misc]

    def __len__(self) -> int:
        return len(self._targets)

    @property
    def unet_names(self) -> list[str]:
        return [n for n, t in self._targets.items() if not t.is_text_encoder]

    @property
    def text_encoder_names(self) -> list[str]:
        return [n for n, t in self._targets.items() if t.is_text_encoder]

    def set_multiplier(self, multiplier: float) -> None:
        for m in self.loras():
            m.multiplier = float(multiplier)

    # ------------------------------------------------------------------ install / remove
    @property
    def is_installed(self) -> bool:
        return bool(self._installed)

    def install(self, roots: Mapping[str, nn.Module], weight_reader=plain_weight) -> None:
        """Override ``forward`` of every target module under ``roots`` with ``org(x) + delta(x)`` (DoRA:
        ``org(x * c) + delta(x * c)``, the base weight read through ``weight_reader(module, like)``)."""
        if self._installed:
            raise RuntimeError("LoRA network is already installed; call remove() first")
        done: list[tuple[nn.Module, Any, Any]] = []
        try:
            for t, lora in self.items():
                mod = resolve(roots, t)
                spec = OrgSpec.of(mod)
                if spec != lora.spec:
                    raise ValueError(f"LoRA {t.name} was built for {lora.spec} but {t.root}.{t.path} is {spec}")
                prev = mod.__dict__.get("forward", _MISSING)
                ours = _make_forward(mod.forward, lora, mod, weight_reader)
                mod.forward = ours
                done.append((mod, prev, ours))
        except Exception:
            _restore(done)
            raise
        self._installed = done

    def remove(self) -> None:
        """Restore exactly the forwards seen at install time (reverse order). Safe to call twice."""
        if not self._installed:
            return
        foreign = [m for m, _, ours in self._installed if m.__dict__.get("forward") is not ours]
        if foreign:
            raise RuntimeError(f"{len(foreign)} LoRA-patched modules had their forward overridden again after "
                               "install (e.g. a checkpoint wrapper on a target module); remove that override first")
        _restore(self._installed)
        self._installed = []

    # ------------------------------------------------------------------ state dicts
    def kohya_state_dict(self, dtype: Optional[torch.dtype] = None,
                         device: Optional[Union[str, torch.device]] = None) -> dict[str, torch.Tensor]:
        """``<name>.lora_down.weight``, ``<name>.lora_up.weight``, ``<name>.alpha`` (0-dim float32 unless
        ``dtype`` is given: like kohya ``save_precision`` it then casts every tensor)."""
        out: dict[str, torch.Tensor] = {}
        for name, m in zip(self._targets, self.loras()):
            for suf, v in m.file_tensors().items():
                if dtype is not None:
                    v = v.to(dtype)
                if device is not None:
                    v = v.to(device)
                out[f"{name}{suf}"] = v.clone() if suf == ".alpha" else v.contiguous()
        return out

    def load_kohya_state_dict(self, sd: Mapping[str, torch.Tensor], strict: bool = True,
                              source: str = "state dict") -> LoadReport:
        """Copy weights (and alpha) from a kohya state dict. Shape mismatches always raise; missing and
        unexpected keys raise when ``strict`` (listing them), else they are returned and logged."""
        mine = {n: m.file_tensors() for n, m in zip(self._targets, self.loras())}
        expected = {f"{n}{s}" for n, t in mine.items() for s in t}
        given = set(sd)
        missing = sorted(k for k in expected - given if not k.endswith(".alpha"))
        unexpected = sorted(given - expected)
        mismatched = []
        for n, tensors in mine.items():
            for suf, p in tensors.items():
                k = n + suf
                if suf != ".alpha" and k in sd and tuple(sd[k].shape) != tuple(p.shape):
                    mismatched.append(f"{k}: file {tuple(sd[k].shape)} vs network {tuple(p.shape)}")
        problems = []
        if mismatched:
            problems.append(f"shape mismatch ({len(mismatched)}): {mismatched[:10]}")
        if strict and missing:
            problems.append(f"missing ({len(missing)}): {missing[:10]}")
        if strict and unexpected:
            problems.append(f"unexpected ({len(unexpected)}): {unexpected[:10]}")
        if problems:
            raise ValueError(f"cannot load LoRA weights from {source}: " + "; ".join(problems))
        with torch.inference_mode(False):
            for n, m in zip(self._targets, self.loras()):
                d = {s: sd[n + s] for s in mine[n] if n + s in sd}
                if d:
                    m.load_file_tensors(d, source)
        if missing or unexpected:
            log.warning("LoRA load from %s: %d missing, %d unexpected keys", source, len(missing), len(unexpected))
        return LoadReport(missing=missing, unexpected=unexpected)

    # ------------------------------------------------------------------ optimizer groups
    def prefixes(self) -> list[str]:
        """Name prefixes present, U-Net first then text encoders in name order."""
        seen = []
        for t in self._targets.values():
            if t.prefix not in seen:
                seen.append(t.prefix)
        return sorted(seen, key=lambda p: (p != "lora_unet", p))

    def param_groups(self, learning_rate: float, unet_lr: Optional[float] = None,
                     text_encoder_lr: Union[None, float, Sequence[Optional[float]]] = None, *,
                     te_prefixes: Optional[Sequence[str]] = None, loraplus_lr_ratio: Optional[float] = None,
                     loraplus_unet_lr_ratio: Optional[float] = None,
                     loraplus_text_encoder_lr_ratio: Optional[float] = None,
                     block_lr_weight: Optional[Sequence[float]] = None) -> list[dict[str, Any]]:
        """Optimizer param groups, kohya ``prepare_optimizer_params_with_multiple_te_lrs`` style.

        One group for the U-Net (``unet_lr`` or ``learning_rate``) and one per text-encoder prefix.
        ``text_encoder_lr`` may be one value or a list indexed by the position of the prefix in
        ``te_prefixes`` (the family's text-encoder order, default: the prefixes present); a short list
        falls back to its first value. LoRA+ puts ``lora_up`` weights in a ``"<group> plus"`` group with
        ``lr * ratio`` (the U-Net ratio ``loraplus_unet_lr_ratio or loraplus_lr_ratio``, the text encoders'
        ``loraplus_text_encoder_lr_ratio or loraplus_lr_ratio``). ``block_lr_weight`` (kohya block lr weights,
        one per U-Net block of ``network_options.block_index``) splits the U-Net group into ``unet_block<i>``
        groups with ``lr * weight``, in the order the blocks first appear. Groups whose lr is 0 are dropped
        (their modules stay, untrained; kohya does not create the modules of a block whose weight is 0).
        """
        te_order = list(te_prefixes) if te_prefixes else [p for p in self.prefixes() if p != "lora_unet"]
        if isinstance(text_encoder_lr, (list, tuple)):
            te_list = [v for v in text_encoder_lr]
        elif text_encoder_lr is None:
            te_list = []
        else:
            te_list = [text_encoder_lr]
        groups: list[dict[str, Any]] = []
        for prefix in self.prefixes():
            is_te = prefix != "lora_unet"
            if is_te:
                idx = te_order.index(prefix) if prefix in te_order else 0
                lr = te_list[idx] if idx < len(te_list) else (te_list[0] if te_list else None)
                lr = learning_rate if lr is None else lr
                ratio = loraplus_text_encoder_lr_ratio or loraplus_lr_ratio
            else:
                lr = learning_rate if unet_lr is None else unet_lr
                ratio = loraplus_unet_lr_ratio or loraplus_lr_ratio
            names = [n for n, t in self._targets.items() if t.prefix == prefix]
            group_name = "unet" if not is_te else prefix[len("lora_"):] if prefix.startswith("lora_") else prefix
            parts: dict[str, tuple[list[str], float]] = {}
            if block_lr_weight is not None and not is_te:
                from .network_options import block_index

                is_sdxl = self.family == "sdxl"
                for n in names:
                    idx = block_index(n, is_sdxl)
                    if idx < 0:
                        raise ValueError(f"block lr weights: LoRA module {n} is in no kohya U-Net block")
                    parts.setdefault(f"unet_block{idx}", ([], lr * block_lr_weight[idx]))[0].append(n)
            else:
                parts[group_name] = (names, lr)
            for gname, (members, glr) in parts.items():
                plain, plus = [], []
                for n in members:
                    m = self._modules[module_key(n)]
                    plain.extend(m.plain_params())
                    (plus if ratio else plain).extend(m.plus_params())
                for name_, params, lr_ in ((gname, plain, glr), (f"{gname} plus", plus, glr * (ratio or 1.0))):
                    if not params:
                        continue
                    if not lr_:
                        log.info("LoRA group %s has lr %s: not trained (NO LR skipping)", name_, lr_)
                        continue
                    groups.append({"params": params, "lr": float(lr_), "name": name_})
        return groups

    # ------------------------------------------------------------------ max-norm regularisation
    @torch.no_grad()
    def apply_max_norm_regularization(self, max_norm_value: float) -> tuple[int, float, float]:
        """kohya ``apply_max_norm_regularization`` (``scale_weight_norms``): for every module, the norm of its
        weight delta ``up @ down * alpha / rank`` is clamped to ``max_norm_value`` by scaling ``up`` and ``down``
        each by ``sqrt(ratio)``, ``ratio = min(norm', max) / norm'`` with ``norm' = max(norm, max / 2)``.
        Returns (modules scaled, mean and max of the norms after scaling). One device sync for all modules."""
        loras = self.loras()
        if not loras:
            return 0, 0.0, 0.0
        ratios, norms = [], []
        for m in loras:
            updown = m.norm_delta()
            norm = updown.norm().clamp(min=max_norm_value / 2)
            ratio = torch.clamp(norm, max=max_norm_value) / norm
            ratios.append(ratio)
            norms.append(updown.norm() * ratio)
        ratio_t = torch.stack(ratios).float().cpu()  # one sync
        norms_t = torch.stack(norms).float().cpu()
        scaled = ratio_t != 1
        for m, ratio, hit in zip(loras, ratios, scaled.tolist()):
            if hit:
                m.scale_delta_(ratio)
        return int(scaled.sum()), float(norms_t.mean()), float(norms_t.max())

    # ------------------------------------------------------------------ copies
    def copy(self) -> "LoRANetwork":
        """Deep copy (weights cloned, normal tensors even under inference mode), not installed anywhere."""
        with torch.inference_mode(False):
            loras = {}
            for n, m in zip(self._targets, self.loras()):
                c = _copy.deepcopy(m)
                for p in c.parameters():
                    p.grad = None
                loras[n] = c
        return LoRANetwork(self.targets, loras, self.spec)

    def __repr__(self) -> str:  # ComfyUI prints node inputs in error reports: keep it short
        sp = self.spec
        return (f"LoRANetwork({sp.family or '?'}: {len(self.unet_names)} U-Net + {len(self.text_encoder_names)} "
                f"text-encoder modules, rank={sp.rank}, alpha={sp.alpha}, conv_rank={sp.conv_rank})")

    def __deepcopy__(self, memo):  # never drag the installed base modules along
        return self.copy()


# ---------------------------------------------------------------------- helpers
class _Missing:
    def __repr__(self) -> str:
        return "<no instance forward>"


_MISSING = _Missing()


def _make_forward(org_forward, lora: LoRAModule, mod: nn.Module, weight_reader):
    if isinstance(lora, DoRAModule):
        def forward(x, *args, **kwargs):
            return lora.adapted(org_forward, x, args, kwargs, lambda: weight_reader(mod, x))
    else:
        def forward(x, *args, **kwargs):
            return org_forward(x, *args, **kwargs) + lora.delta(x)

    forward.lora_loop_name = lora.lora_name  # type: ignore[attr-defined]
    return forward


def _restore(done: Iterable[tuple[nn.Module, Any, Any]]) -> None:
    for mod, prev, _ours in reversed(list(done)):
        if prev is _MISSING:
            mod.__dict__.pop("forward", None)
        else:
            mod.forward = prev


_MODULES = {"lora": LoRAModule, "dora": DoRAModule, "loha": LoHaModule, "lokr": LoKrModule}


def _new_module(kind: str, name: str, spec: OrgSpec, rank: int, alpha, *, base_weight=None, shapes=None,
                factor: int = -1, decompose_both: bool = False, dropout=None, rank_dropout=None, **kwargs):
    """A fresh module of ``kind`` (``lora``, ``dora``, ``loha``, ``lokr``); ``base_weight`` (DoRA) is a callable
    giving the base weight, ``shapes`` (LoKr from a file) its tensors' shapes."""
    if kind == "lora":
        return LoRAModule(name, spec, rank, alpha, dropout=dropout, rank_dropout=rank_dropout, **kwargs)
    if kind == "dora":
        return DoRAModule(name, spec, rank, alpha, dropout=dropout, rank_dropout=rank_dropout,
                          base_weight=base_weight() if base_weight is not None else None, **kwargs)
    if dropout or rank_dropout:
        raise ValueError(f"{name}: {kind} takes no network_dropout / rank_dropout (LyCORIS defines them for LoRA); "
                         "clear them or use module_dropout")
    if kind == "loha":
        return LoHaModule(name, spec, rank, alpha, **kwargs)
    return LoKrModule(name, spec, rank, alpha, factor=factor, decompose_both=decompose_both,
                      shapes=shapes or None, **kwargs)


def _complete(d: Mapping[str, torch.Tensor]) -> bool:
    kind = kind_of_keys(d)
    if kind in ("lora", "dora"):
        return ".lora_down.weight" in d and ".lora_up.weight" in d
    if kind == "loha":
        return all(s in d for s in LOHA_SUFFIXES)
    if kind == "lokr":
        return ((".lokr_w1" in d) != (".lokr_w1_a" in d and ".lokr_w1_b" in d)) and \
            ((".lokr_w2" in d) != (".lokr_w2_a" in d and ".lokr_w2_b" in d))
    return False


def _file_rank(kind: str, d: Mapping[str, torch.Tensor]) -> int:
    """A module's rank from its file tensors (LoKr without a decomposed part: 1, LyCORIS' full-matrix rank)."""
    if kind in ("lora", "dora"):
        return int(d[".lora_down.weight"].shape[0])
    if kind == "loha":
        return int(d[".hada_w1_b"].shape[0])
    for k in (".lokr_w2_a", ".lokr_w1_a"):
        if k in d:
            return int(d[k].shape[1])
    return int(float(d[".alpha"].float().item())) if ".alpha" in d else 1
