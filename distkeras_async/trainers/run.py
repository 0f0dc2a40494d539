"""One training run, as named phases.

The phases: check the inputs, start the server, run the workers, collect, check learning,
return the model.
:class:`TrainingRun` is made by :meth:`DistributedTrainer.train
<distkeras_async.trainers.base.DistributedTrainer.train>` for one call and holds what the
phases hand each other; the trainer keeps the results (history, statistics, snapshots).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from distkeras_async import checks
from distkeras_async.errors import CheckpointError, ErrorCode, WorkerFailedError
from distkeras_async.options import replace
from distkeras_async.server.checkpoint import check_writable
from distkeras_async.server.factory import make_server
from distkeras_async.server.running import RunningServer
from distkeras_async.trainers import validation as checked
from distkeras_async.trainers.failures import unfinished_workers
from distkeras_async.trainers.history import flatten_rows
from distkeras_async.trainers.input_checks import check_first_row
from distkeras_async.trainers.learning import SAMPLE_ROWS, check_center
from distkeras_async.trainers.snapshots import CenterSnapshots
from distkeras_async.wire.auth import new_secret
from distkeras_async.worker.plan import Endpoint, WorkerPlan

logger = logging.getLogger(__name__)


class TrainingRun:
    """One ``train()`` call of a trainer, phase by phase.

    Args:
        trainer: the trainer (its options, model and algorithm; it receives the results).
        dataframe: the training data.
        shuffle, resume_from, validation_data, validation_split, callbacks,
            validation_batch_size: ``train()``'s arguments.
    """

    def __init__(
        self,
        trainer: Any,
        dataframe: Any,
        *,
        shuffle: bool,
        resume_from: str | None,
        validation_data: Any,
        validation_split: float | None,
        callbacks: Any,
        validation_batch_size: int | None,
    ) -> None:
        self.trainer = trainer
        self.options = trainer.options
        self.dataframe = dataframe
        self.shuffle = shuffle
        self.resume_from = resume_from
        self.validation_data = validation_data
        # Arguments first, without a Spark job: a mistake costs nothing.
        self.callbacks = checked.check_callbacks(callbacks)
        self.split = checked.check_split(validation_split, validation_data)
        self.validation_batch = (
            max(trainer.batch_size, checked.VALIDATION_BATCH)
            if validation_batch_size is None
            else checks.positive_int(validation_batch_size, "validation_batch_size")
        )
        data = self.options.data
        checked.check_validation_data(validation_data, data.features, data.labels)
        checked.check_weight_column(dataframe, data.sample_weight_col)
        if self.options.checkpoints.checkpoint_path is not None:
            check_writable(self.options.checkpoints.checkpoint_path)  # not after the whole run
        self.began = time.time()

    def execute(self) -> Any:
        """Run every phase; the trained model."""
        self.check_inputs()
        epochs = self.start_callbacks()
        if epochs.epochs_to_run == 0:  # a restored run that had finished: as fit, no epoch
            return self.no_epochs_left(epochs)
        server = self.start_server()
        try:
            epochs.watch(server)
            rows = self.run_workers(server, epochs.epochs_to_run)
            server.raise_for_failure()
            # Every epoch's callbacks before the final checkpoint (the watcher may lag the job).
            epochs.catch_up()
            weights, final_checkpoint, lost = self.collect(server)
            weights = epochs.end(weights)  # on_train_end: EarlyStopping may restore its best
        finally:
            epochs.close()
            server.stop()
        model = self.finish(epochs, rows, lost, weights)
        if final_checkpoint is not None:
            # The run trained: hand the model over with the error, never lose it.
            raise CheckpointError(
                "the run's final checkpoint could not be written to "
                f"{self.options.checkpoints.checkpoint_path}: {final_checkpoint}; the trained "
                "model is this error's .model",
                model=model,
            ) from final_checkpoint
        self.check_learning(model, weights)
        return model

    # -- check the inputs ------------------------------------------------------------------

    def check_inputs(self) -> None:
        """Slots and GPUs, then the data against the model, from its first rows."""
        from distkeras_async.spark import jobs, resources

        trainer, data = self.trainer, self.options.data
        self.session = session = self.dataframe.sparkSession
        # GPUs, and a barrier stage's slots, before any Spark job (a GPU task in local mode
        # would never be scheduled, and first_rows below is a job).
        self.use_gpu = resources.resolve_use_gpu(session, self.options.devices.use_gpu)
        if trainer.synchronous:
            resources.check_barrier_slots(session, trainer.num_workers, use_gpu=self.use_gpu)
        if self.split is not None:
            self.dataframe, self.validation_data = self.dataframe.randomSplit(
                [1.0 - self.split, self.split], data.seed
            )
        # A custom worker whose prepare() transforms the columns is only checked for
        # emptiness. With the learning check, the same small job reads its rows.
        custom = self.custom_prepare()
        self.checking = self.options.failures.check_learning and not custom
        self.head = jobs.first_rows(
            self.dataframe, [*data.features, *data.labels], SAMPLE_ROWS if self.checking else 1
        )
        first = self.head[0] if self.head else None
        model, loss = trainer.master_model, trainer.loss
        check_first_row(first, model, loss, data.features, data.labels, shapes=not custom)
        self.validation = checked.resolve(
            self.validation_data,
            data.features,
            data.labels,
            self.validation_batch,
            data.sample_weight_col,
            data.class_weight,
        )
        if not custom:
            checked.check_against_model(
                self.validation,
                model,
                loss,
                data.features,
                data.labels,
                allow_nonfinite=self.options.failures.allow_nonfinite_inputs,
            )

    def custom_prepare(self) -> bool:
        """Whether the worker class turns the columns into inputs its own way.

        (It decodes or prepares them itself, so the driver cannot check their shapes.)
        """
        worker_class = self.options.run.worker_class
        return worker_class is not None and worker_class.transforms_columns()

    def start_callbacks(self) -> Any:
        """The driver's copy of the model, its callbacks and validation, at the first epoch."""
        from distkeras_async.trainers.epochs import EpochCallbacks
        from distkeras_async.trainers.progress import ProgressBar, attached_to_terminal

        trainer, run = self.trainer, self.options.run
        self.show = attached_to_terminal() if run.progress is None else run.progress
        epochs = EpochCallbacks(
            trainer.trained_model(trainer.master_model.get_weights()),
            self.callbacks,
            run.num_workers,
            run.num_epoch,
            self.validation,
            on_epoch=ProgressBar.epoch_line(run.num_epoch) if self.show else None,
            device=self.options.devices.driver_device,
        )
        # BackupAndRestore may restore an interrupted run's center and epoch here.
        first_epoch = epochs.train_begin()
        if first_epoch and self.resume_from is not None:
            raise ValueError(
                f"BackupAndRestore restored epoch {first_epoch}; do not also pass resume_from"
            )
        self.driver_model = epochs.model
        return epochs

    # -- start the server ------------------------------------------------------------------

    def start_server(self) -> RunningServer:
        """The parameter server, started, serving the driver model's weights."""
        from distkeras_async.spark import jobs

        trainer, server_options = self.trainer, self.options.server
        self.host = server_options.master_host or jobs.driver_host(self.session)
        self.secret = server_options.secret or new_secret()
        server = make_server(
            self.driver_model.get_weights(),
            trainer.algorithm,
            shards=server_options.shards,
            num_workers=trainer.num_workers,
            secret=self.secret,
            host=server_options.bind_host or self.host,
            port=server_options.master_port,
            ssl_context=server_options.ssl_context,
            timeouts=self.options.timeouts,
            checkpoints=self.options.checkpoints,
            resume_from=self.resume_from,
            **trainer.hyperparameters,
        )
        self.initial = server.center  # before any commit (the checkpoint's, when resuming)
        try:
            server.start()
        except OSError as exc:
            raise OSError(
                exc.errno, f"{exc.strerror}; pass master_port=0 to pick a free port"
            ) from exc
        return server

    def plan(self, server: RunningServer, epochs_to_run: int) -> WorkerPlan:
        """What every worker needs, as plain values."""
        trainer, options = self.trainer, self.options
        return WorkerPlan(
            model_spec=trainer.model_spec.to_json(),
            algorithm=trainer.algorithm,
            hyperparameters=trainer.hyperparameters,
            endpoint=Endpoint(
                host=self.host,
                ports=tuple(server.ports),
                secret=self.secret,
                timeout=options.timeouts.client,
                tls_ca=options.server.tls_ca,
                tls_server_hostname=options.server.tls_server_hostname,
            ),
            epochs=epochs_to_run,
            shuffle=self.shuffle,
            custom_objects=trainer.custom_objects,
            terminate_on_nan=checked.terminates_on_nan(self.callbacks),
            # Callbacks and validation see the center at each epoch's end: it must hold the
            # epoch's last steps, not lag by up to a window (SingleTrainer's is 100 steps).
            exchange_at_epoch_end=bool(self.callbacks) or self.validation is not None,
            run=options.run,
            data=options.data,
            failures=options.failures,
            devices=replace(options.devices, use_gpu=self.use_gpu),
        )

    # -- run the workers -------------------------------------------------------------------

    def run_workers(self, server: RunningServer, epochs_to_run: int) -> list[dict[str, Any]]:
        """Every worker's history rows, once every worker finished.

        Raises:
            WorkerFailedError, or the server's failure (a rule that raised, a failed round).
        """
        from distkeras_async.spark import jobs
        from distkeras_async.trainers.progress import ProgressBar

        trainer, options = self.trainer, self.options
        plan = self.plan(server, epochs_to_run)
        df = jobs.prepare(
            self.dataframe,
            plan.columns,
            trainer.num_workers,
            shuffle=self.shuffle,
            seed=options.data.seed,
        )
        name = type(trainer).__name__
        bar = ProgressBar(server, name) if self.show else contextlib.nullcontext()
        snapshots = CenterSnapshots(server, self.began, options.checkpoints.snapshot_interval)
        with bar, snapshots:
            try:
                rows = jobs.run_workers(
                    self.session, df, plan, trainer.num_workers, barrier=trainer.synchronous
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
        self.snapshots = snapshots.taken
        return rows

    # -- collect ---------------------------------------------------------------------------

    def collect(self, server: RunningServer) -> tuple[list[Any], OSError | None, Any]:
        """The final center, the final checkpoint's error if any, and the lost attempts."""
        server.raise_for_failure()
        final_checkpoint = self.final_checkpoint(server)
        self.trainer.parameter_server_stats = server.stats()
        return server.center, final_checkpoint, server.unfinished_attempts()

    def final_checkpoint(self, server: RunningServer) -> OSError | None:
        """Write the run's last center to ``checkpoint_path``; the error if that failed."""
        path = self.options.checkpoints.checkpoint_path
        if path is None:
            return None
        try:
            server.checkpoint()
        except OSError as exc:
            logger.warning("the final checkpoint to %s failed: %s", path, exc)
            return exc
        return None

    # -- return ----------------------------------------------------------------------------

    def finish(self, epochs: Any, rows: list[dict[str, Any]], lost: Any, weights: Any) -> Any:
        """Hand the results to the trainer; the trained model."""
        trainer = self.trainer
        trainer.keras_history = epochs.history
        trainer.snapshots = [*self.snapshots, (time.time() - self.began, weights)]
        trainer.history = flatten_rows(rows, lost)
        trainer.training_time = time.time() - self.began
        return trainer.trained_model(weights)

    def check_learning(self, model: Any, weights: list[Any]) -> None:
        """Warn when the center kept less than half of what the workers learned."""
        if self.checking:
            self.trainer.learning_report = check_center(
                self.trainer, self.head, model, self.initial, weights
            )

    def no_epochs_left(self, epochs: Any) -> Any:
        """The restored model of a run that had trained every epoch (``on_train_end``)."""
        trainer = self.trainer
        weights = epochs.end(epochs.model.get_weights())
        trainer.keras_history = epochs.history
        trainer.history, trainer.snapshots = [], [(0.0, weights)]
        trainer.training_time = time.time() - self.began
        return trainer.trained_model(weights)
