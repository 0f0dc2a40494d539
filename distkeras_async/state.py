"""A rule's state: a tuple of numpy arrays (nested tuples for a chain of transforms).

Checkpoints and the wire keep a state as its flat list of arrays (:func:`flatten_state`); the
rule's own initial state gives the structure back, and every array is checked against it
(:func:`unflatten_state`), so a state that is not the rule's is refused, never half-used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from distkeras_async.errors import AlgorithmError

State = tuple[Any, ...]
"""A rule's or a transform's state: a tuple of numpy arrays, or of such tuples."""


def flatten_state(state: State) -> list[np.ndarray]:
    """The arrays of a (nested) state, in order."""
    arrays: list[np.ndarray] = []
    for item in state:
        if isinstance(item, tuple):
            arrays.extend(flatten_state(item))
        elif isinstance(item, np.ndarray):
            arrays.append(item)
        else:
            raise AlgorithmError(f"a rule's state holds numpy arrays, got {type(item).__name__}")
    return arrays


def unflatten_state(template: State, arrays: Sequence[np.ndarray]) -> State:
    """``arrays`` in the structure of ``template``, each checked against its template's.

    Raises:
        AlgorithmError: if the count, a dtype or a shape differs.
    """
    supply = iter(arrays)

    def build(node: State) -> State:
        items: list[Any] = []
        for item in node:
            if isinstance(item, tuple):
                items.append(build(item))
                continue
            array = next(supply, None)
            if array is None:
                raise AlgorithmError("a state has fewer arrays than the rule's")
            if array.dtype != item.dtype or array.shape != item.shape:
                raise AlgorithmError(
                    f"a state array is {array.dtype}{list(array.shape)}, the rule's is "
                    f"{item.dtype}{list(item.shape)}"
                )
            items.append(array)
        return tuple(items)

    state = build(template)
    if next(supply, None) is not None:
        raise AlgorithmError("a state has more arrays than the rule's")
    return state
