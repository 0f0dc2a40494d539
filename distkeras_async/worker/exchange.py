"""The worker loop shared by every worker: local steps, exchanges, reports, the final commit.

The loop knows nothing of Keras or Spark: it drives a :class:`LocalModel` (the Keras worker
in :mod:`distkeras_async.worker.keras_worker` is one; a numpy model in the tests is another) and a
:class:`~distkeras_async.algorithm.ServerHandle`. Customising a worker means providing
another LocalModel (its own training step, its own data preparation), not copying this loop.
What the loop tells the code around it (reports, epochs, a diverged loss) goes through one
:class:`SessionHooks` object, as Keras's loop calls one ``CallbackList``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from distkeras_async.algorithm import Algorithm, ServerHandle
from distkeras_async.worker.declarations import fill_declarations


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


class SessionHooks:
    """What a :class:`WorkerSession` tells the code around it, as one object.

    As Keras hands one ``CallbackList`` to its training loop, a session takes one hooks
    object; :class:`HookList` combines several. Every method does nothing by default:
    subclass this and define the ones you need.

    Two declarations say what the session does besides calling the methods. A subclass may
    set them; one it leaves unset is True when the subclass defines the matching method
    (:mod:`distkeras_async.worker.declarations`), so defining :meth:`on_diverged` is enough
    to have divergence checked:

    Attributes:
        checks_divergence: the session checks every step's ``loss``; when it is NaN or
            infinite it calls :meth:`on_diverged` and stops without committing. False (the
            default): a non-finite loss is recorded like any other.
        closes_epochs: the session counts passes over the partition (with its
            ``steps_per_epoch``) and calls :meth:`on_epoch` after the last step of each.
            False (the default): no epoch logs are gathered.
    """

    checks_divergence: bool = False
    closes_epochs: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fill_declarations(
            cls,
            SessionHooks,
            {"checks_divergence": ("on_diverged",), "closes_epochs": ("on_epoch",)},
        )

    def on_progress(self, steps: int, records: Sequence[StepRecord]) -> None:
        """Right before each exchange: the steps so far and the records since the last one.

        Args:
            steps: local steps so far, counted from the first of the partition.
            records: the steps since the previous exchange, so the commit can carry them.
        """

    def on_exchange(self, metrics: Mapping[str, float]) -> None:
        """After each exchange (and the final commit): the latest step's metrics.

        ``metrics`` also holds ``steps``, the number of local steps so far (e.g. to report
        them).
        """

    def after_exchange(self) -> bool:
        """After the start and every exchange: whether the session should stop (default no).

        Returning True sets the session's ``stopped``; whoever drives its loop ends it.
        """
        return False

    def on_epoch(self, epoch: int, logs: Mapping[str, float]) -> None:
        """After the last step of each pass over the partition (with :attr:`closes_epochs`).

        Args:
            epoch: the pass, counted from 1.
            logs: the step's metrics when they are running means over the epoch (as
                ``model.fit`` reports them), else the mean of the epoch's step metrics.
        """

    def on_diverged(self, step: int, loss: float) -> None:
        """A step's loss is not finite (with :attr:`checks_divergence`).

        Called before any exchange could send the weights that made it. Raise to fail the
        run; return to stop this worker without committing the diverged weights.

        Args:
            step: the local step, counted from the first of the partition.
            loss: its loss (NaN or infinite).
        """


class HookList(SessionHooks):
    """Several hooks as one: each method calls every hook's, in the order given.

    It checks divergence and closes epochs when any of its hooks does; :meth:`after_exchange`
    asks every hook (each may act on the reply, e.g. apply a learning rate) and stops when
    any says stop; an exception from one hook's method propagates at once, so a hook after
    it is not called (an ``on_diverged`` that raises fails the run).

    Args:
        hooks: the hooks, in calling order.
    """

    def __init__(self, hooks: Iterable[SessionHooks]) -> None:
        self.hooks = tuple(hooks)
        self.checks_divergence = any(hook.checks_divergence for hook in self.hooks)
        self.closes_epochs = any(hook.closes_epochs for hook in self.hooks)

    def on_progress(self, steps: int, records: Sequence[StepRecord]) -> None:
        """Every hook's :meth:`SessionHooks.on_progress`, in order."""
        for hook in self.hooks:
            hook.on_progress(steps, records)

    def on_exchange(self, metrics: Mapping[str, float]) -> None:
        """Every hook's :meth:`SessionHooks.on_exchange`, in order."""
        for hook in self.hooks:
            hook.on_exchange(metrics)

    def after_exchange(self) -> bool:
        """Every hook's :meth:`SessionHooks.after_exchange`; whether any asked to stop."""
        stop = False
        for hook in self.hooks:
            stop = hook.after_exchange() or stop  # every hook is asked, even after a stop
        return stop

    def on_epoch(self, epoch: int, logs: Mapping[str, float]) -> None:
        """Every hook's :meth:`SessionHooks.on_epoch`, in order."""
        for hook in self.hooks:
            hook.on_epoch(epoch, logs)

    def on_diverged(self, step: int, loss: float) -> None:
        """Every hook's :meth:`SessionHooks.on_diverged`, in order (until one raises)."""
        for hook in self.hooks:
            hook.on_diverged(step, loss)


class _ExchangeCallback(SessionHooks):
    """:func:`run_worker`'s ``on_exchange`` function as hooks."""

    def __init__(self, on_exchange: Callable[[Mapping[str, float]], None]) -> None:
        self._on_exchange = on_exchange

    def on_exchange(self, metrics: Mapping[str, float]) -> None:
        self._on_exchange(metrics)


class WorkerSession:
    """The exchange schedule of one worker, driven step by step.

    :func:`run_worker` drives it from a plain loop; the Keras worker drives it from a
    ``model.fit`` callback, so local steps run at ``fit``'s own speed. Either way the rule's
    ``worker_start`` runs first, ``worker_exchange`` after every
    ``algorithm.communication_window`` local steps, and ``worker_finish`` once at the end when
    local steps remain uncommitted (or no exchange happened), so no local work is lost.
    What happens around the exchanges (reports, the driver's requests, epochs, a diverged
    loss) is its ``hooks``' (see :class:`SessionHooks` for when each is called).

    Args:
        model: the local model (only ``get_flat``/``set_flat`` are used here).
        algorithm: this worker's instance of the algorithm (its own state).
        server: the parameter server connection.
        worker_id: recorded in the history.
        first_step: the number of the first local step: a retried task that resumes after
            ``first_step`` steps already applied continues the numbering.
        steps_per_epoch: local steps in one pass over the partition; with hooks that close
            epochs (:attr:`SessionHooks.closes_epochs`), the session closes an epoch every
            this many steps.
        running_means: whether the step metrics are already running means over the epoch.
        exchange_at_epoch_end: also exchange after the last step of each pass (when steps
            remain uncommitted), so the center holds the whole epoch when the driver's
            callbacks and validation see it.
        hooks: what the session calls around its steps and exchanges (default: none; pass a
            :class:`HookList` for several).
    """

    def __init__(
        self,
        model: LocalModel,
        algorithm: Algorithm,
        server: ServerHandle,
        *,
        worker_id: int = 0,
        first_step: int = 0,
        steps_per_epoch: int | None = None,
        running_means: bool = False,
        exchange_at_epoch_end: bool = False,
        hooks: SessionHooks | None = None,
    ) -> None:
        self.model = model
        self.algorithm = algorithm
        self.server = server
        self.worker_id = worker_id
        self.first_step = first_step
        self.hooks = SessionHooks() if hooks is None else hooks
        self.history: list[StepRecord] = []
        self._reported = 0  # history records already handed to on_progress
        self.exchanges = 0
        self._pending = 0
        self._metrics: Mapping[str, float] = {}
        self.steps_per_epoch = steps_per_epoch
        self.running_means = running_means
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
        if self.hooks.after_exchange():
            self.stopped = True

    def step_done(self, metrics: Mapping[str, float]) -> None:
        """Record a finished local step; exchange when the window is full."""
        self._metrics = metrics
        self.history.append(StepRecord(self.worker_id, self.steps, time.time(), dict(metrics)))
        loss = metrics.get("loss")
        if self.hooks.checks_divergence and loss is not None and not math.isfinite(loss):
            self.hooks.on_diverged(self.steps - 1, loss)
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
            self.hooks.on_exchange({**metrics, "steps": float(self.steps)})
            if self.hooks.after_exchange():
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
        if not self.hooks.closes_epochs or not self.steps_per_epoch:
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
        self.hooks.on_epoch(epoch, logs)

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
            if self._metrics:
                self.hooks.on_exchange({**self._metrics, "steps": float(self.steps)})

    def _progress(self) -> None:
        self.hooks.on_progress(self.steps, self.history[self._reported :])
        self._reported = len(self.history)


def run_worker(
    model: LocalModel,
    algorithm: Algorithm,
    server: ServerHandle,
    batches: Iterable[Any],
    *,
    worker_id: int = 0,
    on_exchange: Callable[[Mapping[str, float]], None] | None = None,
    hooks: SessionHooks | None = None,
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
        on_exchange: called with the latest metrics after each exchange (e.g. to report them);
            a shorthand for hooks with :meth:`SessionHooks.on_exchange`.
        hooks: the session's hooks (with ``on_exchange``, called before it).

    Returns:
        The history: one record per local step.
    """
    if on_exchange is not None:
        callback = _ExchangeCallback(on_exchange)
        hooks = callback if hooks is None else HookList([hooks, callback])
    session = WorkerSession(model, algorithm, server, worker_id=worker_id, hooks=hooks)
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
