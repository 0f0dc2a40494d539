r"""Synchronous model averaging every ``communication_window`` local steps.

All :math:`p` workers meet in a round; the center becomes their mean and every worker
continues from it:

.. math::

    \tilde x \leftarrow \frac{1}{p} \sum_i x_i, \qquad x_i \leftarrow \tilde x .

With a window as long as an epoch this is the classic one-shot parameter averaging; shorter
windows give periodic averaging (local SGD). Each round averages only that round's commits,
so nothing carries over between rounds or epochs (the 2017 Distributed Keras averaging buffer
was never reset between epochs). A worker that finishes early takes part in one last round
and then leaves; later rounds average the workers still training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from distkeras_async.algorithm import Algorithm, ServerHandle, UpdateMeta
from distkeras_async.rules import mean_into


class ModelAveraging(Algorithm):
    """Synchronous periodic model averaging."""

    name = "averaging"
    synchronous = True
    # The mean of the round's weights (a = 0, each b_i = 1/p): a bounded linear update that
    # does not read the center, so it writes all of `out` without a copy first.
    linear_update = True
    writes_all = True

    _center: np.ndarray

    def worker_start(self, weights: np.ndarray, server: ServerHandle) -> np.ndarray:
        """Start from the center, so every worker averages from the same point."""
        self._center = server.pull()
        return self._center.copy()

    def worker_exchange(self, weights: np.ndarray, server: ServerHandle) -> np.ndarray:
        """Commit the local weights; continue from the round's average."""
        server.commit_pull(weights, out=self._center)
        return self._center.copy()

    def server_update(
        self,
        out: np.ndarray,
        center: np.ndarray,
        updates: Sequence[np.ndarray],
        metas: Sequence[UpdateMeta],
    ) -> None:
        """The center becomes the mean of the round's weights."""
        mean_into(out, updates)
