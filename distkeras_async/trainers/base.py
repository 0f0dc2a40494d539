"""The trainer machinery: the base class, the parameter-server run, and the two extension points.

:class:`DistributedTrainer` starts a parameter server on the driver, runs one worker per
partition through Spark, and returns a new trained Keras model. The named trainers of the
classic API (:mod:`distkeras_async.trainers.classic`) are thin subclasses of
:class:`SynchronizedDistributedTrainer` and :class:`AsynchronousDistributedTrainer`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from distkeras_async import checks, registry
from distkeras_async.algorithm import Algorithm
from distkeras_async.errors import (
    AlgorithmError,
    CheckpointError,
    ErrorCode,
    WorkerFailedError,
)
from distkeras_async.server.checkpoint import check_writable
from distkeras_async.server.factory import TlsSetting, check_tls, make_server
from distkeras_async.server.limits import FRAME_TIMEOUT, IDLE_TIMEOUT
from distkeras_async.server.stats import ServerStats
from distkeras_async.tls import read_ca
from distkeras_async.trainers.failures import unfinished_workers
from distkeras_async.trainers.history import average_history, flatten_rows
from distkeras_async.trainers.input_checks import check_first_row
from distkeras_async.trainers.learning import SAMPLE_ROWS, check_center
from distkeras_async.trainers.snapshots import CenterSnapshots
from distkeras_async.wire.auth import check_secret, new_secret
from distkeras_async.worker.backend import check_backend, current_backend
from distkeras_async.worker.partition import IN_MEMORY_LIMIT
from distkeras_async.worker.serialization import (
    ModelSpec,
    build_model,
    describe_model,
    expand_custom_objects,
)

logger = logging.getLogger(__name__)

Columns = str | Sequence[str]


def _columns(value: Columns, name: str) -> tuple[str, ...]:
    columns = (value,) if isinstance(value, str) else tuple(value)
    if not columns or not all(isinstance(c, str) and c for c in columns):
        raise ValueError(f"{name} must be a column name or a non-empty list of names")
    return columns


class Trainer:
    """Base of every trainer: the model, its training configuration, history and timing.

    Args:
        keras_model: a built Keras 3 model (Sequential, functional, or subclassed with
            ``custom_objects``). It is not modified: ``train`` returns a new model.
        worker_optimizer: the optimizer each worker uses locally: a name (``"adam"``), a
            Keras optimizer instance, or its config.
        loss: a loss as Keras' ``compile`` accepts it.
        metrics: metrics as Keras' ``compile`` accepts them.
        num_epoch: passes over the data.
        batch_size: samples per local step.
        features_col: the feature column, or a list of them for a multi-input model.
        label_col: the label column, or a list of them for a multi-output model.
        custom_objects: custom Keras classes and functions, by name.
        loss_weights: per-output loss weights, as ``compile`` accepts them.
        progress: show a progress bar (default: when attached to a terminal or notebook).
        worker_threads: TensorFlow threads per worker (default: the task's cores).
        sample_weight_col: a numeric column of per-row weights, used in every local step
            and in validation (a validation DataFrame must have the column too).
        class_weight: ``{class index: weight}``, as ``fit`` takes it: each row's weight is
            multiplied by its class's (the argmax of a one-hot label, a sparse label's
            value). Unlike ``fit``, validation rows are weighted the same way, unless the
            validation tuple brings its own weights.
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
        *,
        custom_objects: Mapping[str, Any] | None = None,
        loss_weights: Any = None,
        progress: bool | None = None,
        worker_threads: int | None = None,
        sample_weight_col: str | None = None,
        class_weight: Mapping[int, float] | None = None,
    ) -> None:
        from distkeras_async.worker.weights import check_class_weight, num_classes

        self.master_model = keras_model
        self.worker_optimizer = worker_optimizer
        self.loss = loss
        self.metrics = (
            list(metrics)
            if isinstance(metrics, Sequence) and not isinstance(metrics, str)
            else [metrics]
        )
        self.num_epoch = checks.positive_int(num_epoch, "num_epoch")
        self.batch_size = checks.positive_int(batch_size, "batch_size")
        self.features_col = _columns(features_col, "features_col")
        self.label_col = _columns(label_col, "label_col")
        self.custom_objects = expand_custom_objects(custom_objects)
        self.loss_weights = loss_weights
        self.progress = progress
        self.worker_threads = (
            None
            if worker_threads is None
            else checks.positive_int(worker_threads, "worker_threads")
        )
        if sample_weight_col is not None and not (
            isinstance(sample_weight_col, str) and sample_weight_col
        ):
            raise ValueError(f"sample_weight_col must be a column name, got {sample_weight_col!r}")
        self.sample_weight_col = sample_weight_col
        self.class_weight = check_class_weight(class_weight, num_classes(keras_model))
        # Fails now, naming the bad argument, rather than inside a Spark task.
        self.model_spec: ModelSpec = describe_model(
            keras_model, worker_optimizer, loss, self.metrics, loss_weights
        )
        self.history: list[dict[str, Any]] = []
        self.keras_history: Any = None
        self.training_time = 0.0
        self.parameter_server_stats: ServerStats | None = None

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
        """Train on ``dataframe`` and return a new trained Keras model."""
        raise NotImplementedError

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

    def _trained_model(self, weights: Sequence[Any]) -> Any:
        model = build_model(self.model_spec, self.custom_objects)
        model.set_weights(weights)
        return model


class DistributedTrainer(Trainer):
    """A trainer whose workers exchange weights through a parameter server on the driver.

    Args:
        keras_model, worker_optimizer, loss, metrics, num_epoch, batch_size, features_col,
            label_col: see :class:`Trainer`.
        num_workers: Spark tasks training in parallel (the DataFrame is split into as many
            partitions).
        algorithm: a registered algorithm name or an Algorithm class.
        master_port: the parameter server's port; 0 picks a free one.
        master_host: the address workers connect to (default: ``spark.driver.host``).
        bind_host: the address the parameter server listens on (default: ``master_host``);
            e.g. ``"0.0.0.0"`` for a driver behind NAT whose ``master_host`` is forwarded.
        ssl_context: a server-side :class:`ssl.SSLContext` (certificate and key loaded), or
            ``(certificate_file, key_file)`` PEM paths (required with ``shards`` > 1: each
            shard process loads them): the parameter server speaks TLS only. Requires
            ``tls_ca``.
        tls_ca: the CA certificate(s), PEM, that workers verify the server's certificate
            with: a path to a file on the driver, or the PEM text. Certificates are public;
            the text travels to the executors inside the Spark job.
        tls_server_hostname: the name workers expect in the server's certificate (default:
            the address they connect to).
        secret: the run's shared secret (default: a fresh random one per run).
        shards: parameter server processes the center is split across (see
            docs/scaling.md); None picks one from the model's size and the driver's cores
            (1, the in-process server, below 4M parameters or 4 cores). With K shards the
            server listens on ``master_port .. master_port + K - 1``.
        overlap: run each worker's exchange in a background thread while its next local
            steps run, so no step waits for the network; the center a worker continues
            from is then one communication window older (asynchronous algorithms only;
            docs/scaling.md).
        round_timeout: seconds a synchronous round waits for its slowest worker.
        idle_timeout: seconds a worker may stay silent between exchanges before the server
            drops it (a worker computing a long communication window is silent; default
            3,600).
        frame_timeout: seconds a message has, from its first byte, to arrive whole
            (default 60); the silence between two messages counts against ``idle_timeout``
            only.
        snapshot_interval: if set, record the center every this many seconds during training
            (see :meth:`get_center_snapshots`), e.g. to plot accuracy against wall time.
        checkpoint_path: write the center there (atomically) every ``checkpoint_every``
            updates and/or ``checkpoint_interval`` seconds, and at the end of the run;
            ``train(df, resume_from=checkpoint_path)`` continues from it.
        checkpoint_every: updates between checkpoints.
        checkpoint_interval: seconds between checkpoints.
        check_learning: after training, compare the returned center's loss on a sample of
            512 training rows with the initial weights' and the workers' last losses, and
            warn (``CenterStayedBehindWarning``, naming the hyperparameter to change) when
            the center kept less than half of what the workers learned; the losses are in
            :attr:`learning_report`. Costs one small Spark job and two evaluations.
        allow_nonfinite_inputs: let NaN and infinity in the feature and label columns reach
            the model; by default a worker refuses them, naming the column and the row.
        on_retry: what Spark's retry of a failed asynchronous worker does: ``"resume"`` (the
            default) continues after the local steps whose updates the server already
            applied, so no row's update is applied twice and none is lost; ``"restart"``
            trains its partition again from the start. The history keeps the failed
            attempt's steps either way, marked ``retried``. Synchronous runs fail instead.
        seed: the seed of ``train(df, shuffle=True)``'s shuffles (rows between workers, and
            each worker's rows every epoch): the same seed gives the same order.
        worker_class: a :class:`~distkeras_async.worker.KerasWorker` subclass that customises
            what each worker does (data preparation, local step); see
            ``docs/custom-worker.md``.
        in_memory_limit: a worker whose partition holds at most this many bytes (Arrow's
            count, 64 MiB by default) trains it from numpy arrays in memory, with a full
            shuffle every epoch; a larger partition is written to a file in the task's local
            directory as it arrives and streamed from it every epoch, in bounded memory
            (``docs/data.md``). 0 streams every partition.
        shuffle_window: rows a streamed partition shuffles together (with its blocks'
            order); default about 32 MiB of rows. Larger shuffles better and costs memory.
        backend: the Keras backend the workers train on, ``"tensorflow"``, ``"jax"`` or
            ``"torch"`` (default: the driver's, i.e. ``KERAS_BACKEND``). The driver's model
            may come from another backend; the workers' Python processes get
            ``KERAS_BACKEND`` for this run's jobs (``docs/backends.md``).
        use_gpu: train on the GPUs Spark gives each task (True: fails before any job when
            tasks get none, or when a synchronous run has fewer GPU slots than workers), on
            the CPU only, hiding every GPU (False), or, by default (None), on the task's GPUs
            when ``spark.task.resource.gpu.amount`` is set. A worker sees exactly its task's
            GPUs; the history's ``device`` says where each worker trained (``docs/cluster.md``).
        driver_device: where the driver's copy of the model evaluates (validation, callbacks,
            the learning check), e.g. ``"cpu"`` (the default: the driver then leaves any GPU
            of its node to the executors) or ``"gpu:0"``; a Keras device name.
        **hyperparameters: the algorithm's hyperparameters (``communication_window``, ...).
    """

    synchronous: bool | None = None

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
        master_port: int = 5000,
        *,
        algorithm: str | type[Algorithm] = "downpour",
        custom_objects: Mapping[str, Any] | None = None,
        loss_weights: Any = None,
        master_host: str | None = None,
        bind_host: str | None = None,
        ssl_context: TlsSetting = None,
        tls_ca: str | bytes | None = None,
        tls_server_hostname: str | None = None,
        secret: bytes | None = None,
        shards: int | None = None,
        overlap: bool = False,
        progress: bool | None = None,
        worker_threads: int | None = None,
        round_timeout: float = 300.0,
        idle_timeout: float = IDLE_TIMEOUT,
        frame_timeout: float = FRAME_TIMEOUT,
        snapshot_interval: float | None = None,
        worker_class: type[Any] | None = None,
        checkpoint_path: str | None = None,
        checkpoint_every: int | None = None,
        checkpoint_interval: float | None = None,
        check_learning: bool = True,
        allow_nonfinite_inputs: bool = False,
        on_retry: str = "resume",
        seed: int = 0,
        sample_weight_col: str | None = None,
        class_weight: Mapping[int, float] | None = None,
        in_memory_limit: int = IN_MEMORY_LIMIT,
        shuffle_window: int | None = None,
        backend: str | None = None,
        use_gpu: bool | None = None,
        driver_device: str = "cpu",
        **hyperparameters: Any,
    ) -> None:
        super().__init__(
            keras_model,
            worker_optimizer,
            loss,
            metrics,
            num_epoch,
            batch_size,
            features_col,
            label_col,
            custom_objects=custom_objects,
            loss_weights=loss_weights,
            progress=progress,
            worker_threads=worker_threads,
            sample_weight_col=sample_weight_col,
            class_weight=class_weight,
        )
        self.num_workers = checks.positive_int(num_workers, "num_workers")
        self.master_port = checks.port(master_port, "master_port")
        self.master_host = master_host
        self.bind_host = bind_host
        if (ssl_context is None) != (tls_ca is None):
            raise ValueError(
                "TLS needs both ssl_context (the server's certificate) and tls_ca (what the "
                "workers verify it with)"
            )
        self.shards = None if shards is None else checks.positive_int(shards, "shards")
        if not isinstance(overlap, bool):
            raise TypeError(f"overlap must be True or False, got {overlap!r}")
        self.overlap = overlap
        check_tls(ssl_context, self.shards)
        self.ssl_context = ssl_context
        self.tls_ca = None if tls_ca is None else read_ca(tls_ca)
        self.tls_server_hostname = tls_server_hostname
        self.secret = None if secret is None else check_secret(secret)
        self.round_timeout = checks.positive_number(round_timeout, "round_timeout")
        self.idle_timeout = checks.positive_number(idle_timeout, "idle_timeout")
        self.frame_timeout = checks.positive_number(frame_timeout, "frame_timeout")
        self.snapshot_interval = checks.optional_positive_number(
            snapshot_interval, "snapshot_interval"
        )
        if worker_class is not None:
            from distkeras_async.worker.keras_worker import KerasWorker

            if not (isinstance(worker_class, type) and issubclass(worker_class, KerasWorker)):
                raise TypeError(f"worker_class must subclass KerasWorker, got {worker_class!r}")
        self.worker_class = worker_class
        if checkpoint_path is not None and checkpoint_every is None and checkpoint_interval is None:
            checkpoint_interval = 60.0
        self.checkpoint_path = checkpoint_path
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = checkpoint_interval
        self.snapshots: list[tuple[float, list[Any]]] = []
        self.check_learning = bool(check_learning)
        self.allow_nonfinite_inputs = bool(allow_nonfinite_inputs)
        if on_retry not in ("resume", "restart"):
            raise ValueError(f"on_retry must be 'resume' or 'restart', got {on_retry!r}")
        self.on_retry = on_retry
        if not checks.is_int(seed) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.seed = seed
        if not checks.is_int(in_memory_limit) or in_memory_limit < 0:
            raise ValueError(
                f"in_memory_limit must be a number of bytes >= 0, got {in_memory_limit!r}"
            )
        self.in_memory_limit = in_memory_limit
        self.shuffle_window = (
            None
            if shuffle_window is None
            else checks.positive_int(shuffle_window, "shuffle_window")
        )
        # The workers' backend, checked here: a missing package fails before any Spark job.
        self.backend = check_backend(backend or current_backend())
        if use_gpu is not None and not isinstance(use_gpu, bool):
            raise ValueError(f"use_gpu must be True, False or None, got {use_gpu!r}")
        self.use_gpu = use_gpu
        if not isinstance(driver_device, str) or not driver_device:
            raise ValueError(f"driver_device must be a Keras device name, got {driver_device!r}")
        self.driver_device = driver_device
        self.learning_report: Any = None
        self.warnings: list[str] = []
        # Workers get the class, not the name: a class registered at run time in a notebook
        # exists only in the driver's registry, and Spark ships the class to the executors.
        self.algorithm = registry.get(algorithm) if isinstance(algorithm, str) else algorithm
        self.hyperparameters = dict(hyperparameters)
        probe = registry.resolve(algorithm, **hyperparameters)  # validates now, on the driver
        registry.check_workers(probe, self.num_workers)
        if self.synchronous is not None and probe.synchronous != self.synchronous:
            kind = "synchronous" if probe.synchronous else "asynchronous"
            other = (
                "SynchronizedDistributedTrainer"
                if probe.synchronous
                else "AsynchronousDistributedTrainer"
            )
            raise AlgorithmError(
                f"algorithm {probe.name!r} is {kind}: use {other} (or a trainer built on it)"
            )
        self.algorithm_name = probe.name
        self._synchronous_algorithm = probe.synchronous
        if self.overlap and probe.synchronous:
            raise AlgorithmError(
                f"overlap=True needs an asynchronous algorithm; {probe.name!r} meets in "
                "synchronous rounds, which need every worker's current weights"
            )

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

        # Everything the driver computes on its model copy runs on driver_device.
        with keras.device(self.driver_device):
            return self._train(
                dataframe,
                shuffle,
                resume_from,
                validation_data=validation_data,
                validation_split=validation_split,
                callbacks=callbacks,
                validation_batch_size=validation_batch_size,
            )

    def _train(
        self,
        dataframe: Any,
        shuffle: bool,
        resume_from: str | None,
        *,
        validation_data: Any,
        validation_split: float | None,
        callbacks: Any,
        validation_batch_size: int | None,
    ) -> Any:
        from distkeras_async.spark import jobs as sparkglue
        from distkeras_async.spark import resources
        from distkeras_async.trainers import validation as checked
        from distkeras_async.trainers.epochs import EpochCallbacks
        from distkeras_async.trainers.progress import ProgressBar, attached_to_terminal
        from distkeras_async.worker.plan import WorkerPlan

        # Arguments first, without a Spark job: a mistake costs nothing.
        callback_list = checked.check_callbacks(callbacks)
        split = checked.check_split(validation_split, validation_data)
        validation_batch = (
            max(self.batch_size, checked.VALIDATION_BATCH)
            if validation_batch_size is None
            else checks.positive_int(validation_batch_size, "validation_batch_size")
        )
        checked.check_validation_data(validation_data, self.features_col, self.label_col)
        checked.check_weight_column(dataframe, self.sample_weight_col)
        if self.checkpoint_path is not None:
            check_writable(self.checkpoint_path)  # not after the whole run
        session = dataframe.sparkSession
        # GPUs, and a barrier stage's slots, before any Spark job (a GPU task in local mode
        # would never be scheduled, and first_row below is a job).
        use_gpu = resources.resolve_use_gpu(session, self.use_gpu)
        if self._synchronous_algorithm:
            resources.check_barrier_slots(session, self.num_workers, use_gpu=use_gpu)
        began = time.time()
        if split is not None:
            dataframe, validation_data = dataframe.randomSplit([1.0 - split, split], self.seed)
        # The data against the model, from its first row, before anything starts. A custom
        # worker whose prepare() transforms the columns is only checked for emptiness.
        # With the learning check, the same small job reads the rows it evaluates on.
        checking = self.check_learning and not self._custom_prepare()
        head = sparkglue.first_rows(
            dataframe, [*self.features_col, *self.label_col], SAMPLE_ROWS if checking else 1
        )
        check_first_row(
            head[0] if head else None,
            self.master_model,
            self.loss,
            self.features_col,
            self.label_col,
            shapes=not self._custom_prepare(),
        )
        validation = checked.resolve(
            validation_data,
            self.features_col,
            self.label_col,
            validation_batch,
            self.sample_weight_col,
            self.class_weight,
        )
        if not self._custom_prepare():
            checked.check_against_model(
                validation,
                self.master_model,
                self.loss,
                self.features_col,
                self.label_col,
                allow_nonfinite=self.allow_nonfinite_inputs,
            )
        show = attached_to_terminal() if self.progress is None else self.progress
        driver_model = self._trained_model(self.master_model.get_weights())
        epochs = EpochCallbacks(
            driver_model,
            callback_list,
            self.num_workers,
            self.num_epoch,
            validation,
            on_epoch=ProgressBar.epoch_line(self.num_epoch) if show else None,
            device=self.driver_device,
        )
        # BackupAndRestore may restore an interrupted run's center and epoch here.
        first_epoch = epochs.train_begin()
        if first_epoch and resume_from is not None:
            raise ValueError(
                f"BackupAndRestore restored epoch {first_epoch}; do not also pass resume_from"
            )
        if epochs.epochs_to_run == 0:  # a restored run that had finished: as fit, no epoch
            return self._no_epochs_left(epochs, began)
        host = self.master_host or sparkglue.driver_host(session)
        secret = self.secret or new_secret()
        server = make_server(
            driver_model.get_weights(),
            self.algorithm,
            shards=self.shards,
            num_workers=self.num_workers,
            secret=secret,
            host=self.bind_host or host,
            port=self.master_port,
            ssl_context=self.ssl_context,
            round_timeout=self.round_timeout,
            idle_timeout=self.idle_timeout,
            frame_timeout=self.frame_timeout,
            checkpoint_path=self.checkpoint_path,
            checkpoint_every=self.checkpoint_every,
            checkpoint_interval=self.checkpoint_interval,
            resume_from=resume_from,
            **self.hyperparameters,
        )
        initial = server.center  # before any commit (the checkpoint's, when resuming)
        try:
            server.start()
            ports = server.ports
        except OSError as exc:
            raise OSError(
                exc.errno, f"{exc.strerror}; pass master_port=0 to pick a free port"
            ) from exc
        plan = WorkerPlan(
            model_spec=self.model_spec.to_json(),
            algorithm=self.algorithm,
            hyperparameters=self.hyperparameters,
            host=host,
            port=ports[0],
            ports=ports,
            secret=secret,
            num_epoch=epochs.epochs_to_run,
            batch_size=self.batch_size,
            shuffle=shuffle,
            features=self.features_col,
            labels=self.label_col,
            worker_threads=self.worker_threads,
            timeout=max(120.0, self.round_timeout + 30),
            custom_objects=self.custom_objects,
            worker_class=self.worker_class,
            tls_ca=self.tls_ca,
            tls_server_hostname=self.tls_server_hostname,
            allow_nonfinite_inputs=self.allow_nonfinite_inputs,
            on_retry=self.on_retry,
            seed=self.seed,
            sample_weight=self.sample_weight_col,
            class_weight=self.class_weight,
            terminate_on_nan=checked.terminates_on_nan(callback_list),
            # Callbacks and validation see the center at each epoch's end: it must hold the
            # epoch's last steps, not lag by up to a window (SingleTrainer's is 100 steps).
            exchange_at_epoch_end=bool(callback_list) or validation is not None,
            in_memory_limit=self.in_memory_limit,
            shuffle_window=self.shuffle_window,
            backend=self.backend,
            use_gpu=use_gpu,
            overlap=self.overlap,
        )
        try:
            epochs.watch(server)
            df = sparkglue.prepare(
                dataframe,
                [*self.features_col, *self.label_col, *self._weight_columns()],
                self.num_workers,
                shuffle=shuffle,
                seed=self.seed,
            )
            bar = ProgressBar(server, type(self).__name__) if show else contextlib.nullcontext()
            snapshots = CenterSnapshots(server, began, self.snapshot_interval)
            with bar, snapshots:
                try:
                    rows = sparkglue.run_workers(
                        session, df, plan, self.num_workers, barrier=self._synchronous_algorithm
                    )
                except WorkerFailedError as exc:
                    # The server's failure (a rule that raised, a failed round) is the cause;
                    # the worker's traceback says where it surfaced. A worker's own error is
                    # best told by its traceback.
                    if server.failure_code not in (None, ErrorCode.WORKER_FAILED):
                        error = server.failure_error(detail=str(exc))
                        assert error is not None
                        raise error from exc
                    # Spark names a task, not a worker (a killed Python worker leaves no
                    # traceback at all): say which workers had not finished, and how far.
                    raise WorkerFailedError(f"{exc}\n{unfinished_workers(server)}") from exc
            server.raise_for_failure()
            final_checkpoint = self._final_checkpoint(server)
            weights = server.center
            self.parameter_server_stats = server.stats()
            lost = server.unfinished_attempts()
            # The epochs that ended with the job, on_train_end; a callback may return other
            # weights (EarlyStopping's best), or raise.
            weights = epochs.end(weights)
        finally:
            epochs.close()
            server.stop()
        self.keras_history = epochs.history
        self.snapshots = [*snapshots.taken, (time.time() - began, weights)]
        self.history = flatten_rows(rows, lost)
        self.training_time = time.time() - began
        model = self._trained_model(weights)
        if final_checkpoint is not None:
            # The run trained: hand the model over with the error, never lose it.
            raise CheckpointError(
                f"the run's final checkpoint could not be written to {self.checkpoint_path}: "
                f"{final_checkpoint}; the trained model is this error's .model",
                model=model,
            ) from final_checkpoint
        if checking:
            self.learning_report = check_center(self, head, model, initial, weights)
        return model

    def _final_checkpoint(self, server: Any) -> OSError | None:
        """Write the run's last center to ``checkpoint_path``; the error if that failed."""
        if self.checkpoint_path is None:
            return None
        try:
            server.checkpoint()
        except OSError as exc:
            logger.warning("the final checkpoint to %s failed: %s", self.checkpoint_path, exc)
            return exc
        return None

    def _no_epochs_left(self, epochs: Any, began: float) -> Any:
        """The restored model of a run that had trained every epoch (``on_train_end``)."""
        weights = epochs.end(epochs.model.get_weights())
        self.keras_history = epochs.history
        self.history, self.snapshots = [], [(0.0, weights)]
        self.training_time = time.time() - began
        return self._trained_model(weights)

    def _weight_columns(self) -> list[str]:
        return [] if self.sample_weight_col is None else [self.sample_weight_col]

    def _custom_prepare(self) -> bool:
        """Whether a custom worker class turns the columns into inputs its own way.

        (It decodes or prepares them itself, so the driver cannot check their shapes.)
        """
        from distkeras_async.worker.keras_worker import KerasWorker

        own = self.worker_class
        return own is not None and (
            own.prepare is not KerasWorker.prepare
            or own.decode_column is not KerasWorker.decode_column
        )

    def get_center_snapshots(self) -> list[tuple[float, list[Any]]]:
        """``(seconds since the start, center weights)`` pairs recorded during the last run.

        Recorded every ``snapshot_interval`` seconds (when set), plus the final weights.
        """
        return list(self.snapshots)


class SynchronizedDistributedTrainer(DistributedTrainer):
    """Extension point for synchronous algorithms (all workers meet in rounds).

    Runs the workers as a Spark barrier stage. ``algorithm`` must be synchronous.
    """

    synchronous = True

    def __init__(
        self, *args: Any, algorithm: str | type[Algorithm] = "averaging", **kwargs: Any
    ) -> None:
        super().__init__(*args, algorithm=algorithm, **kwargs)


class AsynchronousDistributedTrainer(DistributedTrainer):
    """Extension point for asynchronous algorithms (workers commit independently).

    Runs the workers as ordinary Spark tasks that Spark may retry. ``algorithm`` must be
    asynchronous.
    """

    synchronous = False

    def __init__(
        self, *args: Any, algorithm: str | type[Algorithm] = "downpour", **kwargs: Any
    ) -> None:
        super().__init__(*args, algorithm=algorithm, **kwargs)
