"""A worker's plan: everything it needs, as plain values that travel inside the Spark job."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from distkeras_async import registry
from distkeras_async.algorithm import Algorithm
from distkeras_async.worker.partition import IN_MEMORY_LIMIT


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a worker needs, as plain values (it travels inside the Spark job).

    Attributes:
        model_spec: JSON of the :class:`ModelSpec`.
        algorithm: a registered algorithm name, or an Algorithm class.
        hyperparameters: the algorithm's hyperparameters.
        host: the parameter server's address.
        port: the parameter server's port (the first shard's, when sharded).
        ports: every shard's port, in shard order (empty or one: an unsharded server).
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
        in_memory_limit: a partition of at most this many Arrow bytes trains from numpy
            arrays in memory; a larger one is spooled to a local file and streamed.
        shuffle_window: rows per shuffle window of a streamed partition (None: about
            32 MiB of rows); see :mod:`distkeras_async.worker.stream`.
        backend: the Keras backend the workers run on (``tensorflow``, ``jax``, ``torch``).
        overlap: run each exchange in a background thread while the next local steps run
            (asynchronous rules only; :mod:`distkeras_async.worker.overlap`).
        use_gpu: whether workers train on the GPUs Spark gave their task (decided on the
            driver, :func:`distkeras_async.spark.resources.resolve_use_gpu`); False: they
            hide every GPU and train on the CPU.
    """

    model_spec: str
    algorithm: str | type[Algorithm]
    hyperparameters: Mapping[str, Any]
    host: str
    port: int
    secret: bytes
    ports: tuple[int, ...] = ()
    num_epoch: int = 1
    batch_size: int = 32
    shuffle: bool = False
    features: tuple[str, ...] = ("features",)
    labels: tuple[str, ...] = ("label",)
    worker_threads: int | None = None
    timeout: float = 120.0
    custom_objects: Mapping[str, Any] = field(default_factory=dict)
    # A KerasWorker subclass (the trainer checks it); typed loosely because keras_worker.py
    # imports this module.
    worker_class: type[Any] | None = None
    tls_ca: str | None = None
    tls_server_hostname: str | None = None
    allow_nonfinite_inputs: bool = False
    on_retry: str = "resume"
    seed: int = 0
    sample_weight: str | None = None
    class_weight: Mapping[int, float] | None = None
    terminate_on_nan: bool = False
    exchange_at_epoch_end: bool = False
    in_memory_limit: int = IN_MEMORY_LIMIT
    shuffle_window: int | None = None
    backend: str = "tensorflow"
    use_gpu: bool = False
    overlap: bool = False

    def make_algorithm(self) -> Algorithm:
        """A fresh instance of the plan's algorithm for this worker."""
        return registry.resolve(self.algorithm, **self.hyperparameters)
