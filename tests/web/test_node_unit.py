"""Runs the pure-JS unit tests of web/lib (tests/web/*.test.mjs) with Node's built-in runner."""
import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PACK_ROOT = os.path.dirname(os.path.dirname(HERE))


def test_web_lib_node_unit_tests():
    node = shutil.which("node")
    if node is None:
        pytest.skip("`node` (Node.js >= 18) is not on PATH: install it (e.g. `apt-get install -y nodejs`) "
                    "to run the web/lib unit tests in tests/web/*.test.mjs")
    files = sorted(os.path.join("tests", "web", f) for f in os.listdir(HERE) if f.endswith(".test.mjs"))
    assert files, "no tests/web/*.test.mjs found"
    proc = subprocess.run([node, "--test", "--test-reporter=tap", *files], cwd=PACK_ROOT, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"node --test failed (exit {proc.returncode}):\n{out[-8000:]}"
    assert "# pass" in out and "# fail 0" in out, f"unexpected node --test output:\n{out[-4000:]}"
