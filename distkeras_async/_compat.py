"""Old module paths keep working: ``distkeras_async.estimator`` is ``distkeras_async.ml.estimator``.

The package was flat before it was split by layer. Scripts import the old paths, and Spark
ML stages saved by those versions name their class by the old path in their metadata, which
Spark imports to load them. A meta path finder maps each old path to its new module (the
same module object, so classes are identical) and warns once with the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from collections.abc import Sequence

# Old module path -> new module path (the public modules of the flat layout).
ALIASES = {
    "distkeras_async.estimator": "distkeras_async.ml.estimator",
    "distkeras_async.transformers": "distkeras_async.ml.transformers",
    "distkeras_async.predictors": "distkeras_async.spark.predictor",
    "distkeras_async.client": "distkeras_async.worker.client",
    "distkeras_async.training": "distkeras_async.trainers.base",
    "distkeras_async.serialization": "distkeras_async.worker.serialization",
    "distkeras_async.checkpoint": "distkeras_async.server.checkpoint",
}


def canonical(dotted: str) -> str:
    """A dotted name with an old module path replaced by its new one (e.g. a saved class)."""
    module, _, name = dotted.rpartition(".")
    new = ALIASES.get(module)
    return dotted if new is None else f"{new}.{name}"


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None  # a placeholder; exec_module puts the real module in its place

    def exec_module(self, module: types.ModuleType) -> None:
        warnings.warn(
            f"{module.__name__} moved to {self.target}; import it from there",
            DeprecationWarning,
            stacklevel=2,
        )
        # importlib returns whatever sys.modules holds under the name after exec_module.
        sys.modules[module.__name__] = importlib.import_module(self.target)


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        new = ALIASES.get(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new))


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
