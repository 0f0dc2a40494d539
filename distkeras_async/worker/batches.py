"""A partition's local batches: the per-epoch row order, and batches as Keras takes them.

The order is a function of the seed, the worker and the epoch only, so a retried task sees
the rows in the order the killed attempt saw them (see ``KerasWorker``'s resume).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np


def epoch_order(rows: int, worker: int, epoch: int, shuffle: bool, seed: int = 0) -> np.ndarray:
    """The order of a partition's rows in one epoch: the same in every attempt of the task.

    A retried attempt must see the rows in the order the killed one saw them, to know which
    updates the server already applied; so the shuffle is seeded by worker and epoch, never
    by a generator's state or Keras' own (unseeded) shuffle.
    """
    if not shuffle:
        return np.arange(rows)
    return np.random.default_rng((seed, worker, epoch)).permutation(rows)


def epoch_batches(
    x: Sequence[np.ndarray],
    y: Sequence[np.ndarray],
    *,
    num_epoch: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    worker: int,
    sample_weight: np.ndarray | None = None,
) -> Iterator[tuple[Any, ...]]:
    """Every epoch's batches in :func:`epoch_order`: ``(inputs, targets[, weights])``."""
    rows = len(x[0]) if x else 0
    for epoch in range(num_epoch):
        order = epoch_order(rows, worker, epoch, shuffle, seed)
        for start in range(0, rows, batch_size):
            index = order[start : start + batch_size]
            batch = pack([a[index] for a in x]), pack([a[index] for a in y])
            yield batch if sample_weight is None else (*batch, sample_weight[index])


def batch_weight(batch: tuple[Any, ...]) -> Any:
    """The sample weights of a batch, if it carries them (third, as in Keras)."""
    return batch[2] if len(batch) > 2 else None


def pack(arrays: Sequence[np.ndarray]) -> Any:
    """One array for a single input or output, the list for several (as Keras takes them)."""
    return arrays[0] if len(arrays) == 1 else list(arrays)
