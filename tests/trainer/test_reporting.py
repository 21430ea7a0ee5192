"""The time left of a run that also samples previews and writes checkpoints (trainer.reporting.Eta): each
phase is timed on its own and counted for what is left."""
import pytest

from trainer.reporting import Eta, rounds_left


def test_rounds_left_counts_multiples_and_the_end():
    assert rounds_left(0, 10, 3, at_end=True) == 4        # 3, 6, 9 and the end (10)
    assert rounds_left(0, 9, 3, at_end=True) == 3         # 3, 6, 9 (9 is the end)
    assert rounds_left(4, 10, 0, at_end=True) == 1        # only the end
    assert rounds_left(4, 10, 0, at_end=False) == 0
    assert rounds_left(10, 10, 3, at_end=True) == 0       # nothing left
    assert rounds_left(6, 10, 2, at_end=False) == 2       # 8, 10


def test_eta_unknown_until_a_step_is_timed():
    assert Eta(10).remaining(0) is None


def test_eta_is_steps_only_without_previews_or_saves():
    eta = Eta(10)
    for s in (2.0, 4.0):
        eta.add_step(s)
    assert eta.step_time == pytest.approx(3.0)
    assert eta.remaining(2) == pytest.approx(8 * 3.0)


def test_eta_counts_preview_rounds_and_saves():
    # 2 prompts x 5 sampler steps every 4 steps (and at the end), checkpoints every 5 steps
    eta = Eta(10, preview_images=2, preview_steps=5, preview_every=4, preview_cfg=7.0, save_every=5)
    eta.add_step(3.0)
    # before any preview: a sampler step is a forward (x2 with cfg) of a 3-forward training step
    assert eta.remaining(1) == pytest.approx(9 * 3.0 + 3 * 2 * 5 * 2.0 + 2 * 0.0)
    eta.add_sampler_steps(0.5, 1)
    eta.add_sampler_steps(1.5, 1)                        # measured: 1 s per sampler step
    eta.add_save(4.0)
    # after step 4: steps 5..10 (6 x 3 s), previews at 8 and 10 (2 rounds x 2 images x 5 steps x 1 s), saves at 5, 10
    assert eta.remaining(4) == pytest.approx(6 * 3.0 + 2 * 2 * 5 * 1.0 + 2 * 4.0)
    # during the preview round at step 4: the second image's 3 steps left, plus what follows
    assert eta.remaining(4, preview_left=(1, 3)) == pytest.approx(6 * 3.0 + 2 * 2 * 5 + 2 * 4.0 + 3 * 1.0)


def test_slow_previews_do_not_inflate_the_step_time():
    eta = Eta(100, preview_images=1, preview_steps=20, preview_every=10)
    eta.add_step(1.0)
    eta.add_sampler_steps(60.0, 20)   # a 60 s preview round
    eta.add_step(1.0)
    assert eta.step_time == pytest.approx(1.0)
