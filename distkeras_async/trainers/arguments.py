"""A trainer's call signature, generated from a short spec and the option declarations.

Every trainer class takes the same arguments: the model and what to optimise
(``keras_model, worker_optimizer, loss, metrics``, ``algorithm``, ``custom_objects``,
``loss_weights``), every declared run option (:mod:`distkeras_async.options`), and the
algorithm's hyperparameters. The classic trainers differ only in which of these are
positional, in what order, and in some defaults: a :class:`TrainerSpec` says that, and
:func:`signature` turns it into an ``inspect.Signature`` that Python binds the call with
(the errors for a missing, repeated or unknown argument are Python's own), that
``help()`` and IDEs show, and that lists every option with its type and default.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from distkeras_async.options import GROUPS, declared

# The model and what to optimise, with their defaults (as Keras' compile takes them).
COMPILE: dict[str, Any] = {
    "keras_model": inspect.Parameter.empty,
    "worker_optimizer": inspect.Parameter.empty,
    "loss": inspect.Parameter.empty,
    "metrics": ("accuracy",),
    "algorithm": "downpour",
    "custom_objects": None,
    "loss_weights": None,
}
_POSITIONAL = inspect.Parameter.POSITIONAL_OR_KEYWORD
_KEYWORD = inspect.Parameter.KEYWORD_ONLY


@dataclass(frozen=True)
class TrainerSpec:
    """How one trainer class takes its arguments.

    Attributes:
        positional: the names a caller may pass by position, in order (the classic API's).
        defaults: defaults that differ from the declarations' (and hyperparameters' defaults).
        fixed: arguments the class sets itself; a caller may not pass them.
        follows: ``{name: other}``: when ``name`` is None, it takes ``other``'s value.
        ignored: ``{name: warning}``: accepted for old scripts, warned about when not the
            default, and dropped.
        synchronous: the algorithm must be synchronous (True) or asynchronous (False).
    """

    positional: tuple[str, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    follows: Mapping[str, str] = field(default_factory=dict)
    ignored: Mapping[str, str] = field(default_factory=dict)
    synchronous: bool | None = None


def signature(spec: TrainerSpec) -> inspect.Signature:
    """The trainer's signature: positional names first, then every other argument by keyword."""
    annotations = {item.name: item.annotation for item in declared(*GROUPS)}
    defaults = {
        **COMPILE,
        **{item.name: item.default for item in declared(*GROUPS)},
        **spec.defaults,
    }
    keyword = [n for n in defaults if n not in spec.positional and n not in spec.fixed]
    parameters = [
        inspect.Parameter(name, kind, default=defaults[name], annotation=annotations.get(name, Any))
        for names, kind in ((spec.positional, _POSITIONAL), (keyword, _KEYWORD))
        for name in names
    ]
    parameters.append(
        inspect.Parameter("hyperparameters", inspect.Parameter.VAR_KEYWORD, annotation=Any)
    )
    return inspect.Signature(parameters)


def bind_call(
    spec: TrainerSpec, owner: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """Every argument of a trainer call by name, defaults included, hyperparameters flat.

    Raises:
        TypeError: as Python raises it for a bad call, or for an argument the class sets.
    """
    bound = signature(spec).bind(*args, **kwargs)
    bound.apply_defaults()
    values = dict(bound.arguments)
    extra = values.pop("hyperparameters")
    for name in extra:
        if name in spec.fixed:
            raise TypeError(f"{owner} sets {name}={spec.fixed[name]!r} itself")
    values.update(extra)
    values.update(spec.fixed)
    for name, other in spec.follows.items():
        if values.get(name) is None:
            values[name] = values[other]
    for name, message in spec.ignored.items():
        if values.pop(name) != spec.defaults.get(name):
            warnings.warn(message, stacklevel=3)
    return values
