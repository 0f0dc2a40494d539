"""Algorithm discovery: entry points in the group ``distkeras_async.algorithms``.

The built-ins are registered in this project's ``pyproject.toml`` exactly as a third-party
plugin registers its own, so both travel the same path. A notebook can also :func:`register`
a class at run time.
"""

from __future__ import annotations

import logging
import traceback
from importlib.metadata import EntryPoint, entry_points

from distkeras_async.algorithm import Algorithm
from distkeras_async.errors import (
    HyperparameterError,
    PluginError,
    RuleFailedError,
    UnknownAlgorithmError,
)

logger = logging.getLogger(__name__)

GROUP = "distkeras_async.algorithms"

_runtime: dict[str, type[Algorithm]] = {}


def _origin(ep: EntryPoint) -> str:
    dist = ep.dist.name if ep.dist is not None else "an unknown distribution"
    return f"entry point {ep.name!r} = {ep.value!r} of {dist!r}"


def _entry_points() -> dict[str, list[EntryPoint]]:
    found: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, []).append(ep)
    return found


def available() -> list[str]:
    """The names of every registered algorithm (entry points and run-time registrations)."""
    return sorted(set(_entry_points()) | set(_runtime))


def _load(name: str, eps: list[EntryPoint]) -> type[Algorithm]:
    # The same distribution can be seen twice on sys.path (e.g. an editable install plus
    # a build folder); only different targets are a real conflict.
    targets = {ep.value for ep in eps}
    if len(targets) > 1:
        raise PluginError(
            f"algorithm name {name!r} is registered twice: "
            + " and ".join(_origin(ep) for ep in eps)
        )
    ep = eps[0]
    try:
        obj = ep.load()
    except Exception as exc:
        raise PluginError(f"could not import {_origin(ep)}: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(obj, type) and issubclass(obj, Algorithm)):
        raise PluginError(f"{_origin(ep)} does not name a subclass of distkeras_async.Algorithm")
    if obj.name != name:
        raise PluginError(f"{_origin(ep)} loads a class whose name is {obj.name!r}, not {name!r}")
    obj.check_contract()
    return obj


def get(name: str) -> type[Algorithm]:
    """The algorithm class registered under ``name``.

    Raises:
        UnknownAlgorithmError: if no algorithm has that name (the message lists those that do).
        PluginError: if the plugin fails to import or is not a valid algorithm.
    """
    if name in _runtime:
        return _runtime[name]
    eps = _entry_points().get(name)
    if not eps:
        raise UnknownAlgorithmError(
            f"unknown algorithm {name!r}; available: {', '.join(available()) or 'none'}"
        )
    return _load(name, eps)


def register(cls: type[Algorithm], *, replace: bool = False) -> type[Algorithm]:
    """Register an algorithm class at run time under ``cls.name`` (usable as a decorator).

    Raises:
        PluginError: if ``cls`` is not an Algorithm subclass with a name, or the name is taken
            and ``replace`` is false.
    """
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise PluginError(f"{cls!r} is not a subclass of distkeras_async.Algorithm")
    if not cls.name:
        raise PluginError(f"{cls.__name__} must set a non-empty class attribute 'name'")
    cls.check_contract()
    if not replace and (cls.name in _runtime or cls.name in _entry_points()):
        raise PluginError(f"algorithm name {cls.name!r} is already registered")
    _runtime[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a run-time registration (entry points cannot be removed)."""
    _runtime.pop(name, None)


def resolve(algorithm: str | type[Algorithm] | Algorithm, **hyperparameters: object) -> Algorithm:
    """An algorithm instance from a registered name, a class, or an instance.

    Raises:
        HyperparameterError: if hyperparameters are given together with an instance.
    """
    if isinstance(algorithm, Algorithm):
        if hyperparameters:
            raise HyperparameterError(
                "hyperparameters cannot be combined with an algorithm instance; "
                "pass the name or class instead"
            )
        type(algorithm).check_contract()
        return algorithm
    cls = get(algorithm) if isinstance(algorithm, str) else algorithm
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise PluginError(f"{algorithm!r} is not an algorithm name, class or instance")
    cls.check_contract()
    return cls(**hyperparameters)


def check_workers(algorithm: Algorithm, num_workers: int) -> None:
    """Run the algorithm's ``validate_workers``.

    Raises:
        HyperparameterError: the rule's own refusal, unchanged.
        RuleFailedError: if the rule raised anything else (a bug in the rule), with the
            algorithm's name and the rule's traceback.
    """
    try:
        algorithm.validate_workers(num_workers)
    except HyperparameterError:
        raise
    except Exception as exc:
        trace = "".join(traceback.format_exception(exc))
        raise RuleFailedError(
            f"algorithm {algorithm.name!r}: validate_workers raised "
            f"{type(exc).__name__}: {exc}\n{trace}"
        ) from exc
