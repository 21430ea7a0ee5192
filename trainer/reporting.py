"""What a run reports while it trains: the :class:`Progress` interface the session calls, and the time
left (:class:`Eta`) in a run that also samples previews and writes checkpoints.

Training steps, preview sampling and checkpoint saves are timed separately, so a slow preview round
neither inflates the step rate nor is missing from the estimate: the time left is the remaining steps
times the step time, plus the remaining preview images times their sampler steps times the time of one
sampler step, plus the remaining saves times the save time."""
from __future__ import annotations

from dataclasses import dataclass


def rounds_left(step: int, total: int, every: int, at_end: bool) -> int:
    """How many of the steps ``step+1 .. total`` are multiples of ``every`` (0: none), plus the end when
    ``at_end`` and the end is not a multiple already."""
    if total <= step:
        return 0
    n = (total // every - step // every) if every > 0 else 0
    if at_end and not (every > 0 and total % every == 0):
        n += 1
    return n


@dataclass
class Eta:
    total: int
    preview_images: int = 0            # images per preview round (0: no previews)
    preview_steps: int = 0             # sampler steps per image
    preview_every: int = 0             # 0: only at the end
    preview_cfg: float = 1.0
    save_every: int = 0                # periodic checkpoints (steps); 0: none
    step_time: float | None = None     # seconds per training step (running mean)
    sampler_step_time: float | None = None
    save_time: float = 0.0
    _steps_timed: int = 0
    _sampler_steps_timed: int = 0
    _saves_timed: int = 0

    def add_step(self, seconds: float) -> None:
        self._steps_timed += 1
        self.step_time = _mean(self.step_time, seconds, self._steps_timed)

    def add_sampler_steps(self, seconds: float, steps: int) -> None:
        if steps <= 0:
            return
        self._sampler_steps_timed += steps
        per = seconds / steps
        n = self._sampler_steps_timed
        self.sampler_step_time = per if self.sampler_step_time is None else \
            self.sampler_step_time + (per - self.sampler_step_time) * steps / n

    def add_save(self, seconds: float) -> None:
        self._saves_timed += 1
        self.save_time = _mean(self.save_time, seconds, self._saves_timed)

    def _sampler_step(self) -> float | None:
        if self.sampler_step_time is not None:
            return self.sampler_step_time
        if self.step_time is None:
            return None
        # before the first preview: a sampler step is one forward (two with cfg), a training step ~3 forwards
        return self.step_time / 3.0 * (2.0 if self.preview_cfg > 1.0 else 1.0)

    def remaining(self, step: int, preview_left: tuple[int, int] | None = None) -> float | None:
        """Seconds left after ``step`` completed steps. ``preview_left``: (images, sampler steps of the current
        image) still to sample in a preview round under way."""
        if self.step_time is None:
            return None
        left = (self.total - step) * self.step_time
        sampler = self._sampler_step()
        if self.preview_images and sampler is not None:
            rounds = rounds_left(step, self.total, self.preview_every, at_end=True)
            left += rounds * self.preview_images * self.preview_steps * sampler
            if preview_left is not None:
                images, steps_of_current = preview_left
                left += (max(0, images - 1) * self.preview_steps + steps_of_current) * sampler
        left += rounds_left(step, self.total, self.save_every, at_end=False) * self.save_time
        return max(0.0, left)


def _mean(old: float | None, new: float, n: int) -> float:
    return new if old is None else old + (new - old) / n


class Progress:
    """What the session tells the outside while it trains; every method is optional to override (this base
    does nothing). The ComfyUI node implements it with the progress bar, the live chart and tqdm."""

    def start_at(self, step: int, losses: list[float], lrs: list[float]) -> None:
        """A resumed run starts at ``step`` with this history."""

    def on_step(self, info, eta: float | None) -> None:
        """A training step finished (``info``: loop.StepInfo); ``eta``: seconds left, None while unknown."""

    def phase(self, text: str, eta: float | None = None) -> None:
        """A long phase between steps is under way, e.g. 'sampling preview 2/4, step 7/20'."""

    def validation(self, step: int, loss: float) -> None:
        """The validation loss (trainer/validation.py) after ``step``."""

    def preview(self, step: int, images: list) -> None:
        """Preview images sampled at ``step`` ((1, H, W, 3) tensors)."""

    def note(self, text: str) -> None:
        """Something the user should see on the node afterwards, e.g. which checkpoint was written."""

    def should_stop(self) -> bool:
        return False

    def finish(self, status: str, message: str = "") -> None:
        """The run ended: status 'done', 'cancelled' or 'error'; ``message`` says what was kept."""
