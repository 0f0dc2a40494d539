"""The named trainers: the classic Distributed Keras API, as a table over one trainer.

``DOWNPOUR(model, "adam", "categorical_crossentropy", num_workers=4).train(df)`` returns a new
trained Keras model; the caller's model is not changed. Each name below is the one trainer
(:class:`~distkeras_async.trainers.base.DistributedTrainer`) with its algorithm, the
classic positional order and defaults (``docs/migration.md``), written as one row of
:data:`CLASSIC`; every other argument (any run option, any hyperparameter) is taken by
keyword, as by the generic trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distkeras_async.trainers.arguments import TrainerSpec
from distkeras_async.trainers.base import (
    AsynchronousDistributedTrainer,
    DistributedTrainer,
    SynchronizedDistributedTrainer,
    Trainer,
)

__all__ = [
    "ADAG",
    "AEASGD",
    "CLASSIC",
    "DOWNPOUR",
    "EAMSGD",
    "EASGD",
    "AsynchronousDistributedTrainer",
    "AsynchronousEAMSGD",
    "AsynchronousEASGD",
    "AveragingTrainer",
    "DistributedTrainer",
    "DynSGD",
    "SingleTrainer",
    "SynchronizedDistributedTrainer",
    "Trainer",
]

_HEAD = ("keras_model", "worker_optimizer", "loss", "metrics")
# What most classic trainers take next, in this order.
_DATA = ("num_workers", "batch_size", "features_col", "label_col")


@dataclass(frozen=True)
class Classic:
    """One named trainer: its algorithm, its arguments and its documentation."""

    algorithm: str
    spec: TrainerSpec
    doc: str


CLASSIC: dict[str, Classic] = {
    "SingleTrainer": Classic(
        "downpour",
        TrainerSpec(
            positional=(*_HEAD, "num_epoch", "batch_size", "features_col", "label_col"),
            defaults={"master_port": 0},
            # One worker: each exchange makes the center equal to its weights. Exchanging
            # every 100 steps costs nothing measurable and lets snapshots follow progress.
            fixed={"num_workers": 1, "communication_window": 100, "algorithm": "downpour"},
            synchronous=False,
        ),
        """Train on one worker (one Spark task): the baseline the distributed trainers beat.

    It runs the same worker code with one worker (DOWNPOUR with a single worker, whose every
    exchange sets the center to its weights), so its result and history are directly
    comparable with the distributed trainers'.""",
    ),
    "EASGD": Classic(
        "easgd",
        TrainerSpec(
            positional=(
                *_HEAD,
                "num_workers",
                "features_col",
                "label_col",
                "rho",
                "learning_rate",
                "batch_size",
                "num_epoch",
                "master_port",
            ),
            defaults={"rho": 5.0, "learning_rate": 0.01, "communication_window": 5},
            synchronous=True,
        ),
        "Synchronous elastic averaging SGD (Zhang, Choromanska, LeCun 2015).",
    ),
    "AsynchronousEASGD": Classic(
        "aeasgd",
        TrainerSpec(
            positional=(
                *_HEAD,
                *_DATA,
                "communication_window",
                "rho",
                "learning_rate",
                "master_port",
                "num_epoch",
            ),
            defaults={
                "batch_size": 1000,
                "communication_window": 3,
                "rho": 5.0,
                "learning_rate": 0.01,
            },
            synchronous=False,
        ),
        """Asynchronous elastic averaging SGD (Zhang, Choromanska, LeCun 2015, Algorithm 1).

    ``rho`` defaults to 5.0, not Distributed Keras' 0.01: with ``learning_rate=0.01`` that
    made an elastic step of 1e-4, which left the center at chance accuracy on digits while the
    workers learned (docs/migration.md). ``alpha = learning_rate * rho = 0.05`` now.""",
    ),
    "AsynchronousEAMSGD": Classic(
        "eamsgd",
        TrainerSpec(
            positional=(
                *_HEAD,
                *_DATA,
                "communication_window",
                "rho",
                "learning_rate",
                "momentum",
                "master_port",
                "num_epoch",
            ),
            defaults={
                "communication_window": 10,
                "rho": 5.0,
                "learning_rate": 0.01,
                "momentum": 0.7,
            },
            synchronous=False,
        ),
        """Asynchronous EASGD with Nesterov momentum on the workers (Zhang et al. 2015, Alg. 2).

    ``momentum`` defaults to 0.7, not the paper's and Distributed Keras' 0.9: the momentum
    multiplies every local step by up to ``1 / (1 - momentum)``, on top of the local
    optimizer's own averaging, and with Adam 0.9 overshot (0.917 on digits against 0.961 with
    0.7). Plain SGD gains from the larger momentum (0.92 with 0.9, 0.84 with 0.7, as much as
    SingleTrainer's 0.85): pass ``momentum=0.9`` with ``"sgd"`` (docs/migration.md).""",
    ),
    "DOWNPOUR": Classic(
        "downpour",
        TrainerSpec(
            positional=(
                *_HEAD,
                *_DATA,
                "communication_window",
                "master_port",
                "num_epoch",
                "learning_rate",
            ),
            defaults={"batch_size": 1000, "communication_window": 5, "learning_rate": 0.01},
            ignored={
                "learning_rate": "DOWNPOUR's learning_rate has no effect (as in Distributed "
                "Keras); set the learning rate of worker_optimizer instead"
            },
            synchronous=False,
        ),
        """Asynchronous DOWNPOUR SGD (Dean et al. 2012).

    ``learning_rate`` is accepted for compatibility with Distributed Keras scripts, where it
    had no effect on DOWNPOUR either: the worker optimizer's learning rate governs the steps.""",
    ),
    "ADAG": Classic(
        "adag",
        TrainerSpec(
            positional=(
                *_HEAD,
                *_DATA,
                "num_epoch",
                "communication_window",
                "master_port",
            ),
            defaults={"communication_window": None},
            follows={"communication_window": "num_workers"},
            synchronous=False,
        ),
        """Asynchronous distributed adaptive gradients (Hermans 2017).

    ``communication_window`` defaults to ``num_workers`` (Distributed Keras: 12). ADAG commits
    each worker's progress divided by the window, so the center moves at ``num_workers /
    communication_window`` of one worker's pace: 2 workers with a window of 12 reached 0.88 on
    digits where DOWNPOUR reached 0.97 (docs/migration.md).""",
    ),
    "DynSGD": Classic(
        "dynsgd",
        TrainerSpec(
            positional=(
                *_HEAD,
                *_DATA,
                "num_epoch",
                "communication_window",
                "master_port",
            ),
            defaults={"communication_window": 5},
            synchronous=False,
        ),
        "Staleness-aware asynchronous SGD (Jiang et al. 2017).",
    ),
    "AveragingTrainer": Classic(
        "averaging",
        TrainerSpec(
            positional=(
                *_HEAD,
                "features_col",
                "label_col",
                "num_epoch",
                "batch_size",
                "num_workers",
            ),
            defaults={"communication_window": 10},
            synchronous=True,
        ),
        """Synchronous model averaging every ``communication_window`` steps.

    Distributed Keras averaged once, at the end; a ``communication_window`` larger than a
    worker's steps over the whole run reproduces that (keep ``idle_timeout`` above the run's
    duration), and shorter windows (the default) average periodically.""",
    ),
}


def _named(name: str, row: Classic) -> type[DistributedTrainer]:
    """The trainer class of one row: the one trainer with the row's algorithm and spec."""
    base = (
        SynchronizedDistributedTrainer if row.spec.synchronous else AsynchronousDistributedTrainer
    )
    spec = TrainerSpec(
        positional=row.spec.positional,
        defaults=row.spec.defaults,
        # A named trainer is its algorithm: DOWNPOUR(..., algorithm="dynsgd") is refused.
        fixed={"algorithm": row.algorithm, **row.spec.fixed},
        follows=row.spec.follows,
        ignored=row.spec.ignored,
        synchronous=row.spec.synchronous,
    )
    namespace: dict[str, Any] = {"spec": spec, "__doc__": row.doc, "__module__": __name__}
    return type(name, (base,), namespace)


SingleTrainer = _named("SingleTrainer", CLASSIC["SingleTrainer"])
EASGD = _named("EASGD", CLASSIC["EASGD"])
AsynchronousEASGD = _named("AsynchronousEASGD", CLASSIC["AsynchronousEASGD"])
AsynchronousEAMSGD = _named("AsynchronousEAMSGD", CLASSIC["AsynchronousEAMSGD"])
DOWNPOUR = _named("DOWNPOUR", CLASSIC["DOWNPOUR"])
ADAG = _named("ADAG", CLASSIC["ADAG"])
DynSGD = _named("DynSGD", CLASSIC["DynSGD"])
AveragingTrainer = _named("AveragingTrainer", CLASSIC["AveragingTrainer"])

AEASGD = AsynchronousEASGD
EAMSGD = AsynchronousEAMSGD
