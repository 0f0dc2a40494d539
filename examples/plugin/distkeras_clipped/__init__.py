r"""Clipped DOWNPOUR: asynchronous DOWNPOUR whose server clips every commit's L2 norm.

A worker that diverges (a bad batch, a learning rate too high for its shard) commits a huge
change, and plain DOWNPOUR adds it to the center whole. Here the server bounds what any one
commit can do:

.. math::

    \Delta_i = x_i - \tilde x_{\text{pulled}}, \qquad
    \tilde x \leftarrow \tilde x
        + \Delta_i \cdot \min\left(1, \frac{c}{\lVert\Delta_i\rVert_2}\right)

with ``max_norm`` = :math:`c`. The worker side is DOWNPOUR's (commit the change since the last
pull, adopt the new center); the server side is one built-in transform, ``clip_norm``, made
from the rule's own hyperparameter.
"""

from __future__ import annotations

from distkeras_async import Hyperparameter, delta_rule
from distkeras_async.transforms import clip_norm

ClippedDownpour = delta_rule(
    "clipped-downpour",
    "DOWNPOUR whose server scales each commit down to at most ``max_norm`` (L2).",
    server=lambda rule: clip_norm(rule.max_norm),
    hyperparameters={
        "max_norm": Hyperparameter(
            1.0,
            float,
            "largest L2 norm one commit may move the center by",
            minimum=0.0,
            exclusive_minimum=True,
        ),
    },
)
