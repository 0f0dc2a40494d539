r"""DynSGD: staleness-aware asynchronous SGD (Jiang et al., SIGMOD 2017).

A commit computed from a center that is :math:`s` updates old is scaled by
:math:`1/(s+1)`:

.. math::

    s = v_{\text{now}} - v_{\text{pulled}}, \qquad
    \tilde x \leftarrow \tilde x + \frac{x_i - \tilde x_{\text{pulled}}}{s + 1}.

The staleness is counted exactly: the server's version counter and every worker's last
pulled version live on the server's single event loop, so no two commits race on them
(the 2017 Distributed Keras implementation kept a racy counter shared between threads).

Departure from the paper: the paper scales gradients inside its server optimizer; here the
committed weight change is scaled, which is the same for SGD and lets any local optimizer run.
"""

from __future__ import annotations

import numpy as np

from distkeras_async.algorithm import UpdateMeta
from distkeras_async.rules import DeltaAlgorithm, add_scaled, add_scaled_into, staleness_scale


class DynSGD(DeltaAlgorithm):
    """Asynchronous SGD whose commits are damped by their staleness."""

    name = "dynsgd"
    synchronous = False
    # center + update / (staleness + 1): a bounded linear update (the factor is at most 1).
    linear_update = True

    def server_apply(self, center: np.ndarray, update: np.ndarray, meta: UpdateMeta) -> None:
        """Add the commit scaled by ``1 / (staleness + 1)``."""
        add_scaled(center, update, staleness_scale(meta))

    def server_update(
        self, out: np.ndarray, center: np.ndarray, update: np.ndarray, meta: UpdateMeta
    ) -> None:
        """The same in one pass: ``out = center + update / (staleness + 1)``."""
        add_scaled_into(out, center, update, staleness_scale(meta))
