"""The flat layout's module paths still import, as the same objects, with a warning."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from distkeras_async import _compat


@pytest.mark.slow  # a fresh interpreter each
@pytest.mark.parametrize(("old", "new"), sorted(_compat.ALIASES.items()))
def test_an_old_module_path_is_the_new_module(old, new):
    # A fresh interpreter: this one may have imported the alias already (no second warning).
    code = (
        "import warnings, importlib\n"
        "warnings.simplefilter('error')\n"
        f"try:\n    importlib.import_module({old!r})\n"
        "except DeprecationWarning as w:\n    print('warned:', w)\n"
        "warnings.simplefilter('ignore')\n"
        f"old = importlib.import_module({old!r}); new = importlib.import_module({new!r})\n"
        "print('same' if old is new else 'different')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert f"warned: {old} moved to {new}" in out
    assert out.rstrip().endswith("same")


def test_canonical_names():
    assert _compat.canonical("distkeras_async.estimator.KerasModel") == (
        "distkeras_async.ml.estimator.KerasModel"
    )
    assert _compat.canonical("distkeras_async.ml.estimator.KerasModel") == (
        "distkeras_async.ml.estimator.KerasModel"
    )
    assert _compat.canonical("pyspark.ml.Pipeline") == "pyspark.ml.Pipeline"


def test_unknown_modules_are_not_aliased():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("distkeras_async.no_such_module")
