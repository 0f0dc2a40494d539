"""The named trainers: the classic Distributed Keras API on the new parameter server.

``DOWNPOUR(model, "adam", "categorical_crossentropy", num_workers=4).train(df)`` returns a new
trained Keras model; the caller's model is not changed. Each named trainer is a thin subclass
of :class:`SynchronizedDistributedTrainer` or :class:`AsynchronousDistributedTrainer` (in
:mod:`distkeras_async.trainers.base`, re-exported here), which accept any registered algorithm and
its hyperparameters. Positional parameters and defaults follow the classic documentation.
"""

from __future__ import annotations

import warnings
from typing import Any

from distkeras_async.trainers.base import (
    AsynchronousDistributedTrainer,
    Columns,
    DistributedTrainer,
    SynchronizedDistributedTrainer,
    Trainer,
)

__all__ = [
    "ADAG",
    "AEASGD",
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


class SingleTrainer(AsynchronousDistributedTrainer):
    """Train on one worker (one Spark task): the baseline the distributed trainers beat.

    It runs the same worker code with one worker (DOWNPOUR with a single worker, whose every
    exchange sets the center to its weights), so its result and history are directly
    comparable with the distributed trainers'.
    """

    def __init__(
        self,
        keras_model: Any,
        worker_optimizer: Any,
        loss: Any,
        metrics: Any = ("accuracy",),
        num_epoch: int = 1,
        batch_size: int = 32,
        features_col: Columns = "features",
        label_col: Columns = "label",
        **extras: Any,
    ) -> None:
        extras.setdefault("master_port", 0)
        super().__init__(
            keras_model,
            worker_optimizer,
            loss,
            metrics,
            1,
            batch_size,
            features_col,
            label_col,
            num_epoch,
            algorithm="downpour",
            # One worker: each exchange makes the center equal to its weights. Exchanging
            # every 100 steps costs nothing measurable and lets snapshots follow progress.
            communication_window=100,
            **extras,
        )


class EASGD(SynchronizedDistributedTrainer):
    """Synchronous elastic averaging SGD (Zhang, Choromanska, LeCun 2015)."""

    def __init__(
        self,
        keras_model: Any,
        worker_optimizer: Any,
        loss: Any,
        metrics: Any = ("accuracy",),
        num_workers: int = 2,
        features_col: Columns = "features",
        label_col: Columns = "label",
        rho: float = 5.0,
        learning_rate: float = 0.01,
        batch_size: int = 32,
        num_epoch: int = 1,
        master_port: int = 5000,
        *,
        communication_window: int = 5,
        **extras: Any,
    ) -> None:
        super().__init__(
            keras_model,
            worker_optimizer,
            loss,
            metrics,
            num_workers,
            batch_size,
            features_col,
            label_col,
            num_epoch,
            master_port,
            algorithm="easgd",
            rho=rho,
            learning_rate=learning_rate,
            communication_window=communication_window,
            **extras,
        )


class AsynchronousEASGD(AsynchronousDistributedTrainer):
    """Asynchronous elastic averaging SGD (Zhang, Choromanska, LeCun 2015, Algorithm 1).

    ``rho`` defaults to 5.0, not Distributed Keras' 0.01: with ``learning_rate=0.01`` that
    made an elastic step of 1e-4, which left the center at chance accuracy on digits while the
    workers learned (docs/migration.md). ``alpha = learning_rate * rho = 0.05`` now.
    """

    def __init__(
        self,
        keras_model: Any,
        worker_optimizer: Any,
        loss: Any,
        metrics: Any = ("accuracy",),
        num_workers: int = 2,
        batch_size: int = 1000,
        features_col: Columns = "features",
        label_col: Columns = "label",
        communication_window: int = 3,
        rho: float = 5.0,
        learning_rate: float = 0.01,
        master_port: int = 5000,
        num_epoch: int = 1,
        **extras: Any,
    ) -> None:
        super().__init__(
            keras_model,
            worker_optimizer,
            loss,
            metrics,
            num_workers,
            batch_size,
            features_col,
            label_col,
            num_epoch,
            master_port,
            algorithm="aeasgd",
            rho=rho,
            learning_rate=learning_rate,
            communication_window=communication_window,
            **extras,
        )


class AsynchronousEAMSGD(AsynchronousDistributedTrainer):
    """Asynchronous EASGD with Nesterov momentum on the workers (Zhang et al. 2015, Alg. 2).

    ``momentum`` defaults to 0.7, not the paper's and Distributed Keras' 0.9: the momentum
    multiplies every local step by up to ``1 / (1 - momentum)``, on top of the local
    optimizer's own averaging, and with Adam 0.9 overshot (0.917 on digits against 0.961 with
    0.7). Plain SGD gains from the larger momentum (0.92 with 0.9, 0.84 with 0.7, as much as
    SingleTrainer's 0.85): pass ``momentum=0.9`` with ``"sgd"`` (docs/migration.md).
    """

    def __init__(
        self,
        keras_model: Any,
        worker_optimizer: Any,
        loss: Any,
        metrics: Any = ("accuracy",),
        num_workers: int = 2,
        batch_size: int = 32,
        features_col: Columns = "features",
        label_col: Columns = "label",
        communication_window: int = 10,
        rho: float = 5.0,
        learning_rate: float = 0.01,
        momentum: float = 0.7,
        master_port: int = 5000,
        num_epoch: int = 1,
        **extras: Any,
    ) -> None:
        super().__init__(
            keras_model,
            worker_optimizer,
            loss,
            metrics,
            num_workers,
            batch_size,
            features_col,
            label_col,
            num_epoch,
            master_port,
            algorithm="eamsgd",
            rho=rho,
            learning_rate=learning_rate,
            momentum=momentum,
            communication_window=communication_window,
            **extras,
        )


class DOWNPOUR(AsynchronousDistributedTrainer):
    """Asynchronous DOWNPOUR SGD (Dean et al. 2012).

    ``learning_rate`` is accepted for compatibility with Distributed Keras scripts, where it
    had no effect on DOWNPOUR either: the worker optimizer's learning rate governs the steps.
    """

    def __init__(
        self,
        keras_model: Any,
        worker_optimizer: Any,
        loss: Any,
        metrics: Any = ("accuracy",),
        num_workers: int = 2,
        batch_size: int = 1000,
        features_col: Columns = "features",
        label_col: Columns = "label",
        communication_window: int = 5,
        master_port: int = 5000,
        num_epoch: int = 1,
        learning_rate: float = 0.01,
        **extras: Any,
    ) -> None:
        if learning_rate != 0.01:
            warnings.warn(
                "DOWNPOUR's learning_rate has no effect (as in Distributed Keras); set the "
                "learning rate of worker_optimizer instead",
                stacklevel=2,
            )
        super().__init__(
            keras_model,
            worker_optimizer,
            loss,
            metrics,
            num_workers,
            batch_size,
            features_col,
            label_col,
            num_epoch,
            master_port,
            algorithm="downpour",
            communication_window=communication_window,
            **extras,
        )


class ADAG(AsynchronousDistributedTrainer):
    """Asynchronous distributed adaptive gradients (Hermans 2017).

    ``communication_window`` defaults to ``num_workers`` (Distributed Keras: 12). ADAG commits
    each worker's progress divided by the window, so the center moves at ``num_workers /
    communication_window`` of one worker's pace: 2 workers with a window of 12 reached 0.88 on
    digits where DOWNPOUR reached 0.97 (docs/migration.md).
    """

    def __init__(
        self,
        keras_model: Any,
        worker_optimizer: Any,
        loss: Any,
        metrics: Any = ("accuracy",),
        num_workers: int = 2,
        batch_size: int = 32,
        features_col: Columns = "features",
        label_col: Columns = "label",
        num_epoch: int = 1,
        communication_window: int | None = None,
        master_port: int = 5000,
        **extras: Any,
    ) -> None:
        if communication_window is None:
            communication_window = num_workers
        super().__init__(
            keras_model,
            worker_optimizer,
            loss,
            metrics,
            num_workers,
            batch_size,
            features_col,
            label_col,
            num_epoch,
            master_port,
            algorithm="adag",
            communication_window=communication_window,
            **extras,
        )


class DynSGD(AsynchronousDistributedTrainer):
    """Staleness-aware asynchronous SGD (Jiang et al. 2017)."""

    def __init__(
        self,
        keras_model: Any,
        worker_optimizer: Any,
        loss: Any,
        metrics: Any = ("accuracy",),
        num_workers: int = 2,
        batch_size: int = 32,
        features_col: Columns = "features",
        label_col: Columns = "label",
        num_epoch: int = 1,
        communication_window: int = 5,
        master_port: int = 5000,
        **extras: Any,
    ) -> None:
        super().__init__(
            keras_model,
            worker_optimizer,
            loss,
            metrics,
            num_workers,
            batch_size,
            features_col,
            label_col,
            num_epoch,
            master_port,
            algorithm="dynsgd",
            communication_window=communication_window,
            **extras,
        )


class AveragingTrainer(SynchronizedDistributedTrainer):
    """Synchronous model averaging every ``communication_window`` steps.

    Distributed Keras averaged once, at the end; a ``communication_window`` larger than a
    worker's steps over the whole run reproduces that (keep ``idle_timeout`` above the run's
    duration), and shorter windows (the default) average periodically.
    """

    def __init__(
        self,
        keras_model: Any,
        worker_optimizer: Any,
        loss: Any,
        metrics: Any = ("accuracy",),
        features_col: Columns = "features",
        label_col: Columns = "label",
        num_epoch: int = 1,
        batch_size: int = 32,
        num_workers: int = 2,
        *,
        communication_window: int = 10,
        master_port: int = 5000,
        **extras: Any,
    ) -> None:
        super().__init__(
            keras_model,
            worker_optimizer,
            loss,
            metrics,
            num_workers,
            batch_size,
            features_col,
            label_col,
            num_epoch,
            master_port,
            algorithm="averaging",
            communication_window=communication_window,
            **extras,
        )


AEASGD = AsynchronousEASGD
EAMSGD = AsynchronousEAMSGD
