"""The Keras side of one worker: what runs inside a Spark task.

:func:`train_worker` rebuilds the model from its
:class:`~distkeras_async.worker.serialization.ModelSpec`, connects to the parameter server,
and trains its partition under the algorithm's worker rule. For every algorithm that does
not act on each step, the local steps run inside ``model.fit`` and the exchanges happen in a
callback, so a worker pays no per-step overhead that ``model.fit`` does not pay itself.
Algorithms that act on every step (EAMSGD's Nesterov momentum) run through
:func:`~distkeras_async.worker.exchange.run_worker` with ``train_on_batch``.

This module imports Keras lazily and never imports pyspark: :mod:`distkeras_async.spark`
calls it with plain numpy arrays and ids.
"""

from __future__ import annotations

import itertools
import logging
import os
import ssl
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distkeras_async import registry
from distkeras_async.algorithm import Algorithm
from distkeras_async.errors import LayoutMismatchError
from distkeras_async.layout import Layout
from distkeras_async.worker.batches import batch_weight, epoch_batches, epoch_order, pack
from distkeras_async.worker.client import ParameterServerClient
from distkeras_async.worker.exchange import StepRecord, WorkerSession, run_session
from distkeras_async.worker.inputs import check_finite, shape_inputs
from distkeras_async.worker.local_model import KerasLocalModel
from distkeras_async.worker.requests import DriverRequests
from distkeras_async.worker.serialization import ModelSpec, build_model
from distkeras_async.worker.weights import row_weights

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a worker needs, as plain values (it travels inside the Spark job).

    Attributes:
        model_spec: JSON of the :class:`ModelSpec`.
        algorithm: a registered algorithm name, or an Algorithm class.
        hyperparameters: the algorithm's hyperparameters.
        host: the parameter server's address.
        port: the parameter server's port.
        secret: this run's secret.
        num_epoch: passes over the partition.
        batch_size: samples per local step.
        shuffle: reshuffle the partition every epoch.
        features: feature column names (one per model input).
        labels: label column names (one per model output).
        worker_threads: TensorFlow threads per worker (None: the task's cores).
        timeout: seconds any parameter server call may take.
        custom_objects: custom Keras classes and functions, by name.
        worker_class: the :class:`KerasWorker` (sub)class each worker runs.
        tls_ca: PEM CA certificates to verify the server's TLS certificate (None: plain TCP).
        tls_server_hostname: the name expected in that certificate (None: ``host``).
        allow_nonfinite_inputs: let NaN and infinity in the data reach the model.
        on_retry: what a retried attempt of an asynchronous worker does: ``"resume"`` after
            the local steps the server already applied, or ``"restart"`` its partition.
        seed: the seed of the per-epoch shuffle of each worker's rows.
        sample_weight: the column of per-row weights (None: every row weighs 1).
        class_weight: ``{class index: weight}`` for the rows of each class.
        terminate_on_nan: a worker whose loss becomes NaN stops the run gracefully (the
            driver has ``TerminateOnNaN``), instead of failing it.
        exchange_at_epoch_end: also exchange at the end of every pass over the partition
            (the driver runs callbacks or validation on the center then).
    """

    model_spec: str
    algorithm: str | type[Algorithm]
    hyperparameters: Mapping[str, Any]
    host: str
    port: int
    secret: bytes
    num_epoch: int = 1
    batch_size: int = 32
    shuffle: bool = False
    features: tuple[str, ...] = ("features",)
    labels: tuple[str, ...] = ("label",)
    worker_threads: int | None = None
    timeout: float = 120.0
    custom_objects: Mapping[str, Any] = field(default_factory=dict)
    worker_class: type[KerasWorker] | None = None
    tls_ca: str | None = None
    tls_server_hostname: str | None = None
    allow_nonfinite_inputs: bool = False
    on_retry: str = "resume"
    seed: int = 0
    sample_weight: str | None = None
    class_weight: Mapping[int, float] | None = None
    terminate_on_nan: bool = False
    exchange_at_epoch_end: bool = False

    def make_algorithm(self) -> Algorithm:
        """A fresh instance of the plan's algorithm for this worker."""
        return registry.resolve(self.algorithm, **self.hyperparameters)


def limit_threads(threads: int | None) -> None:
    """Limit TensorFlow's thread pools to ``threads`` so co-located workers do not fight.

    TensorFlow accepts this only before its runtime starts; in a Spark Python worker that
    already ran a task it is too late, and the limit set by that first task stays.
    """
    if not threads:
        return
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", str(min(threads, 2)))
    try:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    except (ImportError, RuntimeError) as exc:  # runtime already initialised
        logger.debug("could not set TensorFlow threads: %s", exc)


def _progress(client: ParameterServerClient, steps: int, records: Sequence[StepRecord]) -> None:
    """Before an exchange: the step count and the new step records ride on the commit."""
    client.steps = steps
    client.history.extend((r.iteration, r.timestamp, r.metrics) for r in records)


class _Reporter:
    """Reports the latest metrics (and samples seen) to the server for its progress bar.

    A report is a round trip (0.27 ms measured on loopback); after every exchange that is a
    few percent of a small model's step time for a progress bar that refreshes twice a
    second, so it is sent at most every ``REPORT_INTERVAL`` seconds. (The step records
    travel with the commits, not here.)
    """

    REPORT_INTERVAL = 0.5

    def __init__(self, client: ParameterServerClient, batch_size: int) -> None:
        self.client = client
        self.batch_size = batch_size
        self.latest: dict[str, float] = {}
        self.sent_at = 0.0

    def __call__(self, metrics: Mapping[str, float]) -> None:
        self.latest = dict(metrics)
        now = time.monotonic()
        if now - self.sent_at >= self.REPORT_INTERVAL:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Send the latest metrics now."""
        if not self.latest:
            return
        steps = self.latest.get("steps", 0.0)
        self.client.report({**self.latest, "samples": steps * self.batch_size})
        self.sent_at = time.monotonic() if now is None else now


def _fit_callback(session: WorkerSession, requests: DriverRequests) -> Any:
    import keras

    class ExchangeCallback(keras.callbacks.Callback):  # type: ignore[misc]
        """Drives the worker session from inside ``model.fit``."""

        def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
            session.step_done(requests.with_rate({k: float(v) for k, v in (logs or {}).items()}))
            if session.stopped:
                self.model.stop_training = True

    return ExchangeCallback()


class KerasWorker:
    """What one worker does with its partition; subclass it to customise a worker.

    Override any of these hooks; the exchange schedule, the parameter server protocol and
    error reporting stay the library's (see ``docs/custom-worker.md``):

    * :meth:`build_model` -- rebuild the model (e.g. to add a regulariser on the worker);
    * :meth:`prepare` -- turn the partition's numpy arrays into model inputs/targets
      (e.g. augmentation, normalisation, reshaping);
    * :meth:`train_step` -- one local step on a batch (e.g. gradient clipping, a custom
      loss); overriding it runs the worker through ``train_on_batch`` instead of ``fit``
      (the history then holds each step's own metrics, where ``fit`` reports running means
      over the epoch);
    * :meth:`batches` -- the order and size of local batches; overriding it also leaves
      ``fit`` for a plain loop.

    Pass the subclass as ``worker_class=`` to any trainer. It travels to the executors with
    the Spark job, so define it in an importable module (or register it by value).

    Args:
        plan: the run's plan.
        worker_id: this worker's id (the Spark partition id).
        attempt: the Spark task attempt number.
        task_cores: the cores Spark gave this task (the default thread limit).
    """

    def __init__(self, plan: WorkerPlan, worker_id: int, attempt: int, task_cores: int = 1) -> None:
        self.plan = plan
        self.worker_id = worker_id
        self.attempt = attempt
        self.task_cores = task_cores

    # -- hooks -------------------------------------------------------------------------

    def build_model(self) -> Any:
        """The compiled model, rebuilt from the plan's spec with new random weights."""
        return build_model(ModelSpec.from_json(self.plan.model_spec), self.plan.custom_objects)

    def prepare(
        self, model: Any, x: Sequence[np.ndarray], y: Sequence[np.ndarray]
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Model inputs and targets from the partition's columns (default: reshape to inputs)."""
        rows = len(x[0]) if x else 0
        return shape_inputs(model, x) if rows else list(x), list(y)

    def train_step(self, model: Any, batch: tuple[Any, ...]) -> Mapping[str, float]:
        """One local optimizer step on ``batch``; returns its metrics.

        ``batch`` is ``(inputs, targets)``, or ``(inputs, targets, sample_weight)`` when the
        run has sample or class weights.
        """
        logs = model.train_on_batch(*batch[:2], sample_weight=batch_weight(batch), return_dict=True)
        return {k: float(v) for k, v in logs.items()}

    def batches(
        self,
        x: Sequence[np.ndarray],
        y: Sequence[np.ndarray],
        sample_weight: np.ndarray | None = None,
    ) -> Iterator[tuple[Any, ...]]:
        """The local batches of every epoch (reshuffled each epoch when the plan says so).

        Each is ``(inputs, targets)``, with the rows' weights third when there are weights.
        """
        plan = self.plan
        return epoch_batches(
            x,
            y,
            num_epoch=plan.num_epoch,
            batch_size=plan.batch_size,
            shuffle=plan.shuffle,
            seed=plan.seed,
            worker=self.worker_id,
            sample_weight=sample_weight,
        )

    # -- the run -----------------------------------------------------------------------

    def uses_fit(self, algorithm: Algorithm) -> bool:
        """Whether local steps can run inside ``model.fit`` (no per-step hook is needed)."""
        own = type(self)
        return (
            not algorithm.acts_every_step()
            and own.train_step is KerasWorker.train_step
            and own.batches is KerasWorker.batches
        )

    def run(
        self,
        x: Sequence[np.ndarray],
        y: Sequence[np.ndarray],
        sample_weight: np.ndarray | None = None,
    ) -> list[StepRecord]:
        """Train the partition under the plan's algorithm; returns the per-step history.

        ``sample_weight`` is the partition's weight column, if the run has one; with the
        plan's ``class_weight`` it makes every row's weight in the local steps.

        Raises:
            LayoutMismatchError: if the rebuilt model's weights differ from the server's.
        """
        plan = self.plan
        limit_threads(plan.worker_threads or self.task_cores)
        model = self.build_model()
        algorithm = plan.make_algorithm()
        layout = Layout.of(model.get_weights())
        tls = None if plan.tls_ca is None else ssl.create_default_context(cadata=plan.tls_ca)
        with ParameterServerClient(
            plan.host,
            plan.port,
            plan.secret,
            self.worker_id,
            self.attempt,
            timeout=plan.timeout,
            ssl_context=tls,
            server_hostname=plan.tls_server_hostname,
        ) as client:
            if client.layout != layout:
                raise LayoutMismatchError(
                    f"worker {self.worker_id} rebuilt a model with {layout.size} parameters in "
                    f"{len(layout.specs)} tensors, but the server holds {client.layout.size} in "
                    f"{len(client.layout.specs)}: pass the same custom_objects everywhere"
                )
            xs, ys = self.prepare(model, x, y)
            rows = len(xs[0]) if xs else 0
            weights = row_weights(ys, sample_weight, plan.class_weight) if rows else None
            requests = DriverRequests(client, model, plan.terminate_on_nan)
            local = KerasLocalModel(
                model,
                layout,
                step=lambda batch: requests.with_rate(self.train_step(model, batch)),
            )
            # A retried attempt of an asynchronous task resumes after the steps the server
            # already applied (from any attempt): no row's update is applied twice.
            resume = plan.on_retry == "resume" and not algorithm.synchronous
            skip = client.progress if resume else 0
            report = _Reporter(client, plan.batch_size)
            session = WorkerSession(
                local,
                algorithm,
                client,
                worker_id=self.worker_id,
                on_exchange=report,
                first_step=skip,
                on_progress=lambda steps, records: _progress(client, steps, records),
                steps_per_epoch=-(-rows // plan.batch_size),
                on_epoch=requests.epoch_done,
                running_means=self.uses_fit(algorithm),
                after_exchange=requests.after_exchange,
                on_diverged=requests.diverged,
                exchange_at_epoch_end=plan.exchange_at_epoch_end,
            )
            per_epoch = -(-rows // plan.batch_size)
            if skip and per_epoch and skip % per_epoch == 0:
                # The killed attempt may have died between its epoch-end commit and that
                # epoch's report: say the epoch ended (the server keeps the logs it has).
                client.report({}, epoch=skip // per_epoch)
            if rows == 0 or not self.uses_fit(algorithm):
                batches = self.batches(xs, ys) if weights is None else self.batches(xs, ys, weights)
                run_session(session, itertools.islice(batches, skip, None))
            else:
                session.start()
                callback = _fit_callback(session, requests)
                for fit_x, fit_y, fit_w, epochs in self._fit_calls(xs, ys, weights, rows, skip):
                    if session.stopped:
                        break
                    model.fit(
                        pack(fit_x),
                        pack(fit_y),
                        sample_weight=fit_w,
                        batch_size=plan.batch_size,
                        epochs=epochs,
                        shuffle=False,
                        verbose=0,
                        callbacks=[callback],
                    )
                session.finish()
            if not session.diverged:  # its report must stay the worker's last word
                report.flush()
            return session.history

    def _fit_calls(
        self,
        xs: Sequence[np.ndarray],
        ys: Sequence[np.ndarray],
        weights: np.ndarray | None,
        rows: int,
        skip: int,
    ) -> Iterator[tuple[list[np.ndarray], list[np.ndarray], np.ndarray | None, int]]:
        """``model.fit`` calls that take the partition's steps ``skip`` onwards, in order.

        Without shuffling (and nothing to skip) that is one call for every epoch, the fastest
        path; with shuffling, one call per epoch on that epoch's order (``epoch_order``).
        Each is ``(inputs, targets, sample weights or None, epochs)``.
        """
        plan = self.plan
        per_epoch = -(-rows // plan.batch_size)
        epoch, batch = divmod(skip, per_epoch)

        def rows_of(index: Any) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray | None]:
            return (
                [a[index] for a in xs],
                [a[index] for a in ys],
                None if weights is None else weights[index],
            )

        if not plan.shuffle:
            if batch:
                yield (*rows_of(slice(batch * plan.batch_size, None)), 1)
                epoch += 1
            if epoch < plan.num_epoch:
                yield list(xs), list(ys), weights, plan.num_epoch - epoch
            return
        for e in range(epoch, plan.num_epoch):
            order = epoch_order(rows, self.worker_id, e, True, plan.seed)
            if e == epoch and batch:
                order = order[batch * plan.batch_size :]
            yield (*rows_of(order), 1)


def train_worker(
    plan: WorkerPlan,
    worker_id: int,
    attempt: int,
    x: Sequence[np.ndarray],
    y: Sequence[np.ndarray],
    task_cores: int = 1,
    sample_weight: np.ndarray | None = None,
) -> list[StepRecord]:
    """Train one worker's partition with the plan's worker class; returns its history.

    Raises:
        InputDataError: if a column holds NaN or infinity (unless the plan allows them; a
            weight column never may).
    """
    if not plan.allow_nonfinite_inputs:
        check_finite([*x, *y], [*plan.features, *plan.labels], worker_id, attempt)
    if sample_weight is not None:
        check_finite([sample_weight], [plan.sample_weight or "?"], worker_id, attempt)
    worker = (plan.worker_class or KerasWorker)(plan, worker_id, attempt, task_cores)
    if sample_weight is None:
        return worker.run(x, y)  # a custom run() of an older worker class takes (x, y)
    return worker.run(x, y, sample_weight)
