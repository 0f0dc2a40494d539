r"""DOWNPOUR: asynchronous SGD through a parameter server (Dean et al., NIPS 2012).

Update rule, for a worker *i* that last pulled the center :math:`\tilde x` and has since
trained locally to :math:`x_i` over ``communication_window`` steps:

.. math::

    \Delta_i = x_i - \tilde x_{\text{pulled}}, \qquad
    \tilde x \leftarrow \tilde x + \Delta_i, \qquad
    x_i \leftarrow \tilde x .

Departures from the paper: the paper's workers push accumulated *gradients* which the server
scales by its own learning rate; here the worker pushes the accumulated *weight change*
(its local optimizer already applied the learning rate), which equals a server learning rate
of 1 and lets any Keras optimizer run locally. The worker commits and pulls in one round
trip (``commit_pull``), and commits its remaining local change when it finishes.

Example::

    from distkeras_async import registry
    downpour = registry.get("downpour")(communication_window=5)
"""

from __future__ import annotations

from distkeras_async.rules import DeltaAlgorithm


class Downpour(DeltaAlgorithm):
    """Asynchronous DOWNPOUR SGD: the center adds every worker's weight change."""

    name = "downpour"
    synchronous = False
