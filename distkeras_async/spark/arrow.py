"""Arrow record batches -> numpy arrays, without a Python loop over rows.

Spark hands each worker its partition as Arrow record batches (``mapInArrow``). Vector
columns were already turned into ``array<float>`` by Spark itself (``vector_to_array``), so
every column here is either numeric or a (possibly nested) list of numbers with the same
length in every row; both become one contiguous float32 array by reshaping Arrow's flat
values buffer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa

from distkeras_async.errors import ColumnError


def _refuse_nulls(array: pa.Array, name: str) -> None:
    if array.null_count:
        nulls = np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))
        raise ColumnError(
            f"column {name!r} has {array.null_count} null value(s), the first at row "
            f"{int(nulls[0])}: drop or fill them before training (DataFrame.na.drop, "
            "Imputer)"
        )


def _list_to_numpy(array: pa.Array, name: str, dtype: np.dtype) -> np.ndarray:
    rows = len(array)
    _refuse_nulls(array, name)
    if pa.types.is_fixed_size_list(array.type):
        width = array.type.list_size
        values = array.flatten()
    else:
        offsets = array.offsets.to_numpy(zero_copy_only=False)
        lengths = np.diff(offsets)
        width = int(lengths[0]) if rows else 0
        if rows and not (lengths == width).all():
            other = int(np.flatnonzero(lengths != width)[0])
            raise ColumnError(
                f"column {name!r} has rows of different lengths: row 0 has {width} value(s), "
                f"row {other} has {int(lengths[other])} (lengths {lengths.min()}..{lengths.max()}"
                "): every row must have as many values as the model input takes"
            )
        values = array.flatten()
    inner = _to_numpy(values, name, dtype)
    return inner.reshape((rows, width, *inner.shape[1:]))


def _to_numpy(array: pa.Array, name: str, dtype: np.dtype) -> np.ndarray:
    kind = array.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _list_to_numpy(array, name, dtype)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        _refuse_nulls(array, name)
        return np.asarray(array.to_numpy(zero_copy_only=False), dtype=dtype)
    raise ColumnError(
        f"column {name!r} has Arrow type {kind}; expected numbers, vectors or arrays of numbers"
    )


def column_to_numpy(
    column: pa.Array | pa.ChunkedArray, name: str = "?", dtype: type = np.float32
) -> np.ndarray:
    """One column as a dense numpy array: ``(rows,)`` for scalars, ``(rows, k, ...)`` for lists."""
    np_dtype = np.dtype(dtype)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return _to_numpy(column, name, np_dtype)


def batches_to_numpy(
    batches: Iterable[pa.RecordBatch], columns: Sequence[str], dtype: type = np.float32
) -> list[np.ndarray]:
    """Read every batch of a partition and return one dense array per requested column."""
    collected = list(batches)
    table = pa.Table.from_batches(collected) if collected else None
    out: list[np.ndarray] = []
    for name in columns:
        if table is None or table.num_rows == 0:
            out.append(np.zeros((0,), dtype))
            continue
        if name not in table.column_names:
            raise ColumnError(f"column {name!r} is not in the data (have {table.column_names})")
        out.append(column_to_numpy(table.column(name), name, dtype))
    return out
