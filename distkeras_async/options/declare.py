"""How a run option is declared: one dataclass field that carries its doc, check and surfaces.

An option group is a frozen dataclass whose fields are made with :func:`option`. Each field
says, once, everything the package needs to expose it: its default, its type (the field's
annotation), a one-line doc, the check that refuses a bad value (and normalises a good one),
the name of its Spark ML Param (camelCase, when the estimator has one) and its
``distkeras-async serve`` flag (when the standalone server takes it). The trainer's keyword
arguments, the estimator's Params, ``WorkerPlan``, the server's arguments and the serve
flags are all derived from these fields (:func:`bind`, :func:`keyword_parameters`,
:mod:`distkeras_async.ml.generated`, :mod:`distkeras_async.serve`).

Nothing here imports Spark or Keras: every layer may read the declarations.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

Check = Callable[[Any, str], Any]
"""``check(value, name)``: the value, normalised, or ValueError/TypeError naming ``name``."""

Group = TypeVar("Group")

_SPEC = "distkeras_async.option"


@dataclass(frozen=True)
class Spec:
    """What one option declares besides its name, type and default.

    Attributes:
        doc: one sentence saying what the option does (Param docs and ``--help`` use it).
        check: refuses a bad value, naming the option; None: any value of the type.
        param: the Spark ML Param's name on the estimator (camelCase), or None.
        flag: the ``distkeras-async serve`` flag (``--round-timeout``), or None.
    """

    doc: str
    check: Check | None = None
    param: str | None = None
    flag: str | None = None


def option(
    default: Any,
    doc: str,
    check: Check | None = None,
    *,
    param: str | None = None,
    flag: str | None = None,
) -> Any:
    """A dataclass field declaring one option (see :class:`Spec`)."""
    spec = Spec(doc=doc, check=check, param=param, flag=flag)
    return dataclasses.field(default=default, metadata={_SPEC: spec})


@dataclass(frozen=True)
class Declared:
    """One declared option, as the surfaces that derive from it read it.

    Attributes:
        group: the option group (a frozen dataclass) it belongs to.
        name: its Python name (the trainer's keyword argument).
        annotation: its type, as written in the group (a string).
        default: its default value.
        spec: its doc, check, Param name and serve flag.
    """

    group: type[Any]
    name: str
    annotation: str
    default: Any
    spec: Spec

    @property
    def kind(self) -> type:
        """The scalar type a Param converter or a command-line flag parses (int, float, ...)."""
        for name, kind in (("bool", bool), ("float", float), ("int", int), ("str", str)):
            if self.annotation.split(" | ")[0] == name:
                return kind
        return object


def declared(*groups: type[Any]) -> Iterator[Declared]:
    """Every option of ``groups``, in declaration order."""
    for group in groups:
        for field in dataclasses.fields(group):
            spec = field.metadata.get(_SPEC)
            if spec is not None:
                yield Declared(group, field.name, str(field.type), field.default, spec)


def validate(instance: Any) -> None:
    """Run every field's check on a group instance, storing the normalised values.

    Called from a group's ``__post_init__``: a group that exists holds valid values only.
    """
    for item in declared(type(instance)):
        if item.spec.check is not None:
            value = item.spec.check(getattr(instance, item.name), item.name)
            object.__setattr__(instance, item.name, value)


def bind(
    keywords: Mapping[str, Any], groups: Iterable[type[Any]]
) -> tuple[dict[type[Any], Any], dict[str, Any]]:
    """Split keyword arguments into option groups and the rest.

    Returns:
        ``{group: instance}`` for every group (the options not given take their defaults),
        and the keywords no group declares (an algorithm's hyperparameters, for a trainer).

    Raises:
        ValueError or TypeError: from an option's check, naming it.
    """
    rest = dict(keywords)
    bound = {}
    for group in groups:
        names = [item.name for item in declared(group)]
        bound[group] = group(**{name: rest.pop(name) for name in names if name in rest})
    return bound, rest


def keyword_parameters(groups: Iterable[type[Any]]) -> list[inspect.Parameter]:
    """The groups' options as keyword-only parameters (for a generated ``__signature__``)."""
    return [
        inspect.Parameter(
            item.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=item.default,
            annotation=item.annotation,
        )
        for item in declared(*groups)
    ]


def replace(instance: Group, **changes: Any) -> Group:
    """A copy of a group instance with some options changed (checked again)."""
    return dataclasses.replace(instance, **changes)  # type: ignore[type-var]
