"""Progress people can see: ComfyUI progress bar, throttled live-chart events, the status text on the node,
tqdm in the console, and Cancel."""
from __future__ import annotations

import logging
import time

from ..trainer.reporting import Progress

log = logging.getLogger(__name__)

EVENT = "lora_loop.progress"
UI_KEY = "lora_loop_chart"
NOTES_SHOWN = 5  # the latest notes travel with each event (the chart shows the last one)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def server():
    """ComfyUI's PromptServer when one runs (None in headless executors)."""
    try:
        from server import PromptServer
    except Exception:
        return None
    return getattr(PromptServer, "instance", None)


SAVE_EVENT = "lora_loop.saving"


def send_event(event: str, payload: dict) -> None:
    """A websocket event to the frontend (no-op without a server)."""
    srv = server()
    if srv is not None:
        srv.send_sync(event, payload, getattr(srv, "client_id", None))


def show_text(node_id: str | None, text: str) -> None:
    """Text shown on the node itself (frontend 'progress_text'), where the chart extension is not needed."""
    srv = server()
    if srv is not None and node_id is not None and hasattr(srv, "send_progress_text"):
        srv.send_progress_text(text, node_id, getattr(srv, "client_id", None))


class NodeProgress(Progress):
    """Reports a run to the UI (progress bar, 'lora_loop.progress' events, status text), the console (tqdm and
    log lines) and answers 'should we stop?' (ComfyUI's Cancel)."""

    def __init__(self, node_id: str | None, total: int, throttle_s: float = 0.25):
        import comfy.utils

        self.node_id = str(node_id) if node_id is not None else None
        self.total = total
        self.throttle_s = throttle_s
        self.pbar = comfy.utils.ProgressBar(total, node_id=self.node_id)
        self.tqdm = None             # created at the first step (a resumed run starts at its own step)
        self.start_step = 0
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.lrs: list[float] = []
        self.notes: list[str] = []
        self._pending: list[list] = []
        self.validation_points: list[list] = []   # [[step, validation loss], ...] (trainer/validation.py)
        self._pending_validation: list[list] = []
        self._last_send = 0.0
        self._t0 = time.perf_counter()
        self.status = "training"
        self.eta: float | None = None
        self.prompt_id = None
        try:
            from comfy_execution.utils import get_executing_context

            ctx = get_executing_context()
            if ctx is not None:
                self.prompt_id = ctx.prompt_id
        except Exception:
            pass
        # replaces the previous run's "done in ..." at once, while the model loads for training
        self.phase_text = "loading the model for training"
        self._send()

    def _bar(self):
        if self.tqdm is None:
            from tqdm.auto import tqdm

            # "LoRA Loop step:  40%|####    | 40/100 [00:12<00:18, 3.21it/s, loss=0.1234, lr=1.00e-04, 3.2 it/s]"
            # (the last rate counts only this run's steps, so it stays right for resumed runs and slow steps)
            self.tqdm = tqdm(total=self.total, initial=self.start_step, desc="LoRA Loop step", unit="it",
                             dynamic_ncols=True, mininterval=0.5)
        return self.tqdm

    # ---- called by the session -------------------------------------------------------------------
    def start_at(self, step: int, losses: list[float], lrs: list[float]) -> None:
        """Resumed runs: show the earlier part of the curve too (it/s counts only the new steps)."""
        self.start_step = step
        self.steps = list(range(1, len(losses) + 1))
        self.losses = list(losses)
        self.lrs = list(lrs)
        self._pending = [[s, l, r] for s, l, r in zip(self.steps, self.losses, self.lrs)]
        self.phase_text = ""
        self.pbar.update_absolute(step, self.total)
        self._send()

    def on_step(self, info, eta: float | None = None) -> None:
        self.steps.append(info.step)
        self.losses.append(info.loss)
        self.lrs.append(info.lr)
        self._pending.append([info.step, info.loss, info.lr])
        self.phase_text = ""
        self.eta = eta
        done = getattr(info, "steps_this_run", 0) or (info.step - self.start_step)
        rate = done / info.elapsed if info.elapsed and info.elapsed > 0 else 0.0
        bar = self._bar()
        norms = getattr(info, "max_norm", None)  # scale_weight_norms: sd-scripts shows these two as well
        extra = f", keys scaled={norms[0]}, avg key norm={norms[1]:.3g}" if norms is not None else ""
        bar.set_postfix_str(f"loss={info.loss:.4f}, lr={info.lr:.2e}{extra}, {rate:.3g} it/s", refresh=False)
        bar.update(1)  # after the postfix: the line shows this step's loss
        self.pbar.update_absolute(info.step, self.total)  # also raises on Cancel in the server
        now = time.perf_counter()
        if now - self._last_send >= self.throttle_s or info.step >= self.total:
            self._send()

    def phase(self, text: str, eta: float | None = None) -> None:
        """A long phase between steps: shown on the node, in the chart header and on the console line (a new
        phase at once, its sub-steps at most every ``throttle_s``)."""
        first = text.split(",")[0] != self.phase_text.split(",")[0]
        self.phase_text = text
        if eta is not None:
            self.eta = eta
        if first:
            log.info("LoRA Loop: %s", text.split(",")[0])
        if self.tqdm is not None:
            self.tqdm.set_postfix_str(text, refresh=True)
        if first or time.perf_counter() - self._last_send >= self.throttle_s:
            self._send()

    def validation(self, step: int, loss: float) -> None:
        """The validation loss after ``step``: the chart's second curve (events and the final UI)."""
        self.validation_points.append([step, loss])
        self._pending_validation.append([step, loss])
        self._send()  # the console line is the session's log

    def preview(self, step: int, images) -> None:
        """Show preview images live on the node (ComfyUI's progress-bar preview)."""
        from ..trainer.previews import to_pil

        for img in images:
            self.pbar.update_absolute(step, self.total, ("JPEG", to_pil(img), None))

    def note(self, text: str) -> None:
        self.notes.append(text)
        self._send()

    def should_stop(self) -> bool:
        from ..trainer.adapter import interrupted

        return interrupted()

    def finish(self, status: str, message: str = "") -> None:
        self.status = status
        self.phase_text = ""
        self.eta = 0.0
        if message:
            self.notes.append(message)
        self._send()
        if self.tqdm is not None:
            self.tqdm.close()

    # ---- UI --------------------------------------------------------------------------------------
    def status_line(self) -> str:
        step = self.steps[-1] if self.steps else self.start_step
        parts = [f"step {step}/{self.total}"]
        if self.losses:
            parts.append(f"loss {self.losses[-1]:.4f}")
        if self.lrs:
            parts.append(f"lr {self.lrs[-1]:.2e}")
        parts.append(self.phase_text or self.status)
        if self.status == "training" and self.eta is not None:
            parts.append(f"ETA {_clock(self.eta)}")
        return "  ".join(parts)

    def _send(self) -> None:
        self._last_send = time.perf_counter()
        points, self._pending = self._pending, []
        validation, self._pending_validation = self._pending_validation, []
        srv = server()
        if srv is None or self.node_id is None:
            return
        payload = {"node": self.node_id, "display_node": self.node_id, "prompt_id": self.prompt_id,
                   "step": self.steps[-1] if self.steps else self.start_step, "total": self.total, "points": points,
                   "elapsed": time.perf_counter() - self._t0, "eta": self.eta, "status": self.status,
                   "phase": self.phase_text, "notes": self.notes[-NOTES_SHOWN:]}
        if validation:
            payload["validation"] = validation
        srv.send_sync(EVENT, payload, getattr(srv, "client_id", None))
        show_text(self.node_id, self.status_line())

    def final_ui(self) -> dict:
        return {UI_KEY: [{"steps": self.steps, "loss": self.losses, "lr": self.lrs, "total": self.total,
                          "elapsed": time.perf_counter() - self._t0, "status": self.status,
                          "start": self.start_step, "notes": self.notes[-NOTES_SHOWN:],
                          **({"validation": self.validation_points} if self.validation_points else {})}]}
