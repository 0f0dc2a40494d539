r"""Clipped DOWNPOUR: asynchronous DOWNPOUR whose server clips every commit's L2 norm.

A worker that diverges (a bad batch, a learning rate too high for its shard) commits a huge
change, and plain DOWNPOUR adds it to the center whole. Here the server bounds what any one
commit can do:

.. math::

    \Delta_i = x_i - \tilde x_{\text{pulled}}, \qquad
    \tilde x \leftarrow \tilde x + \Delta_i \cdot \min\left(1, \frac{c}{\lVert\Delta_i\rVert_2}\right)

with ``max_norm`` = :math:`c`. The worker side is DOWNPOUR's (commit the change since the last
pull, adopt the new center), reused from ``distkeras_async.DeltaAlgorithm``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from distkeras_async import DeltaAlgorithm, Hyperparameter, UpdateMeta


class ClippedDownpour(DeltaAlgorithm):
    """DOWNPOUR whose server scales each commit down to at most ``max_norm`` (L2)."""

    name = "clipped-downpour"
    synchronous = False
    hyperparameters: ClassVar[dict[str, Hyperparameter]] = {
        "max_norm": Hyperparameter(
            1.0, float, "largest L2 norm one commit may move the center by", minimum=0.0,
            exclusive_minimum=True,
        ),
    }

    max_norm: float

    def server_apply(self, center: np.ndarray, update: np.ndarray, meta: UpdateMeta) -> None:
        """Add the commit, scaled down to ``max_norm`` if it is longer."""
        norm = float(np.sqrt(np.dot(update, update)))
        if norm > self.max_norm:
            update *= np.float32(self.max_norm / norm)
        center += update
