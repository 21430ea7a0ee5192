"""The README stays short and points at what exists; nothing in the repo points at documents outside it."""
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUTSIDE = re.compile(r"\.\./shared|\b(?:kohya|comfyui|peers|conventions)\.md\b|\bDESIGN\.md\b|first-run-20|code-review-20")


def _readme():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


def test_readme_is_short_and_has_its_sections():
    text = _readme()
    assert len(text.encode("utf-8")) <= 12 * 1024, len(text.encode("utf-8"))
    for heading in ("## Install", "## Quickstart", "## Nodes", "## Limits", "## Tests", "## Benchmark"):
        assert heading in text, heading
    assert "python -m pytest tests" in text
    assert "**Run**" in text and "Browse Templates" in text  # the frontend's own names


def test_readme_links_and_picture_exist():
    text = _readme()
    targets = re.findall(r"\]\(([^)#\s]+)\)", text)
    local = [t for t in targets if not t.startswith(("http://", "https://"))]
    assert "docs/images/watch-training.jpg" in local and "docs/nodes.md" in local
    for t in local:
        assert os.path.exists(os.path.join(ROOT, t)), t


def test_nothing_points_outside_the_repo():
    files = [f for f in subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                                       text=True).stdout.split("\0") if f]
    if not files:  # not a git checkout: walk the tree
        files = [os.path.relpath(os.path.join(d, f), ROOT) for d, _, fs in os.walk(ROOT) if ".git" not in d
                 for f in fs]
    offenders = []
    for rel in files:
        if not rel.endswith((".py", ".js", ".mjs", ".md", ".json", ".toml", ".txt")) and os.path.basename(rel) != "run":
            continue
        if rel == os.path.join("tests", "trainer", "test_repo_docs.py"):
            continue
        with open(os.path.join(ROOT, rel), encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if OUTSIDE.search(line):
                    offenders.append(f"{rel}:{n}: {line.strip()[:100]}")
    assert offenders == []
