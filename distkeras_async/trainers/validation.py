"""``train``'s validation and callback arguments: checked before any Spark job, then resolved.

The validation data is evaluated on the **driver**, against the center, at each global
epoch's end (see :mod:`~distkeras_async.trainers.epochs`). A validation DataFrame is
collected once, before training, as Arrow: during training the workers hold the cluster's
task slots (all of them on ``local[N]`` with N workers), so a Spark job evaluating the center
would queue until training ended. A validation set larger than ``MAX_VALIDATION_BYTES`` is
refused with a message that says to pass a sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from distkeras_async.errors import InputDataError
from distkeras_async.trainers.epochs import Validation
from distkeras_async.trainers.input_checks import check_first_row
from distkeras_async.worker.labels import check_class_indices, sparse_label_classes
from distkeras_async.worker.weights import row_weights

# Features and labels (float32) the driver holds for validation: 1 GiB.
MAX_VALIDATION_BYTES = 1 << 30

# The smallest default validation batch: on the driver, evaluating the 360 digits in batches
# of 32 cost 50 ms per epoch while the workers trained, in one batch 15 ms (measured here).
VALIDATION_BATCH = 1024


def check_callbacks(callbacks: Any) -> list[Any]:
    """The callbacks as a list, each a ``keras.callbacks.Callback``.

    Raises:
        TypeError: naming the first item that is not a Keras callback.
    """
    if callbacks is None:
        return []
    import keras

    items = [callbacks] if isinstance(callbacks, keras.callbacks.Callback) else list(callbacks)
    for index, item in enumerate(items):
        if not isinstance(item, keras.callbacks.Callback):
            raise TypeError(
                f"callbacks[{index}] is {item!r}, not a keras.callbacks.Callback: subclass "
                "keras.callbacks.Callback (see docs/trainers.md)"
            )
    return items


def terminates_on_nan(callbacks: Sequence[Any]) -> bool:
    """Whether the callbacks include Keras' ``TerminateOnNaN``."""
    import keras

    return any(isinstance(c, keras.callbacks.TerminateOnNaN) for c in callbacks)


def check_split(validation_split: Any, validation_data: Any) -> float | None:
    """``validation_split`` as a float in (0, 1), or None.

    Raises:
        ValueError: outside (0, 1), or given together with ``validation_data``.
    """
    if validation_split is None:
        return None
    if validation_data is not None:
        raise ValueError("pass validation_data or validation_split, not both")
    if isinstance(validation_split, bool) or not isinstance(validation_split, int | float):
        raise ValueError(f"validation_split must be a number in (0, 1), got {validation_split!r}")
    if not 0.0 < float(validation_split) < 1.0:
        raise ValueError(f"validation_split must be in (0, 1), got {validation_split}")
    return float(validation_split)


def _is_dataframe(value: Any) -> bool:
    return hasattr(value, "sparkSession") and hasattr(value, "columns")


def check_validation_data(
    validation_data: Any, features: Sequence[str], labels: Sequence[str]
) -> None:
    """Check ``validation_data`` without a Spark job.

    It must be a DataFrame with the training columns, or ``(x, y)`` / ``(x, y,
    sample_weight)`` of numpy arrays (``x``, ``y`` lists for several inputs or outputs) with
    as many rows each.

    Raises:
        ValueError: naming the missing columns or the mismatched lengths.
        TypeError: for anything else.
    """
    if validation_data is None:
        return
    if _is_dataframe(validation_data):
        missing = [c for c in (*features, *labels) if c not in validation_data.columns]
        if missing:
            raise ValueError(
                f"validation_data lacks the column(s) {missing} that training uses "
                f"(have {validation_data.columns})"
            )
        return
    if not isinstance(validation_data, tuple) or len(validation_data) not in (2, 3):
        raise TypeError(
            "validation_data must be a Spark DataFrame with the training columns, or a tuple "
            f"(x, y) or (x, y, sample_weight) of numpy arrays; got {type(validation_data)}"
        )
    x, y = (
        _arrays(validation_data[0], len(features), "x"),
        _arrays(validation_data[1], len(labels), "y"),
    )
    rows = {len(a) for a in (*x, *y)}
    if len(validation_data) == 3 and validation_data[2] is not None:
        rows.add(len(np.asarray(validation_data[2])))
    if len(rows) != 1:
        raise ValueError(f"validation_data's arrays have different numbers of rows: {rows}")


def check_weight_column(dataframe: Any, column: str | None, what: str = "the training") -> None:
    """Check that ``column`` is a numeric column of ``dataframe`` (from its schema, no job).

    Raises:
        ValueError: if it is missing or not numeric.
    """
    if column is None:
        return
    from pyspark.sql import types as T  # noqa: N812

    if column not in dataframe.columns:
        raise ValueError(
            f"sample_weight_col {column!r} is not a column of {what} DataFrame "
            f"(have {dataframe.columns})"
        )
    kind = dataframe.schema[column].dataType
    if not isinstance(kind, T.NumericType):
        raise ValueError(
            f"sample_weight_col {column!r} has type {kind.simpleString()}; it must be numeric"
        )


def _arrays(value: Any, count: int, name: str) -> list[np.ndarray]:
    arrays = list(value) if isinstance(value, list | tuple) else [value]
    if len(arrays) != count:
        raise ValueError(
            f"validation_data's {name} has {len(arrays)} array(s); the model has {count}"
        )
    return [np.asarray(a, dtype=np.float32) for a in arrays]


def resolve(
    validation_data: Any,
    features: Sequence[str],
    labels: Sequence[str],
    batch_size: int,
    sample_weight_col: str | None = None,
    class_weight: Mapping[int, float] | None = None,
) -> Validation | None:
    """The validation data as arrays on the driver (a DataFrame is collected here).

    Rows are weighted as in training: by the DataFrame's ``sample_weight_col`` and by
    ``class_weight``; a tuple's own ``sample_weight`` is used as given.

    Raises:
        ValueError: if a DataFrame is larger than ``MAX_VALIDATION_BYTES`` once collected,
            or lacks the weight column.
    """
    if validation_data is None:
        return None
    if not _is_dataframe(validation_data):
        x = _arrays(validation_data[0], len(features), "x")
        y = _arrays(validation_data[1], len(labels), "y")
        given = validation_data[2] if len(validation_data) == 3 else None
        weight = (
            row_weights(y, None, class_weight) if given is None else np.asarray(given, np.float32)
        )
        return Validation(x, y, weight, batch_size)
    from distkeras_async.spark import jobs as sparkglue
    from distkeras_async.worker.columns import column_to_numpy

    check_weight_column(validation_data, sample_weight_col, "the validation")
    weights = [] if sample_weight_col is None else [sample_weight_col]
    columns = list(dict.fromkeys([*features, *labels, *weights]))
    selected = sparkglue.numeric_columns(validation_data, columns)
    with sparkglue.job_group(
        validation_data.sparkSession, sparkglue.CHECK_GROUP, "distkeras-async: validation data"
    ):
        first = selected.head(1)
        if not first:
            raise ValueError("validation_data is empty")
        width = sum(int(np.size(v)) for v in first[0].asDict().values())
        rows = selected.count()
        if rows * width * 4 > MAX_VALIDATION_BYTES:
            raise ValueError(
                f"validation_data holds {rows} rows of {width} values "
                f"({rows * width * 4 / 2**30:.1f} GiB): the driver evaluates the center on "
                f"it at every epoch and holds at most {MAX_VALIDATION_BYTES / 2**30:.0f} GiB; "
                "pass a sample (validation_data.sample(...))"
            )
        table = selected.toArrow()
    arrays = {c: column_to_numpy(table.column(c), c) for c in columns}
    y = [arrays[c] for c in labels]
    given = arrays[sample_weight_col] if sample_weight_col is not None else None
    return Validation(
        [arrays[c] for c in features], y, row_weights(y, given, class_weight), batch_size
    )


def check_against_model(
    validation: Validation | None,
    model: Any,
    loss: Any,
    features: Sequence[str],
    labels: Sequence[str],
    *,
    allow_nonfinite: bool = False,
) -> None:
    """The training data's checks, on the validation data, before the training job.

    The first row against the model's inputs and outputs and the loss (as
    :func:`~distkeras_async.trainers.input_checks.check_first_row` does for the training
    data), and every row for NaN or infinity and, with a sparse categorical loss, for class
    indices out of range: the driver holds these arrays anyway, and a mismatch found only at
    the first epoch's end would cost the whole epoch and name no argument.

    With ``allow_nonfinite`` (the trainer's ``allow_nonfinite_inputs``), NaN and infinity
    pass here as they do in the training data.

    Raises:
        InputDataError: naming ``validation_data``, the column and the fix.
    """
    if validation is None or not len(validation):
        return
    names = [*features, *labels]
    columns = [*validation.x, *validation.y]
    check_first_row(
        {name: column[0] for name, column in zip(names, columns, strict=True)},
        model,
        loss,
        features,
        labels,
        what="validation_data",
    )
    if not allow_nonfinite:
        _check_finite(names, columns)
    for index, classes in sparse_label_classes(model, loss, len(features), len(labels)):
        check_class_indices(columns[index], names[index], classes, "validation_data")


def _check_finite(names: Sequence[str], columns: Sequence[np.ndarray]) -> None:
    for name, column in zip(names, columns, strict=True):
        finite = np.isfinite(np.asarray(column, np.float64).reshape(len(column), -1)).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise InputDataError(
                f"validation_data: column {name!r} has NaN or infinity at row {int(bad[0])} "
                f"({len(bad)} row(s)): clean it as the training data (DataFrame.na.drop, "
                "Imputer)"
            )
