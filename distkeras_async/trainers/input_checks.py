"""Checks of the training data against the model, on the driver, before any training job.

From the schema and the first row only (one small Spark job, no pass over the data): the
DataFrame is not empty; each feature column has as many values per row as its model input
takes (after the workers' reshaping rule: a flat column becomes the input's shape when the
sizes agree); each label column fits its output and the loss (one-hot width for categorical
cross-entropy, a class index for the sparse one). Each error names the column, the expected
and the found shape, and what to change. Nulls and NaN further in the data are the workers'
to find (they name the column and the row).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from distkeras_async.errors import InputDataError
from distkeras_async.worker.labels import ONE_HOT_LOSSES, SPARSE_LOSSES, loss_name, per_output

__all__ = ["check_first_row", "loss_name"]


def _shapes(tensors: Any) -> list[tuple[int | None, ...]] | None:
    try:
        return [tuple(t.shape[1:]) for t in tensors]
    except (AttributeError, TypeError, ValueError):  # a subclassed model declares none
        return None


def _size(shape: tuple[int | None, ...]) -> int | None:
    return None if None in shape else math.prod(shape)  # type: ignore[arg-type]


def check_first_row(
    row: dict[str, Any] | None,
    model: Any,
    loss: Any,
    features: Sequence[str],
    labels: Sequence[str],
    what: str = "the training DataFrame",
    *,
    shapes: bool = True,
) -> None:
    """Check the first row of the data against the model and the loss.

    With ``shapes=False`` (a custom worker prepares the columns its own way) only that the
    data is not empty.

    Raises:
        InputDataError: naming the column, the expected and found shapes, and the fix.
    """
    if row is None:
        raise InputDataError(
            f"{what} is empty: there is nothing to train on (an upstream filter that matched "
            "nothing?)"
        )
    if not shapes:
        return
    inputs = _shapes(getattr(model, "inputs", None))
    if inputs is not None:
        if len(inputs) != len(features):
            raise InputDataError(
                f"the model has {len(inputs)} input(s) but features_col names "
                f"{len(features)} column(s) ({list(features)}): give one column per input"
            )
        for column, shape in zip(features, inputs, strict=True):
            _check_feature(row, column, shape, what)
    outputs = _shapes(getattr(model, "outputs", None))
    if outputs is not None:
        if len(outputs) != len(labels):
            raise InputDataError(
                f"the model has {len(outputs)} output(s) but label_col names "
                f"{len(labels)} column(s) ({list(labels)}): give one column per output"
            )
        for column, shape, output_loss in zip(
            labels, outputs, per_output(loss, len(outputs)), strict=True
        ):
            _check_label(row, column, shape, loss_name(output_loss), what)


def _value(row: dict[str, Any], column: str, what: str) -> np.ndarray:
    value = row[column]
    if value is None:
        raise InputDataError(
            f"column {column!r} is null in the first row of {what}: drop or fill nulls before "
            "training (DataFrame.na.drop, Imputer)"
        )
    if isinstance(value, bytes | bytearray):
        raise InputDataError(
            f"column {column!r} holds bytes in {what}: pass a worker_class whose "
            "decode_column decodes them (docs/custom-worker.md)"
        )
    return np.asarray(value, dtype=np.float64)


def _check_feature(
    row: dict[str, Any], column: str, shape: tuple[int | None, ...], what: str
) -> None:
    value = _value(row, column, what)
    expected = _size(shape)
    if expected is not None and value.size != expected:
        raise InputDataError(
            f"feature column {column!r} has {value.size} value(s) per row in {what}, but the "
            f"model's input takes shape {shape} ({expected} values): select the column that "
            "matches the model, or change the model's Input"
        )


def _check_label(
    row: dict[str, Any], column: str, shape: tuple[int | None, ...], loss: str, what: str
) -> None:
    value = _value(row, column, what)
    width = _size(shape)
    if width is None:
        return
    if loss in SPARSE_LOSSES:
        if value.size != 1:
            raise InputDataError(
                f"label column {column!r} has {value.size} values per row in {what}, but "
                f"{loss} wants one class index per row: use a StringIndexer's index, or "
                "categorical_crossentropy with one-hot labels"
            )
        index = float(value.reshape(-1)[0])
        if not (index.is_integer() and 0 <= index < width):
            raise InputDataError(
                f"label column {column!r} holds {index:g} in the first row of {what}, but "
                f"{loss} wants a class index from 0 to {width - 1} (the model has {width} "
                "outputs)"
            )
        return
    if value.size != width:
        fix = (
            "one-hot encode it (OneHotEncoder with dropLast=False) or use "
            "sparse_categorical_crossentropy"
            if value.size == 1 and loss in ONE_HOT_LOSSES
            else "select the label column that matches, or change the model's output layer"
        )
        raise InputDataError(
            f"label column {column!r} has {value.size} value(s) per row in {what}, but the "
            f"model's output has shape {shape} ({width} values) and the loss is {loss}: {fix}"
        )
