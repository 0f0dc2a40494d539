"""The worker loop shared by every worker: local steps, exchanges, reports, the final commit.

The loop knows nothing of Keras or Spark: it drives a :class:`LocalModel` (the Keras worker
in :mod:`distkeras_async.worker.keras_worker` is one; a numpy model in the tests is another) and a
:class:`~distkeras_async.algorithm.ServerHandle`. Customising a worker means providing
another LocalModel (its own training step, its own data preparation), not copying this loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
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


class WorkerSession:
    """The exchange schedule of one worker, driven step by step.

    :func:`run_worker` drives it from a plain loop; the Keras worker drives it from a
    ``model.fit`` callback, so local steps run at ``fit``'s own speed. Either way the rule's
    ``worker_start`` runs first, ``worker_exchange`` after every
    ``algorithm.communication_window`` local steps, and ``worker_finish`` once at the end when
    local steps remain uncommitted (or no exchange happened), so no local work is lost.

    Args:
        model: the local model (only ``get_flat``/``set_flat`` are used here).
        algorithm: this worker's instance of the algorithm (its own state).
        server: the parameter server connection.
        worker_id: recorded in the history.
        on_exchange: called after each exchange with the latest metrics plus ``steps``, the
            number of local steps so far (e.g. to report them).
        first_step: the number of the first local step: a retried task that resumes after
            ``first_step`` steps already applied continues the numbering.
        on_progress: called right before each exchange with the number of local steps so far
            (counted from the first of the partition) and the records of the steps since the
            previous exchange, so the commit can carry them.
        steps_per_epoch: local steps in one pass over the partition; with ``on_epoch``, the
            session closes an epoch every this many steps.
        on_epoch: called with ``(epoch, logs)`` after the last step of each pass (epochs
            counted from 1): the step's metrics when they are running means over the epoch
            (``running_means``, as ``model.fit`` reports them), else the mean of the epoch's
            step metrics.
        running_means: whether the step metrics are already running means over the epoch.
        after_exchange: called after the start and every exchange; returning True asks the
            session to stop (``stopped`` is then set, and the driver of the loop ends it).
        exchange_at_epoch_end: also exchange after the last step of each pass (when steps
            remain uncommitted), so the center holds the whole epoch when the driver's
            callbacks and validation see it.
        on_diverged: called with ``(step, loss)`` when a step's ``loss`` is NaN or infinite,
            before any exchange could send the weights that made it; it raises to fail the
            run, or returns to stop this worker without committing the diverged weights.
    """

    def __init__(
        self,
        model: LocalModel,
        algorithm: Algorithm,
        server: ServerHandle,
        *,
        worker_id: int = 0,
        on_exchange: Callable[[Mapping[str, float]], None] | None = None,
        first_step: int = 0,
        on_progress: Callable[[int, Sequence[StepRecord]], None] | None = None,
        steps_per_epoch: int | None = None,
        on_epoch: Callable[[int, Mapping[str, float]], None] | None = None,
        running_means: bool = False,
        after_exchange: Callable[[], bool] | None = None,
        on_diverged: Callable[[int, float], None] | None = None,
        exchange_at_epoch_end: bool = False,
    ) -> None:
        self.model = model
        self.algorithm = algorithm
        self.server = server
        self.worker_id = worker_id
        self.on_exchange = on_exchange
        self.first_step = first_step
        self.on_progress = on_progress
        self.history: list[StepRecord] = []
        self._reported = 0  # history records already handed to on_progress
        self.exchanges = 0
        self._pending = 0
        self._metrics: Mapping[str, float] = {}
        self.steps_per_epoch = steps_per_epoch
        self.on_epoch = on_epoch
        self.running_means = running_means
        self.after_exchange = after_exchange
        self.on_diverged = on_diverged
        self.exchange_at_epoch_end = exchange_at_epoch_end
        self.stopped = False
        self.diverged = False
        self._buffer: np.ndarray | None = None
        self._epoch_sums: dict[str, float] = {}
        self._epoch_steps = 0

    @property
    def steps(self) -> int:
        """Local steps so far, counted from the first step of the partition."""
        return self.first_step + len(self.history)

    def start(self) -> None:
        """Run the rule's ``worker_start`` and adopt the weights it returns."""
        self.model.set_flat(self.algorithm.worker_start(self.model.get_flat(), self.server))
        if self.after_exchange is not None and self.after_exchange():
            self.stopped = True

    def step_done(self, metrics: Mapping[str, float]) -> None:
        """Record a finished local step; exchange when the window is full."""
        self._metrics = metrics
        self.history.append(StepRecord(self.worker_id, self.steps, time.time(), dict(metrics)))
        loss = metrics.get("loss")
        if self.on_diverged is not None and loss is not None and not math.isfinite(loss):
            self.on_diverged(self.steps - 1, loss)
            # Stopping: the local weights are not finite, so they are never committed.
            self.stopped = self.diverged = True
            return
        self._pending += 1
        if self._pending >= self.algorithm.communication_window or self._epoch_ends():
            self._progress()
            weights = self._exchange_weights()
            self.model.set_flat(self.algorithm.worker_exchange(weights, self.server))
            self._pending = 0
            self.exchanges += 1
            if self.on_exchange is not None:
                self.on_exchange({**metrics, "steps": float(self.steps)})
            if self.after_exchange is not None and self.after_exchange():
                self.stopped = True
        self._epoch_step(metrics)

    def _exchange_weights(self) -> np.ndarray:
        """The local weights for an exchange, in one buffer the session reuses.

        A model with ``read_flat(out)`` fills the buffer in place: at 10M parameters a new
        40 MB array per exchange costs more in page faults than reading the weights does.
        A rule gets the buffer for the duration of ``worker_exchange`` only (see
        :meth:`Algorithm.worker_exchange`).
        """
        reader = getattr(self.model, "read_flat", None)
        if reader is None:
            return self.model.get_flat()
        if self._buffer is None:
            self._buffer = self.model.get_flat()
            return self._buffer
        result: np.ndarray = reader(self._buffer)
        return result

    def _epoch_ends(self) -> bool:
        """Whether this step closes a pass and the pass's steps must reach the center now."""
        return bool(
            self.exchange_at_epoch_end
            and self.steps_per_epoch
            and self.steps % self.steps_per_epoch == 0
        )

    def _epoch_step(self, metrics: Mapping[str, float]) -> None:
        """Accumulate the epoch's metrics; close the epoch after its last step."""
        if self.on_epoch is None or not self.steps_per_epoch:
            return
        self._epoch_steps += 1
        if not self.running_means:
            for key, value in metrics.items():
                self._epoch_sums[key] = self._epoch_sums.get(key, 0.0) + value
        epoch, step = divmod(self.steps, self.steps_per_epoch)
        if step:
            return
        logs = (
            dict(metrics)
            if self.running_means
            else {k: v / self._epoch_steps for k, v in self._epoch_sums.items()}
        )
        self._epoch_sums, self._epoch_steps = {}, 0
        self.on_epoch(epoch, logs)

    def finish(self) -> None:
        """Commit what remains (``worker_finish``), unless the last step just exchanged.

        A session whose loss diverged commits nothing more.
        """
        if self.diverged:
            return
        if self._pending or not self.exchanges:
            self._progress()
            self.model.set_flat(self.algorithm.worker_finish(self.model.get_flat(), self.server))
            self._pending = 0
            if self.on_exchange is not None and self._metrics:
                self.on_exchange({**self._metrics, "steps": float(self.steps)})

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.steps, self.history[self._reported :])
            self._reported = len(self.history)


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

    Algorithms that act on every step (EAMSGD) get each step through ``worker_step``; the
    others' steps run without flattening the weights. See :class:`WorkerSession` for the
    exchange schedule.

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
    session = WorkerSession(model, algorithm, server, worker_id=worker_id, on_exchange=on_exchange)
    return run_session(session, batches)


def run_session(session: WorkerSession, batches: Iterable[Any]) -> list[StepRecord]:
    """Drive ``session`` over ``batches`` with its model's ``train_step`` (see run_worker)."""
    model, algorithm = session.model, session.algorithm
    session.start()
    every_step = algorithm.acts_every_step()
    for batch in batches:
        if session.stopped:
            break
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
        session.step_done(metrics)
    session.finish()
    return session.history
