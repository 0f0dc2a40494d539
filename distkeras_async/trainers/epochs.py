"""Global epochs on the driver: validation of the center, Keras callbacks, the Keras History.

Workers train their partitions independently; each tells the parameter server when it
finished a pass over its partition, with that epoch's logs (``Report.epoch``). **Global epoch
e ends when every worker finished its e-th pass** (a worker that finished training without
one, e.g. an empty partition, does not hold it up). At that moment the driver loads the
center into a driver-side copy of the model, evaluates it on the validation data, and runs
the callbacks' ``on_epoch_end`` with the workers' epoch logs averaged plus ``val_*``, as
``model.fit`` does; then ``on_epoch_begin`` of the next epoch. What a callback decides
reaches the workers through the server's replies (:meth:`ParameterServer.request`): a stop
(``model.stop_training``, e.g. ``EarlyStopping``) and a learning rate (the driver model's
optimizer rate, e.g. ``LearningRateScheduler`` or ``ReduceLROnPlateau``).

The driver has no batches: ``on_train_batch_*`` hooks are not called (see docs/trainers.md).
Callbacks run in one background thread while the Spark job runs, then in the caller's thread
for the epochs that ended with the job, never in two threads at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from distkeras_async.server.running import RunningServer
from distkeras_async.server.stats import ServerStats

logger = logging.getLogger(__name__)

# How often the driver looks for finished epochs: a stats snapshot costs microseconds.
POLL_SECONDS = 0.1

# The reporter's own keys, not metrics of the model.
_NOT_METRICS = frozenset({"samples", "steps"})


def epoch_logs(stats: ServerStats, epoch: int, num_workers: int) -> dict[str, float] | None:
    """The workers' logs of ``epoch`` averaged, once every worker finished it, else None.

    See :meth:`ServerStats.epoch_complete` for when an epoch ended.
    """
    if not stats.epoch_complete(epoch, num_workers):
        return None
    reached = [w.epochs[epoch] for w in stats.workers.values() if epoch in w.epochs]
    keys = dict.fromkeys(k for logs in reached for k in logs if k not in _NOT_METRICS)
    return {k: float(np.mean([logs[k] for logs in reached if k in logs])) for k in keys}


class Validation:
    """Validation data on the driver: inputs, targets and optional sample weights.

    On TensorFlow the batches are built once as a ``tf.data.Dataset``: ``evaluate`` on numpy
    arrays rebuilds its input pipeline at every call, which cost 95 ms per epoch for the 360
    digits against 15-20 ms for the prebuilt dataset (measured here), most of an epoch's
    validation.
    """

    def __init__(
        self,
        x: Sequence[np.ndarray],
        y: Sequence[np.ndarray],
        sample_weight: np.ndarray | None = None,
        batch_size: int = 32,
    ) -> None:
        self.x, self.y, self.sample_weight = list(x), list(y), sample_weight
        self.batch_size = batch_size
        self._data: Any = None

    def __len__(self) -> int:
        return len(self.x[0]) if self.x else 0

    def evaluate(self, model: Any) -> dict[str, float]:
        """``val_*`` logs of ``model`` on this data, batch-wise (Keras' ``evaluate``)."""
        data = self._batches(model)
        if isinstance(data, dict):
            logs = model.evaluate(**data, verbose=0, return_dict=True)
        else:
            logs = model.evaluate(data, verbose=0, return_dict=True)
        return {f"val_{k}": float(v) for k, v in logs.items()}

    def _batches(self, model: Any) -> Any:
        """The data as ``evaluate`` takes it: a dataset (TensorFlow) or numpy keywords."""
        if self._data is not None:
            return self._data
        import keras

        from distkeras_async.worker.inputs import shape_inputs

        shaped = shape_inputs(model, self.x)
        x = shaped[0] if len(shaped) == 1 else tuple(shaped)
        y = self.y[0] if len(self.y) == 1 else tuple(self.y)
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            parts = (x, y) if self.sample_weight is None else (x, y, self.sample_weight)
            self._data = tf.data.Dataset.from_tensor_slices(parts).batch(self.batch_size)
        else:
            self._data = {
                "x": x,
                "y": y,
                "sample_weight": self.sample_weight,
                "batch_size": self.batch_size,
            }
        return self._data


class EpochCallbacks:
    """Runs the Keras callbacks at every global epoch, against the center.

    The order is ``model.fit``'s: :meth:`train_begin` before the parameter server exists (a
    ``BackupAndRestore`` there restores the weights and the epoch to continue from), then
    :meth:`watch` once it runs, then :meth:`end` after the training job.

    Args:
        model: the driver-side model (compiled with the trainer's optimizer, loss and
            metrics); the callbacks see it as ``self.model``.
        callbacks: the user's Keras callbacks.
        num_workers: workers in the run.
        num_epoch: epochs each worker trains (``params["epochs"]`` of the callbacks).
        validation: data to evaluate the center on at each epoch's end, or None.
        on_epoch: called with ``(epoch, logs)`` after the callbacks (the progress bar).
        device: the Keras device the background thread evaluates on (a device scope holds
            for one thread only; the caller's thread sets its own).
    """

    def __init__(
        self,
        model: Any,
        callbacks: Sequence[Any],
        num_workers: int,
        num_epoch: int,
        validation: Validation | None = None,
        on_epoch: Callable[[int, Mapping[str, float]], None] | None = None,
        device: str | None = None,
    ) -> None:
        import keras

        self.server: RunningServer | None = None
        self.model = model
        self.num_workers = num_workers
        self.num_epoch = num_epoch
        self.validation = validation
        self.on_epoch = on_epoch
        self.device = device
        self.history = keras.callbacks.History()
        self.callbacks = keras.callbacks.CallbackList(
            [*callbacks, self.history], model=model, epochs=num_epoch, verbose=0
        )
        # With neither callbacks nor validation, the epoch needs no weights on the driver.
        self._needs_center = bool(callbacks) or validation is not None
        self.first_epoch = 0  # > 0 when BackupAndRestore restored an interrupted run
        self.epochs_done = 0  # global epochs of this run that ended
        self.stopped = False
        self.error: BaseException | None = None
        self._rate = _rate(model)
        self._logs: dict[str, float] = {}
        self._quit = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="distkeras-epochs", daemon=True)

    def train_begin(self) -> int:
        """``on_train_begin``; returns the epoch to start from (0, or a restored run's)."""
        self.model.stop_training = False
        self.callbacks.on_train_begin()
        self.first_epoch = int(getattr(self.model, "_initial_epoch", None) or 0)
        return self.first_epoch

    @property
    def epochs_to_run(self) -> int:
        """Epochs each worker trains in this run."""
        return max(self.num_epoch - self.first_epoch, 0)

    def watch(self, server: RunningServer) -> None:
        """The first ``on_epoch_begin``; then watch ``server`` for finished epochs."""
        self.server = server
        if self._needs_center:
            server.keep_epoch_centers()
        self._begin_epoch(self.first_epoch)
        self._thread.start()

    def end(self, weights: Sequence[np.ndarray]) -> list[np.ndarray]:
        """After the job: the epochs that ended with it, then ``on_train_end``.

        Returns:
            The weights to return: the final center, unless a callback replaced them in
            ``on_train_end`` (``EarlyStopping(restore_best_weights=True)``).

        Raises:
            Exception: what a callback raised, if one did.
        """
        self.catch_up()
        self.model.set_weights(weights)
        if self.error is None:
            self._run_guarded(lambda: self.callbacks.on_train_end(self._logs))
        if self.error is not None:
            raise self.error
        return list(self.model.get_weights())

    def catch_up(self) -> None:
        """After the job: stop watching and run the epochs that ended with it (idempotent).

        The run calls it before its final checkpoint, so every ``on_epoch_end`` has run by
        then, as in ``fit``; a callback's error is raised by :meth:`end`.
        """
        self._quit.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.error is None and self.server is not None:
            self._run_guarded(self._catch_up)

    def close(self) -> None:
        """Stop watching (the run failed); no more callbacks are called."""
        self._quit.set()
        if self._thread.is_alive():
            self._thread.join()

    # -- the watcher -------------------------------------------------------------------

    def _watch(self) -> None:
        import keras

        scope = contextlib.nullcontext() if self.device is None else keras.device(self.device)
        with scope:
            self._watch_epochs()

    def _watch_epochs(self) -> None:
        if self.validation is not None and len(self.validation):
            # The first evaluation traces the model's test step (0.4 s for the digits MLP):
            # here it overlaps the Spark job's start instead of delaying the first epoch.
            self._run_guarded(self._warm_up)
        while not self._quit.wait(POLL_SECONDS) and self.error is None:
            self._run_guarded(self._catch_up)

    def _warm_up(self) -> None:
        assert self.validation is not None
        self.validation.evaluate(self.model)

    def _run_guarded(self, work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as exc:  # a user's callback: fail the run with its error
            self.error = exc
            logger.error("the epoch callbacks failed; stopping the workers: %r", exc)
            if self.server is not None and self.server.running:
                self.server.request(stop=True)

    def _catch_up(self) -> None:
        """Run every global epoch that ended since the last look, in order."""
        server = self.server
        assert server is not None
        while not self.stopped and self.epochs_done < self.epochs_to_run and server.running:
            stats = server.stats()
            logs = epoch_logs(stats, self.epochs_done + 1, self.num_workers)
            if logs is None:
                # The epochs that ended before a worker diverged ran first, as in fit.
                self._diverged(stats)
                return
            self._end_epoch(logs)

    def _diverged(self, stats: ServerStats) -> bool:
        """A worker's loss diverged under ``TerminateOnNaN``: let it stop the run, as in fit."""
        import keras

        from distkeras_async.worker.requests import DIVERGED_METRIC

        for w in stats.workers.values():
            step = w.last_metrics.get(DIVERGED_METRIC)
            if step is None:
                continue
            for callback in self.callbacks.callbacks:
                if isinstance(callback, keras.callbacks.TerminateOnNaN):
                    callback.on_batch_end(int(step), {"loss": float("nan")})
            self.stopped = True
            self._request(stop=True)
            return True
        return False

    def _request(self, **control: Any) -> None:
        assert self.server is not None
        self.server.request(**control)

    def _end_epoch(self, logs: dict[str, float]) -> None:
        assert self.server is not None
        epoch = self.first_epoch + self.epochs_done  # Keras' epoch index
        if self._needs_center:
            # The center as the epoch ended; the current one if the server did not keep it.
            center = self.server.take_epoch_center(self.epochs_done + 1)
            self.model.set_weights(self.server.center if center is None else center)
        if self.validation is not None and len(self.validation):
            logs.update(self.validation.evaluate(self.model))
        self.callbacks.on_epoch_end(epoch, logs)
        self._logs = logs
        self.epochs_done += 1
        if self.on_epoch is not None:
            self.on_epoch(epoch, logs)
        if self.model.stop_training:
            self.stopped = True
            self._request(stop=True)
        elif self.epochs_done < self.epochs_to_run:
            self._begin_epoch(epoch + 1)

    def _begin_epoch(self, epoch: int) -> None:
        self.callbacks.on_epoch_begin(epoch)
        self._push_rate()

    def _push_rate(self) -> None:
        """Send the driver model's learning rate to the workers when a callback changed it."""
        rate = _rate(self.model)
        if rate is not None and rate != self._rate:
            self._request(learning_rate=rate)
            self._rate = rate


def _rate(model: Any) -> float | None:
    from distkeras_async.worker.requests import learning_rate

    rate = learning_rate(model)
    return rate if rate is not None and math.isfinite(rate) else None
