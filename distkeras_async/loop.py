"""The worker loop shared by every worker: local steps, exchanges, reports, the final commit.

The loop knows nothing of Keras or Spark: it drives a :class:`LocalModel` (the Keras worker
in :mod:`distkeras_async.worker` is one; a numpy model in the tests is another) and a
:class:`~distkeras_async.algorithm.ServerHandle`. Customising a worker means providing
another LocalModel (its own training step, its own data preparation), not copying this loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from distkeras_async.algorithm import Algorithm, ServerHandle


class LocalModel(Protocol):
    """What the loop needs from the model a worker trains."""

    def get_flat(self) -> np.ndarray:
        """A fresh flat float32 copy of the local weights."""
        ...

    def set_flat(self, flat: np.ndarray) -> None:
        """Replace the local weights with ``flat`` (copied; the caller may reuse it)."""
        ...

    def train_step(self, batch: Any) -> Mapping[str, float]:
        """One local optimizer step on ``batch``; returns its metrics (``loss`` at least)."""
        ...


@dataclass(slots=True)
class StepRecord:
    """One local step in a worker's history."""

    worker: int
    iteration: int
    timestamp: float
    metrics: dict[str, float] = field(default_factory=dict)


def run_worker(
    model: LocalModel,
    algorithm: Algorithm,
    server: ServerHandle,
    batches: Iterable[Any],
    *,
    worker_id: int = 0,
    on_exchange: Callable[[Mapping[str, float]], None] | None = None,
) -> list[StepRecord]:
    """Train ``model`` on ``batches`` under ``algorithm``'s worker rule.

    The rule's ``worker_start`` runs first, ``worker_exchange`` every
    ``algorithm.communication_window`` steps, and ``worker_finish`` once after the last step
    when local steps remain uncommitted, so no local work is lost. Algorithms that act on every
    step (EAMSGD) get each step through ``worker_step``; the others' steps run without
    flattening the weights.

    Args:
        model: the local model.
        algorithm: this worker's instance of the algorithm (its own state).
        server: the parameter server connection.
        batches: the local data, one item per step.
        worker_id: recorded in the history.
        on_exchange: called with the latest metrics after each exchange (e.g. to report them).

    Returns:
        The history: one record per local step.
    """
    model.set_flat(algorithm.worker_start(model.get_flat(), server))
    window = algorithm.communication_window
    every_step = algorithm.acts_every_step()
    history: list[StepRecord] = []
    pending = 0
    exchanged = False
    metrics: Mapping[str, float] = {}
    for iteration, batch in enumerate(batches):
        if every_step:
            box: list[Mapping[str, float]] = []

            def local_step(
                weights: np.ndarray, batch: Any = batch, box: list[Any] = box
            ) -> np.ndarray:
                model.set_flat(weights)
                box.append(model.train_step(batch))
                return model.get_flat()

            model.set_flat(algorithm.worker_step(model.get_flat(), local_step))
            metrics = box[-1] if box else {}
        else:
            metrics = model.train_step(batch)
        history.append(StepRecord(worker_id, iteration, time.time(), dict(metrics)))
        pending += 1
        if pending == window:
            model.set_flat(algorithm.worker_exchange(model.get_flat(), server))
            pending, exchanged = 0, True
            if on_exchange is not None:
                on_exchange(metrics)
    if pending or not exchanged:
        model.set_flat(algorithm.worker_finish(model.get_flat(), server))
        if on_exchange is not None and metrics:
            on_exchange(metrics)
    return history
