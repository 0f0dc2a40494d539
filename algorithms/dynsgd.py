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

from collections.abc import Sequence

from distkeras_async.rules import DeltaAlgorithm
from distkeras_async.transforms import Transform, staleness_divide


class DynSGD(DeltaAlgorithm):
    """Asynchronous SGD whose commits are damped by their staleness."""

    name = "dynsgd"
    synchronous = False

    def server_transforms(self) -> Sequence[Transform]:
        """Each commit divided by ``staleness + 1`` before the center adds it."""
        return [staleness_divide()]
