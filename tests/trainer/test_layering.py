"""DESIGN.md §2: trainer/ is plain torch; only trainer/comfy_adapter.py touches comfy.* (lazily), and
the whole trainer package imports without ComfyUI."""
import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMFY_MODULES = ("comfy", "comfy_api", "comfy_execution", "comfy_extras", "folder_paths", "server", "nodes",
                 "execution")


def _imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, node


def test_only_the_adapter_imports_comfyui():
    offenders = []
    for dirpath, _, files in os.walk(os.path.join(ROOT, "trainer")):
        for f in files:
            if not f.endswith(".py") or f == "comfy_adapter.py":
                continue
            path = os.path.join(dirpath, f)
            for name, node in _imports(path):
                if name.split(".")[0] in COMFY_MODULES:
                    offenders.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} imports {name}")
    assert offenders == []


def test_adapter_imports_comfyui_lazily():
    tree = ast.parse(open(os.path.join(ROOT, "trainer", "comfy_adapter.py"), encoding="utf-8").read())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in top if isinstance(n, ast.ImportFrom) and n.module]
    assert not [n for n in names if n.split(".")[0] in COMFY_MODULES]


def test_trainer_imports_without_comfyui():
    code = ("import sys; sys.path.insert(0, %r)\n"
            "import importlib, pkgutil, trainer\n"
            "for m in pkgutil.walk_packages(trainer.__path__, 'trainer.'):\n"
            "    importlib.import_module(m.name)\n"
            "assert 'comfy' not in sys.modules, 'ComfyUI was imported'\n" % ROOT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
