"""ComfyUI still runs on Python 3.10: nothing of the pack may fail at import time there. ``tomllib`` is 3.11+;
the pack falls back to the ``tomli`` backport and, without it, fails only when a TOML is read, with the fix."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Python 3.10 as the import system sees it: no tomllib (ModuleNotFoundError, as on 3.10), optionally no tomli
BLOCK = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = {blocked!r}
    class Py310(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}")
    sys.modules.pop("tomllib", None)
    sys.meta_path.insert(0, Py310())
    sys.path.insert(0, {root!r})
""")


def _run(blocked, body, tmp_path):
    (tmp_path / "img").mkdir()
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "img" / "a.png")
    (tmp_path / "ds.toml").write_text("[[datasets]]\nresolution = 640\n[[datasets.subsets]]\nimage_dir = 'img'\n")
    code = BLOCK.format(blocked=set(blocked), root=ROOT) + textwrap.dedent(body).format(toml=str(tmp_path / "ds.toml"))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)


IMPORT_ALL = """
    import importlib, pkgutil, trainer
    for m in pkgutil.walk_packages(trainer.__path__, "trainer."):
        importlib.import_module(m.name)
    from trainer.dataset import load_toml
"""


def test_without_tomllib_the_tomli_backport_is_used(tmp_path):
    pytest.importorskip("tomli")
    r = _run({"tomllib"}, IMPORT_ALL + """
    ds = load_toml({toml!r})
    assert ds.groups[0].resolution == (640, 640), ds.groups
    assert "tomllib" not in sys.modules and "tomli" in sys.modules
    print("ok")
    """, tmp_path)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_without_tomllib_and_tomli_only_reading_a_toml_fails_with_the_fix(tmp_path):
    r = _run({"tomllib", "tomli"}, IMPORT_ALL + """
    try:
        load_toml({toml!r})
    except ValueError as e:
        assert "pip install tomli" in str(e), e
        print("ok")
    """, tmp_path)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def _python310():
    import glob

    for exe in [shutil.which("python3.10"), *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))]:
        if exe and subprocess.run([exe, "--version"], capture_output=True).returncode == 0:
            return exe
    return None


PY310 = _python310()


@pytest.mark.skipif(PY310 is None, reason="no Python 3.10 interpreter on this machine")
def test_every_pack_file_compiles_on_python310():
    files = [os.path.join(d, f) for base in ("trainer", "nodes") for d, _, fs in os.walk(os.path.join(ROOT, base))
             for f in fs if f.endswith(".py")] + [os.path.join(ROOT, "__init__.py")]
    code = ("import sys\n"
            "for f in sys.argv[1:]:\n"
            "    compile(open(f, encoding='utf-8').read(), f, 'exec')\n"
            "print(sys.version_info[:2], len(sys.argv) - 1)\n")
    r = subprocess.run([PY310, "-c", code, *files], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "(3, 10)" in r.stdout
