"""A rule's hyperparameters: each declared once, with its default, type, bounds and meaning.

An algorithm lists them in its ``hyperparameters`` mapping; the constructor validates every
value against its declaration and names any bad one, and the settings travel to the workers
in the server's welcome.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from distkeras_async.errors import HyperparameterError


@dataclass(frozen=True, slots=True)
class Hyperparameter:
    """Declaration of one hyperparameter: default, type, constraint and meaning."""

    default: Any
    kind: type = float
    doc: str = ""
    minimum: float | None = None
    exclusive_minimum: bool = False
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None

    def validate(self, name: str, value: Any) -> Any:
        """Return ``value`` converted to ``kind``, or raise naming ``name``."""
        if self.choices is not None:
            if value not in self.choices or isinstance(value, bool):
                raise HyperparameterError(
                    f"hyperparameter {name!r} must be one of {list(self.choices)}, got {value!r}"
                )
            return value
        if self.kind is bool:
            if not isinstance(value, bool | np.bool_):
                raise HyperparameterError(f"hyperparameter {name!r} must be a bool, got {value!r}")
            return bool(value)
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise HyperparameterError(f"hyperparameter {name!r} must be an int, got {value!r}")
            value = int(value)
        elif self.kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise HyperparameterError(
                    f"hyperparameter {name!r} must be a number, got {value!r}"
                )
            try:
                value = float(value)
            except OverflowError:
                value = math.inf
            if not math.isfinite(value):
                raise HyperparameterError(f"hyperparameter {name!r} must be finite, got {value!r}")
        elif not isinstance(value, self.kind):
            raise HyperparameterError(
                f"hyperparameter {name!r} must be {self.kind.__name__}, got {value!r}"
            )
        if self.minimum is not None:
            too_small = value <= self.minimum if self.exclusive_minimum else value < self.minimum
            if too_small:
                bound = ">" if self.exclusive_minimum else ">="
                raise HyperparameterError(
                    f"hyperparameter {name!r} must be {bound} {self.minimum}, got {value!r}"
                )
        if self.maximum is not None and value > self.maximum:
            raise HyperparameterError(
                f"hyperparameter {name!r} must be <= {self.maximum}, got {value!r}"
            )
        return value


def positive(default: float, doc: str, kind: type = float) -> Hyperparameter:
    """A hyperparameter that must be strictly positive."""
    return Hyperparameter(default, kind, doc, minimum=0, exclusive_minimum=True)
