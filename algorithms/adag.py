r"""ADAG: asynchronous distributed adaptive gradients (Hermans, 2017, arXiv 1710.02368).

Accumulated gradient normalization: the worker accumulates its local change over the
``communication_window`` (:math:`\lambda`) steps and commits it normalized by the window,

.. math::

    \Delta_i = \frac{x_i - \tilde x_{\text{pulled}}}{\lambda}, \qquad
    \tilde x \leftarrow \tilde x + \Delta_i, \qquad x_i \leftarrow \tilde x .

The normalization keeps the center's step comparable to one local step however long the
window is, which is what lets ADAG use long windows with many workers.

Departure from the paper: as in DOWNPOUR here, the worker sends the accumulated weight change
(the local optimizer already applied its learning rate) instead of raw gradients.
"""

from __future__ import annotations

from distkeras_async.rules import DeltaAlgorithm


class ADAG(DeltaAlgorithm):
    """Asynchronous ADAG: commit the local change normalized by the communication window."""

    name = "adag"
    synchronous = False

    def delta_scale(self) -> float:
        """Normalize the accumulated change by the window length."""
        return 1.0 / self.communication_window

    def lagging_center_hint(self, num_workers: int) -> str:
        """ADAG's pace is num_workers / communication_window of one worker's."""
        return (
            f"ADAG commits 1/communication_window of each worker's progress, so the center "
            f"moves at num_workers / communication_window = {num_workers}/"
            f"{self.communication_window} of one worker's pace: lower communication_window "
            "(to the number of workers or below) or add workers."
        )
