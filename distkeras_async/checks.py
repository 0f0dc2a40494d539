"""Argument checks, written once: every public entry point validates with these.

Each check returns the value (converted where that is lossless) or raises ``ValueError``
naming the argument, so a bad value is refused where it is passed, with the same rule
everywhere: a bool is not a number, and ``2.0`` is not an int.
"""

from __future__ import annotations

import math
from typing import Any


def is_int(value: object) -> bool:
    """Whether ``value`` is an int, and not a bool (``True`` is an int to Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """``value`` if it is an int of at least ``minimum``.

    Raises:
        ValueError: naming ``name`` otherwise (floats such as ``2.0`` and bools included).
    """
    if not is_int(value) or value < minimum:
        wanted = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return int(value)


def optional_positive_int(value: Any, name: str) -> int | None:
    """``None``, or a positive int (see :func:`positive_int`)."""
    return None if value is None else positive_int(value, name)


def positive_number(value: Any, name: str) -> float:
    """``value`` as a float if it is a finite number above 0.

    Raises:
        ValueError: naming ``name`` otherwise (bools, NaN and infinity included).
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def optional_positive_number(value: Any, name: str) -> float | None:
    """``None``, or a positive number (see :func:`positive_number`)."""
    return None if value is None else positive_number(value, name)


def port(value: Any, name: str) -> int:
    """``value`` if it is a TCP port, 0 (let the OS choose) to 65535.

    Raises:
        ValueError: naming ``name`` otherwise.
    """
    if not is_int(value) or not 0 <= value <= 65535:
        raise ValueError(f"{name} must be a port in 0..65535, got {value!r}")
    return int(value)
