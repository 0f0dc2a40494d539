"""Sample and class weights: one per-row weight, as Keras' ``fit`` derives it.

``class_weight`` maps a class index to a weight; a row's class is the argmax of a one-hot
(or probability) target, the value of a sparse integer target, or the rounded value of a
single-unit binary target, as Keras decides it. The row's weight is its ``sample_weight``
(1 without one) times its class's weight (1 for a class the mapping leaves out). Workers use
it for every local step and the driver for validation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def check_class_weight(
    class_weight: Mapping[int, float] | None, num_classes: int | None
) -> dict[int, float] | None:
    """``class_weight`` checked against the model's classes.

    Its form (a dict of class index to a finite weight >= 0) is the option's own check
    (:mod:`distkeras_async.options`); what only the model knows is checked here.

    Args:
        class_weight: the checked mapping, or None.
        num_classes: the model's number of classes (output units; 2 for a single sigmoid
            unit), or None for a model with several outputs (which Keras refuses too).

    Raises:
        ValueError: for a key that is not a class index of the model, or a model with
            several outputs.
    """
    if class_weight is None:
        return None
    if num_classes is None:
        raise ValueError("class_weight needs a model with one output; use sample_weight_col")
    for index in class_weight:
        if not 0 <= index < num_classes:
            raise ValueError(
                f"class_weight key {index!r} is not a class index of this model "
                f"(0 .. {num_classes - 1})"
            )
    return dict(class_weight)


def num_classes(model: Any) -> int | None:
    """The classes of a single-output model: its output units (2 for one unit)."""
    outputs = getattr(model, "outputs", None)
    if not outputs or len(outputs) != 1:
        return None
    units = outputs[0].shape[-1]
    if units is None:
        return None
    return 2 if int(units) == 1 else int(units)


def row_classes(target: np.ndarray) -> np.ndarray:
    """Each row's class from a target array, as Keras reads it for ``class_weight``."""
    if target.ndim >= 2 and target.shape[-1] > 1:
        classes: np.ndarray = np.argmax(target.reshape(len(target), -1), axis=-1)
    else:
        classes = np.rint(target.reshape(len(target))).astype(np.int64)
    return classes


def row_weights(
    targets: list[np.ndarray],
    sample_weight: np.ndarray | None,
    class_weight: Mapping[int, float] | None,
) -> np.ndarray | None:
    """The weight of every row, or None when neither kind of weight is given."""
    if sample_weight is None and not class_weight:
        return None
    rows = len(targets[0])
    weights = (
        np.ones(rows, np.float32)
        if sample_weight is None
        else np.asarray(sample_weight, np.float32).reshape(rows).copy()
    )
    if class_weight:
        classes = row_classes(targets[0])
        lookup = np.ones(max(max(class_weight) + 1, int(classes.max(initial=0)) + 1), np.float32)
        for index, value in class_weight.items():
            lookup[index] = value
        weights *= lookup[np.clip(classes, 0, len(lookup) - 1)]
    return weights
