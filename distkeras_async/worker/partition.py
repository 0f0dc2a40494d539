"""A worker's partition, held as Arrow blocks: in memory when small, else in a local file.

Spark streams a partition to its task as Arrow record batches, once. A worker needs it once
per epoch, so :func:`spool` keeps it: in memory while it stays under ``limit`` bytes, and
otherwise in an Arrow IPC file in the task's local directory (Spark's ``SPARK_LOCAL_DIRS``,
which Spark cleans with the executor), written as the batches arrive and read back
memory-mapped, block by block, every epoch. The file is removed when the task ends, also on
failure. Either way the partition is cut into blocks of about :data:`BLOCK_BYTES`, the unit
that an epoch's shuffle reorders (see :mod:`distkeras_async.worker.stream`).

Pages of the mapped file that were read stay in the process' resident set until the kernel
needs them back; :meth:`Partition.release` drops them after each window, so the worker's
resident memory does not grow with the partition either.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from distkeras_async.errors import ColumnError
from distkeras_async.options import IN_MEMORY_LIMIT

# Rows per block: as many as make about this many bytes (at least one row). Small enough that
# an epoch's shuffle of the block order mixes well, large enough that per-block costs vanish.
BLOCK_BYTES = 1 << 20


def local_directory() -> str:
    """Where a task may write its files: Spark's local directory, else the system's temp."""
    for path in os.environ.get("SPARK_LOCAL_DIRS", "").split(","):
        if path and os.path.isdir(path):
            return path
    return tempfile.gettempdir()


class Partition:
    """One worker's rows as Arrow blocks, each with the same columns, in partition order.

    Attributes:
        columns: the column names.
        block_rows: rows in each block.
        num_rows: rows in all.
        nbytes: the Arrow bytes of all blocks.
        path: the spool file, or None when the blocks are in memory.
    """

    def __init__(
        self,
        columns: Sequence[str],
        blocks: list[pa.RecordBatch] | None = None,
        path: str | None = None,
        nbytes: int = 0,
    ) -> None:
        self.columns = tuple(columns)
        self.path = path
        self.nbytes = nbytes
        self._blocks = blocks or []
        self._map: mmap.mmap | None = None
        self._reader: pa.ipc.RecordBatchFileReader | None = None
        if path is not None:
            with open(path, "rb") as file:
                self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
            self._reader = pa.ipc.open_file(pa.BufferReader(pa.py_buffer(self._map)))
            rows = [
                self._reader.get_batch(i).num_rows for i in range(self._reader.num_record_batches)
            ]
        else:
            rows = [b.num_rows for b in self._blocks]
        self.block_rows = np.asarray(rows, np.int64)
        self.num_rows = int(self.block_rows.sum())

    @property
    def in_memory(self) -> bool:
        """Whether the blocks are in memory (no spool file)."""
        return self.path is None

    def __len__(self) -> int:
        return len(self.block_rows)

    def block(self, index: int) -> pa.RecordBatch:
        """Block ``index``: zero-copy from memory or from the mapped file."""
        if self._reader is not None:
            return self._reader.get_batch(index)
        return self._blocks[index]

    def first_rows(self) -> np.ndarray:
        """The partition position of every block's first row."""
        return np.cumsum(self.block_rows) - self.block_rows

    def release(self) -> None:
        """Let go of the file's pages read so far (they are read again when needed)."""
        if self._map is not None and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        """Drop the blocks; unmap and delete the spool file."""
        self._blocks = []
        self._reader = None
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a block still referenced elsewhere
                self._map.close()
            self._map = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def _select(batch: pa.RecordBatch, columns: Sequence[str]) -> pa.RecordBatch:
    missing = [c for c in columns if c not in batch.schema.names]
    if missing:
        raise ColumnError(f"column {missing[0]!r} is not in the data (have {batch.schema.names})")
    return pa.RecordBatch.from_arrays([batch.column(c) for c in columns], names=list(columns))


def _blocks_of(batch: pa.RecordBatch, rows_per_block: int) -> Iterator[pa.RecordBatch]:
    for start in range(0, batch.num_rows, rows_per_block):
        yield batch.slice(start, rows_per_block)


@contextlib.contextmanager
def spool(
    batches: Iterable[pa.RecordBatch],
    columns: Sequence[str],
    *,
    limit: int = IN_MEMORY_LIMIT,
    directory: str | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> Iterator[Partition]:
    """Read a partition's batches once and keep ``columns`` of them as a :class:`Partition`.

    The batches stay in memory up to ``limit`` Arrow bytes; from the batch that crosses it,
    everything goes to a file in ``directory`` (default :func:`local_directory`), removed when
    the ``with`` block ends, however it ends.

    Raises:
        ColumnError: for a column that is not in the data.
    """
    kept: list[pa.RecordBatch] = []
    nbytes = 0
    rows_per_block = 0
    path: str | None = None
    writer: pa.ipc.RecordBatchFileWriter | None = None
    partition: Partition | None = None
    try:
        for incoming in batches:
            if not incoming.num_rows:
                continue
            batch = _select(incoming, columns)
            if not rows_per_block:
                rows_per_block = max(1, block_bytes * batch.num_rows // max(1, batch.nbytes))
            nbytes += batch.nbytes
            if writer is None and nbytes > limit:
                path = os.path.join(
                    directory or local_directory(), f"distkeras-partition-{uuid.uuid4().hex}.arrow"
                )
                writer = pa.ipc.new_file(path, batch.schema)
                for block in kept:
                    writer.write_batch(block)
                kept = []
            for block in _blocks_of(batch, rows_per_block):
                if writer is None:
                    kept.append(block)
                else:
                    writer.write_batch(block)
        if writer is not None:
            writer.close()
            writer = None
        partition = Partition(columns, kept, path, nbytes)
        kept = []
        yield partition
    finally:
        try:
            if writer is not None:
                # Only reached while an error propagates (the way out closes it above); a
                # full disk fails the close too, and the first error is the one to report.
                with contextlib.suppress(OSError, pa.ArrowException):
                    writer.close()
        finally:
            # The spool file goes whatever happened before (a full disk must not stay full).
            if partition is not None:
                partition.close()
            elif path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
