"""The estimator's run-option Params, generated from the declared options.

Every option of :mod:`distkeras_async.options` that names a Spark ML Param (``numWorkers``,
``shuffleWindow``, ``roundTimeout``, ...) becomes, here and nowhere else written out, a
``Param`` (its doc is the declaration's, its converter the declaration's check), a default
(the declared one; an option whose default is None stays unset), a getter
(``getNumWorkers``), a setter (``setNumWorkers``) and a keyword of the estimator's
constructor and ``setParams``. A new option with a ``param`` name is a Param of the
estimator without any change to :mod:`distkeras_async.ml`.

The names are Spark's camelCase, and stay what they are: a saved stage names its Params.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from pyspark.ml.param import Param, Params

from distkeras_async.errors import DistKerasError
from distkeras_async.options import GROUPS, Declared, declared

OPTIONS: tuple[Declared, ...] = tuple(item for item in declared(*GROUPS) if item.spec.param)
"""The declared run options that are Params of the estimator, in declaration order."""

OPTION_NAMES = frozenset(item.name for item in declared(*GROUPS))
"""Every declared option's Python name (the trainer's keyword arguments)."""

C = TypeVar("C", bound=type)


def converter(
    name: str, convert: Callable[[Any], Any], *, named: bool = False
) -> Callable[[Any], Any]:
    """Wrap ``convert`` as the type converter of the Param ``name``.

    Every refusal becomes a TypeError naming the Param: that is Spark's contract for a
    converter (``Params._set`` reports it naming the Param once more). ``None`` is refused:
    Spark's ``_set`` stores None without converting it, and such a stage could not be loaded
    back. ``named``: ``convert``'s own messages name the Param already.
    """

    def checked(value: Any) -> Any:
        if value is None:
            raise TypeError(f"{name} cannot be None")
        try:
            return convert(value)
        except (DistKerasError, ValueError, TypeError) as exc:
            raise TypeError(str(exc) if named else f"{name}: {exc}") from exc

    return checked


def option_converter(item: Declared) -> Callable[[Any], Any]:
    """The type converter of a declared option's Param: the option's own check.

    An int option also takes an integral float such as ``2.0``, as Spark's own int Params
    (``maxIter``, ...) do through ``TypeConverters.toInt``: ``ParamGridBuilder`` grids and
    JSON readers produce them. A map keyed by ints (``classWeight``) also takes digit-string
    keys: a saved stage's JSON metadata has only string keys. Everything else is the
    declaration's rule, naming the Param.
    """
    name, check = str(item.spec.param), item.spec.check

    def convert(value: Any) -> Any:
        if item.kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if item.annotation.startswith("Mapping[int") and isinstance(value, Mapping):
            value = {
                int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in value.items()
            }
        return value if check is None else check(value, name)

    return converter(name, convert, named=True)


def option_value(stage: Params, param: str | Param[Any]) -> Any:
    """A Param's value, or its default, or None when it has neither."""
    return stage.getOrDefault(param) if stage.isDefined(param) else None


def option_values(stage: Params) -> dict[str, Any]:
    """The stage's declared options, by Python name (``num_workers``), unset ones left out.

    What the trainer takes as keyword arguments. The generated getters are invisible to a
    type checker; this reads every option at once, under the trainer's names.
    """
    values = {item.name: option_value(stage, str(item.spec.param)) for item in OPTIONS}
    return {name: value for name, value in values.items() if value is not None}


def option_defaults() -> dict[str, Any]:
    """``{Param name: default}`` of the options that have a default (for ``_setDefault``).

    An option whose default is None stays unset: "not set" is how a stage says "let the
    trainer choose", and its getter returns None.
    """
    return {str(o.spec.param): o.default for o in OPTIONS if o.default is not None}


def set_keywords(stage: Params, keywords: Mapping[str, Any]) -> None:
    """Set Params from constructor, ``setParams`` or setter keywords: all of them, or none.

    Every value is checked before any is set, so a bad one leaves the stage unchanged.
    ``None`` means "none" for ``metrics`` and ``hyperparameters``, and "not set" for a Param
    without a default (``model``, ``loss``, ``shards``, ...: their keyword's default is
    None); for any other Param it is refused (Spark's own ``_set`` would store it unchecked,
    and the stage could then not be loaded back).
    """
    empty: dict[str, Any] = {"metrics": [], "hyperparameters": {}}
    checked: dict[Param[Any], Any] = {}
    cleared: list[Param[Any]] = []
    for name, given in keywords.items():
        param = stage.getParam(name)
        if given is None and name not in empty and not stage.hasDefault(param):
            cleared.append(param)
            continue
        value = empty[name] if given is None and name in empty else given
        try:
            checked[param] = param.typeConverter(value)
        except TypeError as exc:
            raise TypeError(f'Invalid param value given for param "{name}". {exc}') from exc
    for param in cleared:
        stage.clear(param)
    stage._paramMap.update(checked)


def _accessor(prefix: str, param: str) -> str:
    return prefix + param[0].upper() + param[1:]


def _named(cls: type, function: Any, name: str, doc: str) -> Any:
    """``function`` as the method ``cls.name``: what help() and Sphinx show."""
    function.__name__ = name
    function.__qualname__ = f"{cls.__name__}.{name}"
    function.__doc__ = doc
    return function


def _getter(cls: type, item: Declared) -> tuple[str, Any]:
    param = str(item.spec.param)

    def get(self: Params) -> Any:
        value = option_value(self, param)
        # A copy of a mapping (classWeight): the caller cannot change the stage in place.
        return dict(value) if isinstance(value, Mapping) else value

    name = _accessor("get", param)
    unset = ", or None when it is not set" if item.default is None else ""
    doc = f"The ``{param}`` Param's value{unset}: {item.spec.doc}."
    return name, _named(cls, get, name, doc)


def _setter(cls: type, item: Declared) -> tuple[str, Any]:
    param = str(item.spec.param)

    def set_(self: Params, value: Any) -> Any:
        set_keywords(self, {param: value})
        return self

    name = _accessor("set", param)
    unset = " (None: not set)" if item.default is None else ""
    doc = f"Set the ``{param}`` Param{unset}: {item.spec.doc}."
    return name, _named(cls, set_, name, doc)


def _add(cls: C, members: Iterable[tuple[str, Any]]) -> C:
    for name, member in members:
        if name in vars(cls):
            # A hand-written member of the same name would silently be replaced.
            raise RuntimeError(f"{cls.__name__}.{name} is both written and generated")
        setattr(cls, name, member)
    return cls


def with_option_params(cls: C) -> C:
    """Class decorator: a Param and a getter for every declared option with a Param name.

    Spark finds Params among the class attributes (``Params._copy_params`` copies them to
    each instance), so they are set on the class, as hand-written ones are.
    """
    params = [
        (
            str(o.spec.param),
            Param(Params._dummy(), str(o.spec.param), o.spec.doc, option_converter(o)),
        )
        for o in OPTIONS
    ]
    return _add(_add(cls, params), (_getter(cls, o) for o in OPTIONS))


def with_option_setters(cls: C) -> C:
    """Class decorator: a setter for every declared option with a Param name (an estimator)."""
    return _add(cls, (_setter(cls, o) for o in OPTIONS))


def with_keywords(keywords: Iterable[inspect.Parameter]) -> Callable[[C], C]:
    """Class decorator: ``__init__`` and ``setParams`` show ``keywords`` as their signature.

    Both take ``**kwargs`` (the keywords are generated, so they cannot be written out);
    ``inspect.signature``, help() and IDEs read ``__signature__``, and :func:`check_keywords`
    refuses any other keyword as a written-out signature would.
    """
    this = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    parameters = [this, *keywords]

    def decorate(cls: C) -> C:
        init, set_params = vars(cls)["__init__"], vars(cls)["setParams"]
        init.__signature__ = inspect.Signature(parameters, return_annotation=None)
        set_params.__signature__ = inspect.Signature(parameters, return_annotation=cls.__name__)
        if cls.__doc__:
            # The class docstring's Args section ends with the generated options' lines.
            cls.__doc__ = f"{cls.__doc__.rstrip()}\n{options_doc(' ' * 8)}\n    "
        return cls

    return decorate


def check_keywords(target: Callable[..., Any], where: str, keywords: Mapping[str, Any]) -> None:
    """Refuse a keyword that ``target``'s signature (a class's or a method's) does not list.

    Raises:
        TypeError: as Python's own for an unexpected keyword argument, naming ``where``.
    """
    known = inspect.signature(target).parameters
    for name in keywords:
        if name not in known or name == "self":
            raise TypeError(f"{where} got an unexpected keyword argument {name!r}")


def options_doc(indent: str) -> str:
    """Google-style ``Args`` lines for the options' Params, for a generated docstring."""
    lines = []
    for item in OPTIONS:
        text = f"{item.spec.param}: {item.spec.doc}"
        if "default" not in item.spec.doc:  # most docs of a None default say what it means
            text += f" (default: {'not set' if item.default is None else repr(item.default)})"
        text += "."
        lines.append(
            textwrap.fill(text, 96, initial_indent=indent, subsequent_indent=indent + "    ")
        )
    return "\n".join(lines)
