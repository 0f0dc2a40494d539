"""Every ```python block of README.md and docs/*.md runs, so the documentation cannot rot.

The blocks of one page run in order in one namespace (like a notebook) that starts empty:
every name a snippet uses is defined on its page, in a setup block a reader sees. (The shared
Spark session of the tests is already running, so a page's ``getOrCreate()`` finds it.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: Path) -> list[tuple[int, str]]:
    text = page.read_text()
    return [(text[: m.start()].count("\n") + 1, m.group(1)) for m in BLOCK.finditer(text)]


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_code_samples_run(page, spark, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Not importable, so cloudpickle ships the page's classes to Spark workers by value.
    namespace = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    for line, code in python_blocks(page):
        exec(compile(code, f"{page.name}:{line}", "exec"), namespace)


def test_docs_pages_are_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        assert page.name in nav, f"{page.name} is missing from mkdocs.yml"


def test_no_todo_in_the_docs():
    for page in PAGES:
        assert "TODO" not in page.read_text(), page


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mkdocs") is None, reason="mkdocs is not installed")
def test_mkdocs_build_strict(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _defined_tests() -> dict[str, set[str]]:
    """Test function names defined in each tests/*.py file."""
    import ast

    defined: dict[str, set[str]] = {}
    for path in (ROOT / "tests").glob("test_*.py"):
        tree = ast.parse(path.read_text())
        defined[path.name] = {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
        }
    return defined


@pytest.mark.parametrize(
    "page",
    [
        "reliability.md",
        "security.md",
        "serve.md",
        "trainers.md",
        "data.md",
        "backends.md",
        "cluster.md",
        "algorithms.md",
        "custom-optimizer.md",
        "scaling.md",
        "protocol.md",
    ],
)
def test_every_test_named_next_to_a_guarantee_exists(page):
    """The guarantee tables name the test behind each claim: a renamed or deleted test
    must not leave a claim with nothing behind it."""
    import re

    text = (ROOT / "docs" / page).read_text()
    defined = _defined_tests()
    everywhere = set().union(*defined.values())
    missing = []
    for file, name in re.findall(r"(test_\w+\.py)::(test_\w+)", text):
        if name not in defined.get(file, set()):
            missing.append(f"{file}::{name}")
    for name in re.findall(r"`(test_\w+)`", text):
        if name not in everywhere:
            missing.append(name)
    for file in re.findall(r"`(test_\w+\.py)`", text):
        if file not in defined:
            missing.append(file)
    assert not missing, missing
