"""Progress people can see: ComfyUI progress bar, throttled live-chart events, tqdm, Cancel."""
from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)

EVENT = "lora_loop.progress"
UI_KEY = "lora_loop_chart"


class NodeProgress:
    """Reports training steps to the UI (progress bar + 'lora_loop.progress' events), the console
    (tqdm) and answers 'should we stop?' (ComfyUI's Cancel)."""

    def __init__(self, node_id: str | None, total: int, throttle_s: float = 0.25):
        import comfy.utils
        from tqdm.auto import tqdm

        self.node_id = str(node_id) if node_id is not None else None
        self.total = total
        self.throttle_s = throttle_s
        self.pbar = comfy.utils.ProgressBar(total, node_id=self.node_id)
        self._tqdm_cls = tqdm
        self.tqdm = self._new_tqdm(0)
        self.start_step = 0
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.lrs: list[float] = []
        self._pending: list[list] = []
        self._last_send = 0.0
        self._t0 = time.perf_counter()
        self.status = "training"
        self.prompt_id = None
        try:
            from comfy_execution.utils import get_executing_context

            ctx = get_executing_context()
            if ctx is not None:
                self.prompt_id = ctx.prompt_id
        except Exception:
            pass

    def _new_tqdm(self, initial: int):
        # console line: "LoRA Loop step:  40%|####    | 40/100 [00:12<00:18, 3.21it/s, loss=0.1234, lr=1.00e-04, 3.2 it/s]"
        # (the last rate counts only this run's steps, so it stays right for resumed runs and slow steps)
        return self._tqdm_cls(total=self.total, initial=initial, desc="LoRA Loop step", unit="it",
                              dynamic_ncols=True, mininterval=0.5)

    # ---- called by the trainer ---------------------------------------------------------------------
    def start_at(self, step: int, losses: list[float], lrs: list[float]) -> None:
        """Resumed runs: show the earlier part of the curve too (it/s counts only the new steps)."""
        self.start_step = step
        self.steps = list(range(1, len(losses) + 1))
        self.losses = list(losses)
        self.lrs = list(lrs)
        self._pending = [[s, l, r] for s, l, r in zip(self.steps, self.losses, self.lrs)]
        self.tqdm.close()
        self.tqdm = self._new_tqdm(step)
        self.pbar.update_absolute(step, self.total)

    def on_step(self, info) -> None:
        self.steps.append(info.step)
        self.losses.append(info.loss)
        self.lrs.append(info.lr)
        self._pending.append([info.step, info.loss, info.lr])
        self.tqdm.update(1)
        done = getattr(info, "steps_this_run", 0) or (info.step - self.start_step)
        rate = done / info.elapsed if info.elapsed and info.elapsed > 0 else 0.0
        self.tqdm.set_postfix_str(f"loss={info.loss:.4f}, lr={info.lr:.2e}, {rate:.3g} it/s", refresh=False)
        self.pbar.update_absolute(info.step, self.total)  # also raises on Cancel in the server
        now = time.perf_counter()
        if now - self._last_send >= self.throttle_s or info.step >= self.total:
            self._send(eta=(self.total - info.step) / rate if rate > 0 else None)

    def preview(self, step: int, images) -> None:
        """Show preview images live on the node (ComfyUI's progress-bar preview)."""
        from ..trainer.previews import to_pil

        for img in images:
            self.pbar.update_absolute(step, self.total, ("JPEG", to_pil(img), None))

    def should_stop(self) -> bool:
        import comfy.model_management

        return comfy.model_management.processing_interrupted()

    def finish(self, status: str) -> None:
        self.status = status
        self._send(eta=0.0)
        self.tqdm.close()

    # ---- UI --------------------------------------------------------------------------------------
    def _send(self, eta) -> None:
        self._last_send = time.perf_counter()
        points, self._pending = self._pending, []
        try:
            from server import PromptServer
        except Exception:
            return
        server = getattr(PromptServer, "instance", None)
        if server is None or self.node_id is None:
            return
        payload = {"node": self.node_id, "display_node": self.node_id, "prompt_id": self.prompt_id,
                   "step": self.steps[-1] if self.steps else 0, "total": self.total, "points": points,
                   "elapsed": time.perf_counter() - self._t0, "eta": eta, "status": self.status}
        server.send_sync(EVENT, payload, getattr(server, "client_id", None))
        if self.losses and hasattr(server, "send_progress_text"):
            # the step and loss as text on the node, also where the chart extension is not loaded
            server.send_progress_text(f"step {payload['step']}/{self.total}  loss {self.losses[-1]:.4f}  "
                                      f"lr {self.lrs[-1]:.2e}  {self.status}", self.node_id,
                                      getattr(server, "client_id", None))

    def final_ui(self) -> dict:
        return {UI_KEY: [{"steps": self.steps, "loss": self.losses, "lr": self.lrs, "total": self.total,
                          "elapsed": time.perf_counter() - self._t0, "status": self.status,
                          "start": self.start_step}]}
