"""Data-parallel training across processes: ``accelerate launch --num_processes N`` around the headless entry point.

One process is one *rank* of a group that ``accelerate`` set up (torch.distributed: NCCL on GPUs, gloo on CPUs).
Every rank runs the same trainer on the same data stream; the loop (``loop.Trainer``) then:

* builds every *global* batch of ``batch_size x world_size`` samples (``batch_size`` stays per process, as
  sd-scripts' ``train_batch_size``), draws its noise and timesteps for the whole batch from the shared seed, and
  keeps its own contiguous shard of it (rank r: samples ``[r * n / N, (r + 1) * n / N)``);
* divides the summed loss of its shard by the global batch size and sums the gradients of all ranks (one
  all-reduce per step), so every rank takes the same optimizer step as one process with the whole batch would;
* agrees on stopping (Cancel / Ctrl-C on any rank stops all of them after the same step).

Only the main rank (0) writes files, samples previews and prints progress. Without ``accelerate launch`` (a
ComfyUI graph, a plain script) the context is a single process and nothing here changes the loop."""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"       # the device this rank trains on (what ComfyUI should load onto)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's contiguous part ``[lo, hi)`` of ``n`` samples (sizes differ by at most one; a rank may get
        none when ``n`` < world size)."""
        return n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size

    def all_reduce_sum_(self, tensors: list[torch.Tensor]) -> None:
        """Sum ``tensors`` (in place) over all ranks, in one flat all-reduce."""
        if not self.distributed or not tensors:
            return
        import torch.distributed as dist

        flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        i = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[i:i + n].view_as(t))
            i += n

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one."""
        if not self.distributed:
            return bool(flag)
        value = torch.tensor([1.0 if flag else 0.0])
        self.all_reduce_sum_([value])
        return bool(value.item() > 0)

    def sum(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64)
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item())


_current = Context()


def current() -> Context:
    return _current


def set_current(ctx: Context) -> None:
    global _current
    _current = ctx


def launched() -> bool:
    """Whether this process was started by ``accelerate launch`` / torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def init_from_environment(cpu: bool) -> Context:
    """Join the process group ``accelerate launch`` describes in the environment (``WORLD_SIZE``, ``RANK``,
    ``MASTER_ADDR``, ...) through ``accelerate.PartialState`` and make it the current context. A single process
    needs no accelerate. ``cpu``: gloo on the CPU even where CUDA exists."""
    if not launched():
        ctx = Context(device="cpu" if cpu or not torch.cuda.is_available() else "cuda")
        set_current(ctx)
        return ctx
    try:
        from accelerate import PartialState
    except ImportError as e:
        raise RuntimeError("several processes need the accelerate package: pip install accelerate") from e
    state = PartialState(cpu=cpu)
    ctx = Context(rank=int(state.process_index), world_size=int(state.num_processes), device=str(state.device))
    set_current(ctx)
    log.info("LoRA Loop: process %d of %d (%s, backend %s)", ctx.rank, ctx.world_size, ctx.device,
             getattr(state, "backend", "?"))
    return ctx


def global_dataset(dataset):
    """``dataset`` with every group's batch size multiplied by the number of processes: the global batches all
    ranks step through together (the same object in one process)."""
    n = current().world_size
    if n == 1:
        return dataset
    groups = [dataclasses.replace(g, batch_size=g.batch_size * n) for g in dataset.groups]
    return dataclasses.replace(dataset, groups=groups)


def shutdown() -> None:
    """Leave the process group (every rank, at the end of a run) so the processes exit cleanly."""
    if not current().distributed:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    set_current(Context())
