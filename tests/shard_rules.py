"""Rules that fail on purpose, importable by a shard process (tests put this folder on its
PYTHONPATH): each raises when the slice it is given holds a value >= 1000, so a test can make
exactly one shard's rule fail."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from distkeras_async.algorithm import UpdateMeta
from distkeras_async.algorithms.averaging import ModelAveraging
from distkeras_async.algorithms.downpour import Downpour

POISON = 1000.0


def _check(updates: Sequence[np.ndarray]) -> None:
    if any(float(u.max()) >= POISON for u in updates):
        raise RuntimeError("poisoned slice")


class FailingAverage(ModelAveraging):
    """Model averaging whose round raises on a poisoned slice."""

    name = "test-failing-average"
    linear_update = True
    writes_all = True

    def server_update(
        self,
        out: np.ndarray,
        center: np.ndarray,
        updates: Sequence[np.ndarray],
        metas: Sequence[UpdateMeta],
    ) -> None:
        _check(updates)
        super().server_update(out, center, updates, metas)


class FailingDownpour(Downpour):
    """DOWNPOUR whose rule raises on a poisoned slice."""

    name = "test-failing-downpour"
    linear_update = True
    writes_all = True

    def server_update(
        self,
        out: np.ndarray,
        center: np.ndarray,
        updates: Sequence[np.ndarray],
        metas: Sequence[UpdateMeta],
    ) -> None:
        _check(updates)
        super().server_update(out, center, updates, metas)
