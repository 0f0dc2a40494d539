"""Where a worker's local steps take their batches: in-memory arrays, or a streamed partition.

Both give the same two things to :class:`~distkeras_async.worker.KerasWorker`: the
``model.fit`` calls that take the partition's batches from step ``skip`` on (the fast path),
and the same batches one by one (for a worker that runs its own step). Steps are numbered
from the first epoch's first batch, so a retried task resumes at the same step either way.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from distkeras_async.worker.batches import epoch_order, pack
from distkeras_async.worker.feed import fit_input
from distkeras_async.worker.stream import WINDOW_BYTES, EpochStream, chunk_batches

# (inputs, targets, weights or None) for a block of rows, as the model takes them.
Prepared = tuple[list[np.ndarray], list[np.ndarray], np.ndarray | None]
FitCall = dict[str, Any]


def _element(prepared: Prepared) -> tuple[Any, ...]:
    x, y, w = prepared
    return (pack(x), pack(y)) if w is None else (pack(x), pack(y), w)


class ArraySource:
    """A partition held as numpy arrays, fed to ``fit`` whole (Keras slices it in C++).

    Args:
        xs: the model inputs.
        ys: the targets.
        weights: every row's weight, or None.
        batches: the worker's :meth:`~distkeras_async.worker.KerasWorker.batches` hook.
        num_epoch, batch_size, shuffle, seed, worker: the plan's.
    """

    def __init__(
        self,
        xs: Sequence[np.ndarray],
        ys: Sequence[np.ndarray],
        weights: np.ndarray | None,
        batches: Callable[..., Iterator[tuple[Any, ...]]],
        *,
        num_epoch: int,
        batch_size: int,
        shuffle: bool,
        seed: int,
        worker: int,
    ) -> None:
        self.xs, self.ys, self.weights = list(xs), list(ys), weights
        self._batches = batches
        self.num_epoch, self.batch_size = num_epoch, batch_size
        self.shuffle, self.seed, self.worker = shuffle, seed, worker
        self.rows = len(self.xs[0]) if self.xs else 0

    def batches(self, skip: int) -> Iterator[tuple[Any, ...]]:
        """Every epoch's batches from step ``skip`` on, through the worker's hook."""
        own = (
            self._batches(self.xs, self.ys)
            if self.weights is None
            else self._batches(self.xs, self.ys, self.weights)
        )
        return itertools.islice(own, skip, None)

    def fit_calls(self, skip: int) -> Iterator[FitCall]:
        """``model.fit`` arguments that take the partition's steps ``skip`` onwards, in order.

        Without shuffling that is one call on the arrays for every epoch (Keras slices them
        in C++). With shuffling, each epoch's order (``epoch_order``) reaches Keras as a
        stream of shuffled chunks (:func:`~distkeras_async.worker.feed.fit_input`), one
        call for all epochs: a ``fit`` call per epoch costs ~0.15 s, more than a digits
        epoch, and a permuted copy of the whole partition would double its memory.
        """
        per_epoch = -(-self.rows // self.batch_size)
        epoch, batch = divmod(skip, per_epoch)
        if not self.shuffle:
            if batch:
                yield self._call(slice(batch * self.batch_size, None))
                epoch += 1
            if epoch < self.num_epoch:
                yield self._call(slice(None), self.num_epoch - epoch)
            return
        if batch:
            yield {
                "x": fit_input(self._chunks(epoch, batch, epoch + 1), self.batch_size),
                "steps_per_epoch": per_epoch - batch,
                "epochs": 1,
            }
            epoch += 1
        if epoch < self.num_epoch:
            yield {
                "x": fit_input(self._chunks(epoch, 0, self.num_epoch), self.batch_size),
                "steps_per_epoch": per_epoch,
                "epochs": self.num_epoch - epoch,
            }

    def _call(self, index: Any, epochs: int = 1) -> FitCall:
        x = [a[index] for a in self.xs]
        y = [a[index] for a in self.ys]
        w = None if self.weights is None else self.weights[index]
        return {"x": pack(x), "y": pack(y), "sample_weight": w, "epochs": epochs}

    def _chunks(self, first: int, skip_batches: int, last: int) -> Iterator[tuple[Any, ...]]:
        """Epochs ``first`` to ``last`` in their shuffled orders, as chunks of whole batches."""
        row_bytes = sum(a[:1].nbytes for a in [*self.xs, *self.ys]) or 1
        size = max(1, WINDOW_BYTES // row_bytes // self.batch_size) * self.batch_size
        for epoch in range(first, last):
            order = epoch_order(self.rows, self.worker, epoch, True, self.seed)
            if epoch == first:
                order = order[skip_batches * self.batch_size :]
            for start in range(0, len(order), size):
                index = order[start : start + size]
                w = None if self.weights is None else self.weights[index]
                yield _element(([a[index] for a in self.xs], [a[index] for a in self.ys], w))


class StreamSource:
    """A partition streamed window by window (see :mod:`~distkeras_async.worker.stream`).

    Args:
        stream: the partition's epochs.
        prepare: ``(raw columns of a chunk) -> (inputs, targets, weights)``.
        num_epoch: passes over the partition.
    """

    def __init__(
        self, stream: EpochStream, prepare: Callable[[list[np.ndarray]], Prepared], num_epoch: int
    ) -> None:
        self.stream = stream
        self.prepare = prepare
        self.num_epoch = num_epoch
        self.batch_size = stream.batch_size
        self.rows = stream.partition.num_rows
        self.per_epoch = -(-self.rows // self.batch_size)

    def _chunks(self, first_epoch: int, skip_batches: int, last_epoch: int) -> Iterator[Prepared]:
        for epoch in range(first_epoch, last_epoch):
            skip = skip_batches * self.batch_size if epoch == first_epoch else 0
            for chunk in self.stream.chunks(epoch, skip):
                yield self.prepare(chunk)

    def batches(self, skip: int) -> Iterator[tuple[Any, ...]]:
        """Every epoch's batches from step ``skip`` on."""
        epoch, batch = divmod(skip, self.per_epoch)
        for x, y, w in self._chunks(epoch, batch, self.num_epoch):
            parts = [*x, *y] if w is None else [*x, *y, w]
            for cut in chunk_batches(parts, self.batch_size):
                yield _element(
                    (
                        cut[: len(x)],
                        cut[len(x) : len(x) + len(y)],
                        cut[-1] if w is not None else None,
                    )
                )

    def fit_calls(self, skip: int) -> Iterator[FitCall]:
        """``model.fit`` arguments: the rest of a started epoch, then the remaining epochs."""
        epoch, batch = divmod(skip, self.per_epoch)
        if batch:
            chunks = map(_element, self._chunks(epoch, batch, epoch + 1))
            yield {
                "x": fit_input(chunks, self.batch_size),
                "steps_per_epoch": self.per_epoch - batch,
                "epochs": 1,
            }
            epoch += 1
        if epoch < self.num_epoch:
            chunks = map(_element, self._chunks(epoch, 0, self.num_epoch))
            yield {
                "x": fit_input(chunks, self.batch_size),
                "steps_per_epoch": self.per_epoch,
                "epochs": self.num_epoch - epoch,
            }
