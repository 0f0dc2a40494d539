"""Feature columns to model inputs: one reshaping rule for training and prediction.

A DataFrame column arrives as a flat ``(rows, n)`` array (a Spark vector or an array column);
a model may want ``(rows, 8, 8, 1)`` (an image). Each column is reshaped to its model input's
shape when the model declares it and the sizes agree, and left alone otherwise (so the model's
own error names a real mismatch). Training (:class:`~distkeras_async.worker.KerasWorker`) and
prediction (:class:`~distkeras_async.spark.ModelPredictor`) both use this.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from distkeras_async.errors import InputDataError


def input_shapes(model: Any, count: int) -> list[Any]:
    """The model's input shapes, or None each where the model does not declare them."""
    try:
        shapes = [tuple(t.shape) for t in model.inputs]
    except (AttributeError, TypeError, ValueError):  # subclassed models have no `inputs`
        return [None] * count
    return shapes if len(shapes) == count else [None] * count


def reshape_columns(arrays: Sequence[np.ndarray], shapes: Sequence[Any]) -> list[np.ndarray]:
    """Reshape each column to its input shape (e.g. images) where the sizes agree."""
    out = []
    for array, shape in zip(arrays, shapes, strict=True):
        dims = tuple(shape[1:]) if shape is not None else ()
        reshaped = array
        if dims and None not in dims and array.ndim >= 1:
            target = (len(array), *[int(d) for d in dims])
            if int(np.prod(target[1:])) == int(np.prod(array.shape[1:])):
                reshaped = array.reshape(target)
        out.append(reshaped)
    return out


def shape_inputs(model: Any, columns: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``columns`` (one per model input) reshaped to the model's inputs."""
    return reshape_columns(columns, input_shapes(model, len(columns)))


def check_finite(
    columns: Sequence[np.ndarray],
    names: Sequence[str],
    worker: int,
    attempt: int,
    first_row: int = 0,
) -> None:
    """Refuse rows with NaN or infinity in a column, naming the column and the row.

    A non-finite input makes a non-finite loss, then a non-finite update that the server
    refuses: this says where the data is wrong instead.

    Args:
        columns: a block of the partition's rows, one array per column.
        names: the columns' names.
        worker: the worker id, for the message.
        attempt: the task attempt, for the message.
        first_row: the partition position of the block's first row.

    Raises:
        InputDataError: for the first column with a non-finite value.
    """
    for column, name in zip(columns, names, strict=True):
        if not len(column):
            continue
        finite = np.isfinite(column.reshape(len(column), -1)).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise InputDataError(
                f"worker {worker} (attempt {attempt}): column {name!r} has NaN or infinity at "
                f"row {first_row + int(bad[0])} of its partition ({len(bad)} row(s) among rows "
                f"{first_row}..{first_row + len(column) - 1}): clean the data "
                "(DataFrame.na.drop, Imputer), or pass allow_nonfinite_inputs=True if the "
                "model handles them"
            )
