r"""signSGD with majority vote (Bernstein, Zhao, Azizzadenesheli, Anandkumar, ICLR 2019).

Each worker commits only the sign of its change over a window; the server takes the sign of
their sum, a majority vote per parameter, and moves the center by a fixed step along it:

.. math::

    \tilde x \leftarrow \tilde x + \eta\, \mathrm{sign}\Big(\sum_i \mathrm{sign}(\Delta_i)\Big)

Written from ``docs/custom-optimizer.md`` with its four concepts: ``delta_rule``,
``Hyperparameter``, and the transforms ``sign`` and ``scale``. The paper's workers send the
sign of a gradient (or of a momentum); here, as in DOWNPOUR, a worker's local optimizer
takes ``communication_window`` steps and the sign of their sum is sent.
"""

from __future__ import annotations

from distkeras_async import Hyperparameter, delta_rule
from distkeras_async.transforms import scale, sign

MajoritySign = delta_rule(
    "majority-sign",
    "signSGD with majority vote: workers commit signs, the center steps along their majority.",
    synchronous=True,
    worker=sign(),
    server=lambda rule: [sign(), scale(rule.server_step)],
    hyperparameters={
        "server_step": Hyperparameter(
            1e-3,
            float,
            "how far the center moves per round along the vote",
            minimum=0.0,
            exclusive_minimum=True,
        ),
    },
)
