"""An epoch of a partition as a stream of shuffled windows, in bounded memory.

Every row is seen exactly once per epoch. With shuffling, an epoch (1) permutes the order of
the partition's blocks (about 1 MiB each, see :mod:`~distkeras_async.worker.partition`),
(2) groups consecutive blocks of that order into windows of at least ``window_rows`` rows,
and (3) permutes the rows inside each window. Only one window is materialised as numpy at a
time, so memory follows the window, not the partition.

The quality/memory trade-off: a window mixes the rows of ``window_rows / rows per block``
random blocks. On data sorted by label, a window of 64 blocks drawn from 10 label runs holds
nearly every label, and SGD sees the label mix it would see from a full shuffle; a window of
a single block would feed one label run at a time. A larger window shuffles better and costs
its decoded size (about three copies of it at the peak, while it is permuted and chunked).
A partition small enough to stay in memory gets a full permutation instead (see
:class:`~distkeras_async.worker.KerasWorker`).

Every order is a function of the seed, the worker, the epoch and the window only, so a
retried task sees the rows in the order the killed attempt saw them, and can skip the rows
whose updates the server already applied without decoding them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from distkeras_async.worker.partition import Partition

# The default window: as many rows as make about this many decoded bytes (and at least 8
# batches), so one window of a wide partition stays small next to the model and TensorFlow.
WINDOW_BYTES = 32 << 20

Decoder = Callable[[pa.RecordBatch, int], list[np.ndarray]]


def default_window(partition: Partition, batch_size: int) -> int:
    """The default ``window_rows`` for a partition: about :data:`WINDOW_BYTES` of it."""
    row_bytes = max(1, partition.nbytes // max(1, partition.num_rows))
    return max(8 * batch_size, WINDOW_BYTES // row_bytes)


def epoch_windows(
    block_rows: np.ndarray,
    *,
    window_rows: int,
    shuffle: bool,
    seed: int,
    worker: int,
    epoch: int,
) -> list[np.ndarray]:
    """The blocks of each window of one epoch, in the order the epoch reads them."""
    count = len(block_rows)
    order = (
        np.random.default_rng((seed, worker, epoch)).permutation(count)
        if shuffle
        else np.arange(count)
    )
    windows: list[np.ndarray] = []
    start, rows = 0, 0
    for position, block in enumerate(order):
        rows += int(block_rows[block])
        if rows >= window_rows:
            windows.append(order[start : position + 1])
            start, rows = position + 1, 0
    if start < count:
        windows.append(order[start:])
    return windows


class EpochStream:
    """A partition's epochs as chunks of rows, each a whole number of batches.

    Args:
        partition: the worker's rows.
        decode: ``(block, its first row's position) -> one array per column``.
        batch_size: the local batch size; chunks are cut at its multiples.
        window_rows: rows per window (see the module's note on the trade-off).
        shuffle: shuffle the blocks and the rows in each window every epoch.
        seed: the seed of every shuffle.
        worker: the worker id (each worker shuffles differently).
    """

    def __init__(
        self,
        partition: Partition,
        decode: Decoder,
        *,
        batch_size: int,
        window_rows: int,
        shuffle: bool,
        seed: int,
        worker: int,
    ) -> None:
        self.partition = partition
        self.decode = decode
        self.batch_size = batch_size
        self.window_rows = max(1, window_rows)
        self.shuffle = shuffle
        self.seed = seed
        self.worker = worker
        self._first_rows = partition.first_rows()

    def windows(self, epoch: int) -> list[np.ndarray]:
        """The blocks of each of the epoch's windows."""
        return epoch_windows(
            self.partition.block_rows,
            window_rows=self.window_rows,
            shuffle=self.shuffle,
            seed=self.seed,
            worker=self.worker,
            epoch=epoch,
        )

    def _window(self, epoch: int, index: int, blocks: np.ndarray) -> list[np.ndarray]:
        decoded = [self.decode(self.partition.block(b), int(self._first_rows[b])) for b in blocks]
        columns = [
            parts[0] if len(parts) == 1 else np.concatenate(parts)
            for parts in zip(*decoded, strict=True)
        ]
        if self.shuffle:
            rng = np.random.default_rng((self.seed, self.worker, epoch, index))
            permutation = rng.permutation(len(columns[0]))
            columns = [c[permutation] for c in columns]
        return columns

    def chunks(self, epoch: int, skip_rows: int = 0) -> Iterator[list[np.ndarray]]:
        """The epoch's rows from row ``skip_rows`` on, one array per column per chunk.

        Every chunk but the epoch's last holds a multiple of ``batch_size`` rows, so batches
        cut from the chunks are the epoch's batches. ``skip_rows`` (a multiple of
        ``batch_size``) are passed over; whole windows among them are not even decoded.
        """
        block_rows = self.partition.block_rows
        carry: list[np.ndarray] | None = None
        position = 0
        for index, blocks in enumerate(self.windows(epoch)):
            rows = int(block_rows[blocks].sum())
            if position + rows <= skip_rows:
                position += rows
                continue
            columns = self._window(epoch, index, blocks)
            if position < skip_rows:
                columns = [c[skip_rows - position :] for c in columns]
            position += rows
            if carry is not None:
                columns = [np.concatenate(pair) for pair in zip(carry, columns, strict=True)]
            count = len(columns[0])
            cut = count - count % self.batch_size
            if cut:
                yield [c[:cut] for c in columns]
            carry = [c[cut:] for c in columns] if cut < count else None
            self.partition.release()
        if carry is not None:
            yield carry


def chunk_batches(chunk: Sequence[np.ndarray], batch_size: int) -> Iterator[list[np.ndarray]]:
    """A chunk's batches of ``batch_size`` rows (the last one may be shorter)."""
    rows = len(chunk[0]) if chunk else 0
    for start in range(0, rows, batch_size):
        yield [c[start : start + batch_size] for c in chunk]
