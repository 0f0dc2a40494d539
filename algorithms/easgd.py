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

The paper requires :math:`0 < \beta = p\alpha \le 1`: with a larger step the center overshoots
the workers' mean and the run diverges (measured: 4 workers with alpha = 0.5 ended at chance
accuracy on digits), so the server refuses such a configuration up front.

Departure from the paper: the paper's workers take their local step and the elastic step in
the same iteration; here the elastic step happens between windows of local steps, which is
the paper's own communication-period variant (Section 3.1, with tau = the window).
"""

from __future__ import annotations

import numpy as np

from distkeras_async.algorithm import ServerHandle
from distkeras_async.errors import HyperparameterError
from distkeras_async.rules import ElasticAlgorithm


class EASGD(ElasticAlgorithm):
    """Synchronous EASGD: rounds of elastic moves between every worker and the center."""

    name = "easgd"
    synchronous = True

    def validate_workers(self, num_workers: int) -> None:
        """The center moves by beta = p * alpha per round: above 1 it overshoots and diverges."""
        if self.alpha * num_workers > 1.0:
            raise HyperparameterError(
                f"synchronous EASGD moves the center by learning_rate * rho * num_workers per "
                f"round, which must be <= 1 (got {self.alpha:g} * {num_workers} = "
                f"{self.alpha * num_workers:g}); lower 'learning_rate' or 'rho'"
            )

    def worker_exchange(self, weights: np.ndarray, server: ServerHandle) -> np.ndarray:
        """Elastic move against the previous round's center; receive the new center."""
        elastic = self.elastic_move(weights, self._center)
        server.commit_pull(elastic, out=self._center)
        return weights
