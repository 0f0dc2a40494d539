"""The Keras side of one worker: what runs inside a Spark task.

:func:`train_worker` rebuilds the model from its
:class:`~distkeras_async.worker.serialization.ModelSpec`, connects to the parameter server,
and trains its partition under the algorithm's worker rule
(:func:`~distkeras_async.worker.training.train_session`, after the checks of
:mod:`~distkeras_async.worker.partition_checks`). For every algorithm that does not act on
each step, the local steps run inside ``model.fit`` and the exchanges happen in a callback,
so a worker pays no per-step overhead that ``model.fit`` does not pay itself. Algorithms
that act on every step (EAMSGD's Nesterov momentum) run a plain loop of ``train_on_batch``.

This module imports Keras lazily and never imports pyspark: :mod:`distkeras_async.spark`
calls it with plain numpy arrays and ids.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from distkeras_async.algorithm import Algorithm
from distkeras_async.errors import InputDataError
from distkeras_async.layout import Layout
from distkeras_async.worker import reuse
from distkeras_async.worker.backend import current_backend, limit_threads
from distkeras_async.worker.batches import batch_weight, epoch_batches
from distkeras_async.worker.columns import column_to_numpy
from distkeras_async.worker.connection import connect
from distkeras_async.worker.declarations import fill_declarations
from distkeras_async.worker.devices import model_device
from distkeras_async.worker.exchange import StepRecord
from distkeras_async.worker.inputs import shape_inputs
from distkeras_async.worker.partition import Partition
from distkeras_async.worker.partition_checks import PartitionChecks
from distkeras_async.worker.plan import WorkerPlan
from distkeras_async.worker.protocols import ExchangeClient
from distkeras_async.worker.serialization import ModelSpec, build_model
from distkeras_async.worker.sources import ArraySource, Prepared, StreamSource
from distkeras_async.worker.stream import EpochStream, default_window
from distkeras_async.worker.training import train_session
from distkeras_async.worker.weights import row_weights

# WorkerPlan lives in worker/plan.py; it stays importable from here, where it was.
__all__ = ["KerasWorker", "WorkerPlan", "new_worker", "train_worker"]


class KerasWorker:
    """What one worker does with its partition; subclass it to customise a worker.

    Override any of these hooks; the exchange schedule, the parameter server protocol and
    error reporting stay the library's (see ``docs/custom-worker.md``):

    * :meth:`build_model` -- rebuild the model (e.g. to add a regulariser on the worker);
    * :meth:`decode_column` -- turn one Arrow column of a block of rows into a numpy array
      (e.g. decode images stored as bytes); it runs on every block, every epoch;
    * :meth:`prepare` -- turn the columns into model inputs/targets (e.g. augmentation,
      normalisation, reshaping); it sees the whole partition when it is held in memory, and
      one chunk of rows at a time when the partition streams, so it must work row by row;
    * :meth:`train_step` -- one local step on a batch (e.g. gradient clipping, a custom
      loss); overriding it runs the worker through ``train_on_batch`` instead of ``fit``
      (the history then holds each step's own metrics, where ``fit`` reports running means
      over the epoch);
    * :meth:`batches` -- the order and size of local batches; overriding it also leaves
      ``fit`` for a plain loop, and it takes the whole partition's arrays, so the partition
      must fit the plan's ``in_memory_limit``.

    Pass the subclass as ``worker_class=`` to any trainer. It travels to the executors with
    the Spark job, so define it in an importable module (or register it by value).

    Args:
        plan: the run's plan.
        worker_id: this worker's id (the Spark partition id).
        attempt: the Spark task attempt number.
        task_cores: the cores Spark gave this task (the default thread limit).
    """

    # What the class does differently, declared: the library reads these, never which
    # methods a subclass overrides. A subclass may set them; one it leaves alone follows
    # from the hooks the subclass defines (see __init_subclass__), so that a worker written
    # for an older release keeps its behaviour.
    steps_itself: ClassVar[bool] = False
    """Its local steps leave ``model.fit`` (it defines ``train_step`` or ``batches``)."""
    takes_arrays: ClassVar[bool] = False
    """It needs the whole partition as arrays (``batches`` or ``run``): no streaming."""
    decodes_columns: ClassVar[bool] = False
    """Its ``decode_column`` reads columns its own way (the driver cannot check shapes)."""
    prepares_columns: ClassVar[bool] = False
    """Its ``prepare`` makes inputs and targets its own way (no shape or class checks)."""
    builds_own_model: ClassVar[bool] = False
    """Its ``build_model`` is its own (the model is not reused by the next task)."""

    _DECLARED_BY: ClassVar[dict[str, tuple[str, ...]]] = {
        "steps_itself": ("train_step", "batches"),
        "takes_arrays": ("batches", "run"),
        "decodes_columns": ("decode_column",),
        "prepares_columns": ("prepare",),
        "builds_own_model": ("build_model",),
    }

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fill_declarations(cls, KerasWorker, KerasWorker._DECLARED_BY)

    @classmethod
    def transforms_columns(cls) -> bool:
        """Whether the columns reach the model other than as the driver can check them."""
        return cls.decodes_columns or cls.prepares_columns

    def __init__(self, plan: WorkerPlan, worker_id: int, attempt: int, task_cores: int = 1) -> None:
        self.plan = plan
        self.worker_id = worker_id
        self.attempt = attempt
        self.task_cores = task_cores

    # -- hooks -------------------------------------------------------------------------

    def build_model(self) -> Any:
        """The compiled model, rebuilt from the plan's spec with new random weights."""
        return build_model(ModelSpec.from_json(self.plan.model_spec), self.plan.custom_objects)

    def decode_column(self, name: str, column: pa.Array, first_row: int) -> np.ndarray:
        """One column of a block of rows as a numpy array, one row per row.

        The default takes numbers, arrays of numbers and Spark ML vectors (a sparse vector is
        densified here, block by block); override it to decode other columns, e.g. images
        stored as bytes (``BinaryType``).

        Args:
            name: the column's name.
            column: its values in this block.
            first_row: the partition position of the block's first row (for messages).
        """
        return column_to_numpy(column, name, first_row=first_row)

    def prepare(
        self, model: Any, x: Sequence[np.ndarray], y: Sequence[np.ndarray]
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Model inputs and targets from the columns (default: reshape to the inputs)."""
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
            num_epoch=plan.epochs,
            batch_size=plan.run.batch_size,
            shuffle=plan.shuffle,
            seed=plan.data.seed,
            worker=self.worker_id,
            sample_weight=sample_weight,
        )

    # -- the run -----------------------------------------------------------------------

    def uses_fit(self, algorithm: Algorithm) -> bool:
        """Whether local steps can run inside ``model.fit`` (no per-step hook is needed)."""
        return not algorithm.acts_every_step() and not self.steps_itself

    def decode(self, block: pa.RecordBatch, first_row: int) -> list[np.ndarray]:
        """Every column of a block of rows, through :meth:`decode_column`."""
        return [
            self.decode_column(name, block.column(i), first_row)
            for i, name in enumerate(block.schema.names)
        ]

    def checked_blocks(self, partition: Partition) -> Iterator[list[np.ndarray]]:
        """Every block of the partition, decoded and checked, in partition order.

        Raises:
            InputDataError: for bad data, naming the column and the row (see
                :meth:`PartitionChecks.blocks
                <distkeras_async.worker.partition_checks.PartitionChecks.blocks>`).
        """
        checks = PartitionChecks(
            self.plan,
            self.worker_id,
            self.attempt,
            self.decode,
            self._model,
            # A worker that makes its inputs or targets its own way is not held to the
            # default's shapes and classes.
            check_inputs=not self.transforms_columns(),
            check_classes=not self.prepares_columns,
        )
        return checks.blocks(partition)

    def train(self, partition: Partition) -> list[StepRecord]:
        """Check the partition, then train it in memory or streamed; returns the history.

        A partition held in memory (at most the plan's ``in_memory_limit``) becomes numpy
        arrays and goes through :meth:`run`; a spooled one is checked in one pass first, so
        bad data fails the worker before any step, then streams through :meth:`run_stream`.
        A task that finishes keeps its model for the Python worker's next task with the same
        spec (:mod:`distkeras_async.worker.reuse`), which skips tracing the train function.

        Raises:
            InputDataError: for bad data (see :meth:`checked_blocks`), or a partition too
                large for a worker class that overrides ``batches`` or ``run``.
        """
        history = self._train_partition(partition)
        key = getattr(self, "_kept_as", None)  # set where _model() built or took the model
        if key is not None:
            reuse.keep(key, self._built)  # for this Python worker's next task (see reuse.py)
        return history

    def _train_partition(self, partition: Partition) -> list[StepRecord]:
        own = type(self)
        wants_arrays = self.takes_arrays
        if partition.in_memory:
            columns = list(self.checked_blocks(partition))
            partition.close()  # the Arrow blocks are not needed once decoded
            if columns:
                arrays = [np.concatenate(parts) for parts in zip(*columns, strict=True)]
            else:
                arrays = [np.zeros((0,), np.float32) for _ in partition.columns]
            x, y, w = self._split(arrays)
            return self.run(x, y) if w is None else self.run(x, y, w)
        if wants_arrays:
            raise InputDataError(
                f"worker {self.worker_id}: its partition has {partition.nbytes} bytes, more "
                f"than in_memory_limit={self.plan.data.in_memory_limit}, and {own.__name__} "
                "overrides batches() or run(), which take the whole partition as arrays: raise "
                "in_memory_limit, use more workers, or override prepare()/train_step() instead"
            )
        for _ in self.checked_blocks(partition):
            partition.release()
        return self.run_stream(partition)

    def _split(
        self, arrays: Sequence[np.ndarray]
    ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray | None]:
        features, labels = len(self.plan.data.features), len(self.plan.data.labels)
        weight = arrays[features + labels] if len(arrays) > features + labels else None
        return list(arrays[:features]), list(arrays[features : features + labels]), weight

    def run(
        self,
        x: Sequence[np.ndarray],
        y: Sequence[np.ndarray],
        sample_weight: np.ndarray | None = None,
    ) -> list[StepRecord]:
        """Train a partition held as arrays under the plan's algorithm; returns the history.

        ``sample_weight`` is the partition's weight column, if the run has one; with the
        plan's ``class_weight`` it makes every row's weight in the local steps.

        Raises:
            LayoutMismatchError: if the rebuilt model's weights differ from the server's.
        """
        plan = self.plan
        model, algorithm = self._start()
        with self._connect(model) as client:
            xs, ys = self.prepare(model, x, y)
            rows = len(xs[0]) if xs else 0
            weights = row_weights(ys, sample_weight, plan.data.class_weight) if rows else None
            source = ArraySource(
                xs,
                ys,
                weights,
                self.batches,
                num_epoch=plan.epochs,
                batch_size=plan.run.batch_size,
                shuffle=plan.shuffle,
                seed=plan.data.seed,
                worker=self.worker_id,
            )
            return self._train(model, algorithm, client, source)

    def run_stream(self, partition: Partition) -> list[StepRecord]:
        """Train a spooled partition window by window; returns the history.

        Memory follows the shuffle window, not the partition (see
        :mod:`distkeras_async.worker.stream`).

        Raises:
            LayoutMismatchError: if the rebuilt model's weights differ from the server's.
        """
        plan = self.plan
        model, algorithm = self._start()
        stream = EpochStream(
            partition,
            self.decode,
            batch_size=plan.run.batch_size,
            window_rows=plan.data.shuffle_window or default_window(partition, plan.run.batch_size),
            shuffle=plan.shuffle,
            seed=plan.data.seed,
            worker=self.worker_id,
        )

        def prepared(chunk: list[np.ndarray]) -> Prepared:
            x, y, w = self._split(chunk)
            xs, ys = self.prepare(model, x, y)
            return xs, ys, row_weights(ys, w, plan.data.class_weight)

        with self._connect(model) as client:
            source = StreamSource(stream, prepared, plan.epochs)
            return self._train(model, algorithm, client, source)

    @property
    def device(self) -> str:
        """The device the worker's model trains on (``cpu:0``, ``gpu:0``, ``cuda:0``, ...).

        Read from the backend's own variables after the model is built, so it says where
        training ran, not what was asked for; ``cpu`` before the model exists.
        """
        built = getattr(self, "_built", None)
        return "cpu" if built is None else model_device(built)

    def _start(self) -> tuple[Any, Algorithm]:
        return self._model(), self.plan.make_algorithm()

    def _model(self) -> Any:
        """The worker's model, built once (the checks of :meth:`train` use it too)."""
        if getattr(self, "_built", None) is None:
            limit_threads(self.plan.devices.worker_threads or self.task_cores)
            fresh = self.build_model()
            self._kept_as = self._reuse_key()
            self._built = fresh if self._kept_as is None else reuse.adopt(self._kept_as, fresh)
        return self._built

    def _reuse_key(self) -> str | None:
        """The key the model is kept under between tasks; None where it must not be.

        Only the default :meth:`build_model` builds what the spec says, and classes from
        ``custom_objects`` arrive anew with every task (their code may have changed).
        """
        if self.builds_own_model or self.plan.custom_objects:
            return None
        return reuse.key_of(current_backend(), self.plan.model_spec)

    def _connect(self, model: Any) -> contextlib.AbstractContextManager[ExchangeClient]:
        layout = Layout.of(model.get_weights())
        return connect(self.plan, self.worker_id, self.attempt, layout)

    def _train(
        self,
        model: Any,
        algorithm: Algorithm,
        client: ExchangeClient,
        source: ArraySource | StreamSource,
    ) -> list[StepRecord]:
        return train_session(
            model,
            algorithm,
            client,
            source,
            plan=self.plan,
            worker_id=self.worker_id,
            train_step=lambda batch: self.train_step(model, batch),
            in_fit=self.uses_fit(algorithm),
        )


def train_worker(
    plan: WorkerPlan,
    worker_id: int,
    attempt: int,
    partition: Partition,
    task_cores: int = 1,
) -> list[StepRecord]:
    """Train one worker's partition with the plan's worker class; returns its history.

    Raises:
        InputDataError: for bad data in the partition (see :meth:`KerasWorker.train`).
    """
    return new_worker(plan, worker_id, attempt, task_cores).train(partition)


def new_worker(plan: WorkerPlan, worker_id: int, attempt: int, task_cores: int = 1) -> KerasWorker:
    """The plan's worker class (default :class:`KerasWorker`) for one task."""
    worker: KerasWorker = (plan.run.worker_class or KerasWorker)(
        plan, worker_id, attempt, task_cores
    )
    return worker
