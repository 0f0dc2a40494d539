"""The one trainer: a parameter server on the driver, one worker per partition, a new model.

:class:`DistributedTrainer` takes the model and what to optimise, every declared run option
(:mod:`distkeras_async.options`) as keyword arguments, and the algorithm's hyperparameters.
Whether it runs synchronous rounds (a Spark barrier stage) follows from the algorithm.
:class:`SynchronizedDistributedTrainer` and :class:`AsynchronousDistributedTrainer` are the
classic documentation's names of the two kinds: the same trainer, with another default
algorithm, refusing an algorithm of the other kind. The named trainers of the classic API
are in :mod:`distkeras_async.trainers.classic`; :meth:`DistributedTrainer.train` runs the
phases in :mod:`distkeras_async.trainers.run`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from distkeras_async import registry
from distkeras_async.errors import AlgorithmError
from distkeras_async.options import Options, replace
from distkeras_async.server.stats import ServerStats
from distkeras_async.trainers.arguments import TrainerSpec, bind_call, signature
from distkeras_async.trainers.history import average_history
from distkeras_async.worker.backend import check_backend, current_backend
from distkeras_async.worker.serialization import (
    ModelSpec,
    build_model,
    describe_model,
    expand_custom_objects,
)

# The classic positional order of the generic trainer (Distributed Keras' DistributedTrainer).
POSITIONAL = (
    "keras_model",
    "worker_optimizer",
    "loss",
    "metrics",
    "num_workers",
    "batch_size",
    "features_col",
    "label_col",
    "num_epoch",
    "master_port",
)


class DistributedTrainer:
    """Train a Keras model on a Spark DataFrame, its workers exchanging through a server.

    ``DistributedTrainer(model, "adam", "categorical_crossentropy", num_workers=4,
    algorithm="downpour", communication_window=5).train(df)`` returns a new trained model.

    Args:
        keras_model: a built Keras 3 model (Sequential, functional, or subclassed with
            ``custom_objects``). It is not modified: ``train`` returns a new model.
        worker_optimizer: each worker's local optimizer: a name (``"adam"``), a Keras
            optimizer instance, or its config.
        loss: a loss as Keras' ``compile`` accepts it.
        metrics: metrics as Keras' ``compile`` accepts them.
        algorithm: a registered algorithm name or an Algorithm class; synchronous
            algorithms run as a Spark barrier stage, asynchronous ones as ordinary tasks.
        custom_objects: custom Keras classes and functions, by name.
        loss_weights: per-output loss weights, as ``compile`` accepts them.
        **options: every run option (``num_workers``, ``batch_size``, ``master_port``,
            ``shuffle_window``, ``checkpoint_path``, ...), each declared once, with its type,
            default and doc, in :mod:`distkeras_async.options` (``docs/trainers.md`` lists
            them); ``inspect.signature(DistributedTrainer)`` shows them all.
        **hyperparameters: the algorithm's hyperparameters (``communication_window``, ...).

    Raises:
        ValueError, TypeError: for a bad option, naming it, before any Spark job.
        AlgorithmError: for an algorithm of the wrong kind, or options it cannot take.
    """

    spec: ClassVar[TrainerSpec] = TrainerSpec(positional=POSITIONAL)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A subclass with its own __init__ shows that one (None: inspect reads __init__).
        own = cls.__init__ is not DistributedTrainer.__init__
        cls.__signature__ = None if own else signature(cls.spec)  # type: ignore[attr-defined]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given = bind_call(type(self).spec, type(self).__name__, args, kwargs)
        self.master_model = given.pop("keras_model")
        self.worker_optimizer = given.pop("worker_optimizer")
        self.loss = given.pop("loss")
        metrics = given.pop("metrics")
        listed = isinstance(metrics, Sequence) and not isinstance(metrics, str)
        self.metrics = list(metrics) if listed else [metrics]
        self.loss_weights = given.pop("loss_weights")
        self.custom_objects = expand_custom_objects(given.pop("custom_objects"))
        algorithm = given.pop("algorithm")
        options, hyperparameters = Options.from_keywords(given)
        self.options = self._checked_against_model(options)
        # Fails now, naming the bad argument, rather than inside a Spark task.
        self.model_spec: ModelSpec = describe_model(
            self.master_model, self.worker_optimizer, self.loss, self.metrics, self.loss_weights
        )
        self._set_algorithm(algorithm, hyperparameters)
        self.history: list[dict[str, Any]] = []
        self.keras_history: Any = None
        self.training_time = 0.0
        self.parameter_server_stats: ServerStats | None = None
        self.snapshots: list[tuple[float, list[Any]]] = []
        self.learning_report: Any = None
        self.warnings: list[str] = []

    def _checked_against_model(self, options: Options) -> Options:
        """The checks that need the model or the worker layer; the workers' backend resolved."""
        from distkeras_async.worker.keras_worker import KerasWorker
        from distkeras_async.worker.weights import check_class_weight, num_classes

        worker_class = options.run.worker_class
        if worker_class is not None and not issubclass(worker_class, KerasWorker):
            raise TypeError(f"worker_class must subclass KerasWorker, got {worker_class!r}")
        weights = check_class_weight(options.data.class_weight, num_classes(self.master_model))
        # The workers' backend, checked here: a missing package fails before any Spark job.
        backend = check_backend(options.devices.backend or current_backend())
        return replace(
            options,
            data=replace(options.data, class_weight=weights),
            devices=replace(options.devices, backend=backend),
        )

    def _set_algorithm(self, algorithm: Any, hyperparameters: Mapping[str, Any]) -> None:
        """The algorithm and its hyperparameters, validated on the driver."""
        # Workers get the class, not the name: a class registered at run time in a notebook
        # exists only in the driver's registry, and Spark ships the class to the executors.
        self.algorithm = registry.get(algorithm) if isinstance(algorithm, str) else algorithm
        self.hyperparameters = dict(hyperparameters)
        probe = registry.resolve(algorithm, **hyperparameters)
        registry.check_workers(probe, self.num_workers)
        wanted = type(self).spec.synchronous
        if wanted is not None and probe.synchronous != wanted:
            kind = "synchronous" if probe.synchronous else "asynchronous"
            other = (
                "SynchronizedDistributedTrainer"
                if probe.synchronous
                else "AsynchronousDistributedTrainer"
            )
            raise AlgorithmError(
                f"algorithm {probe.name!r} is {kind}: use {other} (or a trainer built on it)"
            )
        if self.options.devices.overlap and probe.synchronous:
            raise AlgorithmError(
                f"overlap=True needs an asynchronous algorithm; {probe.name!r} meets in "
                "synchronous rounds, which need every worker's current weights"
            )
        self.algorithm_name = probe.name
        self.synchronous = probe.synchronous

    # -- the classic attribute names -------------------------------------------------------

    @property
    def num_workers(self) -> int:
        """Workers (Spark tasks) training in parallel."""
        return self.options.run.num_workers

    @property
    def num_epoch(self) -> int:
        """Passes over the data."""
        return self.options.run.num_epoch

    @property
    def batch_size(self) -> int:
        """Samples per local step."""
        return self.options.run.batch_size

    @property
    def features_col(self) -> tuple[str, ...]:
        """The feature columns, one per model input."""
        return self.options.data.features

    @property
    def label_col(self) -> tuple[str, ...]:
        """The label columns, one per model output."""
        return self.options.data.labels

    # -- training --------------------------------------------------------------------------

    def train(
        self,
        dataframe: Any,
        shuffle: bool = False,
        resume_from: str | None = None,
        *,
        validation_data: Any = None,
        validation_split: float | None = None,
        callbacks: Any = None,
        validation_batch_size: int | None = None,
    ) -> Any:
        """Train on ``dataframe`` and return a new trained Keras model.

        Args:
            dataframe: the training data.
            shuffle: reshuffle rows between workers and within each worker every epoch.
            resume_from: a checkpoint written by an earlier run (``checkpoint_path``): the
                center starts from its weights and version instead of the model's.
            validation_data: a DataFrame with the training columns (collected to the
                driver once), or ``(x, y)`` / ``(x, y, sample_weight)`` numpy arrays: the
                center is evaluated on it at every global epoch's end (``val_*`` logs).
            validation_split: hold out this fraction of ``dataframe`` (a seeded
                ``randomSplit``, by ``seed``) as validation data.
            callbacks: Keras callbacks, run on the driver at every global epoch with the
                center loaded in ``self.model`` (see docs/trainers.md for what a global
                epoch is and which hooks are called).
            validation_batch_size: rows per validation batch (default: the larger of
                ``batch_size`` and 1,024; evaluation keeps no gradients, and on the driver
                it shares the CPU with the workers, so fewer, larger batches cost less).

        Raises:
            WorkerFailedError: if a worker failed (with its traceback).
            RoundFailedError: if a synchronous round failed (timeout, dead worker).
            RuleFailedError: if the algorithm's server rule raised (with its traceback).
            InsufficientSlotsError: if a synchronous run cannot schedule every worker.
            DeviceError: if GPUs were asked for that the cluster cannot give.
            OSError: if ``master_port`` is busy.
            CheckpointError: if ``checkpoint_path`` cannot be written (before any job), if
                periodic checkpoints failed 3 times in a row, or if the final checkpoint
                failed: then its ``model`` attribute holds the trained model.
        """
        import keras

        from distkeras_async.trainers.run import TrainingRun

        # Everything the driver computes on its model copy runs on driver_device.
        with keras.device(self.options.devices.driver_device):
            run = TrainingRun(
                self,
                dataframe,
                shuffle=shuffle,
                resume_from=resume_from,
                validation_data=validation_data,
                validation_split=validation_split,
                callbacks=callbacks,
                validation_batch_size=validation_batch_size,
            )
            return run.execute()

    # -- results ---------------------------------------------------------------------------

    def get_training_time(self) -> float:
        """Wall-clock seconds of the last ``train`` call."""
        return self.training_time

    def get_history(self) -> list[dict[str, Any]]:
        """One dict per worker step: ``worker``, ``iteration``, ``timestamp`` and the metrics."""
        return list(self.history)

    def get_keras_history(self) -> Any:
        """The Keras ``History`` of the last run: one entry per global epoch.

        ``history.history["loss"]`` holds the workers' epoch losses averaged,
        ``history.history["val_loss"]`` the center's validation loss, ``history.epoch`` the
        epochs run (fewer than ``num_epoch`` when a callback stopped training).
        """
        return self.keras_history

    def get_averaged_history(self) -> list[dict[str, Any]]:
        """The metrics averaged over the workers, one dict per iteration."""
        return average_history(self.history)

    def get_parameter_server_stats(self) -> ServerStats | None:
        """The parameter server's statistics at the end of the last run."""
        return self.parameter_server_stats

    def get_center_snapshots(self) -> list[tuple[float, list[Any]]]:
        """``(seconds since the start, center weights)`` pairs recorded during the last run.

        Recorded every ``snapshot_interval`` seconds (when set), plus the final weights.
        """
        return list(self.snapshots)

    def trained_model(self, weights: Sequence[Any]) -> Any:
        """A new compiled model (the driver's copy of the workers') holding ``weights``."""
        model = build_model(self.model_spec, self.custom_objects)
        model.set_weights(weights)
        return model


DistributedTrainer.__signature__ = signature(DistributedTrainer.spec)  # type: ignore[attr-defined]

Trainer = DistributedTrainer
"""The classic name of the trainers' base class."""


class SynchronizedDistributedTrainer(DistributedTrainer):
    """The trainer for synchronous algorithms (all workers meet in rounds).

    The same trainer as :class:`DistributedTrainer`, with ``algorithm="averaging"`` by
    default; it refuses an asynchronous algorithm. Workers run as a Spark barrier stage.
    """

    spec = TrainerSpec(positional=POSITIONAL, defaults={"algorithm": "averaging"}, synchronous=True)


class AsynchronousDistributedTrainer(DistributedTrainer):
    """The trainer for asynchronous algorithms (workers commit independently).

    The same trainer as :class:`DistributedTrainer` (``algorithm="downpour"`` by default);
    it refuses a synchronous algorithm. Workers run as ordinary Spark tasks that Spark may
    retry.
    """

    spec = TrainerSpec(positional=POSITIONAL, synchronous=False)
