r"""DOWNPOUR with per-layer clipping: the server bounds how far one commit moves each layer.

.. math::

    \tilde x^{(l)} \leftarrow \tilde x^{(l)} + \Delta_i^{(l)}
        \min\Big(1, \frac{c}{\lVert \Delta_i^{(l)} \rVert_2}\Big) \quad \text{for every tensor } l

A worker whose batch blew up one layer (a large gradient in an embedding, say) cannot drag
that layer of the center far, while the other layers still take its whole change. Written
from ``docs/custom-optimizer.md`` with three concepts: ``delta_rule``, ``Hyperparameter`` and
the transform ``clip_tensor_norm``.
"""

from __future__ import annotations

from distkeras_async import Hyperparameter, delta_rule
from distkeras_async.transforms import clip_tensor_norm

LayerClippedDownpour = delta_rule(
    "layer-clipped-downpour",
    "DOWNPOUR whose server clips each layer's part of a commit to max_norm (L2).",
    server=lambda rule: clip_tensor_norm(rule.max_norm),
    hyperparameters={
        "max_norm": Hyperparameter(
            1.0,
            float,
            "largest L2 norm one commit may move one tensor by",
            minimum=0.0,
            exclusive_minimum=True,
        ),
    },
)
