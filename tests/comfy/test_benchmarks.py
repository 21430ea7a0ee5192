"""The benchmark scripts still run (they are run by hand, so nothing else would notice them breaking):
``bench_memory.py`` prints its planner table for the full-size models, ``bench_gpu.py --smoke`` trains the tiny
models in every memory mode on CPU and measures the sampling speed after training."""
from __future__ import annotations

import os
import subprocess
import sys

from comfy_fixtures import comfy  # noqa: F401

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks")


def _run(*args: str) -> str:
    out = subprocess.run([sys.executable, os.path.join(BENCH, args[0]), *args[1:]], capture_output=True, text=True,
                         timeout=900, env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_bench_memory_prints_every_model_and_mode(comfy):
    text = _run("bench_memory.py")
    for row in ("| SD1.5 | 512 | bfloat16 | resident |", "| SDXL | 1024 | bfloat16 | checkpointed |",
                "| SD3.5-Large | 1024 | bfloat16 | streamed, blocks_to_swap 19/38 |",
                "| FLUX.1-dev | 512 | bfloat16 | resident |", "| FLUX.1-dev fp8 | 1024 | float8_e4m3fn | checkpointed |",
                "What `auto` picks per card", "| FLUX.1-dev | 1024 | 304 |"):
        assert row in text, (row, text[:3000])


def test_bench_gpu_smoke_runs_every_mode_on_cpu(comfy):
    text = _run("bench_gpu.py", "--smoke", "--models", "sd15,flux", "--steps", "1", "--sampling-reps", "1")
    for model in ("sd15", "flux"):
        for mode in ("resident", "checkpointed", "streamed"):
            assert f"| {model} | 64 | float32 | {mode} | " in text, text[-3000:]
        assert f"sampling {model}: trained MODEL" in text, text[-3000:]
    assert "error" not in text.split("| model |")[1], text[-3000:]
