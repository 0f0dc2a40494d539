"""The wheel users install holds every package of the source tree, and the version is declared once.

The packages are discovered when a wheel is built (``setup.py``); these tests compare what a
build holds with the source tree as it is, never with a list written here. The tests marked
``wheel`` run only in ``.ci/run``'s second run, against the wheel installed into a fresh virtual
environment (``DISTKERAS_WHEEL_RUN=1``; ``tests/conftest.py`` deselects them elsewhere).
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path, PurePosixPath

import pytest

import distkeras_async

ROOT = Path(__file__).resolve().parents[1]
# What a build reads from the source tree (pyproject.toml names README.md as the readme).
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "distkeras_async", "algorithms")
BUILD_TIMEOUT = 300.0  # seconds for one build on a busy 2-core machine


def source_packages(root: Path = ROOT) -> set[str]:
    """Every import package of a source tree, by the name it is installed under."""
    core = {
        ".".join(init.parent.relative_to(root).parts)
        for init in (root / "distkeras_async").rglob("__init__.py")
    }
    # The built-in algorithms' folder installs as distkeras_async.algorithms (package-dir).
    builtin = {
        ".".join(("distkeras_async", *init.parent.relative_to(root).parts))
        for init in (root / "algorithms").rglob("__init__.py")
    }
    return core | builtin


def packages_in(files: Iterable[str]) -> set[str]:
    """The packages a file list holds (a wheel's names, an installation's RECORD)."""
    return {
        ".".join(PurePosixPath(name).parent.parts)
        for name in files
        if PurePosixPath(name).name == "__init__.py"
    }


def missing_packages(files: Iterable[str], root: Path = ROOT) -> list[str]:
    """The source tree's packages that ``files`` lacks, sorted."""
    return sorted(source_packages(root) - packages_in(files))


def declared_entry_points() -> dict[str, str]:
    """The algorithms' entry points as pyproject.toml declares them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return dict(project["entry-points"]["distkeras_async.algorithms"])


def copy_build_inputs(dest: Path) -> Path:
    """A copy of what a build reads, so that builds leave nothing in the checkout."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    dest.mkdir(parents=True, exist_ok=True)
    for name in BUILD_INPUTS:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=ignore)
        else:
            shutil.copy2(source, dest / name)
    return dest


def run_build(args: list[str], cwd: Path) -> None:
    """Run a build command; fail the test with its output if it fails."""
    done = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
    )
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}{done.stderr}"


def only(paths: Iterable[Path]) -> Path:
    found = list(paths)
    assert len(found) == 1, found
    return found[0]


# --------------------------------------------------------------------------- the built wheel


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``python -m build`` of the source tree: the sdist and the wheel built from it."""
    source = copy_build_inputs(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the test extra installs the build requirements (no download here).
    run_build([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), "."], source)
    return only(out.glob("*.tar.gz")), only(out.glob("*.whl"))


@pytest.mark.slow
def test_the_wheel_holds_every_package_of_the_source_tree(built: tuple[Path, Path]) -> None:
    names = zipfile.ZipFile(built[1]).namelist()
    assert missing_packages(names) == []
    # The type information of both roots ships with them.
    assert {"distkeras_async/py.typed", "distkeras_async/algorithms/py.typed"} <= set(names)
    # Every built-in algorithm's module is there under the name its entry point loads.
    for target in declared_entry_points().values():
        module = target.split(":")[0]
        assert module.replace(".", "/") + ".py" in names, target
    # No checkout folder leaks in under its own name (algorithms/ is a PyPI project's name).
    assert not [name for name in names if name.startswith(("algorithms/", "tests/"))]


@pytest.mark.slow
def test_the_wheel_declares_the_entry_points_and_the_command(built: tuple[Path, Path]) -> None:
    archive = zipfile.ZipFile(built[1])
    name = only(n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt"))
    text = archive.read(name).decode()
    parser = configparser.ConfigParser(delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # names are case-sensitive
    parser.read_string(text)
    assert dict(parser["distkeras_async.algorithms"]) == declared_entry_points()
    assert dict(parser["console_scripts"]) == {"distkeras-async": "distkeras_async.cli:main"}


@pytest.mark.slow
def test_the_sdist_holds_every_package_and_the_discovery(built: tuple[Path, Path]) -> None:
    with tarfile.open(built[0]) as sdist:
        # Names start with "<name>-<version>/": drop that folder.
        names = [PurePosixPath(*PurePosixPath(n).parts[1:]).as_posix() for n in sdist.getnames()]
    assert {"setup.py", "pyproject.toml", "README.md"} <= set(names)
    # In the sdist the built-in algorithms are still the top-level folder algorithms/.
    in_sdist = {
        name.replace("algorithms/", "distkeras_async/algorithms/", 1)
        if name.startswith("algorithms/")
        else name
        for name in names
    }
    assert missing_packages(in_sdist) == []


@pytest.mark.slow
def test_the_check_finds_a_subpackage_left_out_of_a_wheel(tmp_path: Path) -> None:
    """A hand-written package list (how six subpackages once went missing) fails the check."""
    source = copy_build_inputs(tmp_path / "source")
    (source / "setup.py").write_text(
        "from setuptools import setup\n\n"
        "setup(packages=[p for p in __import__('setuptools').find_packages("
        "include=['distkeras_async', 'distkeras_async.*']) if p != 'distkeras_async.wire']"
        " + ['distkeras_async.algorithms'])\n"
    )
    out = tmp_path / "dist"
    wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    run_build([*wheel, "-q", "-w", str(out), "."], source)
    names = zipfile.ZipFile(only(out.glob("*.whl"))).namelist()
    assert missing_packages(names) == ["distkeras_async.wire"]


# --------------------------------------------------------------------------- the version


def test_the_version_is_declared_once_in_pyproject() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert distkeras_async.__version__ == declared == metadata.version("distkeras-async")
    # No module of the package writes a version literal of its own.
    for path in (ROOT / "distkeras_async").rglob("*.py"):
        assert f'"{declared}"' not in path.read_text(), path


# --------------------------------------------------------------------------- the installed wheel


@pytest.mark.wheel
def test_the_installed_package_holds_every_package_of_the_source_tree() -> None:
    files = metadata.distribution("distkeras-async").files
    assert files is not None
    assert missing_packages(str(f) for f in files) == []
    # What runs is that installation, not the checkout (tests/conftest.py checks it first).
    package = Path(distkeras_async.__file__).resolve()
    assert not package.is_relative_to(ROOT), package
    from distkeras_async import algorithms

    assert Path(algorithms.__file__).resolve().parent == package.parent / "algorithms"
    from distkeras_async.registry import available

    assert set(declared_entry_points()) <= set(available())
