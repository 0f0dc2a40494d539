"""Arrow -> numpy conversion and history helpers (no Spark, no Keras)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from distkeras_async.errors import ColumnError
from distkeras_async.trainers.history import average_history, flatten_rows
from distkeras_async.worker.columns import batches_to_numpy, column_to_numpy


def test_scalar_and_list_columns_become_dense_float32():
    batch = pa.RecordBatch.from_pydict(
        {
            "x": pa.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], pa.list_(pa.float64())),
            "y": pa.array([0, 1, 2], pa.int64()),
            "img": pa.array([[[1, 2], [3, 4]], [[5, 6], [7, 8]], [[9, 10], [11, 12]]]),
        }
    )
    x, y, img = batches_to_numpy([batch, batch], ["x", "y", "img"])
    assert x.dtype == np.float32 and x.shape == (6, 2)
    np.testing.assert_array_equal(x[:3], [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(y, [0, 1, 2, 0, 1, 2])
    assert img.shape == (6, 2, 2) and img[2, 1, 0] == 11


def test_fixed_size_lists_and_booleans():
    fixed = pa.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], pa.list_(pa.float32(), 3))
    assert column_to_numpy(fixed).shape == (2, 3)
    np.testing.assert_array_equal(column_to_numpy(pa.array([True, False])), [1.0, 0.0])


def test_sliced_list_arrays_keep_their_rows():
    array = pa.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])[1:]
    np.testing.assert_array_equal(column_to_numpy(array), [[3, 4], [5, 6]])


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (pa.array([[1.0], [2.0, 3.0]]), "different lengths"),
        (
            pa.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0]]),
            r"row 3 has 1 value\(s\) where 2 are expected",
        ),
        (pa.array([1.0, None]), "null"),
        (pa.array([[1.0], None]), "null"),
        (pa.array(["a", "b"]), "Arrow type string"),
    ],
)
def test_bad_columns_are_named(array, message):
    with pytest.raises(ColumnError, match=message):
        column_to_numpy(array, "col")


def test_missing_column_and_empty_partition():
    batch = pa.RecordBatch.from_pydict({"a": pa.array([1.0])})
    with pytest.raises(ColumnError, match="'b' is not in the data"):
        batches_to_numpy([batch], ["b"])
    (empty,) = batches_to_numpy([], ["a"])
    assert empty.shape == (0,)


def test_history_is_flattened_and_averaged_per_iteration():
    rows = [
        {"worker": 1, "iteration": 0, "timestamp": 2.0, "metrics": {"loss": 4.0}},
        {"worker": 0, "iteration": 1, "timestamp": 3.0, "metrics": [("loss", 1.0), ("acc", 0.5)]},
        {"worker": 0, "iteration": 0, "timestamp": 1.0, "metrics": {"loss": 2.0, "acc": 0.25}},
    ]
    # Worker 1's first attempt was killed: the server kept its steps 0 and 1.
    lost = {(1, 0): [(0, 0.5, {"loss": 9.0}), (1, 0.7, {"loss": 8.0})]}
    for row in rows:
        row["attempt"] = 1 if row["worker"] == 1 else 0
    history = flatten_rows(rows, lost)
    assert [(h["worker"], h["iteration"], h["attempt"]) for h in history] == [
        (0, 0, 0),
        (0, 1, 0),
        (1, 0, 0),
        (1, 0, 1),
        (1, 1, 0),
    ]
    assert history[0] == {
        "worker": 0,
        "attempt": 0,
        "iteration": 0,
        "timestamp": 1.0,
        "loss": 2.0,
        "acc": 0.25,
    }
    assert history[2] == {
        "worker": 1,
        "attempt": 0,
        "iteration": 0,
        "timestamp": 0.5,
        "retried": True,
        "loss": 9.0,
    }
    # The average is over the steps that count: a killed attempt's are left out.
    averaged = average_history(history)
    assert averaged[0] == {"iteration": 0, "workers": 2, "timestamp": 2.0, "acc": 0.25, "loss": 3.0}
    assert averaged[1]["workers"] == 1 and averaged[1]["loss"] == 1.0


def test_the_device_and_gpus_of_a_worker_stay_strings_and_are_not_averaged():
    rows = [
        {
            "worker": 0,
            "iteration": 0,
            "timestamp": 1.0,
            "metrics": {"loss": 2.0},
            "device": "gpu:0",
            "gpus": "3",
        },
        {
            "worker": 1,
            "iteration": 0,
            "timestamp": 2.0,
            "metrics": {"loss": 4.0},
            "device": "cpu:0",
            "gpus": "",
        },
    ]
    history = flatten_rows(rows)
    assert [(h["device"], h["gpus"]) for h in history] == [("gpu:0", "3"), ("cpu:0", "")]
    assert average_history(history) == [
        {"iteration": 0, "workers": 2, "timestamp": 2.0, "loss": 3.0}
    ]
