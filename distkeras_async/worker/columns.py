"""Arrow columns -> numpy arrays, without a Python loop over rows.

Spark hands each worker its partition as Arrow record batches (``mapInArrow``). A column is
numeric, a (possibly nested) list of numbers with the same length in every row, or a Spark ML
vector, which Arrow carries as Spark's own struct ``(type, size, indices, values)``; every one
becomes one contiguous float32 array by reshaping Arrow's flat values buffer (a sparse vector
is densified here, one block of rows at a time, never for the whole partition). Binary
columns (encoded images, say) have no numeric meaning: a worker decodes them with its own
hook (:meth:`~distkeras_async.worker.KerasWorker.decode_column`).

Every error names the column and the row's position in the partition (``first_row`` is the
position of the block's first row).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distkeras_async.errors import ColumnError

# The fields of Spark ML's VectorUDT as Arrow carries it (type 0: sparse, 1: dense).
_VECTOR_FIELDS = {"type", "size", "indices", "values"}


def is_vector(kind: pa.DataType) -> bool:
    """Whether an Arrow type is a Spark ML vector (``VectorUDT``'s struct)."""
    return pa.types.is_struct(kind) and {kind.field(i).name for i in range(kind.num_fields)} == (
        _VECTOR_FIELDS
    )


def _refuse_nulls(array: pa.Array, name: str, first_row: int) -> None:
    if array.null_count:
        nulls = np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))
        raise ColumnError(
            f"column {name!r} has {array.null_count} null value(s), the first at row "
            f"{first_row + int(nulls[0])}: drop or fill them before training (DataFrame.na.drop, "
            "Imputer)"
        )


def _lengths_agree(lengths: np.ndarray, name: str, first_row: int, width: int | None) -> int:
    """The common row length; an error naming the first row that differs."""
    if not len(lengths):
        return width or 0
    expected = int(lengths[0]) if width is None else width
    if not (lengths == expected).all():
        other = int(np.flatnonzero(lengths != expected)[0])
        source = f"as in row {first_row}" if width is None else "as in the rows before"
        raise ColumnError(
            f"column {name!r} has rows of different lengths: row {first_row + other} has "
            f"{int(lengths[other])} value(s) where {expected} are expected ({source}): "
            "every row must have as many values as the model input takes"
        )
    return expected


def _list_to_numpy(
    array: pa.Array, name: str, dtype: np.dtype, first_row: int, width: int | None
) -> np.ndarray:
    rows = len(array)
    _refuse_nulls(array, name, first_row)
    if pa.types.is_fixed_size_list(array.type):
        size = array.type.list_size
        if width is not None and rows and size != width:
            _lengths_agree(np.full(rows, size), name, first_row, width)
    else:
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        size = _lengths_agree(lengths, name, first_row, width)
    inner = _to_numpy(array.flatten(), name, dtype, first_row, None)
    return inner.reshape((rows, size, *inner.shape[1:]))


def _vector_to_numpy(
    array: pa.Array, name: str, dtype: np.dtype, first_row: int, width: int | None
) -> np.ndarray:
    """Spark ML vectors, dense or sparse, as one dense ``(rows, size)`` array."""
    rows = len(array)
    _refuse_nulls(array, name, first_row)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    sparse = array.field("type").to_numpy(zero_copy_only=False) == 0
    values = array.field("values")
    counts = pc.list_value_length(values).fill_null(0).to_numpy(zero_copy_only=False)
    sizes = np.where(
        sparse, array.field("size").fill_null(0).to_numpy(zero_copy_only=False), counts
    )
    size = _lengths_agree(sizes.astype(np.int64), name, first_row, width)
    out = np.zeros((rows, size), dtype)
    flat = np.asarray(values.flatten().to_numpy(zero_copy_only=False))
    row_of = np.repeat(np.arange(rows), counts)
    starts = np.cumsum(counts) - counts
    column_of = np.arange(len(flat)) - starts[row_of]
    if sparse.any():
        # The indices of the sparse rows, in the same order as their values in ``flat``.
        indices = array.field("indices").filter(pa.array(sparse)).flatten()
        column_of[sparse[row_of]] = indices.to_numpy(zero_copy_only=False)
        if len(indices) and (column_of.min() < 0 or column_of.max() >= size):
            bad = int(row_of[np.flatnonzero((column_of < 0) | (column_of >= size))[0]])
            raise ColumnError(
                f"column {name!r}: the sparse vector at row {first_row + bad} has an index "
                f"outside its size {size}"
            )
    out[row_of, column_of] = flat
    return out


def _to_numpy(
    array: pa.Array, name: str, dtype: np.dtype, first_row: int, width: int | None
) -> np.ndarray:
    kind = array.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _list_to_numpy(array, name, dtype, first_row, width)
    if is_vector(kind):
        return _vector_to_numpy(array, name, dtype, first_row, width)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        _refuse_nulls(array, name, first_row)
        return np.asarray(array.to_numpy(zero_copy_only=False), dtype=dtype)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        raise ColumnError(
            f"column {name!r} holds bytes (Arrow type {kind}): decode them in the worker by "
            "overriding KerasWorker.decode_column (see docs/custom-worker.md)"
        )
    raise ColumnError(
        f"column {name!r} has Arrow type {kind}; expected numbers, vectors or arrays of numbers"
    )


def column_to_numpy(
    column: pa.Array | pa.ChunkedArray,
    name: str = "?",
    dtype: type = np.float32,
    *,
    first_row: int = 0,
    width: int | None = None,
) -> np.ndarray:
    """One column as a dense numpy array: ``(rows,)`` for scalars, ``(rows, k, ...)`` for lists.

    Args:
        column: the Arrow column.
        name: its name, for error messages.
        dtype: the array's dtype.
        first_row: the partition position of the column's first row, for error messages.
        width: the length every list or vector row must have (None: the first row's).

    Raises:
        ColumnError: naming the column and the row, for a null, a row of another length, or a
            type that is not numeric.
    """
    np_dtype = np.dtype(dtype)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return _to_numpy(column, name, np_dtype, first_row, width)


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
