"""Package discovery for setuptools; everything else is declared in ``pyproject.toml``.

The built-in algorithms live in the top-level folder ``algorithms/`` and install as
``distkeras_async.algorithms`` (``package-dir`` in ``pyproject.toml``): ``find:`` in
``pyproject.toml`` cannot discover a folder under another import name, and a hand-written
list drifts (six subpackages once went missing from the wheel). So both trees are discovered
here, every time a wheel or an sdist is built; ``tests/test_packaging.py`` compares the
built wheel with the source tree.
"""

from setuptools import find_packages, setup

PACKAGES = [
    *find_packages(include=["distkeras_async", "distkeras_async.*"]),
    *(f"distkeras_async.{name}" for name in find_packages(include=["algorithms", "algorithms.*"])),
]

setup(packages=PACKAGES)
