r"""EASGD: synchronous elastic averaging SGD (Zhang, Choromanska, LeCun 2015, arXiv 1412.6651).

Every ``communication_window`` local steps all :math:`p` workers meet in a round. With
:math:`\alpha = \eta\rho` (``learning_rate * rho``) and :math:`\tilde x` the center of the
previous round (Eqs. 5-6 of the paper, with :math:`\beta = p\alpha`):

.. math::

    e_i = \alpha (x_i - \tilde x), \qquad x_i \leftarrow x_i - e_i, \qquad
    \tilde x \leftarrow \tilde x + \sum_i e_i .

The worker commits :math:`e_i` and receives the new center in the same round trip; it needs
no pull before committing, because in a synchronous algorithm the center cannot change
between rounds. At the end each worker takes part in one last round, so its final local
steps reach the center.

Departure from the paper: the paper's workers take their local step and the elastic step in
the same iteration; here the elastic step happens between windows of local steps, which is
the paper's own communication-period variant (Section 3.1, with tau = the window).
"""

from __future__ import annotations

import numpy as np

from distkeras_async.algorithm import ServerHandle
from distkeras_async.rules import ElasticAlgorithm


class EASGD(ElasticAlgorithm):
    """Synchronous EASGD: rounds of elastic moves between every worker and the center."""

    name = "easgd"
    synchronous = True

    def worker_exchange(self, weights: np.ndarray, server: ServerHandle) -> np.ndarray:
        """Elastic move against the previous round's center; receive the new center."""
        elastic = self.elastic_move(weights, self._center)
        server.commit_pull(elastic, out=self._center)
        return weights
