"""Headless console progress: the tqdm line shows step, loss, lr and it/s; no UI (no PromptServer) needed."""
from __future__ import annotations

import sys
import time

import comfy_env
from comfy_fixtures import comfy  # noqa: F401


def test_console_line_has_step_loss_lr_and_rate(comfy, capsys):
    progress = comfy_env.pack_module(".nodes.progress")
    loop = comfy_env.pack_module(".trainer.loop")
    p = progress.NodeProgress(None, 6, throttle_s=0.0)
    p.start_at(2, [0.5, 0.4], [1e-4, 1e-4])  # a resumed run: the bar starts at 2, the rate counts new steps only
    t0 = time.perf_counter()
    for s in (3, 4):
        time.sleep(0.05)
        p.on_step(loop.StepInfo(s, 6, 0.25, 1e-4, 0, time.perf_counter() - t0, steps_this_run=s - 2))
    p.tqdm.refresh()
    p.finish("done")
    err = capsys.readouterr().err
    last = [ln for ln in err.replace("\r", "\n").splitlines() if "LoRA Loop step" in ln][-1]
    assert "4/6" in last and "loss=0.2500" in last and "lr=1.00e-04" in last and " it/s" in last, last
    ui = p.final_ui()["lora_loop_chart"][0]
    assert ui["steps"] == [1, 2, 3, 4] and ui["start"] == 2 and ui["status"] == "done"


def test_console_line_shows_the_loss_of_its_own_step(comfy, capsys):
    """The tqdm line printed with step N carries step N's loss (not the previous step's), and nothing is printed
    as '0/N' before the first step of a resumed run."""
    progress = comfy_env.pack_module(".nodes.progress")
    loop = comfy_env.pack_module(".trainer.loop")
    p = progress.NodeProgress(None, 4, throttle_s=0.0)
    assert p.tqdm is None  # no bar until a step (or a resume) says where it starts
    p.start_at(2, [0.9, 0.8], [1e-4, 1e-4])
    t0 = time.perf_counter()
    lines = []
    for s, loss in ((3, 0.333), (4, 0.444)):
        p.on_step(loop.StepInfo(s, 4, loss, 1e-4, 0, time.perf_counter() - t0 + 0.01, steps_this_run=s - 2))
        p.tqdm.refresh()
        err = capsys.readouterr().err
        lines += [ln for ln in err.replace("\r", "\n").splitlines() if "LoRA Loop step" in ln]
    p.finish("done")
    shown = {ln.split("|")[2].split()[0]: ln for ln in lines if "|" in ln}  # "3/4" -> the line
    assert "loss=0.3330" in shown["3/4"] and "loss=0.4440" in shown["4/4"], lines
    assert not [ln for ln in lines if " 0/4 " in ln or "| 0/4" in ln], lines
