"""The center as each global epoch ended, kept for the driver's callbacks.

A global epoch ends when every worker finished that pass over its partition
(:meth:`ServerStats.epoch_complete`). The driver's callbacks may run later than that, while
the workers train on; so the server copies the center at that moment, but only once the
driver asked for it, and at most ``MAX_EPOCH_CENTERS`` copies wait to be taken.
"""

from __future__ import annotations

import logging

import numpy as np

from distkeras_async.server.stats import ServerStats

logger = logging.getLogger("distkeras_async.server")

# Epoch centers kept for the driver at most (each a copy of the model).
MAX_EPOCH_CENTERS = 8


class EpochCenters:
    """Counts the global epochs that ended and keeps the center of each, when asked."""

    def __init__(self) -> None:
        self.ended = 0
        self.keep = False  # only while the driver takes them
        self.centers: dict[int, np.ndarray] = {}

    def update(self, stats: ServerStats, num_workers: int, center: np.ndarray) -> None:
        """After a report or a goodbye: note (and keep) every epoch that has just ended."""
        while stats.epoch_complete(self.ended + 1, num_workers):
            self.ended += 1
            if not self.keep:
                continue
            if len(self.centers) < MAX_EPOCH_CENTERS:
                self.centers[self.ended] = center.copy()
            else:  # the driver lags far behind: it will read the current center instead
                logger.warning(
                    "epoch %d ended with %d epoch centers not yet taken; not keeping its center",
                    self.ended,
                    len(self.centers),
                )

    def take(self, epoch: int) -> np.ndarray | None:
        """The flat center as ``epoch`` ended, once; None if it was not kept."""
        return self.centers.pop(epoch, None)
