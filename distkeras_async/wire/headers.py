"""How a message's attributes travel in a frame's header, declared once per attribute.

A message class (``wire/messages.py``) declares each header field on its dataclass attribute
with :func:`header`: the check a value must pass on the wire, whether it may be left out, and
its wire form. :func:`message` registers the class: its declarations become the op's schema
(``schema.FIELDS``, which the decoder checks before it builds a message) and the class the
op's (:data:`MESSAGE_TYPES`); encoding and decoding read the same declarations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from distkeras_async.wire.schema import FIELDS, Check, Op

if TYPE_CHECKING:
    from distkeras_async.wire.messages import Message


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class Header:
    """How one attribute travels in a frame's header.

    Attributes:
        check: what a value must satisfy on the wire (both when sent and when received).
        optional: the attribute is left out of the header when it has its default.
        out: the attribute's value -> its wire value.
        into: a wire value -> the attribute's value.
        spread: the attribute travels as several header fields (``schema``), not one:
            ``out`` returns them, ``into`` reads them from the whole header.
        schema: the fields of a spread attribute.
    """

    check: Check
    optional: bool = False
    out: Callable[[Any], Any] = _same
    into: Callable[[Any], Any] = _same
    spread: bool = False
    schema: Mapping[str, tuple[Check, bool]] = dataclasses.field(default_factory=dict)


def header(
    check: Check,
    *,
    default: Any = dataclasses.MISSING,
    always: bool = False,
    out: Callable[[Any], Any] = _same,
    into: Callable[[Any], Any] = _same,
) -> Any:
    """A dataclass field that travels in the header.

    It is optional on the wire (left out when it has its default) when it has a ``default``,
    unless ``always``.
    """
    wire = Header(check, default is not dataclasses.MISSING and not always, out, into)
    return dataclasses.field(default=default, metadata={"header": wire})


M = TypeVar("M", bound="Message")

MESSAGE_TYPES: dict[Op, type[Message]] = {}
"""op -> its message class (filled by :func:`message` as each class is defined)."""


def message(cls: type[M]) -> type[M]:
    """Register a message class: its header declarations become the op's schema."""
    headers = {
        f.name: f.metadata["header"] for f in dataclasses.fields(cls) if "header" in f.metadata
    }
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    schema: dict[str, tuple[Check, bool]] = {}
    for name, wire in headers.items():
        if wire.spread:
            schema.update(wire.schema)
        else:
            schema[name] = (wire.check, not wire.optional)
    cls._headers = headers
    cls._defaults = defaults
    FIELDS[cls.op] = schema
    MESSAGE_TYPES[cls.op] = cls
    return cls


def is_default(value: Any, default: Any) -> bool:
    """Whether an attribute holds its default (arrays never do)."""
    return value is default or (not isinstance(value, np.ndarray) and value == default)
