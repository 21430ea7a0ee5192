"""trainer/ is plain torch; only the trainer/adapter/ package touches comfy.* (lazily, inside functions), and
the whole trainer package imports without ComfyUI."""
import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ADAPTER = os.path.join(ROOT, "trainer", "adapter")
COMFY_MODULES = ("comfy", "comfy_api", "comfy_execution", "comfy_extras", "folder_paths", "server", "nodes",
                 "execution")


def _py_files(folder):
    for dirpath, _, files in os.walk(folder):
        for f in files:
            if f.endswith(".py"):
                yield os.path.join(dirpath, f)


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
    for path in _py_files(os.path.join(ROOT, "trainer")):
        if path.startswith(ADAPTER + os.sep):
            continue
        for name, node in _imports(path):
            if name.split(".")[0] in COMFY_MODULES:
                offenders.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} imports {name}")
    assert offenders == []


def test_adapter_imports_comfyui_lazily():
    files = list(_py_files(ADAPTER))
    assert len(files) >= 6  # one module per ComfyUI mechanism
    lazy = 0
    for path in files:
        tree = ast.parse(open(path, encoding="utf-8").read())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in top if isinstance(n, ast.ImportFrom) and n.module and n.level == 0]
        assert not [n for n in names if n.split(".")[0] in COMFY_MODULES], path
        lazy += sum(1 for name, _ in _imports(path) if name.split(".")[0] in COMFY_MODULES)
    assert lazy > 0  # the adapter does use ComfyUI (inside functions)


def test_interrupt_check_lives_in_the_adapter():
    # Cancel is recognised by ComfyUI's own exception class, in one place
    for path in _py_files(os.path.join(ROOT, "trainer")):
        src = open(path, encoding="utf-8").read()
        if "InterruptProcessingException" in src:
            assert path.startswith(ADAPTER + os.sep), path


def test_trainer_imports_without_comfyui():
    code = ("import sys; sys.path.insert(0, %r)\n"
            "import importlib, pkgutil, trainer\n"
            "for m in pkgutil.walk_packages(trainer.__path__, 'trainer.'):\n"
            "    importlib.import_module(m.name)\n"
            "assert 'comfy' not in sys.modules, 'ComfyUI was imported'\n" % ROOT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
