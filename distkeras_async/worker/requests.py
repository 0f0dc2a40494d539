"""What the driver asks of a worker, and what a worker tells the driver about its epochs.

The driver's callbacks (a schedule, ``ReduceLROnPlateau``, ``EarlyStopping``) run on the
Spark driver; their decisions reach the workers on every reply of the parameter server
(``Control``), and a worker applies them after its next exchange. The other way, a worker
reports each finished pass over its partition, and a loss that diverged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from distkeras_async.errors import TrainingDivergedError
from distkeras_async.worker.exchange import SessionHooks
from distkeras_async.worker.protocols import ExchangeClient

logger = logging.getLogger(__name__)

# The metric a worker reports when its loss diverged under TerminateOnNaN: the local step.
DIVERGED_METRIC = "diverged_at_step"


class DriverRequests(SessionHooks):
    """A session's hooks between a worker and the driver, through the server.

    The driver's callbacks (a schedule, ``ReduceLROnPlateau``, ``EarlyStopping``) run on the
    Spark driver; their decisions reach the workers on every reply of the server, and a worker
    applies them after its next exchange (:meth:`after_exchange`). The other way, it reports
    each finished pass over the partition (:meth:`on_epoch`) and a diverged loss
    (:meth:`on_diverged`): it closes epochs and checks divergence.

    Args:
        client: the worker's connection.
        model: the worker's Keras model (its optimizer's learning rate).
        terminate_on_nan: the driver runs ``TerminateOnNaN``: a diverged loss stops the run
            instead of failing it.
    """

    checks_divergence = True
    closes_epochs = True

    def __init__(self, client: ExchangeClient, model: Any, terminate_on_nan: bool = False) -> None:
        self.client = client
        self.model = model
        self.terminate_on_nan = terminate_on_nan
        self.rate: float | None = None  # the rate the driver set, once it set one

    def after_exchange(self) -> bool:
        """Apply a new learning rate; whether the driver asked the workers to stop."""
        control = self.client.control
        if control.learning_rate is not None and control.learning_rate != self.rate:
            set_learning_rate(self.model, control.learning_rate)
            self.rate = control.learning_rate
        return control.stop

    def with_rate(self, metrics: Mapping[str, float]) -> Mapping[str, float]:
        """``metrics``, plus the learning rate once the driver set one (for the history).

        Called at every local step: without a rate from the driver, ``metrics`` as they are.
        """
        if self.rate is None:
            return metrics
        return {**metrics, "learning_rate": self.rate}

    def on_diverged(self, step: int, loss: float) -> None:
        """The loss of local ``step`` is not finite: fail the run, or ask the driver to stop it.

        Raises:
            TrainingDivergedError: unless the driver runs ``TerminateOnNaN``.
        """
        client = self.client
        if not self.terminate_on_nan:
            raise TrainingDivergedError(
                f"worker {client.worker_id} (attempt {client.attempt}): the loss became {loss} "
                f"at local step {step}: training diverged. Lower the learning rate, clip the "
                "gradients or check the data; with keras.callbacks.TerminateOnNaN() among the "
                "callbacks the run stops instead and returns the last finite center"
            )
        logger.warning("worker %d: loss %s at step %d; stopping", client.worker_id, loss, step)
        client.report({DIVERGED_METRIC: float(step)})

    def on_epoch(self, epoch: int, logs: Mapping[str, float]) -> None:
        """Send the logs of a finished pass over the partition, with the current rate."""
        rate = learning_rate(self.model)
        extra = {} if rate is None else {"learning_rate": rate}
        self.client.report({**logs, **extra}, epoch=epoch)


def learning_rate(model: Any) -> float | None:
    """The current learning rate of ``model``'s optimizer (None without one)."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()  # JAX's fit holds the optimizer's variables apart during an epoch
    # float() of the variable, not ops.convert_to_numpy: that path raises a numpy 2
    # DeprecationWarning (copy keyword) from Keras' TensorFlow backend at every call.
    return float(optimizer.learning_rate)


def set_learning_rate(model: Any, rate: float) -> None:
    """Set the learning rate of ``model``'s optimizer, as Keras' own schedules do.

    Raises:
        ValueError: if the optimizer follows a ``LearningRateSchedule`` of its own, which a
            rate from the driver cannot replace.
    """
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()  # JAX's fit then reads the optimizer's variables again before its next step
    try:
        model.optimizer.learning_rate = rate
    except TypeError as exc:
        raise ValueError(
            "a driver callback set the learning rate, but the worker optimizer follows a "
            f"LearningRateSchedule of its own ({exc}): use one or the other"
        ) from exc
