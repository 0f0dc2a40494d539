"""Label columns against the loss: which losses take class indices, and checking them.

The driver checks the first row of the data (:mod:`distkeras_async.trainers.input_checks`);
every worker checks every row of its partition before its first step, so a class index out
of range deep in the data is named (column, row, value, range) instead of surfacing as a
backend error in the middle of training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from distkeras_async.errors import InputDataError

# Losses that take one class index per row, and those that take one-hot rows (Keras' names
# for the function and the class, lower-cased).
SPARSE_LOSSES = frozenset({"sparse_categorical_crossentropy", "sparsecategoricalcrossentropy"})
ONE_HOT_LOSSES = frozenset({"categorical_crossentropy", "categoricalcrossentropy"})


def loss_name(loss: Any) -> str:
    """A loss's lower-case name: the string, a Keras loss object's name, or a function's."""
    if isinstance(loss, str):
        return loss.lower()
    if isinstance(loss, dict):  # a Keras config: {"class_name": ..., "config": {"name": ...}}
        config = loss.get("config") or {}
        name = config.get("name") if isinstance(config, dict) else None
        return str(name or loss.get("class_name", "")).lower()
    name = getattr(loss, "name", None) or getattr(loss, "__name__", None)
    return str(name or type(loss).__name__).lower()


def per_output(loss: Any, count: int) -> list[Any]:
    """The loss of each of ``count`` outputs (one loss for all, a list, or a dict)."""
    if isinstance(loss, Sequence) and not isinstance(loss, str):
        return list(loss)
    if isinstance(loss, dict) and "class_name" not in loss:  # not one loss's Keras config
        return list(loss.values())
    return [loss] * count


def sparse_label_classes(
    model: Any, loss: Any, features: int, labels: int
) -> list[tuple[int, int]]:
    """Which label columns take class indices, and how many classes each has.

    Args:
        model: the built Keras model (its outputs' widths are the class counts).
        loss: the compiled loss (a name, a Keras config, or one per output).
        features: how many feature columns come before the label columns.
        labels: how many label columns there are (one per output).

    Returns:
        ``(column index, classes)`` for each label column whose loss is sparse categorical
        cross-entropy; empty where the model does not declare its outputs' shapes.
    """
    try:
        widths = [int(np.prod(tuple(t.shape)[1:])) for t in model.outputs]
    except (AttributeError, TypeError, ValueError):  # undeclared or unknown output shapes
        return []
    if len(widths) != labels:
        return []
    return [
        (features + i, width)
        for i, (output_loss, width) in enumerate(
            zip(per_output(loss, labels), widths, strict=False)
        )
        if loss_name(output_loss) in SPARSE_LOSSES and width > 1
    ]


def check_class_indices(
    column: np.ndarray, name: str, classes: int, where: str, first_row: int = 0
) -> None:
    """Refuse a class index that is not an integer from 0 to ``classes - 1``.

    Args:
        column: a block of the label column's rows.
        name: the column's name, for the message.
        classes: the model output's width (the number of classes).
        where: who checks ("worker 0 (attempt 0)"), for the message.
        first_row: the partition position of the block's first row.

    Raises:
        InputDataError: naming the column, the first bad row, its value and the range.
    """
    if not len(column):
        return
    values = column.reshape(len(column), -1)[:, 0]
    good = (values >= 0) & (values < classes) & (values == np.floor(values))
    if good.all():
        return
    bad = np.flatnonzero(~good)
    row = int(bad[0])
    raise InputDataError(
        f"{where}: column {name!r} holds {float(values[row]):g} at row {first_row + row} of its "
        f"partition ({len(bad)} such row(s) among rows {first_row}..{first_row + len(column) - 1})"
        f", but sparse_categorical_crossentropy wants a class index from 0 to {classes - 1} (the "
        "model has that many outputs): re-index the labels (StringIndexer) or widen the "
        "model's output layer"
    )
