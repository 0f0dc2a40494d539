r"""Asynchronous EASGD (Zhang, Choromanska, LeCun 2015, arXiv 1412.6651, Algorithm 1).

Every ``communication_window`` (:math:`\tau`) local steps a worker, independently of the
others, pulls the center and moves elastically towards it while pushing it towards itself,
with :math:`\alpha = \eta\rho` (``learning_rate * rho``):

.. math::

    e = \alpha (x_i - \tilde x), \qquad x_i \leftarrow x_i - e, \qquad
    \tilde x \leftarrow \tilde x + e .

Departure from the paper: none in the rule. The center receives :math:`e` as computed
against the center the worker pulled; another worker's commit may land in between, exactly
as in the paper's asynchronous setting. The worker takes one last elastic step when it
finishes, so its final local steps are not lost.
"""

from __future__ import annotations

from distkeras_async.rules import AsyncElasticAlgorithm


class AsynchronousEASGD(AsyncElasticAlgorithm):
    """Asynchronous elastic averaging SGD."""

    name = "aeasgd"
    synchronous = False
