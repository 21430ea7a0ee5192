"""How much device memory a training step needs, and which memory mode fits it (plain torch, no ComfyUI).

* ``LiveBytes`` counts the bytes of every tensor storage the ops create while it is active and that are still
  alive, and their peak. It works on any device, the meta device included, so a forward + backward of the real
  model on the meta device (``adapter.memory``) gives a step's activation and workspace memory with no GPU.
* ``MemoryEstimate`` splits a step's peak device memory into resident base weights, the LoRA network (parameters,
  gradients, optimizer state), activations saved for backward and transient workspace.
* ``MemoryPlan`` is one way to run (``resident``, ``checkpointed`` or ``streamed`` with N blocks kept off the
  device); ``plan_candidates`` builds them from two measured steps and ``choose_plan`` picks what ``auto`` runs.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

MEMORY_MODES = ("auto", "resident", "checkpointed", "streamed")
GIB = 1024 ** 3
MIB = 1024 ** 2

# Fraction of the free memory ``auto`` leaves unplanned: allocator fragmentation, the CUDA context's own
# allocations, and what the estimate does not model (kernels' private workspaces).
HEADROOM = 0.15


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 4 else f"{n / MIB:.0f} MiB"


def _storage(t: torch.Tensor):
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without a storage of their own
        return None


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storages created under this mode that are still alive (``live``) and their maximum
    (``peak``). Storages that existed before (weights, inputs) are not counted; views and in-place results share
    their storage and are counted once. ``mark()`` returns the live bytes now (e.g. at the end of a forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t, inputs)
        return out

    def _track(self, t: torch.Tensor, inputs: list[torch.Tensor]) -> None:
        st = _storage(t)
        if st is None or st in self._seen:
            return
        if any(_storage(i) is st for i in inputs):  # a view of, or an in-place write into, an older tensor
            self._seen[st] = 0
            return
        n = st.nbytes()
        self._seen[st] = n
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(st, self._free, n)

    def _free(self, n: int) -> None:
        self.live -= n

    def mark(self) -> int:
        return self.live


@dataclass(frozen=True)
class StepMemory:
    """One measured forward + backward: what stayed alive for backward, and the peak above the start."""
    activations: int      # live at the end of the forward (saved for backward, plus the loss)
    peak: int             # highest live during forward + backward (activations, their gradients, LoRA grads)


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak device memory of one training step, by what holds it (bytes)."""
    weights: int          # base-model weights resident on the device
    network: int          # LoRA parameters + gradients + optimizer state
    activations: int      # saved for backward at the end of the forward
    workspace: int        # transient memory above that (gradients in flight, casts of streamed weights)
    streamed: int = 0     # base-weight bytes that stay off the device and are cast in per layer

    @property
    def total(self) -> int:
        return self.weights + self.network + self.activations + self.workspace

    def describe(self) -> str:
        s = (f"~{gib(self.total)} (weights {gib(self.weights)}, LoRA+optimizer {gib(self.network)}, "
             f"activations {gib(self.activations)}, workspace {gib(self.workspace)}")
        return s + (f"; {gib(self.streamed)} of weights streamed)" if self.streamed else ")")


@dataclass(frozen=True)
class MemoryPlan:
    mode: str               # resident | checkpointed | streamed
    checkpointing: bool
    blocks_to_swap: int     # blocks' worth of weight bytes off the device (sd-scripts' blocks_to_swap)
    blocks: int             # checkpointable blocks in the model
    estimate: MemoryEstimate

    @property
    def memory_required(self) -> int:
        """What to ask ComfyUI's loader to keep free besides the resident weights (its ``memory_required``)."""
        return self.estimate.total - self.estimate.weights

    def describe(self) -> str:
        if self.mode == "streamed":
            how = f"streamed ({self.blocks_to_swap} of {self.blocks} blocks' worth of weights off the device, " \
                  "checkpointed)"
        else:
            how = self.mode
        return f"{how}: {self.estimate.describe()}"


class TrainingOutOfMemory(RuntimeError):
    """The device ran out of memory during a step; the message says what was saved and which setting fits."""


def is_out_of_memory(e: BaseException) -> bool:
    """A device (or host) allocation failed: torch's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(e, torch.OutOfMemoryError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def leaner_plan(plans: list[MemoryPlan], ran: MemoryPlan, budget: int,
                headroom: float = HEADROOM) -> MemoryPlan | None:
    """After running out of memory with ``ran``: the fastest plan that needs clearly less (estimate scaled by
    how far ``ran`` was off, assuming it just did not fit), None when no leaner plan exists."""
    # ``ran`` did not fit: the real need is at least the budget; scale the other estimates by the same factor
    scale = max(1.0, budget * (1.0 - headroom) / max(1, ran.estimate.total))
    for plan in plans:
        if plan.estimate.total < ran.estimate.total and plan.estimate.total * scale * 1.1 <= budget * (1 - headroom):
            return plan
    leaner = [p for p in plans if p.estimate.total < ran.estimate.total]
    return min(leaner, key=lambda p: p.estimate.total) if leaner else None


def setting_of(plan: MemoryPlan) -> str:
    """The Train LoRA setting that runs ``plan``."""
    if plan.mode == "streamed":
        return f"memory=streamed with blocks_to_swap={plan.blocks_to_swap}"
    return f"memory={plan.mode}"


def network_bytes(n_params: int, param_bytes: int, optimizer_state_bytes: float) -> int:
    """LoRA parameters + their gradients (same dtype) + optimizer state (per parameter, fp32-based)."""
    return int(2 * n_params * param_bytes + n_params * optimizer_state_bytes)


def plan_candidates(*, weights: int, block_weights: list[int], network: int, plain: StepMemory,
                    checkpointed: StepMemory, in_flight: int = 0, grad_bytes: int = 0) -> list[MemoryPlan]:
    """Every plan, fastest first: resident, checkpointed, then streamed with 1..n blocks' worth of weights off
    the device.

    ``weights``: all base weights on the device; ``block_weights``: each checkpointable block's weight bytes (the
    unit ``blocks_to_swap`` counts; ComfyUI's partial load itself decides per layer); ``plain`` /
    ``checkpointed``: the measured steps without / with checkpointing; ``in_flight``: device bytes the streamed
    weights take at once while cast in per layer. Streaming always checkpoints. ``grad_bytes``: the LoRA
    gradients, which the measured peaks hold and ``network`` already counts."""
    n = len(block_weights)

    def work(step: StepMemory) -> int:
        return max(0, step.peak - step.activations - grad_bytes)

    plans = [
        MemoryPlan("resident", False, 0, n, MemoryEstimate(weights, network, plain.activations, work(plain))),
        MemoryPlan("checkpointed", True, 0, n, MemoryEstimate(weights, network, checkpointed.activations,
                                                              work(checkpointed))),
    ]
    order = sorted(block_weights, reverse=True)  # the bytes of k blocks, counting the largest first
    swapped = 0
    for k in range(1, n + 1):
        swapped += order[k - 1]
        base = plans[1].estimate
        plans.append(MemoryPlan("streamed", True, k, n, MemoryEstimate(
            weights - swapped, network, base.activations, base.workspace + in_flight, streamed=swapped)))
    return plans


def choose_plan(plans: list[MemoryPlan], free: int, headroom: float = HEADROOM) -> tuple[MemoryPlan, bool]:
    """``auto``: the first (fastest) plan whose estimate fits ``free`` minus the headroom. Returns (plan, fits);
    when none fits, the leanest plan and False."""
    budget = free * (1.0 - headroom)
    for plan in plans:
        if plan.estimate.total <= budget:
            return plan, True
    return min(plans, key=lambda p: p.estimate.total), False


def fixed_plan(plans: list[MemoryPlan], mode: str, blocks_to_swap: int = 0) -> MemoryPlan:
    """The plan an explicit mode names (``streamed`` with ``blocks_to_swap`` blocks; 0 = as many as needed is
    resolved by the caller with ``choose_plan`` over the streamed plans)."""
    if mode not in MEMORY_MODES or mode == "auto":
        raise ValueError(f"memory mode {mode!r}: choose one of {', '.join(MEMORY_MODES)}")
    for plan in plans:
        if plan.mode == mode and (mode != "streamed" or plan.blocks_to_swap == blocks_to_swap):
            return plan
    raise ValueError(f"blocks_to_swap={blocks_to_swap}: the model has {plans[0].blocks} blocks; use 1 to "
                     f"{plans[0].blocks}")
